"""A client core and a broker core paired in memory."""

from __future__ import annotations

from rtkit.core import client as cc
from rtkit.core import frames as fr
from rtkit.core.states import ConnectionState, Trigger
from rtkit.errors import CapabilityError, InvalidCredentials
from tests.core.harness import ROOT, Harness


class Pair:
    def __init__(self, **config: object) -> None:
        self.h = Harness(**config)
        self.client = cc.ClientCore(self.h.now)
        self.session = self.h.open()
        self.events: list[cc.Event] = []

    def request(self, frame_type: type[fr.Frame], **fields: object) -> fr.Ref:
        ref, text = self.client.request(frame_type, **fields)
        self.h.send(self.session, text)
        self.pump()
        return ref

    def pump(self) -> None:
        self.h.flush()
        for text in self.h.raw[self.session]:
            self.events += self.client.receive(text, self.h.now)
        self.h.raw[self.session].clear()
        self.h.inbox[self.session].clear()


def test_connect_attach_publish_deliver() -> None:
    p = Pair(heartbeat_interval=3.0)
    p.client.transition(Trigger.CONNECT, "test", p.h.now)
    ref = p.request(fr.Connect, key=ROOT.value, client_id="me")
    [reply] = p.events
    assert isinstance(reply, cc.Reply) and reply.ref == ref
    assert p.client.session is not None and p.client.session.heartbeat_interval == 3.0
    assert p.client.liveness.interval == 3.0
    p.client.transition(Trigger.CONNECTED, "ok", p.h.now)
    assert p.client.state is ConnectionState.CONNECTED
    p.events.clear()
    p.request(fr.Attach, channel="c")
    p.request(fr.Publish, channel="c", name="n", data={"v": 1})
    kinds = [type(e) for e in p.events]
    assert kinds == [cc.Reply, cc.Reply, cc.Delivery]
    delivery = p.events[2]
    assert isinstance(delivery, cc.Delivery)
    [msg] = delivery.messages
    assert (msg.channel, msg.data, msg.serial, msg.client_id) == ("c", {"v": 1}, 1, "me")
    assert not p.client.pending


def test_refusals_match_their_request() -> None:
    p = Pair()
    token = p.h.token(client_id="t", capabilities={"c": ["subscribe"]})
    p.request(fr.Connect, token=token)
    p.events.clear()
    ref = p.request(fr.Publish, channel="c", name="n")
    [refused] = p.events
    assert isinstance(refused, cc.Refused) and refused.ref == ref
    assert isinstance(refused.error, CapabilityError)


def test_fatal_connect_error_refuses_and_reports() -> None:
    p = Pair()
    p.request(fr.Connect, key="root:wrong")
    refused, fatal = p.events
    assert isinstance(refused, cc.Refused) and isinstance(refused.error, InvalidCredentials)
    assert isinstance(fatal, cc.BrokerError) and fatal.fatal


def test_late_replies_and_malformed_frames_are_harmless() -> None:
    p = Pair()
    assert p.client.receive('{"action":"ack","ref":99,"channel":"c","id":"x","serial":1,'
                            '"timestamp":1}', 0) == []
    [bad] = p.client.receive("{{{", 0)
    assert isinstance(bad, cc.Malformed) and bad.error.code == 40001
    assert p.client.abandon_all() == []


def test_server_heartbeat_refreshes_liveness() -> None:
    p = Pair()
    p.client.receive('{"action":"heartbeat"}', 123.0)
    assert p.client.liveness.last_heard == 123.0
