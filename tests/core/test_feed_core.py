"""The feed core without sockets: parsing, bad frames, records, sequences, liveness, retries."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtkit.core.feed import BadFrame, FeedCore, FeedRecord, parser, to_millis
from rtkit.core.sequence import Duplicate, Gap, SequenceTracker, as_number, field
from rtkit.core.timing import Backoff
from rtkit.core.watch import FeedWatch, RetryPolicy
from rtkit.errors import LimitExceeded, ProtocolError

NOW = 1_700_000_000.0


def records(out: list[Any]) -> list[Any]:
    return [o.data for o in out if isinstance(o, FeedRecord)]


def test_json_is_the_default_and_bytes_work_too() -> None:
    core = FeedCore("t")
    assert records(core.receive('{"a": 1}', NOW)) == [{"a": 1}]
    assert records(core.receive(b'[1, 2]', NOW)) == [[1, 2]]  # one frame, one record
    assert core.frames == 2 and core.records == 2 and core.serial == 2


def test_ndjson_text_bytes_and_callables() -> None:
    assert records(FeedCore("t", "ndjson").receive('{"a":1}\n\n{"a":2}\r\n', NOW)) == [
        {"a": 1}, {"a": 2}]
    assert records(FeedCore("t", "text").receive(b"caf\xc3\xa9", NOW)) == ["café"]
    assert records(FeedCore("t", "bytes").receive(b"\x00\x01", NOW)) == [b"\x00\x01"]
    assert records(FeedCore("t", None).receive("as is", NOW)) == ["as is"]
    assert records(FeedCore("t", lambda raw: None).receive("x", NOW)) == []
    assert records(FeedCore("t", lambda raw: raw.split(",")).receive("a,b", NOW)) == ["a", "b"]
    assert records(FeedCore("t", lambda raw: ("a", "b")).receive("x", NOW)) == ["a", "b"]
    assert records(FeedCore("t", lambda raw: {"len": len(raw)}).receive("xyz", NOW)) == [
        {"len": 3}]
    with pytest.raises(ValueError):
        parser("yaml")  # type: ignore[arg-type]


@pytest.mark.parametrize(("parse", "payload", "code"), [
    ("json", "{not json", 40001),
    ("json", b"\xff\xfe", 40001),
    ("ndjson", '{"a":1}\n{oops', 40001),
    ("text", b"\xff", 40000),
    (lambda raw: 1 / 0 if raw == "x" else raw, "x", 40000),
    (lambda raw: json.loads(raw).get("ok"), "{", 40001),
])
def test_bad_frames_are_counted_kept_and_never_raise(parse: Any, payload: Any, code: int) -> None:
    core = FeedCore("t", parse)
    (bad,) = core.receive(payload, NOW)
    assert isinstance(bad, BadFrame) and isinstance(bad.error, ProtocolError)
    assert bad.error.code == code and bad.at == NOW
    raw = payload.encode() if isinstance(payload, str) else payload
    assert bad.raw == raw and bad.size == len(raw) and not bad.truncated
    assert core.bad_frame_count == 1 and list(core.bad_frames) == [bad] and core.records == 0
    assert len(records(core.receive('{"ok": true}', NOW))) == 1  # the feed goes on


def test_a_failing_parse_callable_names_its_exception() -> None:
    (bad,) = FeedCore("t", lambda raw: json.loads(raw)["missing"]).receive("{}", NOW)
    assert isinstance(bad, BadFrame) and "KeyError" in bad.error.message


def test_oversized_frames_keep_only_their_head_and_memory_is_bounded() -> None:
    core = FeedCore("t", max_frame_size=100, keep_bad_frames=3, keep_bytes=10)
    (bad,) = core.receive("é" * 200, NOW)
    assert isinstance(bad, BadFrame) and isinstance(bad.error, LimitExceeded)
    assert bad.error.code == 42902 and bad.size == 200 and len(bad.raw) == 10 and bad.truncated
    assert bad.text().startswith("ééééé")
    for i in range(10):
        core.receive(f"bad {i}", NOW)
    assert core.bad_frame_count == 11 and len(core.bad_frames) == 3
    assert core.bad_frames[-1].raw == b"bad 9"


def test_records_read_like_their_data_and_like_messages() -> None:
    core = FeedCore("ticker", timestamp="time")
    (rec,) = core.receive('{"price": 5, "time": "2023-11-14T22:13:20.5Z"}', NOW + 0.25,
                          name="trade", event_id="e7")
    assert isinstance(rec, FeedRecord)
    assert rec["price"] == 5 and rec.get("price") == 5 and rec.get("nope", 0) == 0
    assert "price" in rec and rec == {"price": 5, "time": "2023-11-14T22:13:20.5Z"}
    assert list(rec) == ["price", "time"] == list(rec.keys()) and len(rec) == 2
    assert dict(rec.items()) == rec.data and next(iter(rec.values())) == 5
    assert rec != {"price": 6}
    assert (rec.channel, rec.serial, rec.name, rec.event_id, rec.client_id) == (
        "ticker", 1, "trade", "e7", None)
    assert rec.id == "ticker#1" and rec.received == NOW + 0.25
    assert rec.timestamp == 1_700_000_000_500 and rec.source_time
    (plain,) = FeedCore("t").receive("3", NOW)
    assert isinstance(plain, FeedRecord)
    assert plain.timestamp == NOW * 1000 and not plain.source_time and plain.get("x") is None
    assert "x" not in plain and "FeedRecord t#1 3" in repr(plain) and bool(plain)


@pytest.mark.parametrize(("value", "millis"), [
    (1_700_000_000, 1_700_000_000_000),            # seconds
    (1_700_000_000.25, 1_700_000_000_250),
    (1_700_000_000_123, 1_700_000_000_123),        # milliseconds
    (1_700_000_000_123_456, 1_700_000_000_123),    # microseconds (Jetstream's time_us)
    (1_700_000_000_123_456_789, 1_700_000_000_123),  # nanoseconds
    ("1700000000", 1_700_000_000_000),
    ("2023-11-14T22:13:20Z", 1_700_000_000_000),
    ("2023-11-14T23:13:20.123456+01:00", 1_700_000_000_123),
    ("2023-11-14T22:13:20", None),                 # no zone: unknown, so no latency
    ("yesterday", None), (None, None), (True, None), (float("nan"), None), ({}, None),
])
def test_timestamps_in_any_common_unit(value: Any, millis: int | None) -> None:
    assert to_millis(value) == millis


def test_fields_and_numbers() -> None:
    assert field("a.b")({"a": {"b": 3}}) == 3 and field("a.b")({"a": 1}) is None
    assert field("a")([1]) is None and field(None) is None
    with pytest.raises(TypeError):
        field("")
    assert [as_number(v) for v in (5, "12", "x", 1.5, True, None)] == [5, 12, None, None,
                                                                     None, None]


# ------------------------------------------------------------------------ sequences


def test_a_skipped_and_a_repeated_number_are_reported_exactly_once() -> None:
    core = FeedCore("t", sequence="seq")
    frames = [{"seq": n} for n in (1, 2, 3, 6, 7, 7, 8, 5)] + [{"no": "seq"}]
    out = [o for f in frames for o in core.receive(json.dumps(f), NOW)]
    assert records(out) == [{"seq": n} for n in (1, 2, 3, 6, 7, 8)] + [{"no": "seq"}]
    gaps = [o for o in out if isinstance(o, Gap)]
    dups = [o for o in out if isinstance(o, Duplicate)]
    assert gaps == [Gap(None, 3, 6, NOW)] and gaps[0].missing == 2 and gaps[0].first_lost == 4
    assert str(gaps[0]) == "2 missed after 3 (next received: 6)"
    assert [(d.sequence, d.last_seen) for d in dups] == [(7, 7), (5, 8)]
    assert core.gaps == gaps and core.duplicates == 2 and core.records == 7
    assert out.index(gaps[0]) == out.index(next(o for o in out if isinstance(o, FeedRecord)
                                                and o.data == {"seq": 6})) - 1


def test_sequences_scoped_by_a_key() -> None:
    tracker = SequenceTracker("sequence", "product_id")
    seen = [tracker.check({"product_id": p, "sequence": n}, NOW)
            for p, n in [("BTC", 10), ("ETH", 1), ("BTC", 11), ("ETH", 3), ("BTC", 11)]]
    assert seen[:3] == [None, None, None]
    assert seen[3] == Gap("ETH", 1, 3, NOW) and str(seen[3]).startswith("ETH: 1 missed")
    assert isinstance(seen[4], Duplicate) and seen[4].key == "BTC"
    assert tracker.last == {"BTC": 11, "ETH": 3} and tracker.missing == 1
    weird = SequenceTracker(lambda r: r["n"], lambda r: r["k"])
    assert weird.check({"n": 1, "k": ["list", "key"]}, NOW) is None  # unhashable: its repr


def test_cursors_that_only_increase_report_duplicates_not_gaps() -> None:
    tracker = SequenceTracker("time_us", contiguous=False)
    verdicts = [tracker.check({"time_us": t}, NOW) for t in (100, 250, 250, 900, 120)]
    assert [type(v).__name__ for v in verdicts] == ["NoneType", "NoneType", "Duplicate",
                                                   "NoneType", "Duplicate"]
    assert not tracker.gaps and tracker.duplicates == 2


def test_sequence_key_needs_a_sequence() -> None:
    with pytest.raises(ValueError):
        FeedCore("t", sequence_key="product_id")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("ab"), st.integers(1, 30)), max_size=60))
def test_every_missed_number_is_in_exactly_one_gap(stream: list[tuple[str, int]]) -> None:
    core = FeedCore("t", sequence="n", sequence_key="k")
    delivered: dict[str, list[int]] = {"a": [], "b": []}
    gaps: list[Gap] = []
    for key, n in stream:
        for out in core.receive(json.dumps({"k": key, "n": n}), NOW):
            if isinstance(out, FeedRecord):
                delivered[key].append(out.data["n"])
            elif isinstance(out, Gap):
                gaps.append(out)
    for key, numbers in delivered.items():
        assert numbers == sorted(set(numbers))  # increasing, never twice
        if numbers:
            missed = set(range(numbers[0], numbers[-1] + 1)) - set(numbers)
            reported = [n for g in gaps if g.key == key
                        for n in range(g.first_lost, g.next_seen)]
            assert sorted(reported) == sorted(missed)  # each exactly once
    assert core.duplicates == len(stream) - sum(map(len, delivered.values()))


# ------------------------------------------------------------------------ liveness, retries


def test_watch_tells_a_dead_link_from_a_silent_feed() -> None:
    watch = FeedWatch(heartbeat=1.0, grace=0.5, max_silence=3.0)
    watch.start(100.0)
    assert not watch.ping_due(100.5) and watch.ping_due(101.0) and not watch.ping_due(101.5)
    assert watch.dead(101.4) is None
    assert "link dead" in (watch.dead(101.5) or "")
    watch.heard(101.4)  # pongs keep the link alive...
    watch.heard(102.8)
    assert watch.dead(102.9) is None
    why = watch.dead(103.1)  # ...but the data stopped at 100.0
    assert why is not None and "no data for 3.10 s" in why and "max_silence=3 s" in why
    watch.got_data(103.2)
    assert watch.dead(103.6) is None and watch.period == 0.25


def test_watch_can_be_switched_off_and_checks_its_values() -> None:
    watch = FeedWatch(heartbeat=None, grace=0.0, max_silence=None)
    watch.start(0.0)
    assert watch.dead(1e9) is None and not watch.ping_due(1e9) and watch.period == 1.0
    for bad in ({"heartbeat": 0.0}, {"max_silence": -1.0}, {"grace": -1.0}):
        with pytest.raises(ValueError):
            FeedWatch(**{"heartbeat": 1.0, "grace": 0.0, "max_silence": None, **bad})


def test_retry_policy_backs_off_honours_retry_and_gives_up_only_when_told() -> None:
    policy = RetryPolicy(Backoff(base=1.0, cap=8.0, jitter="none"), random.Random(1))
    assert [policy.delay() for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    policy.succeeded()
    policy.server_retry = 3.0  # an SSE retry: is a floor
    assert [policy.delay() for _ in range(3)] == [3.0, 3.0, 4.0]
    limited = RetryPolicy(Backoff(), random.Random(1), max_retries=2)
    assert limited.delay() is not None and limited.delay() is not None
    assert limited.delay() is None
    full = RetryPolicy(Backoff(base=1.0, cap=4.0), random.Random(7))
    waits = [full.delay() for _ in range(200)]
    assert all(w is not None and 0 <= w <= 4.0 for w in waits)
    assert len({round(w or 0, 6) for w in waits}) > 150  # full jitter: spread out
    with pytest.raises(ValueError):
        RetryPolicy(Backoff(), random.Random(), max_retries=-1)
