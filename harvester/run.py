"""One run of a command: lock, authenticate, harvest, then state, failures and manifest.

``run_harvest`` is what ``backfill`` and ``refresh`` do; ``plan_harvest`` and
``read_status`` are the read-only commands. The CLI turns their reports into
output and exit codes.
"""

from __future__ import annotations

import logging
import signal
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import aiohttp
import anyio
from anyio.abc import TaskStatus

from harvester import __version__
from harvester.api import NULL_RIDE_ID, open_api, workout_ref
from harvester.auth import Paste
from harvester.client import DEFAULT_BACKOFF_BASE_S, RequestStats
from harvester.config import DEFAULT_ACCOUNT, Config
from harvester.errors import ApiError
from harvester.lake import Lake
from harvester.listing import ListingGuard
from harvester.pipeline import Harvest, Outcome, ProgressHook
from harvester.state import AccountState, StateStore
from harvester.storage import open_storage
from harvester.storage.lease import run_lock

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_PARTIAL = 3
EXIT_INTERRUPTED = 130


@dataclass(slots=True)
class RunReport:
    """What a backfill or refresh did, for the summary line and the exit code."""

    command: str
    run_id: str
    user_id: str
    exit_code: int
    outcome: Outcome
    stats: RequestStats
    elapsed_s: float
    watermark_before: int | None
    watermark_after: int | None
    manifest: dict[str, object] = field(default_factory=dict)

    def summary(self) -> str:
        rows = ", ".join(f"{n} {name}" for name, n in sorted(self.outcome.rows.items()))
        parts = [
            f"{self.command}: {rows or 'no rows'} written",
            f"{self.stats.requests} requests ({self.stats.retries} retries, "
            f"{self.stats.throttled} throttled)",
            f"{self.elapsed_s:.1f} s",
        ]
        if self.outcome.skipped_committed:
            parts.append(f"{self.outcome.skipped_committed} already in the lake")
        if self.outcome.in_progress:
            parts.append(f"{len(self.outcome.in_progress)} in progress (next run)")
        if self.outcome.quarantined:
            parts.append(f"{len(self.outcome.quarantined)} quarantined")
        if self.outcome.moved:
            parts.append(f"{self.outcome.moved} moved to a new date")
        if self.outcome.deleted:
            parts.append(f"{len(self.outcome.deleted)} deleted at the source (removed)")
        if self.outcome.healed:
            parts.append(f"{len(self.outcome.healed)} lake problems healed")
        if self.outcome.failures:
            parts.append(f"{len(self.outcome.failures)} FAILED (retried next run)")
        if self.outcome.interrupted:
            parts.append("INTERRUPTED")
        return "; ".join(parts)


ProgressFactory = Callable[[RequestStats], AbstractContextManager[ProgressHook | None]]


async def run_harvest(
    config: Config,
    command: str,
    *,
    progress: ProgressFactory | None = None,
    backoff_base: float = DEFAULT_BACKOFF_BASE_S,
    allow_mass_delete: bool = False,
    stop_requested: anyio.Event | None = None,
    session: aiohttp.ClientSession | None = None,
) -> RunReport:
    """Run ``backfill`` or ``refresh`` to the end, or until SIGINT/SIGTERM.

    A signal at any point after the lock is taken (authentication included)
    stops the run: what is complete is committed, state and manifest are
    written, and the report says exit 130.
    ``backoff_base`` scales retry back-off; tests shrink it so no test sleeps for seconds.
    Several accounts' runs in one process pass ``stop_requested`` (set by the one
    signal watcher of them all) and ``session`` (one connection pool for all).
    """
    storage = open_storage(config.output.root)
    lake = Lake(storage, config.output.compression)
    await anyio.to_thread.run_sync(lake.check_writable)
    store = StateStore(storage)
    account = config.accounts[0].name if config.accounts else DEFAULT_ACCOUNT

    def sweep() -> None:  # temporaries of killed runs; only while no other run is writing
        lake.clean_temp_files()
        store.clean_temp_files()

    async with run_lock(storage, account, command, sweep=sweep):
        stop = anyio.CancelScope()
        error: BaseException | None = None
        try:
            async with anyio.create_task_group() as watcher:
                if stop_requested is None:
                    await watcher.start(_cancel_on_signal, stop)
                else:
                    watcher.start_soon(_cancel_on_event, stop, stop_requested)
                try:
                    report = await _run_locked(config, command, lake, store, stop,
                                               progress=progress, backoff_base=backoff_base,
                                               allow_mass_delete=allow_mass_delete, session=session)
                finally:
                    watcher.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            if len(group.exceptions) != 1:
                raise
            error = group.exceptions[0]  # the watcher never fails: a lone error is the run's own
        if error is not None:
            raise error  # as itself, cause intact, not wrapped by the watcher's task group
    return report


async def _run_locked(
    config: Config, command: str, lake: Lake, store: StateStore, stop: anyio.CancelScope,
    *, progress: ProgressFactory | None, backoff_base: float, allow_mass_delete: bool,
    session: aiohttp.ClientSession | None = None,
) -> RunReport:
    """Authenticate and harvest inside ``stop``; then record the run, interrupted or not."""
    stats = RequestStats()
    started = time.time()
    run_id = uuid.uuid4().hex[:12]
    harvest: Harvest | None = None
    async with open_api(config, stats, backoff_base=backoff_base, session=session) as api:
        sink: AbstractContextManager[ProgressHook | None] = (
            progress(stats) if progress is not None else nullcontext(None)
        )
        with sink as hook, stop:
            user_id = await api.user_id()
            state = store.load(user_id)
            harvest = Harvest(config, api, lake, state, mode=command, on_progress=hook,
                              allow_mass_delete=allow_mass_delete)
            await harvest.run()
    if harvest is None:  # stopped before the account was known: nothing to record for it
        outcome = Outcome(interrupted=True)
        report = RunReport(
            command=command, run_id=run_id, user_id="", exit_code=EXIT_INTERRUPTED,
            outcome=outcome, stats=stats, elapsed_s=time.time() - started,
            watermark_before=None, watermark_after=None,
        )
        report.manifest = _manifest(report, started)
        store.write_manifest(report.manifest)
        return report
    harvest.outcome.interrupted = harvest.outcome.interrupted or stop.cancelled_caught
    return _record(store, harvest, command, run_id, stats, started)


def _record(
    store: StateStore, harvest: Harvest, command: str, run_id: str, stats: RequestStats,
    started: float,
) -> RunReport:
    """Write the account's state, failures and the run's manifest; the report for the CLI."""
    state, outcome = harvest.state, harvest.outcome
    watermark_before = state.watermark
    _update_state(state, harvest, command)
    exit_code = (
        EXIT_INTERRUPTED if outcome.interrupted
        else EXIT_PARTIAL if outcome.failures else EXIT_OK
    )
    report = RunReport(
        command=command, run_id=run_id, user_id=state.user_id, exit_code=exit_code,
        outcome=outcome, stats=stats, elapsed_s=time.time() - started,
        watermark_before=watermark_before, watermark_after=state.watermark,
    )
    state.last_run = {
        "run_id": run_id, "command": command, "started_at": _iso(started),
        "finished_at": _iso(time.time()), "outcome": _outcome_word(exit_code),
        "exit_code": exit_code,
    }
    store.save(state)
    # Quarantined records are listed beside the failures (kind "quarantine") for the
    # user to see; the next run does not retry them: their data cannot change.
    store.write_failures(state.user_id, [*state.failures, *outcome.quarantined])
    report.manifest = _manifest(report, started)
    store.write_manifest(report.manifest)
    return report


async def _cancel_on_signal(
    scope: anyio.CancelScope, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Cancel ``scope`` on the first SIGINT or SIGTERM; a second one acts as the default."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for signum in signals:
            log.warning("received %s: committing what is complete, then stopping",
                        signal.Signals(signum).name)
            scope.cancel()
            return


async def _cancel_on_event(scope: anyio.CancelScope, event: anyio.Event) -> None:
    """Cancel ``scope`` once ``event`` is set (by a watcher shared with other accounts' runs)."""
    await event.wait()
    scope.cancel()


def _update_state(state: AccountState, harvest: Harvest, command: str) -> None:
    """Advance the watermark only over data that is committed; keep what to retry.

    Failures and in-progress workouts are remembered by id and asked for
    directly next run, so the watermark need not stay below them.
    """
    outcome = harvest.outcome
    finished = outcome.listing_complete and not outcome.interrupted
    if finished:
        newest = max(harvest.committed.values(), default=None)
        if newest is not None:
            state.watermark = newest
        if harvest.full_listing:
            state.backfill_complete = True
    failures = list(outcome.failures)
    if outcome.interrupted:
        retried = {(f.kind, f.id) for f in failures}
        failures += [
            f for f in state.failures
            if (f.kind, f.id) not in retried
            and not (f.kind == "workout" and f.id in harvest.committed)
        ]
    state.failures = failures
    in_progress = list(outcome.in_progress)
    if outcome.interrupted:  # the ones this run did not get to ask about again
        in_progress += [w for w in state.in_progress if w not in harvest.committed]
    state.in_progress = list(dict.fromkeys(in_progress))
    state.daily.update(outcome.daily_done)
    if outcome.gap is not None and not outcome.interrupted:
        state.reconciled_day = time.strftime("%Y-%m-%d", time.gmtime(harvest.now()))
        state.reconciled_gap = outcome.gap
    state.missing_rides = sorted(set(state.missing_rides) | set(outcome.rides_not_found))


def _manifest(report: RunReport, started: float) -> dict[str, object]:
    outcome, stats = report.outcome, report.stats
    return {
        "run_id": report.run_id,
        "version": __version__,
        "command": report.command,
        "user_id": report.user_id or None,
        "started_at": _iso(started),
        "duration_s": round(report.elapsed_s, 3),
        "outcome": _outcome_word(report.exit_code),
        "exit_code": report.exit_code,
        "rows": dict(outcome.rows),
        "workouts_listed": outcome.listed,
        "workouts_fetched": outcome.queued,
        "workouts_already_in_lake": outcome.skipped_committed,
        "requests": stats.requests,
        "requests_by_endpoint": dict(stats.by_endpoint),
        "retries": stats.retries,
        "throttled": stats.throttled,
        "reauths": stats.reauths,
        "failures": [f.to_dict() for f in outcome.failures],
        "quarantined": [f.to_dict() for f in outcome.quarantined],
        "in_progress": list(outcome.in_progress),
        "rides_not_found": list(outcome.rides_not_found),
        "moved": outcome.moved,
        "deleted": list(outcome.deleted),
        "healed": list(outcome.healed),
        "reconciled": outcome.reconciled,
        "watermark_before": report.watermark_before,
        "watermark_after": report.watermark_after,
    }


def _outcome_word(exit_code: int) -> str:
    return {EXIT_OK: "success", EXIT_PARTIAL: "partial", EXIT_INTERRUPTED: "interrupted"}.get(
        exit_code, "error"
    )


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


# -- login --------------------------------------------------------------------


async def run_login(config: Config, paste: Paste | None = None) -> str:
    """``login``: sign in once, store the tokens at ``auth.token_cache``; the account id."""
    async with open_api(config, RequestStats()) as api:
        return await api.sign_in(paste)


# -- plan ---------------------------------------------------------------------


@dataclass(slots=True)
class PlanReport:
    user_id: str
    workouts: int
    in_lake: int
    to_fetch: int
    rides_to_fetch: int
    list_requests: int
    requests: int
    seconds: float

    def describe(self) -> str:
        minutes = self.seconds / 60
        return (
            f"{self.workouts} workouts listed ({self.in_lake} already in the lake); a backfill "
            f"would make about {self.requests} requests ({self.to_fetch} workouts x 2, "
            f"{self.rides_to_fetch} rides, {self.list_requests} list pages, daily datasets), "
            f"taking about {minutes:.1f} min at the configured rate"
        )


async def plan_harvest(config: Config) -> PlanReport:
    """Page the workout list only and estimate what a backfill would cost."""
    lake = Lake(open_storage(config.output.root), config.output.compression)
    stats = RequestStats()
    async with open_api(config, stats) as api:
        user_id = await api.user_id()
        in_lake = await anyio.to_thread.run_sync(lake.workout_ids, user_id)
        known_rides = await anyio.to_thread.run_sync(lake.ride_ids)
        seen: set[str] = set()
        rides: set[str] = set()
        to_fetch = page = 0
        guard = ListingGuard()
        while True:
            listing = await api.workouts_page(user_id, page, config.harvest.page_size)
            last = guard.finished(page, listing)  # ListingError: a list that never ends
            page += 1
            for item in listing.items:
                try:
                    ref = workout_ref(item)
                except ApiError:
                    continue
                if ref.id in seen or ref.status == "IN_PROGRESS":
                    continue
                seen.add(ref.id)
                if ref.id not in in_lake:
                    to_fetch += 1
                    if ref.ride_id and ref.ride_id != NULL_RIDE_ID and ref.ride_id not in known_rides:
                        rides.add(ref.ride_id)
            if last:
                break
    daily = 3  # /api/me, overview, one page of instructors
    requests = page + 2 * to_fetch + len(rides) + daily + 1
    return PlanReport(
        user_id=user_id, workouts=len(seen), in_lake=len(seen & in_lake.keys()),
        to_fetch=to_fetch, rides_to_fetch=len(rides), list_requests=page,
        requests=requests, seconds=requests / config.harvest.requests_per_second,
    )


# -- status -------------------------------------------------------------------


def read_status(config: Config) -> list[str]:
    """One block of lines per account known to the lake's state."""
    storage = open_storage(config.output.root)
    store = StateStore(storage)
    lake = Lake(storage, config.output.compression)
    lines: list[str] = []
    accounts = store.accounts()
    if not accounts:
        return [f"no harvest has run into {storage.url} yet"]
    for user_id in accounts:
        state = store.load(user_id)
        counts = lake.row_counts(user_id)
        last = state.last_run or {}
        lines.append(f"account {user_id}")
        lines.append(f"  watermark: {_iso(state.watermark) if state.watermark else 'none'}")
        lines.append(
            f"  last run: {last.get('command', '-')} finished {last.get('finished_at', '-')}, "
            f"{last.get('outcome', '-')} (exit {last.get('exit_code', '-')})"
        )
        lines.append(f"  backfill complete: {'yes' if state.backfill_complete else 'no'}")
        lines.append("  rows: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
        if state.failures:
            lines.append(f"  failures to retry: {len(state.failures)}")
    return lines
