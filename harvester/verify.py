"""``verify``: check every invariant of SPEC "The lake"; ``--repair`` fixes what it finds.

Checks, per account with state in the lake: each key once (the classes, which
every account shares, once in the whole lake), each row in the partition it
names, every file whole and parseable (heal.py's scan), a graph for every
workout (when ``performance_graphs`` is enabled), the class of every class
workout (when ``rides`` is), and no temporary file left by a killed run.

Every file is read, whatever the runs' scan caches (scancache.py) say.
``--repair`` drops those caches and runs a backfill: it reads and heals every
file (quarantining damaged ones), fetches what they lost and whatever else is
missing, then checks again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import anyio

from harvester.api import NULL_RIDE_ID, is_ride_id
from harvester.config import Config
from harvester.heal import LakeScan, scan
from harvester.lake import SHARED_FILES, Lake
from harvester.scancache import ScanCache
from harvester.state import StateStore
from harvester.storage import open_storage

EXIT_CLEAN = 0
EXIT_PROBLEMS = 3


@dataclass(slots=True)
class VerifyReport:
    """What ``verify`` found, per account and lake-wide."""

    problems: list[str] = field(default_factory=list)
    accounts: int = 0

    @property
    def exit_code(self) -> int:
        return EXIT_PROBLEMS if self.problems else EXIT_CLEAN

    def lines(self) -> list[str]:
        if not self.problems:
            return [f"verify: the lake is whole ({self.accounts} account(s) checked)"]
        return [*self.problems, f"verify: {len(self.problems)} problem(s) found; "
                "`verify --repair` fixes them (it fetches what is missing)"]


def check_lake(config: Config) -> VerifyReport:
    """Every problem of every account's files; blocking, reads only."""
    storage = open_storage(config.output.root)
    lake = Lake(storage, config.output.compression)
    store = StateStore(storage)
    report = VerifyReport()
    temps: set[str] = set()
    accounts = store.accounts()
    # The classes the lake holds, and those the API has no details for (a 404, remembered by
    # whichever account asked): the same for every account, so learnt once.
    classes: set[str] = set()
    if "rides" in config.harvest.datasets:
        classes = lake.ride_ids().union(*(store.load(u).missing_rides for u in accounts))
    for user_id in accounts:
        report.accounts += 1
        found = scan(lake, user_id, temp_files=True)
        for problem in found.problems(lake.url):
            if "temporary file" in problem:
                temps.add(problem)  # lake-wide: the same for every account
            else:
                report.problems.append(f"account {user_id}: {problem}")
        missing = _missing(config, classes, found)
        report.problems += [f"account {user_id}: {p}" for p in missing]
    report.problems += sorted(temps)
    report.problems += _held_by_two_accounts(lake)
    return report


def _held_by_two_accounts(lake: Lake) -> list[str]:
    """Keys of a shared dataset (classes) in the per-account files of two accounts: an older
    version wrote them so. Each account's scan sees only its own such files."""
    problems: list[str] = []
    for dataset in SHARED_FILES:
        where: dict[str, list[str]] = {}
        for path in lake.unshared_files(dataset):
            for key in lake.keys_in(dataset, path):
                where.setdefault(key, []).append(path)
        problems += [f"{dataset} key {key} is held {len(paths)} times ({', '.join(paths)})"
                     for key, paths in sorted(where.items()) if len(paths) > 1]
    return problems


def _missing(config: Config, classes: set[str], found: LakeScan) -> list[str]:
    """Graphs and classes (not among ``classes``: in the lake, or without details) the
    account's workouts need and the lake lacks."""
    datasets = set(config.harvest.datasets)
    workouts = found.index("workouts")
    problems: list[str] = []
    if "performance_graphs" in datasets:
        graphs = found.copies["performance_graphs"]
        problems += [f"workout {key} has no performance graph"
                     for key in sorted(workouts.keys() - graphs.keys())]
    if "rides" in datasets:
        for key, copy in sorted(workouts.items()):
            ride = copy.ride_id
            if ride and ride != NULL_RIDE_ID and is_ride_id(ride) and ride not in classes:
                problems.append(f"workout {key}: its class {ride} is not in rides")
    return problems


def _forget_scans(config: Config) -> None:
    """Drop every account's scan cache: the repairing run reads every file, as verify did."""
    storage = open_storage(config.output.root)
    for user_id in StateStore(storage).accounts():
        ScanCache.discard(storage, user_id)


async def verify(config: Config, *, repair: bool, print_line: Callable[[str], None]) -> int:
    """Check, and with ``repair`` backfill and check again; the exit code (0 clean, 3 not)."""
    report = await anyio.to_thread.run_sync(check_lake, config)
    for line in report.lines():
        print_line(line)
    if not repair or not report.problems:
        return report.exit_code
    from harvester.run import run_harvest  # run imports the pipeline; plain verify needs none of it

    await anyio.to_thread.run_sync(_forget_scans, config)
    ran = await run_harvest(config, "backfill")
    print_line(f"repair: {ran.summary()}")
    after = await anyio.to_thread.run_sync(check_lake, config)
    for line in after.lines():
        print_line(line)
    return after.exit_code
