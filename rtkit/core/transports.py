"""Which transport a client's next connection attempt uses, sans I/O.

A client has an ordered list of transports (default ``("websocket", "sse")``). Every
connection attempt uses one; there is no upgrade in the middle of a connection (Ably's v2
client dropped those as a source of bugs): a change of transport is a new connection that
resumes the old one, and channels resume from their serials, so continuity is not touched.

* The first transport is preferred. An attempt over it that is **refused** (the WebSocket
  upgrade answered with an HTTP status by a proxy, or with 426 by a broker that never saw the
  ``Upgrade`` header: error 80004) or that **times out** (40801: the link did not open, or no
  ``connected`` came, as behind proxies that "upgrade" and then hang) moves to the next
  transport at once. A link that opened but broke before ``connected`` counts: after
  ``fallback_after`` of those in a row, the next transport is tried. A link that could not
  even be opened (the host refuses or cannot be reached: a broker restarting, a network
  down) counts for nothing, since every transport goes to the same host and port; nor do the
  broker's deliberate refusals (limits, origin, credentials).
* The transport that worked is remembered: reconnections after a drop use it. Once connected
  over a transport other than the preferred one, the preferred one is **probed** every
  ``retry_interval`` seconds (a bare WebSocket handshake, closed at once); when the probe
  succeeds the client moves back by an ordinary reconnect and resume. An explicit
  ``connect()`` from a closed or failed client, or ``reconnect()``, starts from the
  preferred transport again.
* A fallback transport that fails ``fallback_after`` times in a row gives way to the next
  one in the list (wrapping around), so a client never sticks to a transport that stopped
  working.
"""

from __future__ import annotations

from rtkit.errors import RtkitError

WEBSOCKET = "websocket"
SSE = "sse"
TRANSPORTS = (WEBSOCKET, SSE)
#: Default seconds between probes of the preferred transport while on a fallback.
RETRY_INTERVAL = 15.0
#: Default failed attempts in a row after which the next transport is tried.
FALLBACK_AFTER = 3


def check_transports(transports: tuple[str, ...] | list[str] | str) -> tuple[str, ...]:
    """The transports as a tuple; raises :class:`ValueError` for an empty list, an unknown
    name or a repeated one."""
    if isinstance(transports, str):
        transports = (transports,)
    out = tuple(transports)
    if not out or len(set(out)) != len(out) or any(t not in TRANSPORTS for t in out):
        raise ValueError(f"transports must be a non-empty list of distinct names among "
                         f"{', '.join(TRANSPORTS)} (got {transports!r})")
    return out


def refused(err: RtkitError) -> bool:
    """Whether a failed attempt says the transport itself does not get through."""
    return err.code in (80004, 40801)


class TransportPicker:
    """The transport of each connection attempt (see the module docstring)."""

    __slots__ = ("current", "failures", "fallback_after", "order", "probe_at", "probing",
                 "retry_interval")

    def __init__(self, order: tuple[str, ...] = TRANSPORTS,
                 retry_interval: float = RETRY_INTERVAL,
                 fallback_after: int = FALLBACK_AFTER) -> None:
        self.order = check_transports(order)
        if retry_interval <= 0 or fallback_after < 1:
            raise ValueError("retry_interval must be > 0 and fallback_after >= 1")
        self.retry_interval = retry_interval
        self.fallback_after = fallback_after
        self.current = self.order[0]
        self.failures = 0  # failed attempts in a row over ``current``
        self.probe_at: float | None = None
        self.probing = False

    def reset(self) -> None:
        """Start again from the preferred transport (an explicit connect or reconnect)."""
        self.current = self.order[0]
        self.failures = 0
        self.probe_at = None
        self.probing = False

    @property
    def preferred(self) -> str:
        return self.order[0]

    def attempt_failed(self, transport: str, err: RtkitError, opened: bool = True
                       ) -> str | None:
        """An attempt over ``transport`` failed with ``err`` (``opened``: its link had
        opened); returns why the next attempt uses another transport (None: it does not)."""
        if transport != self.current or len(self.order) == 1:
            return None
        if 40000 <= err.code < 80000 and err.code != 40801:
            return None  # the broker answered: the transport works
        if not opened and not refused(err):
            return None  # the host cannot be reached: no transport would do better
        self.failures += 1
        if self.current == self.preferred and refused(err):
            why = "refused" if err.code == 80004 else "timed out"
        elif self.failures >= self.fallback_after:
            why = f"failed {self.failures} times in a row"
        else:
            return None
        previous = self.current
        self.current = self.order[(self.order.index(previous) + 1) % len(self.order)]
        self.failures = 0
        return f"{previous} {why}: trying {self.current}"

    def connected(self, transport: str, now: float) -> None:
        """Connected over ``transport``: on a fallback, probe the preferred one later."""
        self.current = transport
        self.failures = 0
        self.probing = False
        self.probe_at = None if transport == self.preferred else now + self.retry_interval

    def disconnected(self) -> None:
        """The connection was lost: probes wait for the next connection."""
        self.probe_at = None
        self.probing = False

    def probe_due(self, now: float) -> bool:
        """Whether to probe the preferred transport now (then :meth:`probe_result`)."""
        if self.probe_at is not None and not self.probing and now >= self.probe_at:
            self.probing = True
            return True
        return False

    def deadline(self) -> float | None:
        return None if self.probing else self.probe_at

    def probe_result(self, ok: bool, now: float) -> bool:
        """The probe of the preferred transport ended; True: move back to it now."""
        if not self.probing:
            return False
        self.probing = False
        if ok:
            self.current = self.preferred
            self.failures = 0
            self.probe_at = None
            return True
        self.probe_at = now + self.retry_interval
        return False
