"""A backfill writes each partition file once: days commit when the newest-first listing has passed them."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest

from harvester import writer as writer_module
from harvester.accounts import harvest_accounts
from harvester.classes import RunClasses
from harvester.config import load_config
from harvester.frontier import Frontier, HeldRides
from harvester.lake import encoded
from harvester.run import run_harvest
from harvester.storage.local import LocalBatch, LocalStorage
from harvester.writer import DEFAULT_BATCH_SIZE, Writer
from tests.harness import comparable, harvest_config, lake_files, stats
from tests.test_accounts import members_config

DAY = 86_400
T0 = 1_700_000_000 - 1_700_000_000 % DAY + 3_600  # 01:00 UTC on 2023-11-14


def test_a_day_closes_once_listed_past_and_back_from_the_workers() -> None:
    """A day is complete only when the listing reached an older day and none of it is in flight."""
    frontier = Frontier()
    assert not frontier.closed("2023-11-14")  # nothing listed yet
    frontier.listed(T0 + DAY)
    frontier.queued(T0 + DAY)
    frontier.listed(T0)
    frontier.queued(T0)
    assert not frontier.closed("2023-11-15"), "its workout is still with the workers"
    assert not frontier.closed("2023-11-14"), "the listing may still bring workouts of that day"
    frontier.returned(T0 + DAY)
    assert frontier.closed("2023-11-15")
    assert frontier.passed("2023-11-15") and not frontier.passed("2023-11-14")
    frontier.returned(T0)
    assert not frontier.closed("2023-11-14")
    frontier.finish()
    assert frontier.closed("2023-11-14") and frontier.closed("1999-01-01")


def test_a_workout_retried_by_id_keeps_no_day_open() -> None:
    """A ref without created_at (retried by id) opens no day; finish closes every day not in flight."""
    frontier = Frontier()
    frontier.queued(None)
    frontier.listed(T0)
    frontier.queued(T0)
    frontier.finish()
    assert not frontier.closed("2023-11-14")
    frontier.returned(None)
    frontier.returned(T0)
    assert frontier.closed("2023-11-14")


def _ride(ride_id: str, aired: int) -> Any:
    return encoded("rides", {"ride_id": ride_id, "ride": {"original_air_time": aired}})


def test_held_rides_leave_newest_day_first_and_count_their_bytes() -> None:
    """Held classes come out by day, newest first, while the test says yes; size follows."""
    held = HeldRides()
    rides = [_ride(f"{i:032x}", T0 - i * DAY) for i in range(5)] + [_ride("f" * 32, T0)]
    for ride in rides:
        held.add(ride)
    assert held.size == sum(len(r.line) for r in rides)
    assert held.newest_day() == "2023-11-14"
    out = held.release(lambda day: day >= "2023-11-13")
    assert sorted(r.key for r in out) == sorted([rides[0].key, rides[5].key, rides[1].key])
    assert held.size == sum(len(r.line) for r in rides[2:5])
    assert held.newest_day() == "2023-11-12"
    assert [r.key for r in held.release(lambda _: True)] == [r.key for r in rides[2:5]]
    assert held.size == 0 and held.newest_day() is None


def test_the_run_releases_a_day_once_every_running_account_has_passed_it() -> None:
    """Classes of two accounts wait for both listings; the one leaving takes the days holding
    its own classes (others' with them); each written class counts for the account that
    fetched it; a failed commit's classes are held again."""
    classes = RunClasses()
    first, second = Frontier(), Frontier()
    classes.join(first)
    classes.join(second)
    alice: dict[str, int] = {}
    bob: dict[str, int] = {}
    assert classes.claim("a" * 32) and not classes.claim("a" * 32)
    newer, older = _ride("a" * 32, T0), _ride("b" * 32, T0 - 3 * DAY)
    classes.hold(newer, alice)
    classes.hold(older, bob)
    classes.hold(_ride("c" * 32, T0 - 3 * DAY), alice)
    first.listed(T0 - DAY)
    assert not classes.due() and classes.release() == [], "the second listing has not passed it"
    second.listed(T0 - DAY)
    assert classes.due()
    out = classes.release()
    assert [r.key for r in out] == ["a" * 32]
    classes.put_back(out)  # its commit failed
    assert [r.key for r in classes.release()] == ["a" * 32]
    classes.credit(out)
    assert alice == {"rides": 1} and bob == {}
    classes.leave(second)  # bob's run ends: the day holding his class goes, alice's of it too
    held = classes.release(leaving=bob)
    assert [r.key for r in held] == [older.key, "c" * 32]
    classes.credit(held)
    assert alice == {"rides": 2} and bob == {"rides": 1}
    classes.leave(first)
    assert classes.release(leaving=alice) == []


def test_the_last_account_to_leave_takes_every_class_held() -> None:
    classes = RunClasses()
    only = Frontier()
    classes.join(only)
    owner: dict[str, int] = {}
    classes.hold(_ride("a" * 32, T0), owner)
    classes.hold(_ride("b" * 32, T0 - 9 * DAY), {})
    classes.leave(only)
    assert sorted(r.key for r in classes.release(leaving=owner)) == ["a" * 32, "b" * 32]


def test_too_many_held_rides_leave_fullest_day_first() -> None:
    """Past the cap the days holding most bytes go first, and a day released early can come back."""
    held = HeldRides()
    full = [_ride(f"{i:032x}", T0 - 5 * DAY) for i in range(3)]
    for ride in [*full, _ride("a" * 32, T0), _ride("b" * 32, T0 - 9 * DAY)]:
        held.add(ride)
    one = len(full[0].line)
    out = held.release_largest(keep=2 * one + 10)
    assert sorted(r.key for r in out) == sorted(r.key for r in full)
    assert held.size <= 2 * one + 10
    held.add(_ride("c" * 32, T0 - 5 * DAY))  # the rest of that day arrives later
    assert [r.key for r in held.release(lambda day: day >= "2023-11-09")] == ["a" * 32, "c" * 32]
    assert held.newest_day() == "2023-11-05"


@pytest.fixture
def puts(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Every key the local store writes, counted: in batches (an account's files, and the
    shared files' merges, ``put_if``) and by compare-and-swap on its own (a shared file whose
    partition holds both compression variants). The real store still writes it."""
    counted: Counter[str] = Counter()
    real_put, real_create, real_replace = LocalBatch._put, LocalStorage.create, LocalStorage.replace

    def put(self: LocalBatch, key: str, data: bytes, replaces: Sequence[str], unless: Any) -> None:
        counted[key] += 1
        real_put(self, key, data, replaces, unless)

    def create(self: LocalStorage, key: str, data: bytes, *, private: bool = False) -> str:
        counted[key] += 1
        return real_create(self, key, data, private=private)

    def replace(self: LocalStorage, key: str, data: bytes, version: str, *, private: bool = False) -> str:
        counted[key] += 1
        return real_replace(self, key, data, version, private=private)

    monkeypatch.setattr(LocalBatch, "_put", put)
    monkeypatch.setattr(LocalStorage, "create", create)
    monkeypatch.setattr(LocalStorage, "replace", replace)
    return counted


async def test_a_dense_backfill_writes_each_workout_and_graph_file_once(
    make_emulator: Any, tmp_path: Path, puts: Counter[str]
) -> None:
    """300 workouts over 15 days (commits of 32 would split most days): each workouts and graphs file written once."""
    emulator = await make_emulator(workouts=300, history_days=15)
    config = harvest_config(emulator.url, tmp_path, harvest__page_size=20)
    report = await run_harvest(config, "backfill")
    assert report.exit_code == 0, report.manifest
    root = tmp_path / "lake"
    for dataset in ("workouts", "performance_graphs"):
        files = [str(p.relative_to(root)) for p in lake_files(root, dataset)]
        assert len(files) >= 15
        written = {key: puts[key] for key in files}
        assert all(n == 1 for n in written.values()), (dataset, written)
    # A class file is written when the listing passes its day; a class whose workout was
    # listed before that but answered after it is merged into it again (rare, not pinned).
    rides = [str(p.relative_to(root)) for p in lake_files(root, "rides")]
    assert rides and all(puts[key] >= 1 for key in rides)
    complete = {w["id"] for w in emulator.account.workouts if w["status"] == "COMPLETE"}
    assert {row for row in comparable(root)["workouts"]} == complete


async def test_classes_a_killed_run_held_are_fetched_side_by_side_next_run(
    make_emulator: Any, tmp_path: Path
) -> None:
    """Classes the lake's workouts name but it lacks come back next run, each once, several at a time."""
    emulator = await make_emulator(workouts=120, latency_ms=5.0)
    config = harvest_config(emulator.url, tmp_path, harvest__concurrency=8)
    assert (await run_harvest(config, "backfill")).exit_code == 0
    root = tmp_path / "lake"
    whole = comparable(root)["rides"]
    for path in lake_files(root, "rides"):  # what a SIGKILL takes from the classes held for their day
        path.unlink()
    emulator.reset_stats()
    report = await run_harvest(config, "backfill")
    assert report.exit_code == 0, report.manifest
    assert comparable(root)["rides"] == whole
    seen = await stats(emulator.url)
    calls = seen["by_id"]["ride_details"]
    assert set(calls) >= set(whole) and max(calls.values()) == 1
    assert "workout" not in seen["by_id"], "the workouts were all in the lake"
    assert seen["peak_concurrency"] > 1, seen["peak_concurrency"]


async def test_the_accounts_of_a_run_write_each_classes_day_about_once(
    make_emulator: Any, tmp_path: Path, puts: Counter[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Four accounts in one process hold their classes together until all have listed past
    the day: a rides file gets one write, not one per account that took a class aired
    then; and each class written counts for one account."""
    emulator = await make_emulator(workouts=300, accounts=4, history_days=20)
    path, env = members_config(tmp_path, emulator.url, 4)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    outcomes = await harvest_accounts(load_config(path), "backfill", None)
    assert [o.exit_code for o in outcomes] == [0, 0, 0, 0], [o.error for o in outcomes]
    root = tmp_path / "lake"
    files = [str(p.relative_to(root)) for p in lake_files(root, "rides")]
    writes = sum(puts[key] for key in files)
    rows = sum(len(p.read_bytes().splitlines()) for p in lake_files(root, "rides"))
    # Held per account, these 355 or so files took about 650 writes (1.84 a file). Here
    # most classes aired before the 20 days of workouts, so the accounts' last commits
    # write them: the first account to finish takes every day holding one of its
    # classes, a later one the days holding classes fetched since (1.16-1.34 a file).
    assert writes <= 1.5 * len(files), (writes, len(files))
    assert sum(o.report.outcome.rows.get("rides", 0) for o in outcomes if o.report) == rows


@pytest.fixture
def slow_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each local commit takes 30 ms longer (a disk slower than the network); it still writes."""
    real = LocalBatch.commit

    def commit(self: LocalBatch) -> None:
        time.sleep(0.03)
        real(self)

    monkeypatch.setattr(LocalBatch, "commit", commit)


def peak_backlog(monkeypatch: pytest.MonkeyPatch, limit: int) -> list[int]:
    """Every writer gets ``limit``; the most results any held uncommitted, as the run goes."""
    monkeypatch.setattr(writer_module, "DEFAULT_BACKLOG", limit)
    peak = [0]
    real_add = Writer.add

    def add(self: Writer, result: Any) -> None:
        real_add(self, result)
        peak[0] = max(peak[0], self.backlog)

    monkeypatch.setattr(Writer, "add", add)
    return peak


async def test_a_disk_slower_than_the_fetching_holds_the_listing_back_not_memory(
    make_emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slow_disk: None,
) -> None:
    """Commits slower than the answers: the listing waits while the limit of results wait for a
    commit, so the writer never holds many more (the open workouts and one round on top)."""
    emulator = await make_emulator(workouts=400)
    peak = peak_backlog(monkeypatch, 40)
    config = harvest_config(emulator.url, tmp_path, harvest__concurrency=8)
    report = await run_harvest(config, "backfill")
    assert report.exit_code == 0, report.manifest
    complete = {w["id"] for w in emulator.account.workouts if w["status"] == "COMPLETE"}
    assert set(comparable(tmp_path / "lake")["workouts"]) == complete
    # 40, plus up to 3 x 8 open workouts finishing, plus what arrives while the writer's
    # next round begins. Without the wait it holds most of the 400.
    assert peak[0] <= 40 + 3 * 8 + DEFAULT_BATCH_SIZE, peak


async def test_a_day_with_more_workouts_than_the_backlog_limit_still_completes(
    make_emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slow_disk: None,
) -> None:
    """Results of a day the listing has not passed cannot be committed; waiting for them to be
    would never end, so the listing goes on while no commit runs."""
    emulator = await make_emulator(workouts=150, history_days=1)
    peak = peak_backlog(monkeypatch, 20)
    config = harvest_config(emulator.url, tmp_path, harvest__concurrency=8)
    with anyio.fail_after(60):
        report = await run_harvest(config, "backfill")
    assert report.exit_code == 0, report.manifest
    assert peak[0] > 20, "the day's results outgrew the limit"
    complete = {w["id"] for w in emulator.account.workouts if w["status"] == "COMPLETE"}
    assert set(comparable(tmp_path / "lake")["workouts"]) == complete
