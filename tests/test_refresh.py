"""refresh over the CLI: cheap when nothing is new, look-back window, in-progress, shifting pages, daily sets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from harvester.state import StateStore
from tests.harness import cli_env, comparable, lake_rows, run_cli_async, write_config

NULL_RIDE = "0" * 32
DAY = 86_400


async def harvest(command: str, config: Path, tmp_path: Path) -> str:
    progress = ["--no-progress"] if command != "status" else []  # status has no progress bar
    done = await run_cli_async([command, "--config", str(config), *progress], cli_env(tmp_path))
    assert done.returncode == 0, done.stderr
    return done.stdout


def requests(emulator: Any) -> dict[str, Any]:
    snapshot: dict[str, Any] = emulator.stats_snapshot()
    emulator.reset_stats()
    return snapshot


def workout_ids(root: Path) -> set[str]:
    return {row["id"] for row in lake_rows(root, "workouts")}


async def test_refresh_costs_1_request_when_nothing_is_new_and_2k_plus_rides_plus_3_for_k_new(
    make_emulator: Any, tmp_path: Path
) -> None:
    """lookback 0: no news costs one list page (the cached token names the account, the
    daily datasets are done for today); K new workouts cost <= 2K + new rides + 3."""
    emulator = await make_emulator(workouts=60)
    config = write_config(tmp_path, emulator.url, harvest={"lookback_days": 0})
    await harvest("backfill", config, tmp_path)
    requests(emulator)

    await harvest("refresh", config, tmp_path)
    assert requests(emulator)["by_endpoint"] == {"workouts": 1}

    rides_before = {row["ride_id"] for row in lake_rows(tmp_path / "lake", "rides")}
    new = emulator.add_workouts(7)
    await harvest("refresh", config, tmp_path)
    seen = requests(emulator)
    new_rides = {emulator.account.by_id[w]["ride"]["id"] for w in new} - rides_before - {NULL_RIDE}
    assert seen["requests"] <= 2 * len(new) + len(new_rides) + 3, seen["by_endpoint"]
    assert set(seen["by_id"]["workout"]) == set(new)
    assert set(new) <= workout_ids(tmp_path / "lake")
    assert len(workout_ids(tmp_path / "lake")) == 67


async def test_default_lookback_rereads_only_the_window(make_emulator: Any, tmp_path: Path) -> None:
    """With lookback_days = 2 a refresh re-reads exactly the workouts newer than watermark - 2 days."""
    emulator = await make_emulator(workouts=60)
    config = write_config(tmp_path, emulator.url)
    await harvest("backfill", config, tmp_path)
    requests(emulator)
    state = StateStore(tmp_path / "lake").load(emulator.account.user_id)
    assert state.watermark is not None
    window = {w.id for w in emulator.account.workouts if w.created_at > state.watermark - 2 * DAY}
    assert 0 < len(window) < 60

    await harvest("refresh", config, tmp_path)
    assert set(requests(emulator)["by_id"]["workout"]) == window


async def test_refresh_without_a_backfill_is_a_backfill(make_emulator: Any, tmp_path: Path) -> None:
    """refresh on an empty lake harvests the whole history, as backfill does."""
    emulator = await make_emulator(workouts=40)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    await harvest("backfill", write_config(tmp_path / "a", emulator.url), tmp_path)
    await harvest("refresh", write_config(tmp_path / "b", emulator.url), tmp_path)
    assert comparable(tmp_path / "b" / "lake") == comparable(tmp_path / "a" / "lake")
    state = StateStore(tmp_path / "b" / "lake").load(emulator.account.user_id)
    assert state.backfill_complete and state.watermark is not None


async def test_in_progress_workout_arrives_with_the_run_after_it_completes(
    make_emulator: Any, tmp_path: Path
) -> None:
    """Absent while in progress, even below newer workouts; present after the next run once complete."""
    emulator = await make_emulator(workouts=30, in_progress=True)
    live = emulator.account.workouts[0]
    assert live.status == "IN_PROGRESS"
    config = write_config(tmp_path, emulator.url, harvest={"lookback_days": 0})
    root = tmp_path / "lake"
    await harvest("backfill", config, tmp_path)
    assert live.id not in workout_ids(root)
    new = emulator.add_workouts(4)  # newer workouts push it below the next watermark
    await harvest("refresh", config, tmp_path)
    assert live.id not in workout_ids(root)
    assert set(new) <= workout_ids(root)
    requests(emulator)

    await harvest("refresh", config, tmp_path)  # still running: one direct look, no re-reads
    seen = requests(emulator)
    assert seen["by_id"]["workout"] == {live.id: 1}
    assert seen["requests"] <= 3
    assert live.id not in workout_ids(root)

    live.end_time = live.start_time + live.seconds  # the rider finishes
    emulator.account.generation += 1
    await harvest("refresh", config, tmp_path)
    assert live.id in workout_ids(root)
    assert StateStore(root).load(emulator.account.user_id).in_progress == []
    assert len(workout_ids(root)) == 34


async def test_workouts_arriving_while_paging_cause_no_duplicate_and_no_miss(
    make_emulator: Any, tmp_path: Path
) -> None:
    """With a new workout on every list page, backfill holds no duplicate and the next refresh misses none."""
    emulator = await make_emulator(workouts=60, arrive_every=1)
    original = {w.id for w in emulator.account.workouts}
    config = write_config(tmp_path, emulator.url, harvest={"page_size": 10, "lookback_days": 0})
    root = tmp_path / "lake"
    await harvest("backfill", config, tmp_path)
    comparable(root)  # fails on any key twice
    assert max(requests(emulator)["by_id"]["workout"].values()) == 1, "a shifted item fetched twice"
    assert original <= workout_ids(root)
    assert len(emulator.account.workouts) > 60, "workouts arrived while the backfill paged"
    before_refresh = {w.id for w in emulator.account.workouts}
    await harvest("refresh", config, tmp_path)
    comparable(root)
    assert before_refresh <= workout_ids(root)


async def test_daily_datasets_are_fetched_once_per_utc_day(make_emulator: Any, tmp_path: Path) -> None:
    """Profiles and instructors: once today however many refreshes; again on a new UTC day."""
    emulator = await make_emulator(workouts=20)
    config = write_config(tmp_path, emulator.url)
    await harvest("backfill", config, tmp_path)
    await harvest("refresh", config, tmp_path)
    await harvest("refresh", config, tmp_path)
    seen = requests(emulator)["by_endpoint"]
    assert seen["overview"] == 1 and seen["instructors"] == 1

    path = tmp_path / "lake" / "_harvester" / "state" / f"{emulator.account.user_id}.json"
    state = orjson.loads(path.read_bytes())
    state["daily"] = {name: "2000-01-01" for name in state["daily"]}  # as if yesterday
    path.write_bytes(orjson.dumps(state))
    await harvest("refresh", config, tmp_path)
    seen = requests(emulator)["by_endpoint"]
    assert seen["overview"] == 1 and seen["instructors"] == 1
    assert len(lake_rows(tmp_path / "lake", "profiles")) == 1  # one row per account and day


async def test_status_shows_watermark_last_run_and_rows(make_emulator: Any, tmp_path: Path) -> None:
    """status prints, per account, the watermark, the last run's time and outcome, rows per dataset."""
    emulator = await make_emulator(workouts=25)
    config = write_config(tmp_path, emulator.url)
    await harvest("backfill", config, tmp_path)
    await harvest("refresh", config, tmp_path)
    out = await harvest("status", config, tmp_path)
    state = StateStore(tmp_path / "lake").load(emulator.account.user_id)
    assert state.last_run is not None
    assert f"account {emulator.account.user_id}" in out
    assert "watermark: 20" in out and "watermark: none" not in out
    assert f"last run: refresh finished {state.last_run['finished_at']}, success (exit 0)" in out
    assert "workouts 25" in out and "performance_graphs 25" in out and "profiles 1" in out
