"""A backfill writes each partition file once: days commit when the newest-first listing has passed them."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from harvester.frontier import Frontier, HeldRides
from harvester.lake import encoded
from harvester.run import run_harvest
from harvester.storage.local import LocalBatch
from tests.harness import comparable, harvest_config, lake_files

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


@pytest.fixture
def puts(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Every key the local store's batches write, counted (the real store still writes it)."""
    counted: Counter[str] = Counter()
    real = LocalBatch.put

    def put(self: LocalBatch, key: str, data: bytes, *, replaces: Sequence[str] = ()) -> None:
        counted[key] += 1
        real(self, key, data, replaces=replaces)

    monkeypatch.setattr(LocalBatch, "put", put)
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
    rides = [str(p.relative_to(root)) for p in lake_files(root, "rides")]
    assert rides and all(puts[key] >= 1 for key in rides)
    complete = {w["id"] for w in emulator.account.workouts if w["status"] == "COMPLETE"}
    assert {row for row in comparable(root)["workouts"]} == complete
