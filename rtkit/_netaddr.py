"""Which addresses of this machine can others use? (for ``rtkit serve --host 0.0.0.0``)

A broker listening on every interface (``0.0.0.0`` or ``::``) is reached at this machine's
own addresses, never at ``0.0.0.0``: the workshop host needs those printed.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable

WILDCARDS = frozenset({"0.0.0.0", "::", ""})
#: Documentation addresses (RFC 5737, RFC 3849): "connecting" a UDP socket to one only asks
#: the kernel which local address would route there; no packet is sent.
PROBES: dict[int, str] = {socket.AF_INET: "192.0.2.1", socket.AF_INET6: "2001:db8::1"}


def _route_address(family: int) -> str | None:
    """The local address of the default route for ``family`` (None without one)."""
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((PROBES[family], 9))
            return str(s.getsockname()[0])
    except OSError:
        return None


def _host_addresses() -> list[str]:
    """The addresses this machine's host name resolves to."""
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, type=socket.SOCK_STREAM)
    except OSError:
        return []
    return [str(info[4][0]) for info in infos]


def reachable_addresses(host: str, route: Callable[[int], str | None] = _route_address,
                        resolve: Callable[[], list[str]] = _host_addresses) -> list[str]:
    """The addresses at which other machines can reach a server bound to ``host``: for a
    wildcard, this machine's non-loopback, non-link-local addresses (the default route's
    first), IPv4 only for ``0.0.0.0``; otherwise ``[host]``."""
    if host not in WILDCARDS:
        return [host]
    families = [socket.AF_INET] if host == "0.0.0.0" else [socket.AF_INET, socket.AF_INET6]
    found = [a for a in (route(f) for f in families) if a is not None] + resolve()
    usable = []
    for text in found:
        try:
            addr = ipaddress.ip_address(text.split("%")[0])
        except ValueError:
            continue
        family = socket.AF_INET if addr.version == 4 else socket.AF_INET6
        if family not in families or addr.is_loopback or addr.is_link_local or \
                addr.is_unspecified or str(addr) in usable:
            continue
        usable.append(str(addr))
    return usable


def ws_url(address: str, port: int, scheme: str = "ws") -> str:
    host = f"[{address}]" if ":" in address else address
    return f"{scheme}://{host}:{port}"


def listening_lines(host: str, port: int, url: str,
                    addresses: list[str] | None = None) -> list[str]:
    """What ``rtkit serve`` prints about where it listens: its URL, or for a wildcard host
    the URLs participants can use (and the one for this machine)."""
    if host not in WILDCARDS:
        return [f"rtkit broker listening on {url}"]
    found = reachable_addresses(host) if addresses is None else addresses
    lines = [f"rtkit broker listening on port {port} of every network interface"]
    scheme = url.partition("://")[0] or "ws"
    lines += [f"participants connect to {ws_url(a, port, scheme)}" for a in found] or [
        "participants cannot reach it: this machine has no network address besides loopback"]
    lines.append(f"on this machine: "
                 f"{ws_url('127.0.0.1' if host != '::' else '::1', port, scheme)}")
    return lines
