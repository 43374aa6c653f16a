"""What the emulator saw: counts per endpoint, id, status and fault, for tests to assert on."""

from __future__ import annotations

import time
from array import array
from collections import Counter, defaultdict
from typing import Any

# Endpoints whose per-id counts are kept (to check "fetched once").
BY_ID_ENDPOINTS = frozenset({"workout", "performance_graph", "ride", "ride_details", "instructor"})


class Stats:
    def __init__(self, now: float) -> None:
        self.reset(now)

    def reset(self, now: float) -> None:
        self.started = now
        self.requests = 0
        self.by_endpoint: Counter[str] = Counter()
        self.by_id: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.status: Counter[str] = Counter()
        self.throttled = 0
        self.faults: Counter[str] = Counter()
        self.concurrency = 0
        self.peak_concurrency = 0
        self.token_grants: Counter[str] = Counter()
        self.logins = 0
        self.universal_logins = 0  # passwords Universal Login accepted
        self.refresh_reused = 0  # used refresh tokens sent again (each revoked its family)
        self.families_revoked = 0  # by reuse detection
        self.early_refreshes = 0  # refreshes while the access token had over half its life left
        self.refresh_in_flight = 0  # refresh grants rotated but not yet answered
        self.arrivals = array("d")  # compact: a benchmark makes millions
        self.throttled_at = array("d")  # when each 429 was sent, on the arrivals' clock

    def begin(self, endpoint: str, item_id: str | None, now: float) -> None:
        self.requests += 1
        self.by_endpoint[endpoint] += 1
        if item_id is not None and endpoint in BY_ID_ENDPOINTS:
            self.by_id[endpoint][item_id] += 1
        self.arrivals.append(now - self.started)
        self.concurrency += 1
        self.peak_concurrency = max(self.peak_concurrency, self.concurrency)

    def end(self, status: int) -> None:
        self.concurrency -= 1
        if status:
            self.status[str(status)] += 1
        if status == 429:  # answered at once, before any latency: stamped as it leaves
            self.throttled += 1
            self.throttled_at.append(time.monotonic() - self.started)

    def snapshot(self, arrivals: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "requests": self.requests,
            "by_endpoint": dict(self.by_endpoint),
            "by_id": {name: dict(ids) for name, ids in self.by_id.items()},
            "status": dict(self.status),
            "throttled": self.throttled,
            "faults": dict(self.faults),
            "peak_concurrency": self.peak_concurrency,
            "token_grants": {
                "password": self.token_grants["password"],
                "refresh_token": self.token_grants["refresh_token"],
                "authorization_code": self.token_grants["authorization_code"],
            },
            "logins": self.logins,
            "universal_logins": self.universal_logins,
            "refresh_reused": self.refresh_reused,
            "families_revoked": self.families_revoked,
            "early_refreshes": self.early_refreshes,
        }
        if arrivals:
            out["arrivals"] = [round(t, 6) for t in self.arrivals]
            out["throttled_at"] = [round(t, 6) for t in self.throttled_at]
            # Arrivals count from this time.monotonic() reading; on Linux that clock is
            # shared by every process, so a benchmark can place them on its own timeline.
            out["arrivals_since_monotonic"] = self.started
        return out
