"""One run of ``backfill`` or ``refresh``: lock, authenticate, harvest, then state, failures, manifest.

``run_harvest`` is what both commands do. Every run that got this far leaves a
manifest under ``_harvester/runs/``, failed ones too (wrong password, dead host,
the lake held by another run): ``status`` reads the last attempt from it. The
read-only commands live in ``plan.py`` and ``status.py``; the CLI turns reports
into output and exit codes.
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
from harvester.api import open_api
from harvester.auth import Paste
from harvester.classes import RunClasses
from harvester.client import DEFAULT_BACKOFF_BASE_S, RequestStats
from harvester.config import DEFAULT_ACCOUNT, Config
from harvester.errors import (
    EXIT_TEMPORARY,
    NeedsBackfillError,
    StateError,
    StorageError,
    first_harvester_error,
)
from harvester.lake import Lake
from harvester.pipeline import Harvest, Outcome, ProgressHook
from harvester.state import AccountState, StateStore
from harvester.storage import open_storage
from harvester.storage.lease import run_lock

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_PARTIAL = 3
EXIT_AUTH = 4
EXIT_INTERRUPTED = 130
OUTCOME_WORDS = {
    EXIT_OK: "success", EXIT_PARTIAL: "partial", EXIT_INTERRUPTED: "interrupted",
    EXIT_AUTH: "auth failed", EXIT_TEMPORARY: "temporary failure", EXIT_INTERNAL: "internal error",
}


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
    manifest_path: str | None = None  # where the manifest is: root joined with its key
    tally: dict[str, dict[str, int]] = field(default_factory=dict)  # Lake.tally

    def counts(self, dataset: str) -> tuple[int, int, int]:
        """(new, re-checked, changed) rows of ``dataset``: re-checked ones were in the lake."""
        written = self.outcome.rows.get(dataset, 0)
        tally = self.tally.get(dataset, {})
        new = min(tally.get("new", 0), written)
        return new, written - new, tally.get("changed", 0)

    def summary(self) -> str:
        new, rechecked, changed = self.counts("workouts")
        label = "look-back" if self.command == "refresh" else "retried"
        others = ", ".join(f"{n} {name}" for name, n in sorted(self.outcome.rows.items())
                           if name != "workouts")
        parts = [f"{self.command}: {_plural(new, 'new workout')}, {rechecked} re-checked "
                 f"({label}), {changed} changed"]
        if others:
            parts.append(f"also written: {others}")
        parts += [f"{self.stats.requests} requests ({self.stats.retries} retries, "
                  f"{self.stats.throttled} throttled)", f"{self.elapsed_s:.1f} s"]
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
        parts.append(f"run {self.run_id}, manifest {self.manifest_path}")
        return "; ".join(parts)

    def fields(self) -> dict[str, object]:
        """The summary as data, for ``--log-format json``."""
        new, rechecked, changed = self.counts("workouts")
        return {
            "command": self.command, "run_id": self.run_id, "user_id": self.user_id or None,
            "exit_code": self.exit_code, "outcome": outcome_word(self.exit_code),
            "manifest": str(self.manifest_path) if self.manifest_path else None,
            "workouts_new": new, "workouts_rechecked": rechecked, "workouts_changed": changed,
            "rows": dict(self.outcome.rows), "requests": self.stats.requests,
            "retries": self.stats.retries, "throttled": self.stats.throttled,
            "failures": len(self.outcome.failures), "in_progress": len(self.outcome.in_progress),
            "quarantined": len(self.outcome.quarantined), "duration_s": round(self.elapsed_s, 3),
        }


@dataclass(slots=True)
class _Attempt:
    """What is known about a run while it goes, for the manifest of one that fails."""

    command: str
    started: float
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    stats: RequestStats = field(default_factory=RequestStats)
    user_id: str = ""
    recorded: bool = False  # its manifest is written: a late Ctrl-C must not add a second


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
    classes: RunClasses | None = None,
) -> RunReport:
    """Run ``backfill`` or ``refresh`` to the end, or until SIGINT/SIGTERM.

    A signal at any point after the lock is taken (authentication included)
    stops the run: what is complete is committed, state and manifest are
    written, and the report says exit 130. A run that fails instead still
    writes its manifest (outcome, exit code, the error's one line) before the
    error goes on to the CLI.
    ``backoff_base`` scales retry back-off; tests shrink it so no test sleeps for seconds.
    Several accounts' runs in one process pass ``stop_requested`` (set by the one
    signal watcher of them all), ``session`` (one connection pool for all) and
    ``classes`` (classes.py: each class is fetched by one of them, and held for its day
    with the others').
    """
    attempt = _Attempt(command, time.time())
    store = StateStore(open_storage(config.output.root))
    try:
        return await _run(config, attempt, store, _Options(
            progress, backoff_base, allow_mass_delete, stop_requested, session, classes))
    except (Exception, KeyboardInterrupt) as exc:  # recorded, then re-raised
        if not attempt.recorded:
            _record_failed(store, config, attempt, exc)
        raise


@dataclass(frozen=True, slots=True)
class _Options:
    progress: ProgressFactory | None
    backoff_base: float
    allow_mass_delete: bool
    stop_requested: anyio.Event | None
    session: aiohttp.ClientSession | None
    classes: RunClasses | None


async def _run(config: Config, attempt: _Attempt, store: StateStore, options: _Options) -> RunReport:
    lake = Lake(store.storage, config.output.compression)
    await anyio.to_thread.run_sync(lake.check_writable)
    account = config.accounts[0].name if config.accounts else DEFAULT_ACCOUNT

    def sweep() -> None:  # temporaries of killed runs; only while no other run is writing
        lake.clean_temp_files()
        store.clean_temp_files()

    async with run_lock(store.storage, account, attempt.command, sweep=sweep):
        stop = anyio.CancelScope()
        error: BaseException | None = None
        try:
            async with anyio.create_task_group() as watcher:
                if options.stop_requested is None:
                    await watcher.start(_cancel_on_signal, stop)
                else:
                    watcher.start_soon(_cancel_on_event, stop, options.stop_requested)
                try:
                    report = await _run_locked(config, attempt, lake, store, stop, options)
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
    config: Config, attempt: _Attempt, lake: Lake, store: StateStore, stop: anyio.CancelScope,
    options: _Options,
) -> RunReport:
    """Authenticate and harvest inside ``stop``; then record the run, interrupted or not."""
    harvest: Harvest | None = None
    progress = options.progress
    async with open_api(config, attempt.stats, backoff_base=options.backoff_base,
                        session=options.session) as api:
        sink: AbstractContextManager[ProgressHook | None] = (
            progress(attempt.stats) if progress is not None else nullcontext(None)
        )
        with sink as hook, stop:
            attempt.user_id = await api.user_id()
            state = _load_state(store, lake, attempt)
            harvest = Harvest(config, api, lake, state, mode=attempt.command, on_progress=hook,
                              allow_mass_delete=options.allow_mass_delete,
                              classes=options.classes)
            await harvest.run()
    if harvest is None:  # stopped before the account was known: nothing to record for it
        report = _report(attempt, Outcome(interrupted=True), EXIT_INTERRUPTED, None, None)
        _write_manifest(store, config, report)
        attempt.recorded = True
        return report
    harvest.outcome.interrupted = harvest.outcome.interrupted or stop.cancelled_caught
    # In a thread: fsyncs (or an object store's round trips) of one account's end must not
    # stall the other accounts of the run on the event loop.
    report = await anyio.to_thread.run_sync(_finish, store, config, harvest, attempt, lake)
    attempt.recorded = True
    return report


def _finish(store: StateStore, config: Config, harvest: Harvest, attempt: _Attempt,
            lake: Lake) -> RunReport:
    """State, failures and manifest of a harvest that ran; its report. Blocking."""
    report = _record(store, harvest, attempt)
    report.tally = {k: dict(v) for k, v in lake.tally.items()}
    _write_manifest(store, config, report)
    return report


def _load_state(store: StateStore, lake: Lake, attempt: _Attempt) -> AccountState:
    """The account's state; a refresh refuses a lake that holds the account's data without it."""
    user_id = attempt.user_id
    if attempt.command == "refresh" and not store.exists(user_id) and lake.has_workouts(user_id):
        raise NeedsBackfillError(
            f"the lake at {lake.url} holds workouts of account {user_id} but no state for it "
            f"({store.where('_harvester/state')} was removed or is another lake's); run `backfill` once: "
            "it fetches only what the lake lacks and records the state refresh needs"
        )
    return store.load(user_id)


def _report(
    attempt: _Attempt, outcome: Outcome, exit_code: int, before: int | None, after: int | None,
) -> RunReport:
    return RunReport(
        command=attempt.command, run_id=attempt.run_id, user_id=attempt.user_id,
        exit_code=exit_code, outcome=outcome, stats=attempt.stats,
        elapsed_s=time.time() - attempt.started, watermark_before=before, watermark_after=after,
    )


def _record(store: StateStore, harvest: Harvest, attempt: _Attempt) -> RunReport:
    """Write the account's state and failures; the report for the manifest and the CLI."""
    state, outcome = harvest.state, harvest.outcome
    watermark_before = state.watermark
    _update_state(state, harvest, attempt.command)
    exit_code = (
        EXIT_INTERRUPTED if outcome.interrupted
        else EXIT_PARTIAL if outcome.failures else EXIT_OK
    )
    report = _report(attempt, outcome, exit_code, watermark_before, state.watermark)
    state.last_run = {
        "run_id": attempt.run_id, "command": attempt.command, "started_at": _iso(attempt.started),
        "finished_at": _iso(time.time()), "outcome": outcome_word(exit_code),
        "exit_code": exit_code,
    }
    store.save(state)
    # Quarantined records are listed beside the failures (kind "quarantine") for the
    # user to see; the next run does not retry them: their data cannot change.
    store.write_failures(state.user_id, [*state.failures, *outcome.quarantined])
    return report


def _write_manifest(store: StateStore, config: Config, report: RunReport) -> None:
    report.manifest = _manifest(report)
    key = store.manifest_path(report.run_id)
    report.manifest_path = store.where_absolute(key)  # for logs read elsewhere
    store.write_manifest(report.manifest, keep=config.output.keep_runs, path=key)


def _record_failed(store: StateStore, config: Config, attempt: _Attempt, exc: BaseException) -> None:
    """The manifest of a run that stopped on an error; a lake it cannot write gets none."""
    error = first_harvester_error(exc)
    if isinstance(exc, KeyboardInterrupt):
        code, message = EXIT_INTERRUPTED, "interrupted"
    elif error is not None:
        code, message = error.exit_code, str(error)
    else:
        code, message = EXIT_INTERNAL, f"internal error: {type(exc).__name__}: {exc}"
    for secret in config.credentials.secrets():
        message = message.replace(secret, "[redacted]")
    report = _report(attempt, Outcome(), code, None, None)
    manifest = _manifest(report) | {"error": message}
    try:
        store.write_manifest(manifest, keep=config.output.keep_runs)
    except (StateError, StorageError, OSError) as write_error:  # e.g. the root is not writable
        log.info("no manifest for the failed run: %s", write_error)


async def _cancel_on_signal(
    scope: anyio.CancelScope, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Cancel ``scope`` on the first SIGINT or SIGTERM; later ones are absorbed, not fatal."""
    signum = await first_signal(task_status)
    log.warning("received %s: committing what is complete, then stopping",
                signal.Signals(signum).name)
    scope.cancel()


async def first_signal(task_status: TaskStatus[None]) -> int:
    """Wait for the first SIGINT or SIGTERM (started once listening); absorb later ones."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for received in signals:
            signum = received
            break
    absorb_further_signals()
    return signum


def absorb_further_signals() -> None:
    """After the first SIGINT/SIGTERM, ignore the next ones for the rest of the process.

    The run is already stopping: it commits what is complete, writes its state and
    manifest and exits 130 within moments. An impatient second Ctrl-C must not
    turn that into a KeyboardInterrupt halfway through (SIGKILL still ends it at
    once; that is what the lake's atomic writes are for). Installed right after
    the first signal's receiver closes, before anything is said or done about it.
    """
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)


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


def _manifest(report: RunReport) -> dict[str, object]:
    outcome, stats = report.outcome, report.stats
    new, rechecked, changed = report.counts("workouts")
    return {
        "run_id": report.run_id,
        "version": __version__,
        "command": report.command,
        "user_id": report.user_id or None,
        "started_at": _iso(time.time() - report.elapsed_s),
        "duration_s": round(report.elapsed_s, 3),
        "outcome": outcome_word(report.exit_code),
        "exit_code": report.exit_code,
        "rows": dict(outcome.rows),
        "rows_new": {k: v.get("new", 0) for k, v in report.tally.items()},
        "rows_changed": {k: v.get("changed", 0) for k, v in report.tally.items()},
        "workouts_new": new,
        "workouts_rechecked": rechecked,
        "workouts_changed": changed,
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


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def outcome_word(exit_code: int) -> str:
    return OUTCOME_WORDS.get(exit_code, "error")


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


# -- login --------------------------------------------------------------------


async def run_login(config: Config, paste: Paste | None = None) -> str:
    """``login``: sign in once, store the tokens at ``auth.token_cache``; the account id."""
    async with open_api(config, RequestStats()) as api:
        return await api.sign_in(paste)
