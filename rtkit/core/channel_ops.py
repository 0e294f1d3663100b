"""The broker's channel operations: attach (with rewind or resume), detach, publish,
history and presence, and the batching of deliveries. :class:`BrokerCore` owns one
:class:`ChannelOps` and hands it every channel frame of a connected session."""

from __future__ import annotations

from collections.abc import Callable

from rtkit.core import frames as fr
from rtkit.core.channels import Channel, ChannelRegistry, presence_size
from rtkit.core.config import FRAME_RESERVE, BrokerConfig
from rtkit.core.frames import dumps, nbytes
from rtkit.core.intake import raw_data
from rtkit.core.session import Outbox, Session
from rtkit.core.store import SERIAL, TIMESTAMP
from rtkit.core.streams import HistoryAnswer, PresenceAnswer, Replay, Streamer
from rtkit.errors import ProtocolError, RtkitError, error

#: Reply to a refused request: (session, ref, error, as a nack?) - counts protocol errors.
Refuse = Callable[[Session, "fr.Ref | None", RtkitError, bool], None]


class ChannelOps:
    """Channel frames of connected sessions, and the fan-out of what they publish."""

    def __init__(self, config: BrokerConfig, registry: ChannelRegistry, outbox: Outbox,
                 stats: dict[str, int], refuse: Refuse) -> None:
        self.config = config
        self.registry = registry
        self.outbox = outbox
        self.stats = stats
        self.refuse = refuse
        self.streamer = Streamer(config, outbox, stats, self.seal)
        self.dirty: dict[Channel, None] = {}

    def check(self, s: Session, op: str, channel: str) -> None:
        key = (op, channel)
        ok = s.allowed.get(key)
        if ok is None:
            if len(s.allowed) > 4096:
                s.allowed.clear()
            ok = s.allowed[key] = s.capability.allows(op, channel)
        if not ok:
            raise error(40300, f"{op} on {channel!r} is not permitted by capability")

    # ---------------------------------------------------------------- attach, detach

    def on_attach(self, s: Session, f: fr.Attach, now: float) -> None:
        ch = self.attach_target(s, f)
        if ch is None:
            return
        replay_from: int | None = None
        lost, lost_from, lost_to = False, None, None
        if f.from_serial is not None:
            if f.epoch is not None and f.epoch != ch.epoch:
                lost = True  # another incarnation of the channel: old serials mean nothing
            elif f.from_serial < ch.serial:
                ch.store.expire(now)
                first = ch.store.first_serial()
                if first is None or first > f.from_serial + 1:
                    lost, lost_from = True, f.from_serial + 1
                    lost_to = ch.serial if first is None else first - 1
                replay_from = f.from_serial + 1
            if lost:
                self.stats["continuity_lost"] += 1
        elif f.rewind:
            ch.store.expire(now)
            replay_from = max(1, ch.serial - min(f.rewind, self.config.history_size) + 1)
        self.attached(s, f.ref, ch, replay_from, lost, lost_from, lost_to)

    def attached(self, s: Session, ref: fr.Ref | None, ch: Channel, replay_from: int | None,
                 lost: bool, lost_from: int | None, lost_to: int | None) -> None:
        """Answer an attach and make ``s`` a subscriber, after replaying from
        ``replay_from`` if given."""
        # What is already queued goes to the current subscribers first (this session too,
        # if it is one), so 'attached' and any replay come after it.
        self.seal(ch)
        # Attaching again replaces what was under way for this channel.
        self.streamer.cancel(s, ch)
        s.channels.add(ch.name)
        self.outbox.send(s, fr.Attached(ref=ref, channel=ch.name, serial=ch.serial,
                                        epoch=ch.epoch, lost=lost, lost_from=lost_from,
                                        lost_to=lost_to))
        if replay_from is not None and replay_from <= ch.serial:
            ch.remove_subscriber(s)  # live again once the replay has caught up
            self.streamer.start(s, Replay(ch, replay_from))
        else:
            # Deliver what is already queued to the current subscribers first, so the new
            # one starts exactly after the serial announced in 'attached'.
            self.seal(ch)
            ch.add_subscriber(s)

    def on_detach(self, s: Session, f: fr.Detach) -> None:
        ch = self.registry.get(f.channel)
        if ch is None or f.channel not in s.channels:
            self.outbox.send(s, fr.Detached(ref=f.ref, channel=f.channel))
            return
        self.detach(s, ch, f.ref, None)

    def detach(self, s: Session, ch: Channel, ref: fr.Ref | None, err: RtkitError | None) -> None:
        self.seal(ch)
        ch.remove_subscriber(s)
        self.streamer.cancel(s, ch)
        s.channels.discard(ch.name)
        self.outbox.send(s, fr.Detached(ref=ref, channel=ch.name, error=err))
        self.registry.reclaim_if_idle(ch)

    # ---------------------------------------------------------------- publish

    def on_publish(self, s: Session, f: fr.Publish, now: float, wall: float,
                   text: str | bytes = "") -> None:
        """A publish frame the full decoder accepted (``text``: as received). The fast path
        (``rtkit.core.intake``) calls :meth:`publish` directly."""
        try:
            dumps(f.data)
        except ValueError:  # e.g. 1e999 parsed as infinity: not JSON any client reads
            self.refuse(s, f.ref, ProtocolError("invalid JSON: a number out of range",
                                                code=40001), True)
            return
        # Data is relayed as its publisher encoded it, whichever path decoded the frame.
        data_json = raw_data(text) if isinstance(text, str) else None
        self.publish(s, f.ref, f.channel, f.name,
                     dumps(f.data) if data_json is None else data_json, f.id, now, wall)

    def publish_target(self, s: Session, ref: fr.Ref | None, channel: str, name: str,
                       data_json: str) -> Channel | None:
        """The channel a publish goes to once its capability and size are checked; None
        when it was refused (the refusal is sent)."""
        limit = self.config.max_message_size
        try:
            self.check(s, "publish", channel)
            size = nbytes(data_json) + nbytes(name)
            if size > limit:
                raise error(42901, f"message is {size} bytes; the limit is {limit}")
            return self.registry.channels.get(channel) or self.registry.get_or_create(
                channel, s.owner)
        except RtkitError as exc:
            self.refuse(s, ref, exc, True)
            return None

    def attach_target(self, s: Session, f: fr.Attach) -> Channel | None:
        """The channel an attach goes to once the capability and the per-connection channel
        limit are checked; None when it was refused (the refusal is sent)."""
        try:
            self.check(s, "subscribe", f.channel)
            if f.channel not in s.channels and (
                len(s.channels) >= self.config.max_channels_per_connection
            ):
                raise error(42906)
            return self.registry.get_or_create(f.channel, s.owner)
        except RtkitError as exc:
            self.refuse(s, f.ref, exc, False)
            return None

    def publish(self, s: Session, ref: fr.Ref | None, channel: str, name: str,
                data_json: str, pub_id: str | None, now: float, wall: float) -> None:
        """Store and fan out one message whose data is already JSON text (checked)."""
        ch = self.publish_target(s, ref, channel, name, data_json)
        if ch is None:
            return
        c = self.config
        # Ids are scoped per publisher (its client id, else its connection): nobody else can
        # make one of its publishes look like a duplicate.
        key = None if pub_id is None else f"{s.owner}|{pub_id}"
        dup = ch.store.find(key) if key is not None else None
        if dup is not None:
            self.outbox.send(s, fr.Ack(ref=ref, channel=ch.name, id=pub_id or "", duplicate=True,
                                       serial=dup[SERIAL], timestamp=dup[TIMESTAMP]))
            return
        msg_id = pub_id if pub_id is not None else f"{s.connection_id}:{s.published + 1}"
        timestamp = int(wall * 1000)
        id_json = dumps(msg_id)
        fragment = (f'{{"id":{id_json},"name":{dumps(name)},"data":{data_json},'
                    f'"serial":{ch.serial + 1},"timestamp":{timestamp},'
                    f'"client_id":{s.client_id_json}}}')
        fsize = nbytes(fragment)
        if fsize + FRAME_RESERVE > c.max_frame_size:  # its ids and name made it too big
            self.refuse(s, ref, error(42901, "message too large for a frame"), True)
            return
        s.published += 1
        if ch.pending_events or ch.pending_bytes + fsize + 1 + ch.envelope > c.max_frame_size:
            self.seal(ch)
        ch.serial += 1
        ch.store.append((ch.serial, timestamp, now, key, fragment, fsize), now)
        self.stats["published"] += 1
        if ch.subscribers:
            ch.queue(fragment, fsize)
            self.dirty[ch] = None
        ref_json = str(ref) if type(ref) is int else dumps(ref)
        self.outbox.text((s,), f'{{"action":"ack","ref":{ref_json},"channel":{ch.name_json},'
                               f'"id":{id_json},"serial":{ch.serial},'
                               f'"timestamp":{timestamp}}}')

    # ---------------------------------------------------------------- history, presence

    def on_history(self, s: Session, f: fr.History, now: float) -> None:
        try:
            self.check(s, "history", f.channel)
        except RtkitError as exc:
            self.refuse(s, f.ref, exc, False)
            return
        ch = self.registry.get(f.channel)
        limit = min(f.limit or 100, max(1, self.config.history_size))
        lo, hi = 1, 0  # empty
        if ch is not None:
            ch.store.expire(now)
            first = ch.store.first_serial()
            if first is not None:
                hi = ch.serial if f.before is None else min(ch.serial, f.before - 1)
                # after: the first ``limit`` messages after it; else the latest ``limit``.
                lo = max(first, f.after + 1 if f.after is not None else hi - limit + 1)
        self.streamer.start(s, HistoryAnswer(dumps(f.ref), ch, dumps(f.channel), lo, hi, limit))

    def on_presence(self, s: Session, f: fr.Presence, wall: float) -> None:
        c = self.config
        try:
            if f.op == "get":
                if not (s.capability.allows("subscribe", f.channel)
                        or s.capability.allows("presence", f.channel)):
                    self.check(s, "presence", f.channel)
                ch = self.registry.get(f.channel)
            else:
                self.check(s, "presence", f.channel)
                if s.client_id is None:
                    raise error(40010)
                try:
                    size = presence_size(f.data)
                except (TypeError, ValueError):
                    raise ProtocolError("invalid JSON: a number out of range",
                                        code=40001) from None
                if size > c.presence_data_limit:
                    raise error(42901, f"presence data is {size} bytes; the limit is "
                                       f"{c.presence_data_limit}")
                present = s.presence or ()
                if f.op != "leave" and f.channel not in present and (
                        len(present) >= c.max_presence_per_connection):
                    raise error(42910)
                ch = (self.registry.get(f.channel) if f.op == "leave"
                      else self.registry.get_or_create(f.channel, s.owner))
        except RtkitError as exc:
            self.refuse(s, f.ref, exc, False)
            return
        if f.op != "get" and ch is not None:
            assert s.client_id is not None
            member = fr.PresenceMember(s.client_id, s.connection_id, f.data, int(wall * 1000))
            self.presence(ch, f.op, member)
            if f.op == "leave":
                if s.presence is not None:
                    s.presence.discard(ch.name)
            else:
                if s.presence is None:
                    s.presence = set()
                s.presence.add(ch.name)
        members = list(ch.members.values()) if ch is not None else []
        name_json = ch.name_json if ch is not None else dumps(f.channel)
        self.streamer.start(s, PresenceAnswer(dumps(f.ref), name_json, members))
        if ch is not None:
            self.registry.reclaim_if_idle(ch)

    def presence(self, ch: Channel, op: str, member: fr.PresenceMember) -> None:
        """Apply a presence change and queue its event for the channel's subscribers; the
        events of one flush go out in one ``presence_event`` frame, like messages."""
        kind = ch.presence_change(op, member)  # type: ignore[arg-type]
        if kind is not None and ch.subscribers:
            event = dumps({"type": kind, **member.to_wire()})
            size = nbytes(event)
            room = self.config.max_frame_size - ch.envelope - 8  # "presence_event" is longer
            if ch.pending or ch.events_bytes + size + 1 > room:
                self.seal(ch)
            ch.queue_event(event, size)
            self.dirty[ch] = None

    def leave(self, s: Session, name: str) -> None:
        """Take ``s`` out of ``name``'s presence (announced)."""
        if s.presence is not None:
            s.presence.discard(name)
        ch = self.registry.get(name)
        if ch is not None and s.client_id is not None:
            member = ch.members.get((s.client_id, s.connection_id))
            if member is not None:
                self.presence(ch, "leave", member)
            self.registry.reclaim_if_idle(ch)

    # ---------------------------------------------------------------- sessions

    def close(self, s: Session, ref: fr.Ref | None) -> None:
        """The client says goodbye: ``closed``, then the transport is closed."""
        s.resumable = False
        self.outbox.send(s, fr.Closed(ref=ref))
        self.outbox.disconnect(s, 1000, "closed by client")

    def session_gone(self, s: Session) -> None:
        """Detach ``s`` everywhere, drop its streams and leave its presence (announced)."""
        touched = []
        for name in s.channels:
            ch = self.registry.get(name)
            if ch is not None:
                self.seal(ch)
                ch.remove_subscriber(s)
                touched.append(ch)
        touched.extend(self.streamer.cancel(s))
        s.channels.clear()
        for name in list(s.presence or ()):
            self.leave(s, name)
        for ch in touched:
            self.registry.reclaim_if_idle(ch)

    def narrow(self, s: Session) -> None:
        """``s``'s capabilities changed: detach from channels and leave presence where they
        are no longer allowed."""
        for name in sorted(s.channels):
            ch = self.registry.get(name)
            if ch is not None and not s.capability.allows("subscribe", name):
                self.detach(s, ch, None, error(40300))
        for name in sorted(s.presence or ()):
            if not s.capability.allows("presence", name):
                self.leave(s, name)

    # ---------------------------------------------------------------- batching

    def seal(self, ch: Channel) -> None:
        """Hand the channel's pending batch to the driver as one frame for all subscribers."""
        if ch.pending:
            batch = ch.take_pending()
            if ch.targets:
                self.outbox.text(ch.targets, f"{ch.prefix}{','.join(batch)}]}}")
                self.stats["delivered_frames"] += 1
        if ch.pending_events:
            events = ch.take_events()
            if ch.targets:
                self.outbox.text(ch.targets, f'{{"action":"presence_event","channel":'
                                             f'{ch.name_json},"events":[{",".join(events)}]}}')
        self.dirty.pop(ch, None)

    def flush(self) -> None:
        for ch in list(self.dirty):
            self.seal(ch)
