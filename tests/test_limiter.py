"""AdaptiveLimiter: even pacing, never above the rate, halves on 429, recovers on success."""

from __future__ import annotations

import asyncio
import itertools

import anyio
import pytest

from harvester.emulator.faults import TokenBucket
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


async def test_429s_for_requests_sent_before_a_cut_cut_once() -> None:
    """429s for requests sent at the old pace halve the rate once; one sent after the cut again."""
    fake = FakeTime()
    limiter = AdaptiveLimiter(8.0, clock=fake.clock, sleep=fake.sleep)
    sent = [await limiter.acquire() for _ in range(3)]  # three sent at 8/s, all refused
    for at in sent:
        limiter.on_throttled(at)
    assert limiter.current_rate == 4.0
    fake.now += 0.01  # the cut lands after the last of them was sent
    limiter.on_throttled(sent[-1])
    assert limiter.current_rate == 4.0
    limiter.on_throttled(await limiter.acquire())  # sent at the new pace, refused too
    assert limiter.current_rate == 2.0
    assert limiter.configured_rate == 8.0 and limiter.measured_limit is None


async def test_throttle_floors_at_the_minimum_rate() -> None:
    """However many 429s, the rate never drops below the floor."""
    fake = FakeTime()
    limiter = AdaptiveLimiter(8.0, min_rate=0.5, clock=fake.clock, sleep=fake.sleep)
    for _ in range(20):
        limiter.on_throttled(await limiter.acquire())
    assert limiter.current_rate == 0.5


async def test_lowered_rate_widens_spacing_and_recovers_additively() -> None:
    """After a first 429 requests are spaced at half the rate; it climbs back with time."""
    fake = FakeTime()
    limiter = AdaptiveLimiter(10.0, clock=fake.clock, sleep=fake.sleep)
    async with limiter as sent_at:
        pass
    limiter.on_throttled(sent_at)
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
    for _ in range(6):
        fake.now += 1.0
        limiter.on_success()
        rates.append(limiter.current_rate)
    assert rates == sorted(rates) and rates[-1] == 10.0  # one 429 measures nothing: all the way back
    assert limiter.ceiling == 10.0


async def test_two_429s_measure_the_limit_and_the_rate_settles_below_it() -> None:
    """Accepted requests between two 429s over the time between: the limit;
    the rate drops to 90% of it, recovers to 97% of it and no further."""
    fake = FakeTime()
    limiter = AdaptiveLimiter(200.0, clock=fake.clock, sleep=fake.sleep)
    limiter.on_throttled(fake.now)  # the server's allowance is spent: nothing known yet
    assert limiter.current_rate == 100.0 and limiter.measured_limit is None
    for _ in range(80):  # 80 accepted in the next 2 s: the server refills 40/s
        fake.now += 2.0 / 80
        limiter.on_success()
    limiter.on_throttled(fake.now)
    assert limiter.measured_limit == pytest.approx(40.0)
    assert limiter.current_rate == pytest.approx(36.0)
    assert limiter.ceiling == pytest.approx(38.8)
    fake.now += 3600.0  # an hour of successes: no probing above the measured limit
    limiter.on_success()
    assert limiter.current_rate == pytest.approx(38.8)


async def test_a_measurement_counts_from_when_the_refused_requests_were_sent() -> None:
    """Answers read late (a busy event loop) do not skew the span: it runs send to send."""
    fake = FakeTime()
    limiter = AdaptiveLimiter(200.0, clock=fake.clock, sleep=fake.sleep)
    fake.now += 0.3  # the first 429 is read 0.3 s after its request went out at 1000.0
    limiter.on_throttled(1000.0)
    for _ in range(100):
        limiter.on_success()
    fake.now = 1002.1  # the second, sent at 1002.0, is read 0.1 s late
    limiter.on_throttled(1002.0)
    assert limiter.measured_limit == pytest.approx(50.0)  # 100 in 2.0 s, not in 1.8 s


async def test_answers_read_after_the_429_still_count_by_when_they_were_sent() -> None:
    """A 429 comes straight back while accepted answers wait for the origin: those sent
    inside the span count when they arrive, those sent before the first 429 never do."""
    fake = FakeTime()
    limiter = AdaptiveLimiter(200.0, clock=fake.clock, sleep=fake.sleep)
    limiter.on_throttled(1000.0)
    limiter.on_success(999.99)  # sent before the allowance ran out, answered after
    for i in range(40):
        limiter.on_success(1000.0 + (i + 1) / 50)  # sent through 1000.8
    fake.now = 1001.0
    limiter.on_throttled(1001.0)
    assert limiter.measured_limit == pytest.approx(40.0)  # 40 in 1 s: rough, no ceiling yet
    assert limiter.ceiling == 200.0
    for i in range(10):  # sent before the second 429, answered after it
        limiter.on_success(1000.8 + (i + 1) / 50)
    assert limiter.measured_limit == pytest.approx(50.0)
    assert limiter.ceiling == pytest.approx(48.5)  # 50 accepted: settled


async def test_a_rough_measurement_cuts_to_it_but_keeps_recovering() -> None:
    """Under 50 accepted between the 429s: the rate drops to 90% of the measurement but
    recovers past it, so the next 429 measures over a longer span."""
    fake = FakeTime()
    limiter = AdaptiveLimiter(200.0, clock=fake.clock, sleep=fake.sleep)
    limiter.on_throttled(fake.now)
    for _ in range(21):
        fake.now += 0.01
        limiter.on_success()
    limiter.on_throttled(fake.now)
    assert limiter.measured_limit == pytest.approx(21 / 0.21)
    assert limiter.current_rate == pytest.approx(0.9 * 21 / 0.21)
    assert limiter.ceiling == 200.0
    for _ in range(30):  # the next 429 measures from the first one: 51 accepted in 0.51 s
        fake.now += 0.01
        limiter.on_success()
    limiter.on_throttled(fake.now)
    assert limiter.measured_limit == pytest.approx(100.0)
    assert limiter.ceiling == pytest.approx(97.0)  # enough to settle on


async def test_a_measurement_spans_at_most_the_last_minute_of_429s() -> None:
    """The oldest 429 a measurement starts from is at most 60 s old."""
    fake = FakeTime()
    limiter = AdaptiveLimiter(100.0, clock=fake.clock, sleep=fake.sleep)
    limiter.on_throttled(fake.now)
    fake.now += 30.0
    limiter.on_throttled(fake.now)  # nothing accepted in between: measures nothing
    fake.now += 40.0  # the first 429 is now 70 s old
    for _ in range(100):
        limiter.on_success()
    limiter.on_throttled(fake.now)
    assert limiter.measured_limit == pytest.approx(100 / 40.0)


async def serve(limiter: AdaptiveLimiter, fake: FakeTime, server: TokenBucket,
                seconds: float) -> list[float]:
    """One caller sending back to back through ``limiter`` to ``server`` for ``seconds``;
    returns when (seconds into the run) each 429 came."""
    start, throttled = fake.now, []
    while fake.now - start < seconds:
        sent_at = await limiter.acquire()
        if server.take(sent_at) > 0:
            throttled.append(sent_at - start)
            limiter.on_throttled(sent_at)
        else:
            limiter.on_success(sent_at)
    return throttled


@pytest.mark.parametrize(("limit", "multiple", "seconds"), [
    (40.0, 1, 100.0), (40.0, 2, 100.0), (40.0, 5, 100.0), (40.0, 10, 100.0),
    (4.0, 2, 600.0), (4.0, 5, 600.0)])
async def test_above_a_token_buckets_limit_429s_die_out_early(
    limit: float, multiple: float, seconds: float
) -> None:
    """Configured at 1-10 x a token bucket's limit (burst: one second's worth), a run draws
    no 429 after its first 10% and at most 0.5% in all, and settles within 5% below the limit."""
    fake = FakeTime()
    limiter = AdaptiveLimiter(limit * multiple, clock=fake.clock, sleep=fake.sleep)
    server = TokenBucket(limit, burst=limit, now=fake.now)
    throttled = await serve(limiter, fake, server, seconds)
    assert not throttled or throttled[-1] < seconds / 10, throttled
    assert len(throttled) <= 0.005 * seconds * limit, throttled
    assert 0.95 * limit <= limiter.current_rate <= limit
    if multiple == 1:
        assert throttled == []
