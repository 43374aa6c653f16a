"""One request pacer per run, shared by every request (data and auth).

Requests are spaced evenly, one every ``1 / current_rate`` seconds, so no
one-second window holds more than ``configured_rate`` requests and there are
no bursts. Successes add rate back linearly over time, so a burst of quick
successes cannot undo a cut at once.

A 429 says the server's allowance is spent, and the rate is cut (once per round
trip: a 429 for a request sent before the last cut describes the same event). A
token-bucket server with its allowance spent at two 429s has accepted exactly
its limit in between, whatever the client sent: so the accepted requests sent
between the first 429 of the last minute and this one, over the time between
them (send times throughout), measure the server's real limit, within one
request (the allowance left at each end was under one). Against a windowed
counter (Cloudflare's rules) the same count erred low in simulation. That
measurement, not the pace the 429 came at (which is above the limit once the
server's burst is spent), sets where the rate goes:

- no measurement yet (first 429): the rate halves and recovers quickly;
- a rough one (fewer than ``DEFAULT_SETTLED_ACCEPTED`` requests between the
  429s, so the one request of doubt weighs over 2%): the rate drops to 90% of
  it and recovers quickly, so the next 429 comes soon and measures over a
  longer span;
- a settled one: the rate drops to 90% of it, recovers to 97% of it and stays
  there. It does not probe above: every probe would end in a 429, and repeated
  429s are how Cloudflare's 1015 blocks begin.

Why not ``aiolimiter.AsyncLimiter`` (the dependency first chosen for this): its
rate is fixed at construction (``_rate_per_sec`` is private), a bucket with room
for more than one request allows bursts, and swapping buckets to change the rate
lets a request through at every swap. This is the same leaky bucket with
capacity one, whose drip interval may change.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from types import TracebackType

DEFAULT_MIN_RATE = 0.2  # requests/s: never slower than one request per 5 s
DEFAULT_RECOVERY_S = 10.0  # time for successes to climb from zero back to the configured rate
DEFAULT_MEASURE_SPAN_S = 60.0  # a 429 measures the limit from the oldest 429 this recent
DEFAULT_MEASURE_MIN_ACCEPTED = 10  # fewer accepted between two 429s measure nothing
DEFAULT_SETTLED_ACCEPTED = 50  # this many make a measurement to settle on: within 2%
DEFAULT_BACKOFF_FRACTION = 0.9  # after a measured 429 the rate drops to this share of the limit
DEFAULT_SETTLE_FRACTION = 0.97  # and recovers to this share of it, no further


class AdaptiveLimiter:
    """Even pacing at a rate that drops on 429 and recovers on success."""

    def __init__(
        self,
        rate: float,
        *,
        min_rate: float = DEFAULT_MIN_RATE,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,  # anyio's adds a lookup per call
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be greater than 0")
        self.configured_rate = rate
        self._rate = rate  # current pace; only ever between _min_rate and configured_rate
        self._min_rate = min(min_rate, rate)
        self._recovery_per_s = rate / DEFAULT_RECOVERY_S
        self._clock = clock
        self._sleep = sleep
        # Start time reserved by the most recent caller plus one interval: the
        # earliest the next caller may go. Reserving synchronously keeps FIFO order.
        self._next_slot = float("-inf")
        self._last_cut = float("-inf")  # when on_throttled last lowered the rate
        self._last_change = 0.0  # when the rate last moved (cut or recovery)
        self._ceiling = rate  # recovery stops here: the configured rate, or just below the limit
        self._cuts = 0  # bumped by every cut, so sleeping callers know to re-space
        # Send times of the refused requests that cut the rate in the last
        # DEFAULT_MEASURE_SPAN_S: moments the server's allowance was spent.
        self._spent: deque[float] = deque()
        self._accepted_at: deque[float] = deque()  # send times of accepted requests after them
        self._span = (0.0, 0.0)  # the oldest and newest of those 429s: what is measured
        self._span_accepted = 0  # accepted requests sent inside the span
        self.measured_limit: float | None = None  # the server's limit, once 429s measured it
        # Release times of the last floor(rate) callers: the window check's memory.
        self._window_size = max(1, math.floor(rate))
        self._released: deque[float] = deque(maxlen=self._window_size)
        # asyncio's lock: uncontended (the usual case) it does not yield to the
        # event loop, where anyio's Lock always does, once per request.
        self._window_turn = asyncio.Lock()
        self._window_users = 0  # callers holding or awaiting _window_turn

    @property
    def current_rate(self) -> float:
        return self._rate

    @property
    def ceiling(self) -> float:
        return self._ceiling

    async def acquire(self) -> float:
        """Wait for this caller's slot, then for room in the last second's window.

        Returns the release time, for ``on_throttled`` to tell which pace a 429 answers."""
        cuts = self._cuts
        now = self._clock()
        slot = max(now, self._next_slot)
        self._next_slot = slot + 1.0 / self._rate
        if slot > now:  # the usual case at a rate above the run's pace does not get here
            slot = await self._paced(slot, now, cuts)
        return await self._within_window(slot)

    async def _paced(self, slot: float, now: float, cuts: int) -> float:
        """Sleep until ``slot``, taken at ``now``; take a new slot if the rate was cut
        while waiting. Returns the slot."""
        while True:
            await self._sleep(slot - now)
            if self._cuts == cuts:
                return slot
            cuts = self._cuts
            now = self._clock()
            slot = max(now, self._next_slot)
            self._next_slot = slot + 1.0 / self._rate
            if slot <= now:
                return slot

    async def _within_window(self, slot: float) -> float:
        """Never more than ``configured_rate`` releases in any second.

        Pacing reserves slots ahead, so a caller that wakes late goes out close to
        the next one; checking release times (the later of slot and clock) keeps
        such bunching from ever putting more than a second's worth into a second.
        While nobody holds or awaits the lock and the window has room, check and
        record run without it: nothing else can run in between, as under a free lock.
        """
        if self._window_users:
            return await self._window_turn_for(slot, None)
        released = max(self._clock(), slot)
        if len(self._released) == self._window_size and released < self._released[0] + 1.0:
            return await self._window_turn_for(slot, released)  # the lock is free: no yield
        self._released.append(released)
        return released

    async def _window_turn_for(self, slot: float, released: float | None) -> float:
        """``_within_window`` under the lock, waiting for room; ``released``: the
        release time already read by a caller that found the lock free."""
        self._window_users += 1
        try:
            async with self._window_turn:  # one at a time: check and record are one step
                if released is None:
                    released = max(self._clock(), slot)
                if len(self._released) == self._window_size:
                    room_at = self._released[0] + 1.0
                    if released < room_at:
                        await self._sleep(room_at - released)
                        released = max(self._clock(), room_at)
                self._released.append(released)
        finally:
            self._window_users -= 1
        return released

    def on_throttled(self, sent_at: float | None = None) -> None:
        """The server said slow down: measure its limit and cut the rate, once per round trip.

        ``sent_at`` is the release time ``acquire`` returned for the request that
        drew the 429 (None: unknown, taken as now); one sent before the last cut
        describes the same event."""
        now = self._clock()
        sent_at = now if sent_at is None else sent_at
        if sent_at <= self._last_cut:
            return
        self._last_cut = self._last_change = now
        spent, accepted_at = self._spent, self._accepted_at
        while spent and now - spent[0] > DEFAULT_MEASURE_SPAN_S:
            spent.popleft()
        spent.append(sent_at)
        while accepted_at and accepted_at[0] <= spent[0]:
            accepted_at.popleft()
        # Send times, not the times answers were read: a 429 comes straight from the
        # edge while an accepted request's answer waits for the origin, and a busy
        # event loop reads answers late.
        self._span = (spent[0], sent_at)
        self._span_accepted = sum(1 for t in accepted_at if spent[0] < t <= sent_at)
        if self._measure():
            assert self.measured_limit is not None
            target = self.measured_limit * DEFAULT_BACKOFF_FRACTION
        else:
            target = self._rate / 2
        self._rate = max(self._min_rate, min(self._rate, target))
        self._cuts += 1
        self._next_slot = now + 1.0 / self._rate  # waiting callers re-queue behind this

    def _measure(self) -> bool:
        """The server's limit from the requests it accepted that were sent between the
        oldest and newest 429 of the span: False if too few were to tell."""
        first, last = self._span
        if self._span_accepted < DEFAULT_MEASURE_MIN_ACCEPTED or last <= first:
            return False
        # The allowance left at each 429 was under one request: this is within one
        # request of what the server refilled in between.
        self.measured_limit = self._span_accepted / (last - first)
        if self._span_accepted >= DEFAULT_SETTLED_ACCEPTED:
            self._ceiling = max(self._min_rate, min(
                self.configured_rate, self.measured_limit * DEFAULT_SETTLE_FRACTION))
        return True

    def on_success(self, sent_at: float | None = None) -> None:
        """The server accepted a request (any answer but 429) sent at ``sent_at`` (None:
        now): after a 429, remember it for measuring; recover linearly."""
        if self._spent:
            at = self._clock() if sent_at is None else sent_at
            self._accepted_at.append(at)
            first, last = self._span
            if first < at <= last:  # answered after the 429 that closed the span
                self._span_accepted += 1
                self._measure()
        if self._rate >= self._ceiling:
            return
        now = self._clock()
        self._rate = min(self._ceiling, self._rate + (now - self._last_change) * self._recovery_per_s)
        self._last_change = now

    async def __aenter__(self) -> float:
        return await self.acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def __repr__(self) -> str:
        return (
            f"<AdaptiveLimiter current_rate={self._rate:.3g}/s "
            f"configured_rate={self.configured_rate:.3g}/s>"
        )
