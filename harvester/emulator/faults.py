"""Misbehaviour on purpose: a token-bucket rate limit and random failure injection."""

from __future__ import annotations

import random
from email.utils import formatdate

# Per request to /api/*: (probability, fault kind). "slow" stalls for slow_s.
PROFILES: dict[str, tuple[tuple[float, str], ...]] = {
    "none": (),
    "flaky": (
        (0.01, "500"),
        (0.01, "502"),
        (0.01, "503"),
        (0.007, "reset"),
        (0.007, "empty"),
        (0.006, "truncated"),
    ),
    "hostile": (
        (0.03, "500"),
        (0.03, "502"),
        (0.03, "503"),
        (0.03, "reset"),
        (0.03, "empty"),
        (0.03, "truncated"),
        (0.02, "slow"),
    ),
}


class TokenBucket:
    """Allows `rate` requests/s on average and bursts of `burst`."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst  # starts full: a fresh client may burst at once
        self._at = now

    def take(self, now: float) -> float:
        """0.0 if a request may go now, else the seconds until one may."""
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate


def retry_after_value(style: str, wait: float, now: float) -> str | None:
    """The Retry-After header a style sends (None: the Cloudflare edge sends none)."""
    if style == "retry-after":
        return str(max(1, int(wait + 0.999)))
    if style == "http-date":
        return formatdate(now + max(1.0, wait), usegmt=True)
    return None


class FaultInjector:
    """Draws, per request, whether and how it fails; seeded so runs repeat."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed ^ 0x5EED)

    def draw(self, profile: str) -> str | None:
        table = PROFILES[profile]
        if not table:
            return None
        roll = self._rng.random()
        for chance, kind in table:
            if roll < chance:
                return kind
            roll -= chance
        return None
