"""The harvest pipeline: list -> fetch -> commit, for one account.

Data flow of one run (``Harvest.run``):

 1. The caller holds the lake's lock and has loaded the account's state; the
    lake is scanned once for the workouts and rides it already holds (reading
    only the files that changed since the last run: heal.py, scancache.py).
 2. The producer pages ``/api/user/{id}/workouts`` newest first with a fixed
    ``limit``, de-duplicates by id, skips in-progress workouts, quarantines
    records without a valid id or ``created_at``, and decides per workout:
    backfill skips what the lake holds; refresh stops at the first workout at or
    before ``watermark - lookback``. Items that failed last run go first;
    workouts in progress last run that the listing did not reach go last.
 3. The producer puts each workout's requests into the workers' queue (jobs.py)
    and waits while ``3 x concurrency`` workouts are open (backpressure):
    the detail, the performance graph and, once per run and only when the lake
    lacks it, the class ride's details. ``concurrency`` workers send them one at
    a time; the answer that completes a workout turns it into rows, or queues
    what it still needs (a retried workout's graph, a class the detail names).
 4. The writer (writer.py) commits finished workouts to the lake off the event
    loop, each day once (frontier.py): a day's workouts and graphs together (a
    committed workout implies its graph) once the listing has passed the day and
    its workouts are back; a class once the listing has passed the day it aired.
    ``Harvest._commit`` turns results into rows and outcome. A cancelled run
    still commits everything it holds (shielded).
 5. Beside them, one task fetches the daily datasets (profiles, instructors,
    metadata_mappings), at most once per UTC day per account. Its requests and the
    producer's list pages go to the front of the workers' queue (``_in_slot``): only
    the ``concurrency`` workers send requests, so no more are ever in flight, and
    no worker waits for a slot (a semaphore shared with the listing made almost
    every request wait in a convoy: 5,294 of 5,371 acquisitions blocked).
 6. The caller writes state, failures and the manifest from the ``Harvest``'s
    outcome.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache, partial
from typing import Any, TypeVar

import anyio

from harvester.api import NULL_RIDE_ID, PelotonApi, WorkoutRef, is_ride_id, workout_ref
from harvester.classes import RunClasses
from harvester.client import JsonObject
from harvester.config import Config
from harvester.errors import (
    ApiError,
    AuthError,
    LakeError,
    ListingError,
    NotFoundError,
    UnexpectedResponseError,
)
from harvester.heal import LakeScan, heal, ride_ids, scan
from harvester.jobs import Jobs
from harvester.lake import Encoded, Lake, class_of, encoded, workout_day
from harvester.listing import ListingGuard
from harvester.reconcile import NEED_ALL, NEED_GRAPH, RECONCILE_PAGE_SIZE, MassDeleteError, Mirror
from harvester.scancache import ScanCache
from harvester.state import AccountState, FailedItem
from harvester.writer import DEFAULT_BATCH_SIZE, DEFAULT_FLUSH_INTERVAL_S, Row, WorkoutResult, Writer

log = logging.getLogger(__name__)

DAY_S = 86_400


@dataclass(slots=True)
class Outcome:
    """Counters and facts the caller turns into state, manifest and summary."""

    rows: dict[str, int] = field(default_factory=dict)
    listed: int = 0
    queued: int = 0
    skipped_committed: int = 0
    in_progress: list[str] = field(default_factory=list)
    quarantined: list[FailedItem] = field(default_factory=list)
    failures: list[FailedItem] = field(default_factory=list)
    rides_not_found: list[str] = field(default_factory=list)
    listing_complete: bool = False
    interrupted: bool = False
    daily_done: dict[str, str] = field(default_factory=dict)
    healed: list[str] = field(default_factory=list)  # lake problems found and fixed
    deleted: list[str] = field(default_factory=list)  # workout ids the source no longer has
    moved: int = 0  # workouts re-homed to the partition their new created_at names
    reconciled: str | None = None  # why this run listed everything, when it did
    gap: int | None = None  # listing total minus the lake's count, after a full listing

    def add_rows(self, counts: dict[str, int]) -> None:
        for name, n in counts.items():
            self.rows[name] = self.rows.get(name, 0) + n


T = TypeVar("T")
Call = Callable[[], Awaitable[JsonObject]]
# Workouts open (requests queued or out) per request slot: enough that the listing's
# next page arrives before the queue runs dry, few enough to bound memory.
DEFAULT_OPEN_PER_SLOT = 3


@dataclass(slots=True)
class _Open:
    """A workout whose requests are queued or out: their answers by name, and how many are due."""

    ref: WorkoutRef
    result: WorkoutResult
    graph_only: bool = False  # in the lake without its graph: only that is fetched
    got: dict[str, JsonObject | ApiError] = field(default_factory=dict)
    due: int = 0
    ride_id: str | None = None  # the class the listing names, claimed for this workout
    late_ride: str | None = None  # the class the detail names, when another and new


class _Asked:
    """A request another task awaits (a listing page, a daily dataset), sent by a worker."""

    __slots__ = ("future",)

    def __init__(self, future: asyncio.Future[Any]) -> None:
        self.future = future

    async def answer(self, call: Callable[[], Awaitable[Any]]) -> None:
        try:
            value = await call()
        except Exception as exc:  # the asker raises it (an ApiError, an AuthError...)
            if not self.future.done():
                self.future.set_exception(exc)
            return
        if not self.future.done():  # the asker may have been cancelled meanwhile
            self.future.set_result(value)


# (workout or asker, the answer's name, the request)
_Job = tuple[_Open | _Asked, str, Callable[[], Awaitable[Any]]]
ProgressHook = Callable[[int, int], None]  # (workouts done, workouts known) -> None


class Harvest:
    """One account's harvest: producer, workers and writer around one lake."""

    def __init__(
        self,
        config: Config,
        api: PelotonApi,
        lake: Lake,
        state: AccountState,
        *,
        mode: str,
        now: Callable[[], float] = time.time,
        on_progress: ProgressHook | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S,
        allow_mass_delete: bool = False,
        classes: RunClasses | None = None,
    ) -> None:
        self.config = config
        self.api = api
        self.lake = lake
        self.state = state
        self.user_id = state.user_id
        self.datasets = frozenset(config.harvest.datasets)
        self.now = now
        self.on_progress = on_progress
        self.outcome = Outcome()
        # A refresh with no finished backfill behind it has no trustworthy
        # watermark, so it lists everything like a backfill (and resumes one).
        self.full_listing = mode == "backfill" or not state.backfill_complete
        self.allow_mass_delete = allow_mass_delete
        self.mirror = Mirror(LakeScan(), self.datasets)  # replaced by run()'s scan of the lake
        self._listed_total: int | None = None  # the first `total` the listing gave
        self._graph_only: set[str] = set()  # in the lake without their graph: fetch just that
        self._full_pass = False  # a listing of the whole history finished (deletions may follow)
        self.committed: dict[str, int] = {}  # workout id -> created_at, in the lake
        self.known_rides: set[str] = set()  # in the lake, fetched this run, or known 404
        self._orphan_rides: list[str] = []  # named by committed workouts, absent from the lake
        self.done = 0
        # ``classes``: one for all the accounts of a process (classes.py), which claim each
        # class once and hold the classes for their day together.
        self.writer = Writer(lake, self.user_id, batch_size=batch_size,
                             flush_interval_s=flush_interval_s, classes=classes,
                             rows=self.outcome.rows)
        self.total = 0
        # Every request of the run: `concurrency` workers send them, one each at a time,
        # so no more are ever in flight (the listing's and daily datasets' too: _in_slot).
        # The listing waits while this many workouts are open.
        self._jobs = Jobs[_Job](limit=DEFAULT_OPEN_PER_SLOT * config.harvest.concurrency)

    # -- the run --------------------------------------------------------------

    async def run(self) -> Outcome:
        """Harvest until done or cancelled; always commits what is complete."""
        referenced = await anyio.to_thread.run_sync(self._index_lake)
        self.known_rides.update(self.state.missing_rides)
        # Classes that workouts in the lake name but the lake lacks (a ride request
        # failed in a run that was then killed): fetched after the workouts.
        self._orphan_rides = sorted(
            r for r in referenced - self.known_rides if r != NULL_RIDE_ID and is_ride_id(r))
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self.writer.run, self._commit)
                async with anyio.create_task_group() as fetchers:
                    fetchers.start_soon(self._submit)
                    for _ in range(self.config.harvest.concurrency):
                        fetchers.start_soon(self._work)
                self.writer.close()
                await self._retry_failed_rides()
            await self._delete_gone()
            if self._full_pass and self.mirror.listing.totals:
                self.outcome.gap = self.mirror.gap(
                    max(self.mirror.listing.totals), self.outcome.in_progress)
        except anyio.get_cancelled_exc_class():
            self.outcome.interrupted = True
            raise
        return self.outcome

    def _index_lake(self) -> set[str]:
        """Scan (and heal) the account's files, and learn the lake's rides, reading only the files
        that changed since the last run (scancache.py); the ride ids its workouts name. Blocking."""
        cache = ScanCache.load(self.lake.storage, self.user_id)
        found = scan(self.lake, self.user_id, cache=cache)
        self.known_rides = ride_ids(self.lake, self.user_id, found, cache)
        cache.save()
        self.outcome.healed = heal(self.lake, found)
        self.mirror = Mirror(found, self.datasets, healed=bool(self.outcome.healed))
        self.committed = self.mirror.committed()
        return self.mirror.referenced_rides()

    async def _delete_gone(self) -> None:
        """After a trustworthy complete listing: remove and record what the source deleted."""
        if not self._full_pass or self.outcome.failures:
            return
        detected = _utc_now_iso(self.now())
        try:
            batch, removals = self.mirror.deletions(
                self.user_id, detected, allow_mass_delete=self.allow_mass_delete)
        except MassDeleteError as exc:
            log.error("%s", exc)
            self.outcome.failures.append(FailedItem(
                kind="deletions", id=self.user_id, endpoint="workouts", error=str(exc)))
            return
        if removals:
            with anyio.CancelScope(shield=True):
                await self.writer.commit(batch, removals)
            self.outcome.deleted = self.mirror.deleted(removals)
            for key in self.outcome.deleted:
                self.committed.pop(key, None)
            self.outcome.add_rows({"deletions": len(batch.get("deletions", []))})

    # -- producer -------------------------------------------------------------

    async def _submit(self) -> None:
        """The listing and, beside it, the daily datasets: what puts requests in the queue."""
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._fetch_daily)
                await self._produce()
        finally:
            self._jobs.close()  # the workers finish the open workouts, then stop

    async def _produce(self) -> None:
        seen: set[str] = set()
        for item in self.state.failures:
            if item.kind == "workout" and item.id not in seen:
                seen.add(item.id)
                await self._enqueue(WorkoutRef(item.id, None, None, None))
        await self._list_workouts(seen, full=self.full_listing)
        if not self.full_listing and self.outcome.listing_complete:
            await self._maybe_reconcile(seen)
        # In progress last run and not listed this time (the listing stopped above
        # them): ask for each directly, so the watermark need not wait for them.
        for workout_id in self.state.in_progress:
            if workout_id not in seen:
                seen.add(workout_id)
                await self._enqueue(WorkoutRef(workout_id, None, None, None))
        self.writer.frontier.finish()

    async def _maybe_reconcile(self, seen: set[str]) -> None:
        """A refresh lists everything again when reconcile.py says it is due."""
        if self._listed_total is None:
            return
        today = datetime.fromtimestamp(self.now(), UTC).date().isoformat()
        # Workouts in progress last run count as known: they are the listing's, not missing.
        gap = self.mirror.gap(self._listed_total, seen | set(self.state.in_progress))
        why = self.mirror.reconcile_due(today, gap, self.state.reconciled_day,
                                        self.state.reconciled_gap)
        if why is None:
            return
        log.info("reconciling the lake with the whole listing: %s", why)
        self.outcome.reconciled = why
        self.outcome.listing_complete = False
        await self._list_workouts(seen, full=True)

    async def _list_workouts(self, seen: set[str], *, full: bool) -> None:
        reconciling = full and not self.full_listing  # a refresh's id listing: large pages
        limit = RECONCILE_PAGE_SIZE if reconciling else self.config.harvest.page_size
        horizon = None if full else self._horizon()
        self.mirror.listing = type(self.mirror.listing)()
        guard = ListingGuard()
        page = 0
        while True:
            try:
                listing = await self._in_slot(partial(self.api.workouts_page, self.user_id, page, limit))
            except ApiError as exc:
                # The rest of the history stays unlisted: no watermark move, exit 3, next run relists.
                self.outcome.failures.append(_failure("list", f"page {page}", exc))
                return
            self._note_total(listing.total, full)
            for item in listing.items:
                ref = self._checked_ref(item)
                if ref is None or ref.id in seen:
                    continue
                assert ref.created_at is not None  # _checked_ref guarantees it
                self.writer.frontier.listed(ref.created_at)
                if horizon is not None and ref.created_at <= horizon:
                    self.outcome.listing_complete = True
                    return
                seen.add(ref.id)
                self.outcome.listed += 1
                if ref.status == "IN_PROGRESS":
                    self.outcome.in_progress.append(ref.id)
                    self.done += 1  # settled for this run: the next one picks it up
                    continue
                if full and not self._needed(ref):
                    continue
                await self._enqueue(ref)
            try:
                last = guard.finished(page, listing)
            except ListingError as exc:  # the server's paging cannot be trusted: exit 3
                self.outcome.failures.append(_failure("list", f"page {page}", exc))
                return
            if last:
                self.outcome.listing_complete = True
                self._full_pass = self._full_pass or full
                return
            page += 1

    def _note_total(self, total: int | None, full: bool) -> None:
        if total is None:
            self.mirror.listing.pages_missing_total = True
            return
        self.mirror.listing.totals.add(total)
        if self._listed_total is None:
            self._listed_total = total
        if full and self.full_listing:
            self.total = max(self.total, total)
            self._report()

    def _needed(self, ref: WorkoutRef) -> bool:
        """False when the lake holds all of the workout; notes a graph-only need."""
        need = self.mirror.need(ref.id, ref.created_at)
        if need is None:
            self.outcome.skipped_committed += 1
            self.done += 1
            return False
        if need == NEED_GRAPH:
            self._graph_only.add(ref.id)
        return need in (NEED_ALL, NEED_GRAPH)

    def _horizon(self) -> int | None:
        """Refresh stops at the first workout created at or before this instant."""
        if self.full_listing or self.state.watermark is None:
            return None
        return self.state.watermark - int(self.config.harvest.lookback_days * DAY_S)

    def _checked_ref(self, item: JsonObject) -> WorkoutRef | None:
        """The item's ref, or None after quarantining a record the lake cannot hold."""
        try:
            ref = workout_ref(item)
        except ApiError as exc:
            self._quarantine(item, str(exc))
            return None
        self.mirror.listing.ids.add(ref.id)  # listed: not deleted, whatever its record holds
        if ref.created_at is None:
            self._quarantine(item, "record has no created_at")
            return None
        if workout_day(item.get("created_at")) is None:
            self._quarantine(item, f"created_at {item.get('created_at')!r:.40} is not whole epoch "
                             "seconds between 2000 and 2100")
            return None
        return ref

    def _quarantine(self, item: JsonObject, reason: str) -> None:
        raw_id = item.get("id")
        shown = raw_id if isinstance(raw_id, str) and len(raw_id) <= 64 else repr(raw_id)[:64]
        log.warning("quarantined workout %s: %s", shown, reason)
        self.outcome.quarantined.append(
            FailedItem(kind="quarantine", id=shown, endpoint="workouts", error=reason, attempts=1)
        )

    async def _enqueue(self, ref: WorkoutRef) -> None:
        """Put the workout's requests in the workers' queue; wait while the queue is full."""
        self.outcome.queued += 1
        self.writer.frontier.queued(ref.created_at)
        self.total = max(self.total, self.outcome.skipped_committed + self.outcome.queued)
        workout = _Open(ref, WorkoutResult(ref), graph_only=ref.id in self._graph_only)
        self._jobs.open()
        self._request(workout, self._first_requests(workout))
        await self._jobs.room()
        await self.writer.room()  # a disk slower than the fetching holds the listing back

    # -- workers --------------------------------------------------------------

    async def _work(self) -> None:
        """Send the queue's requests one at a time; settle a workout when its last answer is
        in (jobs.py: one request per job, the plainest loop's shape)."""
        jobs = self._jobs
        while (job := await jobs.get()) is not None:
            workout, name, call = job
            if type(workout) is _Asked:
                await workout.answer(call)
                continue
            assert isinstance(workout, _Open)
            try:
                workout.got[name] = await call()
            except ApiError as exc:
                workout.got[name] = exc
            workout.due -= 1
            if workout.due == 0:
                self._request(workout, self._next_requests(workout))

    def _request(self, workout: _Open, calls: list[tuple[str, Call]]) -> None:
        """Queue the workout's next requests; with none left, hand its result to the writer."""
        if not calls:
            self.writer.add(workout.result)
            self._jobs.settle()
            return
        workout.due = len(calls)
        started = bool(workout.got)  # a workout under way goes before the ones waiting
        for name, call in calls:
            self._jobs.put((workout, name, call), urgent=started)

    def _first_requests(self, workout: _Open) -> list[tuple[str, Call]]:
        """A listed workout's detail, graph and (new) class go out together, each its own job:
        no slot idles while a workout waits on a chain. A workout retried by id (its status
        unknown) asks for the detail first, so a still-running one costs one request."""
        ref = workout.ref
        if workout.graph_only:  # in the lake without its graph: fetch just that
            return [("graph", partial(self.api.performance_graph, ref.id, self.config.harvest.every_n))]
        calls: list[tuple[str, Call]] = [("detail", partial(self.api.workout, ref.id))]
        listed = ref.created_at is not None
        if listed and self._wants_graph:
            calls.append(("graph", partial(self.api.performance_graph, ref.id,
                                           self.config.harvest.every_n)))
        workout.ride_id = self._claim_ride(ref.ride_id) if listed else None
        if workout.ride_id is not None:
            calls.append(("ride", partial(self.api.ride_details, workout.ride_id)))
        return calls

    def _next_requests(self, workout: _Open) -> list[tuple[str, Call]]:
        """Turn the answers in into rows or recorded failures; the requests still needed."""
        got, result, ref = workout.got, workout.result, workout.ref
        if workout.graph_only:
            alone = got["graph"]
            if isinstance(alone, ApiError):
                self._workout_failed(result, alone)
            elif ref.created_at is not None:
                result.graph = self._encoded("performance_graphs", self._graph_row(
                    ref.id, alone, ref.created_at, _utc_now_iso(self.now())))
            return []
        if "ride" in got:
            assert workout.ride_id is not None
            self._hold_ride(self._ride_row(workout.ride_id, got.pop("ride"), result))
        if workout.late_ride is not None:  # the last request: the class the detail names
            self._hold_ride(self._ride_row(workout.late_ride, got["late_ride"], result))
            return []
        detail = got["detail"]
        if isinstance(detail, ApiError):
            self._workout_failed(result, detail)
            return []
        if detail.get("status") == "IN_PROGRESS":
            result.in_progress = True
            return []
        created_at = detail.get("created_at")
        if workout_day(created_at) is None or not isinstance(created_at, int):
            self._quarantine(detail, f"workout detail's created_at {created_at!r:.40} is not whole "
                             "epoch seconds between 2000 and 2100")
            return []
        if detail.get("id") != ref.id:
            self._quarantine(detail, f"workout detail for {ref.id} names another id")
            return []
        graph = got.get("graph")
        if graph is None and self._wants_graph:  # retried by id: the detail came alone
            return [("graph", partial(self.api.performance_graph, ref.id, self.config.harvest.every_n))]
        if isinstance(graph, ApiError):
            self._workout_failed(result, graph)
            return []
        self._settle_rows(result, detail, graph, created_at)
        workout.late_ride = self._claim_ride(_ride_id(detail))
        if workout.late_ride is not None:  # retried by id, or the class changed since the listing
            return [("late_ride", partial(self.api.ride_details, workout.late_ride))]
        return []

    def _settle_rows(self, result: WorkoutResult, detail: JsonObject, graph: JsonObject | None,
                     created_at: int) -> None:
        """The workout's lake lines (and its graph's), both or neither: a workout in the lake
        implies its graph. A row the lake cannot hold is quarantined (``_encoded``)."""
        stamp = _utc_now_iso(self.now())
        graph_line = None
        if graph is not None:
            graph_line = self._encoded("performance_graphs",
                                       self._graph_row(result.ref.id, graph, created_at, stamp))
            if graph_line is None:
                return
        workout_line = self._encoded("workouts", {**detail, "_harvested_at": stamp})
        if workout_line is None:
            return
        result.workout, result.graph = workout_line, graph_line
        result.created_at, result.ride_id = created_at, class_of(detail)

    def _hold_ride(self, row: Row | None) -> None:
        """A class's line waits in the writer for the day it aired (writer.py)."""
        line = None if row is None else self._encoded("rides", row)
        if line is not None:
            self.writer.hold(line)

    def _graph_row(self, workout_id: str, graph: JsonObject, created_at: int, stamp: str) -> Row:
        return {**graph, "workout_id": workout_id, "user_id": self.user_id,
                "created_at": created_at, "_harvested_at": stamp}

    @property
    def _wants_graph(self) -> bool:
        return "performance_graphs" in self.datasets

    def _claim_ride(self, ride_id: str | None) -> str | None:
        """The ride to fetch, claimed before any await so each is fetched once per run, by one
        of the run's accounts. (If that account then fails, the class is missing until a
        later run of any account naming it fetches it: reconcile.py's orphans.)"""
        if ("rides" not in self.datasets or not ride_id or ride_id in self.known_rides
                or not self.writer.classes.claim(ride_id)):
            return None
        self.known_rides.add(ride_id)
        return ride_id

    async def _in_slot(self, call: Callable[[], Awaitable[T]]) -> T:
        """``call``'s answer, from the front of the workers' queue: the listing's pages and
        the daily datasets take a worker's turn, so no more than ``concurrency`` requests
        are ever in flight, and no worker waits for a slot."""
        asked = _Asked(asyncio.get_running_loop().create_future())
        self._jobs.put((asked, "", call), urgent=True)
        answer: T = await asked.future
        return answer

    def _workout_failed(self, result: WorkoutResult, exc: ApiError) -> None:
        if isinstance(exc, NotFoundError):
            log.info("workout %s no longer exists (404); skipped", result.ref.id)
        else:
            result.failures.append(_failure("workout", result.ref.id, exc))

    async def _fetch_ride(self, ride_id: str, result: WorkoutResult) -> Row | None:
        try:
            got: JsonObject | ApiError = await self.api.ride_details(ride_id)
        except ApiError as exc:
            got = exc
        return self._ride_row(ride_id, got, result)

    def _ride_row(self, ride_id: str, got: JsonObject | ApiError, result: WorkoutResult) -> Row | None:
        if isinstance(got, NotFoundError):
            # Gym classes (UUID ids) and retired classes have no details: remember, move on.
            self.outcome.rides_not_found.append(ride_id)
            return None
        if isinstance(got, ApiError):
            result.failures.append(_failure("ride", ride_id, got))
            return None
        return {**got, "ride_id": ride_id, "_harvested_at": _utc_now_iso(self.now())}

    # -- committing (writer.py runs the loop) ---------------------------------

    async def _commit(self, results: list[WorkoutResult], final: bool = False) -> None:
        """Commit the results and the held classes whose day is complete (all when ``final``)."""
        lines: dict[str, list[Encoded]] = {"performance_graphs": [], "workouts": []}  # for the lake
        named: list[tuple[int | None, str | None]] = []  # what lines["workouts"] name: for the mirror
        landed: list[tuple[str, int]] = []  # (id, created_at) of the workouts in the batch
        for result in results:
            self.outcome.failures.extend(result.failures)
            if result.in_progress:
                self.outcome.in_progress.append(result.ref.id)
            if result.graph is not None:
                lines["performance_graphs"].append(result.graph)
            if result.workout is not None and result.created_at is not None:
                lines["workouts"].append(result.workout)
                named.append((result.created_at, result.ride_id))
                # The listing's copy of the id (the detail's was checked equal): one string
                # per workout for the whole run, not two.
                landed.append((result.ref.id, result.created_at))
        rides = self.writer.release_rides(final)
        if rides or any(lines.values()):
            removals = self.mirror.removals(lines)
            try:
                counts = await self.writer.commit({**lines, "rides": rides}, removals)
            except BaseException:
                self.writer.classes.put_back(rides)  # a later commit (a final one) takes them
                raise
            self.mirror.landed(lines, named)
            self.outcome.moved = self.mirror.moved
            counts.pop("rides", None)  # each counts for the account that fetched it
            self.writer.classes.credit(rides)
            self.outcome.add_rows(counts)
            self.committed.update(landed)
        self.done += len(results)
        self._report()

    def _encoded(self, dataset: str, row: Row) -> Encoded | None:
        """The row as its lake line, serialised once; None (the row quarantined alone) when
        the lake cannot hold it: no key, no partition, not JSON. The batch goes on."""
        try:
            return encoded(dataset, row)
        except LakeError as exc:
            self._quarantine(row, str(exc))
            return None

    def _report(self) -> None:
        if self.on_progress is not None:
            self.on_progress(self.done, max(self.total, self.done))

    async def _retry_failed_rides(self) -> None:
        """Rides that failed last run, or that committed workouts name and the lake lacks,
        and that no workout of this run fetched: ``concurrency`` at a time, committed together.

        After a SIGKILL these are the classes the killed run held for their day (up to
        classes.DEFAULT_HELD_RIDE_BYTES of them), so they go side by side, like the workers' requests.
        """
        if "rides" not in self.datasets:
            return
        holder = WorkoutResult(WorkoutRef("", None, None, None))
        wanted = [item.id for item in self.state.failures if item.kind == "ride"]
        todo = [r for r in dict.fromkeys([*wanted, *self._orphan_rides]) if self._claim_ride(r)]
        rows: list[Encoded] = []
        refused: list[AuthError] = []

        async def fetch(ride_id: str) -> None:
            try:
                ride = await self._fetch_ride(ride_id, holder)
            except AuthError as exc:  # raised below, as itself: not in an exception group
                refused.append(exc)
                return
            if ride is not None:
                rows.append(encoded("rides", ride))

        width = self.config.harvest.concurrency
        for start in range(0, len(todo), width):
            async with asyncio.TaskGroup() as tg:
                for ride_id in todo[start:start + width]:
                    tg.create_task(fetch(ride_id))
            if refused:
                raise refused[0]
        self.outcome.failures.extend(holder.failures)
        if rows:
            with anyio.CancelScope(shield=True):
                counts = await self.writer.commit({"rides": rows})
            self.outcome.add_rows(counts)

    # -- daily datasets -------------------------------------------------------

    async def _fetch_daily(self) -> None:
        today = datetime.fromtimestamp(self.now(), UTC).date().isoformat()
        batch: dict[str, list[Row]] = {}
        stamp = _utc_now_iso(self.now())
        if "profiles" in self.datasets and self.state.daily.get("profiles") != today:
            profile = await self._daily("profile", self._profile_row, stamp)
            if profile is not None:
                batch["profiles"] = [profile]
        if "instructors" in self.datasets and self.state.daily.get("instructors") != today:
            instructors = await self._daily("instructors", self._instructor_rows, stamp)
            if instructors is not None:
                batch["instructors"] = instructors
        if "metadata_mappings" in self.datasets and self.state.daily.get("metadata_mappings") != today:
            mappings = await self._daily("metadata_mappings", self._mappings_rows, stamp)
            if mappings is not None:
                batch["metadata_mappings"] = mappings
        if batch:
            with anyio.CancelScope(shield=True):
                counts = await self.writer.commit(batch)
            self.outcome.add_rows(counts)
            for name in batch:
                self.outcome.daily_done[name] = today

    async def _daily(
        self, kind: str, fetch: Callable[[str], Awaitable[T]], stamp: str
    ) -> T | None:
        try:
            return await self._in_slot(partial(fetch, stamp))  # its requests go one at a time
        except AuthError:
            raise
        except ApiError as exc:
            self.outcome.failures.append(_failure(kind, self.user_id, exc))
            return None

    async def _profile_row(self, stamp: str) -> Row:
        me = await self.api.account()
        if me.get("id") != self.user_id:  # the run's id may have come from the access token
            raise UnexpectedResponseError(
                f"/api/me names another account than the one being harvested ({self.user_id})")
        overview = await self.api.overview(self.user_id)
        user = await self.api.user(self.user_id)
        return {**me, "overview": overview, "user": user, "user_id": self.user_id,
                "_harvested_at": stamp}

    async def _mappings_rows(self, stamp: str) -> list[Row]:
        return [{**await self.api.metadata_mappings(), "_harvested_at": stamp}]

    async def _instructor_rows(self, stamp: str) -> list[Row]:
        rows: list[Row] = []
        page = 0
        while True:
            listing = await self.api.instructors_page(page, 100)
            rows.extend({**item, "_harvested_at": stamp} for item in listing.items)
            page += 1
            if not listing.items or listing.show_next is False or (
                listing.page_count is not None and page >= listing.page_count
            ):
                return rows


def _ride_id(detail: JsonObject) -> str | None:
    ride_id = class_of(detail)
    return None if ride_id == NULL_RIDE_ID else ride_id


def _failure(kind: str, item_id: str, exc: ApiError) -> FailedItem:
    log.warning("failed %s %s: %s", kind, item_id, exc)
    endpoint = exc.url or kind
    return FailedItem(kind=kind, id=item_id, endpoint=endpoint, error=str(exc), attempts=1)


def _utc_now_iso(now: float) -> str:
    return _utc_second_iso(math.floor(now))


@lru_cache(maxsize=1)  # every row of a second carries the same stamp: format it once
def _utc_second_iso(second: int) -> str:
    return datetime.fromtimestamp(second, UTC).isoformat().replace("+00:00", "Z")
