"""The REST interface's core: routes, credentials, statuses, and the channel operations it
shares with the WebSocket protocol (checked against a subscriber on the same broker core)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from rtkit.core.rest import (
    MethodNotAllowed,
    RestApi,
    credentials,
    error_reply,
    http_status,
    parse_last_event_id,
    route,
    split_target,
)
from rtkit.errors import RtkitError, error
from tests.core.harness import ROOT, Harness


def basic(key: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(key.encode()).decode()}


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def body(reply: Any) -> Any:
    return json.loads(reply.body)


def test_routes_and_targets() -> None:
    segments, params = split_target("/channels/a%2Fb%20c/messages?limit=5&after=3&x")
    assert segments == ["channels", "a/b c", "messages"]
    assert params == {"limit": "5", "after": "3", "x": ""}
    assert route("POST", ["channels", "x", "messages"]).kind == "publish"
    assert route("GET", ["channels", "x", "messages"]).channel == "x"
    assert route("GET", ["channels", "x", "events"]).kind == "events"
    assert route("GET", ["health"]).kind == "health"
    with pytest.raises(MethodNotAllowed) as refused:
        route("DELETE", ["channels", "x", "messages"])
    assert refused.value.allowed == ("GET", "POST")
    with pytest.raises(RtkitError) as missing:
        route("GET", ["channels", "x"])
    assert missing.value.code == 40400


def test_credentials_come_only_from_the_authorization_header() -> None:
    assert credentials(bearer("t.o.k")) == ("token", "t.o.k")
    assert credentials(basic(ROOT.value)) == ("key", ROOT.value)
    for headers, code in (({}, 40106), ({"authorization": "Basic !!"}, 40101),
                          (basic("nosecret"), 40101), ({"authorization": "Digest x"}, 40101)):
        with pytest.raises(RtkitError) as exc:
            credentials(headers)
        assert exc.value.code == code


def test_statuses_fit_the_codes() -> None:
    assert {c: http_status(c) for c in (40001, 40007, 40101, 40140, 40300, 40400, 42900,
                                        42901, 42908, 50001)} == {
        40001: 400, 40007: 400, 40101: 401, 40140: 401, 40300: 403, 40400: 404, 42900: 429,
        42901: 413, 42908: 429, 50001: 503}
    reply = error_reply(error(40106))
    assert reply.status == 401 and ("WWW-Authenticate", 'Bearer realm="rtkit", '
                                    'Basic realm="rtkit"') in reply.headers
    assert body(reply) == {"error": {"code": 40106, "message": "no credentials given"}}


def test_last_event_ids() -> None:
    assert parse_last_event_id(None) is None
    assert parse_last_event_id("41") == (None, 41)
    assert parse_last_event_id("9f3e:41") == ("9f3e", 41)
    for bad in ("x", ":4", "9f:x", "-1"):
        with pytest.raises(RtkitError):
            parse_last_event_id(bad)


def test_publish_is_the_same_operation_as_a_publish_frame() -> None:
    h = Harness()
    api = RestApi(h.core)
    sub = h.connect("watcher")
    h.send(sub, {"action": "attach", "ref": 1, "channel": "news"})
    h.take(sub)
    caller = api.caller(basic(ROOT.value), h.now)
    reply = api.publish(caller, "news", b'{"name":"n","data":{"x": 1},"id":"a1"}', h.now)
    assert reply.status == 201
    assert {k: body(reply)[k] for k in ("channel", "id", "serial")} == {
        "channel": "news", "id": "a1", "serial": 1}
    again = api.publish(api.caller(basic(ROOT.value), h.now), "news",
                        b'{"name":"n","data":2,"id":"a1"}', h.now)
    assert again.status == 200 and body(again)["duplicate"] is True
    [frame] = h.take(sub)
    assert frame["messages"][0]["data"] == {"x": 1}  # relayed as the publisher encoded it
    assert '"data":{"x": 1}' in h.raw[sub][-1]
    for raw, code in ((b"[1]", 40000), (b"{", 40001), (b'{"data":1}', 40003),
                      (b'{"name":"n","data":1e999}', 40001), (b"\xff", 40001),
                      (b'{"name":"n","data":' + b"[" * 70 + b"]" * 70 + b"}", 40011)):
        with pytest.raises(RtkitError) as exc:
            api.publish(api.caller(basic(ROOT.value), h.now), "news", raw, h.now)
        assert exc.value.code == code, raw
    big = json.dumps({"name": "n", "data": "x" * 70_000}).encode()
    with pytest.raises(RtkitError) as exc:
        api.publish(api.caller(basic(ROOT.value), h.now), "news", big, h.now)
    assert exc.value.code == 42901 and http_status(42901) == 413
    with pytest.raises(RtkitError) as exc:
        api.publish(api.caller(basic(ROOT.value), h.now), "bad channel", b'{"name":""}', h.now)
    assert exc.value.code == 40007
    assert h.take(sub) == []  # nothing refused reached the subscriber


def test_capabilities_and_the_rate_limit_are_those_of_a_connection() -> None:
    h = Harness(publish_rate=5, publish_burst=3)
    api = RestApi(h.core)
    token = h.token(client_id="ana", capabilities={"news": ["subscribe"]})
    caller = api.caller(bearer(token), h.now)
    assert caller.client_id == "ana"
    with pytest.raises(RtkitError) as exc:
        api.publish(caller, "news", b'{"name":"n"}', h.now)
    assert exc.value.code == 40300
    with pytest.raises(RtkitError) as exc:
        api.history(caller, "news", {}, h.now)
    assert exc.value.code == 40300
    assert body(api.presence(caller, "news")) == {"channel": "news", "members": []}
    api.caller(bearer(token), h.now)
    api.caller(bearer(token), h.now)
    with pytest.raises(RtkitError) as exc:
        api.caller(bearer(token), h.now)  # the fourth request within the burst of 3
    assert exc.value.code == 42900
    h.now += 1.0
    api.caller(bearer(token), h.now)  # refilled
    api.caller(basic(ROOT.value), h.now)  # another caller has its own rate
    with pytest.raises(RtkitError) as exc:
        api.caller(bearer(h.token(ttl=1)[:-3] + "abc"), h.now)
    assert exc.value.code == 40103


def test_history_pages_backwards_and_forwards() -> None:
    h = Harness(history_size=50)
    api = RestApi(h.core)

    def caller() -> Any:
        return api.caller(basic(ROOT.value), h.now)

    for i in range(1, 121):
        api.publish(caller(), "log", json.dumps({"name": "n", "data": i}).encode(), h.now)
    page = body(api.history(caller(), "log", {"limit": "10"}, h.now))
    assert [m["serial"] for m in page["messages"]] == list(range(111, 121))
    assert page["more"] is True and page["epoch"] == h.core.channels["log"].epoch
    older = body(api.history(caller(), "log", {"limit": "10", "before": "111"}, h.now))
    assert [m["serial"] for m in older["messages"]] == list(range(101, 111))
    first = body(api.history(caller(), "log", {"after": "0", "limit": "1000"}, h.now))
    assert [m["serial"] for m in first["messages"]] == list(range(1, 51))  # history_size
    assert first["more"] is True
    tail = body(api.history(caller(), "log", {"after": "115"}, h.now))
    assert [m["serial"] for m in tail["messages"]] == [116, 117, 118, 119, 120]
    assert tail["more"] is False
    none = body(api.history(caller(), "nothing-here", {}, h.now))
    assert none == {"channel": "nothing-here", "epoch": None, "more": False, "messages": []}
    for params in ({"limit": "0"}, {"limit": "x"}, {"before": "0"}, {"after": "-1"}):
        with pytest.raises(RtkitError) as exc:
            api.history(caller(), "log", params, h.now)
        assert exc.value.code == 40003


def test_history_pages_stop_at_a_frame_of_bytes() -> None:
    h = Harness(max_frame_size=70_000, max_message_size=60_000)
    api = RestApi(h.core)
    for _ in range(5):
        api.publish(api.caller(basic(ROOT.value), h.now), "big",
                    json.dumps({"name": "n", "data": "x" * 30_000}).encode(), h.now)
    page = body(api.history(api.caller(basic(ROOT.value), h.now), "big", {}, h.now))
    assert [m["serial"] for m in page["messages"]] == [4, 5] and page["more"] is True


def test_a_channel_stream_resumes_after_its_last_event_id() -> None:
    h = Harness()
    api = RestApi(h.core)
    for i in range(1, 6):
        api.publish(api.caller(basic(ROOT.value), h.now), "s",
                    json.dumps({"name": "n", "data": i}).encode(), h.now)
    epoch = h.core.channels["s"].epoch
    s = api.open_events(api.caller(basic(ROOT.value), h.now), "s", f"{epoch}:3", None, h.now)
    h.inbox[s], h.raw[s] = [], []
    h.core.pump(s)
    frames = h.take(s)
    assert frames[0]["action"] == "attached" and "lost" not in frames[0]
    assert [m["serial"] for f in frames[1:] for m in f["messages"]] == [4, 5]
    s2 = api.open_events(api.caller(basic(ROOT.value), h.now), "s", "other:3", None, h.now)
    h.inbox[s2], h.raw[s2] = [], []
    h.core.pump(s2)
    assert h.take(s2)[0]["lost"] is True  # another epoch: said so
    token = h.token(capabilities={"other": ["subscribe"]})
    with pytest.raises(RtkitError) as exc:
        api.open_events(api.caller(bearer(token), h.now), "s", None, None, h.now)
    assert exc.value.code == 40300
