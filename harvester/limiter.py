"""One request pacer per run, shared by every request (data and auth).

Requests are spaced evenly, one every ``1 / current_rate`` seconds, so no
one-second window holds more than ``configured_rate`` requests and there are
no bursts. A 429 halves the rate (at most once per cooldown, because a flood of
429s describes one event); successes add it back linearly over time (AIMD), so a
burst of quick successes cannot undo a cut at once.

The rate a 429 came at is too fast, so recovery is quick only up to a ceiling
just below it; above the ceiling the rate creeps up ten times slower, probing
whether the server's limit has risen. Without the ceiling a run configured
above the server's limit would climb straight back into it every few seconds;
with it the 429s die out after a few cuts. A cut also re-spaces callers already
waiting, so slots reserved at the old pace are not spent into the same wall.

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
DEFAULT_THROTTLE_COOLDOWN_S = 1.0
DEFAULT_RECOVERY_S = 10.0  # time for successes to climb from zero back to the configured rate
DEFAULT_CEILING_FRACTION = 0.9  # quick recovery stops at this share of the rate a 429 came at
DEFAULT_PROBE_SLOWDOWN = 10.0  # above that ceiling, recovery is this many times slower


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
        self._ceiling = rate  # quick recovery stops here: just below the last 429's rate
        self._cuts = 0  # bumped by every cut, so sleeping callers know to re-space
        # Release times of the last floor(rate) callers: the window check's memory.
        self._released: deque[float] = deque(maxlen=max(1, math.floor(rate)))
        # asyncio's lock: uncontended (the usual case) it does not yield to the
        # event loop, where anyio's Lock always does, once per request.
        self._window_turn = asyncio.Lock()

    @property
    def current_rate(self) -> float:
        return self._rate

    @property
    def ceiling(self) -> float:
        return self._ceiling

    async def acquire(self) -> None:
        """Wait for this caller's slot, then for room in the last second's window."""
        slot = await self._paced()
        await self._within_window(slot)

    async def _paced(self) -> float:
        """Even pacing; take a new slot if the rate was cut while waiting. Returns the slot."""
        while True:
            cuts = self._cuts
            now = self._clock()
            slot = max(now, self._next_slot)
            self._next_slot = slot + 1.0 / self._rate
            if slot <= now:
                return slot
            await self._sleep(slot - now)
            if self._cuts == cuts:
                return slot

    async def _within_window(self, slot: float) -> None:
        """Never more than ``configured_rate`` releases in any second.

        Pacing reserves slots ahead, so a caller that wakes late goes out close to
        the next one; checking release times (the later of slot and clock) keeps
        such bunching from ever putting more than a second's worth into a second.
        """
        async with self._window_turn:  # one at a time: check and record are one step
            released = max(self._clock(), slot)
            if len(self._released) == self._released.maxlen:
                room_at = self._released[0] + 1.0
                if released < room_at:
                    await self._sleep(room_at - released)
                    released = max(self._clock(), room_at)
            self._released.append(released)

    def on_throttled(self) -> None:
        """The server said slow down: halve the pace, once per cooldown."""
        now = self._clock()
        if now - self._last_cut < DEFAULT_THROTTLE_COOLDOWN_S:
            return
        self._last_cut = self._last_change = now
        self._ceiling = max(self._min_rate, self._rate * DEFAULT_CEILING_FRACTION)
        self._rate = max(self._min_rate, self._rate / 2)
        self._cuts += 1
        self._next_slot = now + 1.0 / self._rate  # waiting callers re-queue behind this

    def on_success(self) -> None:
        """Additive recovery in proportion to time elapsed: quick to the ceiling, slow above."""
        if self._rate >= self.configured_rate:
            return
        now = self._clock()
        elapsed = now - self._last_change
        self._last_change = now
        if self._rate < self._ceiling:
            self._rate = min(self._ceiling, self._rate + elapsed * self._recovery_per_s)
        else:
            slow = self._recovery_per_s / DEFAULT_PROBE_SLOWDOWN
            self._rate = min(self.configured_rate, self._rate + elapsed * slow)

    async def __aenter__(self) -> None:
        await self.acquire()

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
