"""What is due when, for one :class:`~rtkit.core.client.ClientCore`, sans I/O.

:func:`next_deadline` tells the driver when to wake the core; :func:`timer` does what is
due then: retries, attempt and close timeouts, liveness (heartbeats, a dead link), transport
probes, publish pacing, token renewal, channel retries and request deadlines. Both read the
core's parts and change them through the core's methods; they keep no state of their own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rtkit.core import frames as fr
from rtkit.core.client_events import AbortLink, OpFailed, Probe
from rtkit.core.requests import Pending
from rtkit.core.schedule import Pulse
from rtkit.core.states import ConnectionState, Trigger
from rtkit.errors import ConnectionClosed, Disconnected, RequestTimeout

if TYPE_CHECKING:
    from rtkit.core.client import ClientCore

S = ConnectionState


def next_deadline(core: ClientCore) -> float | None:
    """When the driver must call ``core.timer`` next (monotonic), if ever."""
    sched, creds, state = core.schedule, core.credentials, core.state
    times: list[float | None] = [core.requests.next_deadline()]
    if state in (S.DISCONNECTED, S.SUSPENDED):
        times.append(sched.retry_at)
        if state is S.DISCONNECTED and sched.lost_at is not None:
            times.append(sched.lost_at + core.connection.ttl())
    elif state is S.CONNECTING:
        times.append(sched.attempt_deadline)
        if core.connection.waiting_token and creds.fetch is None:
            times.append(creds.retry_at)
    elif state is S.CLOSING:
        times.append(sched.close_deadline)
    elif state is S.CONNECTED:
        times += sched.connected_deadlines()
        times.append(core.transports.deadline())
        times.append(core.publishing.flush_at)
        if creds.fetch is None:
            times.append(core.renewal.due(sched.last_poll))
    if creds.fetch is not None:
        times.append(creds.fetch.deadline)
    times += [ch.retry_at for ch in core.channels.values()]
    due = [t for t in times if t is not None]
    return min(due) if due else None


def timer(core: ClientCore, now: float) -> None:
    """Do what is due at ``now``."""
    sched, conn = core.schedule, core.connection
    stalled = sched.observe(now)
    state = core.state
    if state in (S.DISCONNECTED, S.SUSPENDED):
        conn.check_ttl(now)
        if sched.retry_at is not None and now >= sched.retry_at:
            core.transition(Trigger.RETRY, f"retry #{sched.attempt + 1}", now)
            conn.start_attempt(now)
    elif state is S.CONNECTING:
        if conn.waiting_token and core.credentials.fetch is None:
            core.renewal.fetch("a token is needed to connect", now)
        if sched.attempt_deadline is not None and now >= sched.attempt_deadline:
            what = "no 'connected' reply" if conn.link_open else "the link did not open"
            conn.attempt_failed(RequestTimeout(
                f"{what} within {core.config.connect_timeout:g} s", code=40801), now)
    elif state is S.CLOSING:
        if sched.close_deadline is not None and now >= sched.close_deadline:
            core.out.append(AbortLink(ConnectionClosed("close timed out")))
            conn.link_down(conn.link, ConnectionClosed("closed"), now)
    elif state is S.CONNECTED:
        _connected_timers(core, now, stalled)
    err = core.credentials.timed_out(now)
    if err is not None:
        core.token_trouble(err, now)
    if core.state is S.CONNECTED and core.credentials.fetch is None:
        at = core.renewal.due(now)
        if at is not None and now >= at:
            core.renewal.fetch("the token expires soon", now)
    for ch in core.channels.values():
        if ch.retry_at is not None and now >= ch.retry_at:
            ch.retry_at = None
            core.reconcile(now, ch)
    for op in core.requests.expired(now):
        _expire(core, op)


def _connected_timers(core: ClientCore, now: float, stalled: bool) -> None:
    sched, conn = core.schedule, core.connection
    if sched.pulse(now, stalled) is Pulse.DEAD:
        silent = now - sched.liveness.last_heard
        err = Disconnected(f"no heartbeat from the broker for {silent:.2f} s")
        core.out.append(AbortLink(err))
        conn.link_down(conn.link, err, now)
        return
    if core.transports.probe_due(now):
        core.out.append(Probe(conn.url, core.transports.preferred))
    if sched.ping_due(now):
        core.requests.trim_pings()
        core.requests.send(fr.Heartbeat, Pending("ping", None, None, now))
    flush_at = core.publishing.flush_at
    if flush_at is not None and now >= flush_at:
        core.publishing.flush(now)


def _expire(core: ClientCore, op: int) -> None:
    """Operation ``op`` is past its deadline: it fails (a queued publish is dropped)."""
    err = core.publishing.expire(op)
    if err is None:
        err = RequestTimeout("no reply in time") if core.state is S.CONNECTED else \
            core.unusable("complete the request (still not connected)")
    core.requests.forget(op)
    for ch in core.channels.values():
        ch.forget(op)
    core.renewal.forget(op)
    core.out.append(OpFailed(op, err))
