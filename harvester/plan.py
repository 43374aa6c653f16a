"""``plan``: page the workout list only and price the next run; writes nothing.

On a lake whose backfill is complete the next run is a ``refresh``, so that is
what is priced: the list pages down to the look-back horizon, then a detail and
a graph for each new workout and each one inside the window, plus what failed
last time. Otherwise a ``backfill``: every workout the lake lacks.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime

import anyio

from harvester.api import NULL_RIDE_ID, PelotonApi, WorkoutRef, open_api, workout_ref
from harvester.client import JsonObject, RequestStats
from harvester.config import Config
from harvester.errors import ApiError
from harvester.lake import Lake
from harvester.listing import ListingGuard
from harvester.state import StateStore
from harvester.storage import open_storage

DAY_S = 86_400
# Requests of each daily dataset when it is due (not yet fetched this UTC day).
DAILY_REQUESTS = {"profiles": 3,  # /api/me, /api/user/{id}, overview
                  "instructors": 1,  # one page of about 60
                  "metadata_mappings": 1}
ProgressHook = Callable[[int, int], None]  # (workouts listed, workouts the listing says exist)
ProgressFactory = Callable[[RequestStats], AbstractContextManager[ProgressHook | None]]


@dataclass(slots=True)
class PlanReport:
    user_id: str
    command: str  # what is priced: "backfill" or "refresh"
    workouts: int  # listed (a refresh lists down to its horizon only)
    in_lake: int
    to_fetch: int  # new workouts, plus (refresh) those re-checked in the look-back window
    rechecked: int  # of to_fetch, already in the lake (refresh's look-back, retries)
    rides_to_fetch: int
    list_requests: int
    requests: int
    rate: float
    lookback_days: float

    @property
    def seconds(self) -> float:
        return self.requests / self.rate

    def describe(self) -> str:
        minutes = self.seconds / 60
        if self.command == "refresh":
            head = (f"the lake's backfill is complete, so the next run is a refresh: "
                    f"{self.to_fetch - self.rechecked} new workouts, {self.rechecked} re-checked "
                    f"(the {self.lookback_days:g}-day look-back and retries)")
        else:
            head = (f"{self.workouts} workouts listed ({self.in_lake} already in the lake); "
                    f"a backfill would fetch {self.to_fetch}")
        return (
            f"{head}; about {self.requests} requests ({self.to_fetch} workouts x 2, "
            f"{self.rides_to_fetch} rides, {self.list_requests} list pages, daily datasets), "
            f"taking about {minutes:.1f} min at {self.rate:g} requests/s "
            "(harvest.requests_per_second or --rps)"
        )

    def fields(self) -> dict[str, object]:
        return {"user_id": self.user_id, "command": self.command, "workouts_listed": self.workouts,
                "in_lake": self.in_lake, "to_fetch": self.to_fetch, "rechecked": self.rechecked,
                "rides_to_fetch": self.rides_to_fetch, "list_requests": self.list_requests,
                "requests": self.requests, "requests_per_second": self.rate,
                "seconds": round(self.seconds, 1)}


@dataclass(slots=True)
class _Tally:
    seen: set[str]
    rides: set[str]
    to_fetch: int = 0
    rechecked: int = 0
    pages: int = 0


async def plan_harvest(config: Config, *, progress: ProgressFactory | None = None) -> PlanReport:
    """Page the workout list and estimate what the next backfill or refresh costs."""
    storage = open_storage(config.output.root)
    lake = Lake(storage, config.output.compression)
    store = StateStore(storage)
    stats = RequestStats()
    async with open_api(config, stats) as api:
        user_id = await api.user_id()
        state = await anyio.to_thread.run_sync(store.load, user_id)
        in_lake = await anyio.to_thread.run_sync(lake.workout_ids, user_id)
        known_rides = await anyio.to_thread.run_sync(lake.ride_ids)
        refresh = state.backfill_complete and state.watermark is not None
        horizon = (state.watermark - int(config.harvest.lookback_days * DAY_S)
                   if refresh and state.watermark is not None else None)
        tally = _Tally(seen=set(), rides=set())
        sink = progress(stats) if progress is not None else nullcontext(None)
        with sink as hook:
            await _list(api, config, user_id, horizon, in_lake, known_rides, tally, hook)
    retried = {f.id for f in state.failures if f.kind == "workout"} - tally.seen
    to_fetch = tally.to_fetch + len(retried)
    today = datetime.now(UTC).date().isoformat()
    daily = sum(n for name, n in DAILY_REQUESTS.items()
                if name in config.harvest.datasets and state.daily.get(name) != today)
    requests = tally.pages + 2 * to_fetch + len(tally.rides) + daily + 1
    return PlanReport(
        user_id=user_id, command="refresh" if refresh else "backfill", workouts=len(tally.seen),
        in_lake=len(tally.seen & in_lake.keys()), to_fetch=to_fetch,
        rechecked=tally.rechecked + len(retried), rides_to_fetch=len(tally.rides),
        list_requests=tally.pages, requests=requests, rate=config.harvest.requests_per_second,
        lookback_days=config.harvest.lookback_days,
    )


async def _list(
    api: PelotonApi, config: Config, user_id: str, horizon: int | None, in_lake: dict[str, int],
    known_rides: set[str], tally: _Tally, hook: ProgressHook | None,
) -> None:
    """Page the listing (down to ``horizon`` if given), counting what the run would fetch."""
    total = 0
    guard = ListingGuard()
    while True:
        listing = await api.workouts_page(user_id, tally.pages, config.harvest.page_size)
        last = guard.finished(tally.pages, listing)  # ListingError: a list that never ends
        tally.pages += 1
        total = max(total, listing.total or 0)
        for item in listing.items:
            ref = _ref(item)
            if ref is None or ref.id in tally.seen or ref.status == "IN_PROGRESS":
                continue
            if horizon is not None and ref.created_at is not None and ref.created_at <= horizon:
                return
            tally.seen.add(ref.id)
            if ref.id in in_lake and horizon is None:
                continue  # a backfill skips what the lake holds
            tally.to_fetch += 1
            tally.rechecked += ref.id in in_lake
            if ref.ride_id and ref.ride_id != NULL_RIDE_ID and ref.ride_id not in known_rides:
                tally.rides.add(ref.ride_id)
        if hook is not None:
            hook(len(tally.seen), max(total, len(tally.seen)))
        if last:
            return


def _ref(item: JsonObject) -> WorkoutRef | None:
    try:
        return workout_ref(item)
    except ApiError:
        return None
