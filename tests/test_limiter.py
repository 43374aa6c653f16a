"""AdaptiveLimiter: even pacing, never above the rate, halves on 429, recovers on success."""

from __future__ import annotations

import asyncio
import itertools

import anyio
import pytest

from harvester.limiter import AdaptiveLimiter


class FakeTime:
    """A clock that only moves when a sleeper sleeps (one sequential caller)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        self.now += delay
        await asyncio.sleep(0)


def max_in_any_window(starts: list[float], width: float = 1.0) -> int:
    """Most starts inside any half-open window [t, t + width), t being a start."""
    eps = 1e-9  # float sums of 1/rate land a hair either side of the boundary
    ordered = sorted(starts)
    return max(sum(1 for s in ordered if t <= s < t + width - eps) for t in ordered)


async def test_sequential_requests_never_exceed_rate_in_any_second() -> None:
    """50 back-to-back acquisitions at 5/s: evenly spaced, at most 5 in any 1 s window."""
    fake = FakeTime()
    limiter = AdaptiveLimiter(5.0, clock=fake.clock, sleep=fake.sleep)
    starts: list[float] = []
    for _ in range(50):
        async with limiter:
            starts.append(fake.now)
    assert max_in_any_window(starts) == 5
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert all(gap == pytest.approx(0.2) for gap in gaps)


async def test_concurrent_callers_get_distinct_evenly_spaced_slots() -> None:
    """32 concurrent callers reserve slots 1/rate apart: no burst, FIFO order."""
    fake = FakeTime()
    waits: list[float] = []

    async def record(delay: float) -> None:  # concurrent: the clock stands still
        waits.append(delay)
        await asyncio.sleep(0)

    limiter = AdaptiveLimiter(4.0, clock=fake.clock, sleep=record)
    async with anyio.create_task_group() as tg:
        for _ in range(32):
            tg.start_soon(limiter.acquire)
    starts = [fake.now, *(fake.now + w for w in waits)]  # the first caller did not wait
    assert len(starts) == 32
    assert max_in_any_window(starts) == 4
    assert sorted(waits) == pytest.approx([0.25 * n for n in range(1, 32)])


async def test_throttle_halves_the_rate_once_per_second_of_429s() -> None:
    """A burst of 429s within one second halves the rate once; a later one halves it again."""
    fake = FakeTime()
    limiter = AdaptiveLimiter(8.0, clock=fake.clock, sleep=fake.sleep)
    for _ in range(10):
        limiter.on_throttled()
    assert limiter.current_rate == 4.0
    fake.now += 1.5
    limiter.on_throttled()
    assert limiter.current_rate == 2.0
    assert limiter.configured_rate == 8.0


async def test_throttle_floors_at_the_minimum_rate() -> None:
    """However many 429s, the rate never drops below the floor."""
    fake = FakeTime()
    limiter = AdaptiveLimiter(8.0, min_rate=0.5, clock=fake.clock, sleep=fake.sleep)
    for _ in range(20):
        limiter.on_throttled()
        fake.now += 2
    assert limiter.current_rate == 0.5


async def test_lowered_rate_widens_spacing_and_recovers_additively() -> None:
    """After a 429 requests are spaced at the lower rate; the rate climbs back with time."""
    fake = FakeTime()
    limiter = AdaptiveLimiter(10.0, clock=fake.clock, sleep=fake.sleep)
    async with limiter:
        pass
    limiter.on_throttled()
    cut_at = fake.now
    assert limiter.current_rate == 5.0
    async with limiter:
        pass
    async with limiter:
        pass
    assert fake.sleeps[-1] == pytest.approx(1 / 5.0)
    for _ in range(50):  # a burst of quick successes cannot undo the cut at once
        limiter.on_success()
    assert limiter.current_rate == pytest.approx(5.0 + (fake.now - cut_at) * 1.0)  # 10 %/s
    assert limiter.current_rate < 6.0
    rates = []
    for _ in range(8):
        fake.now += 1.0
        limiter.on_success()
        rates.append(limiter.current_rate)
    assert rates == sorted(rates) and 9.0 < rates[-1] < 9.5  # quick to 9, then 0.1/s
    assert limiter.ceiling == 9.0  # 90% of the rate the 429 came at
    fake.now += 10.0
    limiter.on_success()
    assert limiter.current_rate == 10.0


async def test_recovery_above_the_429_rate_is_ten_times_slower() -> None:
    """Quick recovery stops below the rate that drew the 429; above it the rate creeps."""
    fake = FakeTime()
    limiter = AdaptiveLimiter(100.0, clock=fake.clock, sleep=fake.sleep)
    for _ in range(3):  # 100 -> 50 -> 25 -> 12.5, each cut one cooldown apart
        limiter.on_throttled()
        fake.now += 1.0
    assert limiter.ceiling == pytest.approx(22.5)  # 90% of 25, the rate of the last 429
    limiter.on_success()  # 1 s at 10/s, but no further than the ceiling
    assert limiter.current_rate == pytest.approx(22.5)
    fake.now += 1.0
    limiter.on_success()
    assert limiter.current_rate == pytest.approx(23.5)  # 1/s above the ceiling


async def test_a_cut_respaces_callers_already_waiting() -> None:
    """A caller asleep on a slot reserved at the old pace waits for a slot at the new one."""
    fake = FakeTime()

    async def sleep(delay: float) -> None:
        if not fake.sleeps:
            limiter.on_throttled()  # a 429 lands while the caller waits: rate 10 -> 5
        await fake.sleep(delay)

    limiter = AdaptiveLimiter(10.0, clock=fake.clock, sleep=sleep)
    start = fake.now
    await limiter.acquire()  # starts at once; the next slot was start + 0.1
    await limiter.acquire()
    assert fake.now - start == pytest.approx(0.2)  # not 0.1: that slot was given up
    assert fake.sleeps == pytest.approx([0.1, 0.1])


def test_rate_must_be_positive() -> None:
    """A zero rate is a programming error, refused at construction."""
    with pytest.raises(ValueError, match="greater than 0"):
        AdaptiveLimiter(0)


async def test_a_late_wake_up_never_bunches_more_than_the_rate_into_a_second() -> None:
    """A caller woken 150 ms late does not let the callers behind it exceed 5 in any second."""
    fake = FakeTime()
    late_once = iter([0.15])

    async def sleep_late(delay: float) -> None:  # the first sleep overshoots, as a busy loop's might
        fake.now += delay + next(late_once, 0.0)
        await asyncio.sleep(0)

    limiter = AdaptiveLimiter(5.0, clock=fake.clock, sleep=sleep_late)
    starts: list[float] = []
    for _ in range(20):
        async with limiter:
            starts.append(fake.now)
    assert starts[1] == pytest.approx(1000.35)  # the late one
    assert max_in_any_window(starts) == 5
