"""Continuity tracker, publish outbox, recovery keys, fault plan, renewal time: pure logic."""

from __future__ import annotations

import random

import pytest

from rtkit.core.continuity import Tracker, Verdict
from rtkit.core.faults import FaultPlan, Pipe, is_websocket_upgrade
from rtkit.core.frames import Attached, Message
from rtkit.core.outbox import Outbox
from rtkit.core.recovery import RecoveryKey
from rtkit.core.tokens import renewal_time
from rtkit.errors import LimitExceeded, ProtocolError


def msg(serial: int, mid: str | None = None) -> Message:
    return Message(mid or f"m{serial}", "c", "n", None, serial, 0)


def attached(serial: int, epoch: str = "e1", lost: bool = False,
             lost_from: int | None = None, lost_to: int | None = None) -> Attached:
    return Attached(channel="c", serial=serial, epoch=epoch, lost=lost, lost_from=lost_from,
                    lost_to=lost_to)


def test_tracker_delivers_in_order_and_drops_duplicates() -> None:
    t = Tracker("c")
    assert t.attached(attached(0), resuming=False, now=0) is None
    verdicts = []
    for m in (msg(1), msg(2), msg(2), msg(1), msg(3, "m2"), msg(3)):
        v = t.check(m)
        verdicts.append(v)
        if v is Verdict.DELIVER:
            t.accept(m)
    assert verdicts == [Verdict.DELIVER, Verdict.DELIVER, Verdict.DUPLICATE, Verdict.DUPLICATE,
                        Verdict.SEEN, Verdict.DELIVER]
    assert t.serial == 3 and t.resume_point == 3


def test_tracker_reports_gaps() -> None:
    t = Tracker("c")
    t.attached(attached(10), resuming=False, now=0)
    assert t.check(msg(11)) is Verdict.DELIVER
    assert t.check(msg(13)) is Verdict.GAP


def test_resume_that_fell_short_reports_the_lost_range_and_continues_after_it() -> None:
    t = Tracker("c")
    t.attached(attached(4), resuming=False, now=0)
    t.accept(msg(5))
    loss = t.attached(attached(40, lost=True, lost_from=6, lost_to=29), resuming=True, now=9)
    assert loss is not None
    assert (loss.first_lost, loss.last_lost, loss.last_seen, loss.at) == (6, 29, 5, 9)
    assert loss.epoch == "e1"
    assert t.check(msg(30)) is Verdict.DELIVER  # the replay starts right after the loss


def test_a_loss_of_unknown_extent_takes_the_next_message_as_the_base() -> None:
    t = Tracker("c")
    t.attached(attached(4), resuming=False, now=0)
    loss = t.attached(attached(40, lost=True, lost_from=5), resuming=True, now=9)
    assert loss is not None and loss.last_lost is None
    assert t.check(msg(31)) is Verdict.DELIVER
    t.accept(msg(31))
    assert t.check(msg(33)) is Verdict.GAP  # and strict again afterwards


def test_new_epoch_is_a_loss_of_the_rest_of_the_old_one() -> None:
    t = Tracker("c")
    t.attached(attached(3, epoch="old"), resuming=False, now=0)
    loss = t.attached(attached(0, epoch="new", lost=True), resuming=True, now=1)
    assert loss is not None and "epoch" in loss.reason
    assert (loss.first_lost, loss.last_lost, loss.epoch) == (4, None, "old")
    assert t.epoch == "new" and t.serial == 0


def test_a_detach_on_purpose_forgets_the_position() -> None:
    t = Tracker("c")
    t.attached(attached(7), resuming=False, now=0)
    t.reset()
    assert t.resume_point is None


def test_outbox_order_resend_bytes_and_bound() -> None:
    box = Outbox(max_bytes=400)
    a, b = box.add("c", "n", "1", "a", op=1), box.add("c", "n", "2", "b", op=2)
    assert [e.id for e in box.take_sendable(0.0)] == ["a", "b"]
    box.mark_sent(a, 1)
    box.mark_sent(b, 2)
    assert box.take_sendable(0.0) == []
    assert box.by_ref(1) is a
    box.remove(a)
    assert box.by_ref(1) is None and box.by_op(1) is None
    c = box.add("c", "n", "3", "c", op=3)
    box.transport_lost()  # b was sent but not acked: goes again, before c
    assert [e.id for e in box.take_sendable(0.0)] == ["b", "c"]
    box.mark_sent(b, 3)
    assert box.resent == 1 and box.by_ref(3) is b and box.by_ref(2) is None
    assert b.frame(3) == '{"action":"publish","ref":3,"channel":"c","name":"n","data":2,' \
                         '"id":"b"}'
    with pytest.raises(LimitExceeded) as info:
        box.add("c", "n", '"' + "x" * 400 + '"', "e", op=5)
    assert info.value.code == 42905
    assert box.bytes == sum(e.size for e in (b, c))
    assert [e.id for e in box.take_all()] == ["b", "c"] and len(box) == 0 and box.bytes == 0
    box.remove(c)  # removing twice is harmless


def test_recovery_key_round_trip_and_garbage() -> None:
    key = RecoveryKey("c1!secret", {"a": (5, "e1"), "b:x": (0, None)})
    assert RecoveryKey.decode(key.encode()) == key
    for bad in ("", "!!!", "eyJ2IjoyfQ", RecoveryKey("k", {}).encode()[:-3]):
        with pytest.raises(ProtocolError) as info:
            RecoveryKey.decode(bad)
        assert info.value.code == 40003


def test_fault_plan_windows() -> None:
    plan = FaultPlan()
    plan.blackhole(3, now=10)
    plan.refuse(2, now=10)
    assert plan.blackholed(12.9) and not plan.blackholed(13)
    assert plan.refusing(11.9) and not plan.refusing(12)
    plan.blackhole(1, now=10)  # a shorter request does not shorten the window
    assert plan.blackholed(12.5)
    assert plan.describe(12)["blackhole_s"] == 1.0
    plan.heal()
    assert not plan.blackholed(10.5)


def test_pipe_latency_jitter_keeps_order_and_bandwidth_paces() -> None:
    plan = FaultPlan(latency=0.1, jitter=0.05)
    pipe, rng = Pipe(), random.Random(1)
    times = [pipe.schedule(100, now=i * 0.001, plan=plan, rng=rng) for i in range(200)]
    assert times == sorted(times)
    assert all(t >= i * 0.001 + 0.05 for i, t in enumerate(times))
    plan = FaultPlan(bandwidth=1000.0)
    pipe = Pipe()
    assert [pipe.schedule(500, 0.0, plan, rng) for _ in range(4)] == [0.5, 1.0, 1.5, 2.0]


def test_websocket_upgrade_detection() -> None:
    assert is_websocket_upgrade(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n")
    assert not is_websocket_upgrade(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert not is_websocket_upgrade(b"\x16\x03\x01garbage")


def test_renewal_time() -> None:
    assert renewal_time(0, 3600) == 3570  # 30 s early at most
    assert renewal_time(100, 103) == pytest.approx(102)  # a third of the lifetime early
    assert renewal_time(5, 5) == 5
