"""The broker's channel operations: attach (with rewind or resume), detach, publish,
history and presence, and the batching of deliveries. :class:`BrokerCore` builds on this."""

from __future__ import annotations

from collections import OrderedDict

from rtkit.core import frames as fr
from rtkit.core.channels import Channel, Stored
from rtkit.core.frames import dumps
from rtkit.core.session import BrokerConfig, Output, Send, Session
from rtkit.errors import ProtocolError, RtkitError, error


class ChannelOperations:
    """Channel state and the frames that act on it. Needs the attributes set by
    :class:`~rtkit.core.broker.BrokerCore` and its ``_send``."""

    config: BrokerConfig
    channels: dict[str, Channel]
    stats: dict[str, int]
    _out: list[Output]
    _dirty: dict[Channel, None]
    _max_batch: int
    _tombstones: OrderedDict[str, tuple[str, int]]

    def _send(self, s: Session, frame: fr.Frame) -> None:
        raise NotImplementedError  # pragma: no cover - provided by BrokerCore


    def _channel(self, name: str) -> Channel:
        ch = self.channels.get(name)
        if ch is None:
            if len(self.channels) >= self.config.max_channels:
                raise error(42908)
            c = self.config
            ch = Channel(
                name, history_size=c.history_size, history_ttl=c.history_ttl,
                dedup_size=c.dedup_size,
            )
            tomb = self._tombstones.pop(name, None)
            if tomb is not None:
                ch.epoch, ch.serial = tomb
            self.channels[name] = ch
        return ch

    def _check(self, s: Session, op: str, channel: str) -> None:
        key = (op, channel)
        ok = s.allowed.get(key)
        if ok is None:
            if len(s.allowed) > 4096:
                s.allowed.clear()
            ok = s.allowed[key] = s.capability.allows(op, channel)
        if not ok:
            raise error(40300, f"{op} on {channel!r} is not permitted by capability")

    def _on_attach(self, s: Session, f: fr.Attach, now: float) -> None:
        try:
            self._check(s, "subscribe", f.channel)
            if f.channel not in s.channels and (
                len(s.channels) >= self.config.max_channels_per_connection
            ):
                raise error(42906)
            ch = self._channel(f.channel)
        except RtkitError as exc:
            self._send(s, fr.Error(ref=f.ref, error=exc))
            return
        # Deliver what is already queued to the current subscribers first, so the new one
        # starts exactly after the serial announced in 'attached'.
        self._seal(ch)
        ch.add_subscriber(s)
        s.channels.add(ch.name)
        now_ms = int(now * 1000)
        replay: list[Stored] = []
        lost, lost_from = False, None
        if f.from_serial is not None:
            ch.prune(now_ms)
            if f.epoch is not None and f.epoch != ch.epoch:
                lost = True  # another incarnation of the channel: old serials mean nothing
            elif f.from_serial < ch.serial:
                replay = ch.since(f.from_serial)
                if not replay or replay[0].serial != f.from_serial + 1:
                    lost, lost_from = True, f.from_serial + 1
            if lost:
                self.stats["continuity_lost"] += 1
        elif f.rewind:
            replay = ch.query(min(f.rewind, self.config.history_size), None, now_ms)
        self._send(s, fr.Attached(ref=f.ref, channel=ch.name, serial=ch.serial, epoch=ch.epoch,
                                  lost=lost, lost_from=lost_from))
        self._replay(s, ch, replay)

    def _replay(self, s: Session, ch: Channel, stored: list[Stored]) -> None:
        """Send stored messages to one session in frames that respect the frame limit."""
        self.stats["replayed"] += len(stored)
        batch: list[str] = []
        size = 0
        for m in stored:
            if batch and size + len(m.fragment) + 256 > self._max_batch:
                self._send_batch((s,), ch, batch)
                batch, size = [], 0
            batch.append(m.fragment)
            size += len(m.fragment) + 1
        self._send_batch((s,), ch, batch)

    def _on_detach(self, s: Session, f: fr.Detach) -> None:
        ch = self.channels.get(f.channel)
        if ch is None or f.channel not in s.channels:
            self._send(s, fr.Detached(ref=f.ref, channel=f.channel))
            return
        self._detach(s, ch, f.ref, None)

    def _detach(self, s: Session, ch: Channel, ref: fr.Ref | None, err: RtkitError | None) -> None:
        self._seal(ch)
        ch.remove_subscriber(s)
        s.channels.discard(ch.name)
        self._send(s, fr.Detached(ref=ref, channel=ch.name, error=err))

    def _on_publish(self, s: Session, f: fr.Publish, now: float) -> None:
        if not s.connected:
            raise ProtocolError(code=40005)
        try:
            self._check(s, "publish", f.channel)
            if not s.bucket.take(now):
                raise error(42900)
            data_json = dumps(f.data)
            size = len(data_json.encode()) + len(f.name.encode())
            if size > self.config.max_message_size:
                raise error(42901, f"message is {size} bytes; the limit is "
                                   f"{self.config.max_message_size}")
            ch = self._channel(f.channel)
        except RtkitError as exc:
            self._send(s, fr.Nack(ref=f.ref, error=exc))
            return
        dup = ch.find_duplicate(f.id) if f.id is not None else None
        if dup is not None:
            self._send(s, fr.Ack(ref=f.ref, channel=ch.name, id=dup.id, serial=dup.serial,
                                 timestamp=dup.timestamp, duplicate=True))
            return
        s.published += 1
        msg_id = f.id if f.id is not None else f"{s.connection_id}:{s.published}"
        if ch.pending_bytes + size + 256 > self._max_batch:
            self._seal(ch)
        stored = ch.append(msg_id, f.name, data_json, int(now * 1000), s.client_id)
        self.stats["published"] += 1
        if ch.subscribers:
            self._dirty[ch] = None
        else:
            ch.take_pending()
        ack = (f'{{"action":"ack","ref":{dumps(f.ref)},"channel":{ch.name_json},'
               f'"id":{dumps(msg_id)},"serial":{stored.serial},"timestamp":{stored.timestamp}}}')
        self._out.append(Send((s,), ack))

    def _on_history(self, s: Session, f: fr.History, now: float) -> None:
        try:
            self._check(s, "history", f.channel)
        except RtkitError as exc:
            self._send(s, fr.Error(ref=f.ref, error=exc))
            return
        ch = self.channels.get(f.channel)
        limit = min(f.limit or 100, max(1, self.config.history_size))
        items = ch.query(limit, f.before, int(now * 1000), f.after) if ch else []
        body = ",".join(m.fragment for m in items)
        self._out.append(Send((s,), f'{{"action":"history_result","ref":{dumps(f.ref)},'
                                    f'"channel":{dumps(f.channel)},"messages":[{body}]}}'))

    def _on_presence(self, s: Session, f: fr.Presence, now: float) -> None:
        try:
            if f.op == "get":
                if not (s.capability.allows("subscribe", f.channel)
                        or s.capability.allows("presence", f.channel)):
                    self._check(s, "presence", f.channel)
            else:
                self._check(s, "presence", f.channel)
                if s.client_id is None:
                    raise error(40010)
                if not fr.is_json_value(f.data) or len(dumps(f.data)) > 4096:
                    raise error(42901, "presence data must be JSON of at most 4096 bytes")
            ch = self._channel(f.channel)
        except RtkitError as exc:
            self._send(s, fr.Error(ref=f.ref, error=exc))
            return
        if f.op != "get":
            assert s.client_id is not None
            member = fr.PresenceMember(s.client_id, s.connection_id, f.data, int(now * 1000))
            self._presence(ch, f.op, member)
        self._send(s, fr.PresenceResult(
            ref=f.ref, channel=ch.name, members=tuple(ch.members.values())))

    def _presence(self, ch: Channel, op: str, member: fr.PresenceMember) -> None:
        kind = ch.presence_change(op, member)  # type: ignore[arg-type]
        if kind is not None and ch.subscribers:
            self._seal(ch)
            event = fr.PresenceEvent(channel=ch.name, changes=(fr.PresenceChange(kind, member),))
            self._out.append(Send(ch.targets, fr.encode(event)))

    def _send_batch(self, targets: tuple[Session, ...], ch: Channel, batch: list[str]) -> None:
        if batch and targets:
            self._out.append(Send(targets, f'{{"action":"message","channel":{ch.name_json},'
                                           f'"messages":[{",".join(batch)}]}}'))
            self.stats["delivered_frames"] += 1

    def _seal(self, ch: Channel) -> None:
        if ch.pending:
            self._send_batch(ch.targets, ch, ch.take_pending())
        self._dirty.pop(ch, None)
