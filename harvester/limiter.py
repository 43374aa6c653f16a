"""One request pacer per run, shared by every request (data and auth).

Requests are spaced evenly, one every ``1 / current_rate`` seconds, so no
one-second window holds more than ``configured_rate`` requests and there are
no bursts. A 429 halves the rate (at most once per cooldown, because a flood of
429s describes one event); successes add it back linearly over time (AIMD), so a
burst of quick successes cannot undo a cut at once.

Why not ``aiolimiter.AsyncLimiter`` directly: its rate is fixed at construction,
and swapping buckets to change it lets a request through at every swap. This is
the same leaky bucket with capacity one, whose drip interval may change.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from types import TracebackType

import anyio

DEFAULT_MIN_RATE = 0.2  # requests/s: never slower than one request per 5 s
DEFAULT_THROTTLE_COOLDOWN_S = 1.0
DEFAULT_RECOVERY_S = 10.0  # time for successes to climb from zero back to the configured rate


class AdaptiveLimiter:
    """Even pacing at a rate that drops on 429 and recovers on success."""

    def __init__(
        self,
        rate: float,
        *,
        min_rate: float = DEFAULT_MIN_RATE,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
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

    @property
    def current_rate(self) -> float:
        return self._rate

    async def acquire(self) -> None:
        """Wait for this caller's slot."""
        now = self._clock()
        slot = max(now, self._next_slot)
        self._next_slot = slot + 1.0 / self._rate
        if slot > now:
            await self._sleep(slot - now)

    def on_throttled(self) -> None:
        """The server said slow down: halve the pace, once per cooldown."""
        now = self._clock()
        if now - self._last_cut < DEFAULT_THROTTLE_COOLDOWN_S:
            return
        self._last_cut = self._last_change = now
        self._rate = max(self._min_rate, self._rate / 2)

    def on_success(self) -> None:
        """Additive recovery toward the configured rate, in proportion to time elapsed."""
        if self._rate >= self.configured_rate:
            return
        now = self._clock()
        gained = (now - self._last_change) * self._recovery_per_s
        self._rate = min(self.configured_rate, self._rate + gained)
        self._last_change = now

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
