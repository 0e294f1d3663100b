"""``rtkit serve --host 0.0.0.0`` prints the addresses participants can use."""

from __future__ import annotations

import socket

from rtkit._netaddr import listening_lines, reachable_addresses, ws_url


def test_a_wildcard_host_lists_this_machines_usable_addresses() -> None:
    routes = {socket.AF_INET: "192.168.1.20", socket.AF_INET6: "2001:db8:1::5"}
    resolved = ["127.0.1.1", "10.8.0.2", "192.168.1.20", "fe80::1%eth0", "::1", "0.0.0.0",
                "not-an-address"]
    found = reachable_addresses("0.0.0.0", route=routes.get, resolve=lambda: resolved)
    assert found == ["192.168.1.20", "10.8.0.2"]  # the default route's first, no loopback
    both = reachable_addresses("::", route=routes.get, resolve=lambda: resolved)
    assert both == ["192.168.1.20", "2001:db8:1::5", "10.8.0.2"]
    assert reachable_addresses("127.0.0.1") == ["127.0.0.1"]
    assert reachable_addresses("0.0.0.0", route=lambda f: None, resolve=list) == []


def test_what_serve_prints() -> None:
    lines = listening_lines("0.0.0.0", 8765, "ws://0.0.0.0:8765",
                            addresses=["192.168.1.20", "2001:db8::5"])
    assert lines[0] == "rtkit broker listening on port 8765 of every network interface"
    assert lines[1:3] == ["participants connect to ws://192.168.1.20:8765",
                          "participants connect to ws://[2001:db8::5]:8765"]
    assert lines[-1] == "on this machine: ws://127.0.0.1:8765"
    assert not any("0.0.0.0" in line for line in lines)
    alone = listening_lines("0.0.0.0", 8765, "ws://0.0.0.0:8765", addresses=[])
    assert "cannot reach" in alone[1]
    assert listening_lines("127.0.0.1", 1234, "ws://127.0.0.1:1234") == [
        "rtkit broker listening on ws://127.0.0.1:1234"]
    assert ws_url("::1", 9) == "ws://[::1]:9"


def test_the_real_machine_gives_real_addresses() -> None:
    for address in reachable_addresses("0.0.0.0"):
        socket.inet_aton(address)  # IPv4, parseable
        assert not address.startswith("127.")
