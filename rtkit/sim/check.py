"""The continuity checker: did every subscriber get every message once, in order — or was
it told, precisely, which messages it lost?

With per-channel serials the check is linear. For each subscription, in the order the
application saw things:

* no message id twice;
* within an epoch, serials follow each other (n, n+1, ...) unless a continuity loss reported
  in between covers the skipped serials; a new epoch only after a loss of the old one;
* (``final``) every message acked while the subscription was active and attached was
  delivered to it, or is covered by a loss it was told about;
* no publish that failed (other than by timing out) was delivered to anyone;
* (``final``) no publish is left unanswered and no client that should be connected is
  stuck connecting or disconnected.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from rtkit.core.continuity import ContinuityLoss
from rtkit.core.states import ConnectionState
from rtkit.errors import RequestTimeout

if TYPE_CHECKING:
    from rtkit.sim.client import SimClient, SubRecord
    from rtkit.sim.world import Simulation

S = ConnectionState
Item = tuple[str | None, int, str] | ContinuityLoss


@dataclass(frozen=True)
class Violation:
    client: str
    what: str

    def __str__(self) -> str:
        return f"{self.client}: {self.what}"


def _view(client: SimClient, sub: SubRecord) -> list[Item]:
    """What subscription ``sub`` saw: its messages and its channel's losses, in order."""
    out: list[Item] = []
    end = sub.removed_at if sub.removed_at is not None else float("inf")
    for entry in client.record.timeline.get(sub.channel, []):
        if entry.at > end:
            break
        if entry.loss is not None:
            if sub.made <= entry.at:
                out.append(entry.loss)
        elif sub.id in entry.subs:
            out.extend(entry.messages)
    return out


def _covers(loss: ContinuityLoss, epoch: str | None, serial: int, until: int | None) -> bool:
    if loss.epoch != epoch or loss.first_lost is None or serial < loss.first_lost:
        return False
    last = loss.last_lost if loss.last_lost is not None else until
    return last is None or serial <= last


def _check_sub(client: SimClient, sub: SubRecord, acked: dict[str, list[tuple[str | None, int,
               str, float]]], first_seen: dict[str, float], final: bool,
               out: list[Violation]) -> None:
    view = _view(client, sub)
    ids_by_serial: dict[str | None, dict[int, str]] = {}
    for epoch, serial, mid, _ in acked.get(sub.channel, []):
        ids_by_serial.setdefault(epoch, {})[serial] = mid
    seen: set[str] = set()
    last: tuple[str | None, int] | None = None
    pending: list[ContinuityLoss] = []  # losses since the last message
    # For completeness: per loss, where delivery resumed in its epoch.
    resumed_at: list[tuple[ContinuityLoss, int | None]] = []
    open_losses: list[ContinuityLoss] = []
    delivered: set[str] = set()
    name = f"{client.name}/sub{sub.id}({sub.channel})"
    for item in view:
        if isinstance(item, ContinuityLoss):
            pending.append(item)
            open_losses.append(item)
            continue
        epoch, serial, mid = item
        if mid in seen:
            out.append(Violation(name, f"message {mid} (serial {serial}) delivered twice"))
        seen.add(mid)
        delivered.add(mid)
        for loss in open_losses:
            if loss.epoch == epoch:
                resumed_at.append((loss, serial - 1))
        open_losses = [loss for loss in open_losses if loss.epoch != epoch]
        if last is not None:
            l_epoch, l_serial = last
            if epoch == l_epoch:
                if serial <= l_serial:
                    out.append(Violation(name, f"serial {serial} after {l_serial}: out of "
                                               f"order"))
                elif serial > l_serial + 1:
                    ids = ids_by_serial.get(epoch, {})
                    unexplained = [
                        n for n in range(l_serial + 1, serial)
                        if ids.get(n) not in seen  # (a copy of a message delivered before)
                        and not any(_covers(x, epoch, n, serial - 1) for x in pending)]
                    if unexplained:
                        out.append(Violation(name, f"serials {unexplained[0]}.."
                                                   f"{unexplained[-1]} skipped without a "
                                                   f"continuity loss"))
            elif not any(x.epoch == l_epoch for x in pending):
                out.append(Violation(name, f"epoch changed {l_epoch} -> {epoch} without a "
                                           f"continuity loss"))
        last = (epoch, serial)
        pending = []
    resumed_at.extend((loss, None) for loss in open_losses)
    # A loss must not name a message this subscription received: losses are facts.
    by_epoch: dict[str | None, set[int]] = {}
    for item in view:
        if not isinstance(item, ContinuityLoss):
            by_epoch.setdefault(item[0], set()).add(item[1])
    for item in view:
        if isinstance(item, ContinuityLoss) and item.first_lost is not None and \
                item.last_lost is not None:
            named = by_epoch.get(item.epoch, set()) & set(
                range(item.first_lost, item.last_lost + 1))
            if named:
                out.append(Violation(name, f"a continuity loss names serials "
                                           f"{sorted(named)[:5]} that were delivered"))
    if not final or sub.removed_at is not None or sub.attached_at is None:
        return
    base = sub.base
    epochs = {item[0] for item in view if not isinstance(item, ContinuityLoss)}
    epochs |= {item.epoch for item in view if isinstance(item, ContinuityLoss)}
    recreated = [item.at for item in view if isinstance(item, ContinuityLoss)
                 and "new epoch" in item.reason]
    for epoch, serial, mid, at in acked.get(sub.channel, []):
        if min(at, first_seen.get(mid, at)) < sub.attached_at or mid in delivered:
            continue  # (a copy of a message published before counts from the first)
        if base is not None and epoch == base[0] and serial <= base[1]:
            continue  # in the channel before the subscription attached
        if epoch not in epochs and any(at <= t for t in recreated):
            continue  # an incarnation of the channel that lived and died while we were away
        if not any(_covers(loss, epoch, serial, until) for loss, until in resumed_at):
            out.append(Violation(name, f"message {mid} (serial {serial}, epoch {epoch}) "
                                       f"acked at {at:.3f} never delivered nor declared lost"))


def _check_client(sim: Simulation, c: SimClient, final: bool, out: list[Violation]) -> None:
    """One client's own promises: its publishes enter each channel in the order it made
    them; it does not spin (attempts, token fetches); its operations are answered."""
    last: dict[tuple[str, str | None], tuple[int, str]] = {}
    for p in c.record.published.values():  # (in publish order)
        if p.serial is None:
            continue
        key = (p.channel, p.epoch)
        if key in last and p.serial < last[key][0]:
            out.append(Violation(c.name, f"{p.id} got serial {p.serial} after {last[key][1]} "
                                         f"got {last[key][0]}: publish order not kept"))
        last[key] = (p.serial, p.id)
    attempts = sum(1 for s in c.record.states if s.current is S.CONNECTING)
    if attempts > 20 + 2 * sim.now:
        out.append(Violation(c.name, f"{attempts} connection attempts in {sim.now:.0f} s"))
    if c.core is None:
        return
    if c.core.credentials.renewals > 10 + sim.now:
        out.append(Violation(c.name, f"{c.core.credentials.renewals} tokens in "
                                     f"{sim.now:.0f} s"))
    if final and c.state is S.FAILED:
        out.append(Violation(c.name, f"ended failed: {c.record.states[-1].reason}"))
    if final and c.state is not S.CLOSED:
        for op, (kind, started, outcome) in c.record.ops.items():
            if outcome is None and sim.now - started > 60:
                out.append(Violation(c.name, f"{kind} operation {op} never answered"))


def _check_losses(c: SimClient, out: list[Violation]) -> None:
    """A loss is a fact: the messages it names were no longer at the broker (or the
    channel was recreated, or the network lost frames on the way to this client)."""
    for channel, entries in c.record.timeline.items():
        for e in entries:
            loss, held = e.loss, e.broker
            if loss is None or held is None or loss.last_lost is None:
                continue
            epoch, first, lossy = held
            if lossy or epoch != loss.epoch:
                continue
            if first is not None and loss.last_lost >= first:
                out.append(Violation(c.name, f"a loss on {channel} names serials "
                                             f"{max(first, loss.first_lost or 0)}.."
                                             f"{loss.last_lost} the broker still had"))


def settled(sim: Simulation) -> bool:
    """Every live client connected, every publish answered, every subscription attached,
    no frame in flight."""
    if sim.network.in_flight():
        return False
    for c in sim.clients.values():
        if c.core is None or c.state in (S.CLOSED, S.FAILED, S.INITIALIZED):
            continue
        if c.state is not S.CONNECTED or c.link is None or not c.link.open:
            return False  # (a connected client whose link is dead has yet to notice)
        if any(p.serial is None and p.error is None for p in c.record.published.values()):
            return False
        for ch in c.core.channels.values():
            if ch.wanted and (ch.state.value not in ("attached", "failed")
                              or ch.inflight is not None or ch.repairing):
                return False
        for sub in c.record.subs.values():
            if sub.removed_at is None and sub.attached_at is None and sub.error is None \
                    and sub.channel not in c.record.failed_channels:
                return False
    return True


def check(sim: Simulation, final: bool = True) -> list[Violation]:
    """Every continuity violation in ``sim`` so far (``final``: also liveness)."""
    out: list[Violation] = []
    acked: dict[str, list[tuple[str | None, int, str, float]]] = {}
    failed: set[str] = set()
    for c in sim.clients.values():
        for p in c.record.published.values():
            if p.serial is not None and p.acked_at is not None:
                acked.setdefault(p.channel, []).append((p.epoch, p.serial, p.id, p.acked_at))
            elif p.error is not None:
                if not isinstance(p.error, RequestTimeout):
                    failed.add(p.id)
            elif final and c.core is not None and c.state not in (S.CLOSED, S.FAILED):
                out.append(Violation(c.name, f"publish {p.id} never answered"))
    first_seen: dict[str, float] = {}  # message id -> first delivered, to anyone
    for c in sim.clients.values():
        for entries in c.record.timeline.values():
            for entry in entries:
                for _, _, mid in entry.messages:
                    first_seen.setdefault(mid, entry.at)
    for c in sim.clients.values():
        _check_client(sim, c, final, out)
        _check_losses(c, out)
        alive = c.core is not None and c.state not in (S.CLOSED, S.FAILED, S.INITIALIZED)
        if final and alive and c.state is not S.CONNECTED:
            out.append(Violation(c.name, f"stuck in {c.state.value}"))
        for channel, failed_at in c.record.failed_channels.items():
            if sim.always_allowed(c.client_id, channel, failed_at - 30.0):
                out.append(Violation(c.name, f"channel {channel} failed although its "
                                             f"capability allows it"))
        for sub in c.record.subs.values():
            gone = not alive or sub.channel in c.record.failed_channels
            _check_sub(c, sub, acked, first_seen, final and not gone, out)
        for entries in c.record.timeline.values():
            for entry in entries:
                for _, serial, mid in entry.messages:
                    if mid in failed:
                        out.append(Violation(c.name, f"message {mid} was delivered (serial "
                                                     f"{serial}) although its publish failed"))
    return out
