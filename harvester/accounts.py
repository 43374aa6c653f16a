"""A command over the accounts ``--account`` selects: each one's run, one account's failure isolated.

Without ``[[accounts]]`` there is one account (``[auth]`` and ``PELOTON_*``)
and its errors end the command as they always did. With ``[[accounts]]``
every selected account runs with its own method, token cache and secrets;
an account that fails (authentication, an outage, a missing variable) is
named on stderr and the others still run: the command then exits 3.

Several accounts run at once, in one task group: each behind its own limiter
at ``requests_per_second`` and its own run lock, all over one connection pool,
all stopped together by one SIGINT/SIGTERM watcher.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp
import anyio
from anyio.abc import TaskStatus

from harvester.api import open_session
from harvester.classes import RunClasses
from harvester.client import DEFAULT_BACKOFF_BASE_S
from harvester.config import DEFAULT_ACCOUNT, AccountConfig, Config, require_credentials
from harvester.errors import ConfigError, HarvesterError
from harvester.run import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PARTIAL,
    ProgressFactory,
    RunReport,
    first_signal,
    run_harvest,
)
from harvester.storage import is_object_url, parse_object_url

log = logging.getLogger(__name__)


@dataclass(slots=True)
class AccountOutcome:
    """One account's run: its report, or the error that stopped it."""

    name: str
    report: RunReport | None = None
    error: HarvesterError | None = None

    @property
    def exit_code(self) -> int:
        if self.report is not None:
            return self.report.exit_code
        return self.error.exit_code if self.error is not None else EXIT_OK


def check_lake_root(config: Config) -> None:
    """``demo`` writes a local folder it then shows with DuckDB: refuse an object-store root."""
    root = config.output.root
    if is_object_url(root):
        url = parse_object_url(root)  # a malformed URL says what is wrong with it
        raise ConfigError(
            f"output.root {url}: demo writes to a local folder; give --out a folder "
            "(backfill and refresh write object-store lakes)"
        )


def check_credentials(config: Config, names: Sequence[str] | None) -> None:
    """Without [[accounts]], fail early when the one account lacks its secrets (as before)."""
    config.select(names)  # an unknown --account is a usage error whatever happens next
    if not config.accounts:
        require_credentials(config)


async def harvest_accounts(
    config: Config, command: str, names: Sequence[str] | None, *,
    progress: ProgressFactory | None = None, backoff_base: float = DEFAULT_BACKOFF_BASE_S,
    allow_mass_delete: bool = False,
) -> list[AccountOutcome]:
    """Run ``backfill`` or ``refresh`` for each selected account, all at once; outcomes in config order."""
    accounts = config.select(names)
    if not accounts:
        report = await run_harvest(config, command, progress=progress, backoff_base=backoff_base,
                                   allow_mass_delete=allow_mass_delete)
        return [AccountOutcome(DEFAULT_ACCOUNT, report=report)]
    if len(accounts) > 1:
        progress = None  # one bar per account would garble the terminal; summaries follow
    outcomes = [AccountOutcome(account.name) for account in accounts]
    stop_requested = anyio.Event()
    classes = RunClasses()  # a class is the same for every account: one asks for it
    pool = open_session(config.harvest.concurrency * len(accounts))
    async with pool as session, anyio.create_task_group() as watcher:
        await watcher.start(_set_on_signal, stop_requested)
        async with anyio.create_task_group() as runs:
            for outcome, account in zip(outcomes, accounts, strict=True):
                runs.start_soon(_harvest_one, config.for_account(account), account, command, outcome,
                                _RunOptions(progress, backoff_base, allow_mass_delete,
                                            stop_requested, session, classes))
        watcher.cancel_scope.cancel()
    return outcomes


@dataclass(frozen=True, slots=True)
class _RunOptions:
    progress: ProgressFactory | None
    backoff_base: float
    allow_mass_delete: bool
    stop_requested: anyio.Event
    session: aiohttp.ClientSession
    classes: RunClasses


async def _harvest_one(
    config: Config, account: AccountConfig, command: str, outcome: AccountOutcome,
    options: _RunOptions,
) -> None:
    """One account's run; its error is recorded in ``outcome``, never raised into the others."""
    try:
        require_credentials(config, account)
        outcome.report = await run_harvest(
            config, command, progress=options.progress, backoff_base=options.backoff_base,
            allow_mass_delete=options.allow_mass_delete, stop_requested=options.stop_requested,
            session=options.session, classes=options.classes,
        )
    except HarvesterError as exc:
        log.error("account %s failed: %s", account.name, exc)
        outcome.error = exc


async def _set_on_signal(
    event: anyio.Event, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Set ``event`` on the first SIGINT or SIGTERM: every account's run commits, then stops.

    Later signals are ignored, as a single account's run does (``absorb_further_signals``).
    """
    signum = await first_signal(task_status)
    log.warning("received %s: every account commits what is complete, then stops",
                signal.Signals(signum).name)
    event.set()


def exit_code(outcomes: Sequence[AccountOutcome]) -> int:
    """One account: its own code. Several: 130 if interrupted, 3 if any failed, else 0."""
    if len(outcomes) == 1:
        return outcomes[0].exit_code
    codes = [o.exit_code for o in outcomes]
    if EXIT_INTERRUPTED in codes:
        return EXIT_INTERRUPTED
    return EXIT_OK if all(code == EXIT_OK for code in codes) else EXIT_PARTIAL


def failure_line(outcomes: Sequence[AccountOutcome]) -> str | None:
    """``accounts that failed: bob (…); carol (…)``, or None when none did."""
    failed = [o for o in outcomes if o.error is not None]
    if not failed:
        return None
    return "accounts that failed: " + "; ".join(f"{o.name} ({o.error})" for o in failed)
