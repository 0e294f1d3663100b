"""The client core with ``fallback_urls`` (the other nodes of a cluster): which URL each
attempt uses, without sockets or clocks."""

from __future__ import annotations

import random
from typing import Any

from rtkit.core import client_events as ev
from rtkit.core.client import ClientConfig, ClientCore
from rtkit.core.states import ConnectionState
from rtkit.errors import ConnectionFailed, Disconnected, InvalidCredentials, ServerError
from rtkit.sim.broker import WALL_START
from rtkit.sim.world import ROOT
from tests.core.test_client_core import connected_frame

S = ConnectionState
URLS = ("ws://a", "ws://b", "ws://c")


def core(seed: int = 1, **options: Any) -> ClientCore:
    config = ClientConfig(url=URLS[0], fallback_urls=URLS[1:], key=ROOT.value, **options)
    return ClientCore(config, 0.0, random.Random(seed), wall_offset=WALL_START)


def opened(c: ClientCore) -> list[str]:
    return [o.url for o in c.take() if isinstance(o, ev.OpenLink)]


def retry(c: ClientCore, now: float) -> float:
    deadline = c.next_deadline()
    assert deadline is not None
    c.timer(max(now, deadline))
    return max(now, deadline)


def test_the_first_url_is_tried_first_and_kept_while_it_works() -> None:
    c = core()
    c.connect(0.0)
    assert opened(c) == ["ws://a"] and c.url == "ws://a"
    c.link_opened(c.link_id, 0.0)
    c.receive(connected_frame(), 0.0)
    assert c.state is S.CONNECTED
    c.link_lost(c.link_id, Disconnected("network blip"), 1.0)
    retry(c, 1.0)
    assert opened(c) == ["ws://a"]  # a dropped link: the same node first (it may resume)


def test_a_refused_or_timed_out_attempt_moves_to_another_node() -> None:
    c = core()
    c.connect(0.0)
    assert opened(c) == ["ws://a"]
    c.link_failed(c.link_id, ConnectionFailed("connection refused"), 0.1)
    now = retry(c, 0.1)
    [second] = opened(c)
    assert second in ("ws://b", "ws://c")
    now = c.schedule.attempt_deadline or now
    c.timer(now)  # connect timeout: no answer from that node
    assert c.state is S.DISCONNECTED
    retry(c, now)
    [third] = opened(c)
    assert third != second
    c.link_opened(c.link_id, now)
    c.receive(connected_frame(), now)
    assert c.state is S.CONNECTED and c.url == third


def test_the_clients_of_a_dead_node_spread_over_the_others() -> None:
    chosen = []
    for seed in range(200):
        c = core(seed)
        c.connect(0.0)
        c.take()
        c.link_failed(c.link_id, ConnectionFailed("connection refused"), 0.0)
        chosen.append(c.url)
    assert set(chosen) == {"ws://b", "ws://c"}
    assert 60 < chosen.count("ws://b") < 140


def test_a_broker_shutting_down_sends_the_client_elsewhere_at_once() -> None:
    c = core()
    c.connect(0.0)
    c.take()
    c.link_opened(c.link_id, 0.0)
    c.receive(connected_frame(), 0.0)
    c.take()
    c.link_lost(c.link_id, ServerError("server shutting down", code=50001), 1.0)
    retry(c, 1.0)
    assert opened(c)[0] in ("ws://b", "ws://c")


def test_refused_credentials_stop_without_trying_other_nodes() -> None:
    c = core()
    c.connect(0.0)
    c.take()
    c.link_opened(c.link_id, 0.0)
    c.take()
    c.link_failed(c.link_id, InvalidCredentials("unknown key"), 0.0)
    assert c.state is S.FAILED and c.url == "ws://a"


def test_without_fallbacks_the_one_url_is_kept() -> None:
    config = ClientConfig(url="ws://only", key=ROOT.value)
    c = ClientCore(config, 0.0, random.Random(1), wall_offset=WALL_START)
    c.connect(0.0)
    c.take()
    c.link_failed(c.link_id, ConnectionFailed("connection refused"), 0.0)
    retry(c, 0.0)
    assert opened(c) == ["ws://only"]
