"""Backoff, liveness and rate limits: deterministic with a seeded random source."""

from __future__ import annotations

import itertools
import random

import pytest

from rtkit.core.timing import Backoff, Liveness, TokenBucket


class Fixed:
    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


def test_ceiling_grows_then_caps() -> None:
    b = Backoff(base=0.5, cap=4.0)
    assert [b.ceiling(n) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert b.ceiling(10_000) == 4.0  # no overflow


def test_jitter_modes() -> None:
    assert Backoff(base=1, cap=8, jitter="none").delay(2, Fixed(0.3)) == 4.0
    assert Backoff(base=1, cap=8, jitter="full").delay(2, Fixed(0.25)) == 1.0
    assert Backoff(base=1, cap=8, jitter="equal").delay(2, Fixed(0.5)) == 3.0


def test_seeded_schedule_is_reproducible_and_bounded() -> None:
    b = Backoff(base=0.1, cap=2.0)
    one = list(itertools.islice(b.delays(random.Random(42)), 20))
    two = list(itertools.islice(b.delays(random.Random(42)), 20))
    assert one == two
    assert all(0 <= d <= b.ceiling(i) for i, d in enumerate(one))


def test_full_jitter_spreads_a_crowd() -> None:
    b = Backoff(base=1, cap=1)
    rng = random.Random(7)
    delays = [b.delay(0, rng) for _ in range(1000)]
    assert min(delays) < 0.05 and max(delays) > 0.95


@pytest.mark.parametrize("kwargs", [{"base": 0}, {"base": 2, "cap": 1}, {"factor": 0.5},
                                    {"jitter": "lots"}])
def test_backoff_rejects_bad_settings(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)  # type: ignore[arg-type]


def test_liveness() -> None:
    live = Liveness(interval=1.0, grace=0.5, last_heard=10.0)
    assert not live.is_dead(11.4)
    assert live.is_dead(11.5)
    live.heard(11.4)
    assert live.deadline == pytest.approx(12.9)


def test_token_bucket() -> None:
    bucket = TokenBucket(rate=10, burst=3)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.1)  # one token back after 0.1 s at 10/s
    assert not bucket.take(0.1)
    assert bucket.take(100.0)
    assert bucket.tokens <= 3
    with pytest.raises(ValueError):
        TokenBucket(rate=0, burst=1)
