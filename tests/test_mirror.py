"""The lake mirrors the source: graphs backfilled, moves, deletes, bad records, healing, verify."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from harvester.run import run_harvest
from harvester.state import StateStore
from tests.chaos import dataset_rows, mirror_problems, storm, utc_day
from tests.harness import admin, cli_env, harvest_config, run_cli_async, stats, write_config

DAY = 86_400


async def truth(url: str) -> list[dict[str, Any]]:
    async with __import__("aiohttp").ClientSession() as session, session.get(
        f"{url}/_emulator/truth"
    ) as response:
        found: list[dict[str, Any]] = orjson.loads(await response.read())["workouts"]
        return found


async def backfill(config: Any, **options: Any) -> Any:
    return await run_harvest(config, "backfill", backoff_base=0.0, **options)


async def test_millisecond_created_at_is_quarantined_alone(make_emulator: Any, tmp_path: Path) -> None:
    """One record with a millisecond created_at is quarantined; every other workout commits."""
    emulator = await make_emulator(workouts=60)
    bad = emulator.account.workouts[10]
    emulator.state.move_workout(bad.id, bad.created_at * 1000)
    report = await backfill(harvest_config(emulator.url, tmp_path))
    assert report.exit_code == 0, report.manifest
    assert [q.id for q in report.outcome.quarantined] == [bad.id]
    root = tmp_path / "lake"
    assert mirror_problems(root, await truth(emulator.url), quarantined={bad.id}) == []


async def test_damaged_page_quarantines_its_bad_records_and_deletes_nothing(
    make_emulator: Any, tmp_path: Path
) -> None:
    """A page with a non-id and a millisecond stamp: both quarantined, the rest commit, no delete."""
    emulator = await make_emulator(workouts=60)
    config = harvest_config(emulator.url, tmp_path, harvest__page_size=20)
    await backfill(config)
    await admin(emulator.url, "page_fault?kind=damaged&page=1")
    report = await backfill(config)
    assert report.exit_code == 0, report.manifest
    assert len(report.outcome.quarantined) == 2
    assert report.outcome.deleted == []
    assert mirror_problems(tmp_path / "lake", await truth(emulator.url)) == []


async def test_moved_workout_leaves_its_old_partition(make_emulator: Any, tmp_path: Path) -> None:
    """A workout whose created_at changed is in its new partition only, with its graph."""
    emulator = await make_emulator(workouts=60)
    config = harvest_config(emulator.url, tmp_path)
    await backfill(config)
    moved = emulator.account.workouts[20]
    old_day = utc_day(moved.created_at)
    await admin(emulator.url, f"move?id={moved.id}&shift={-3 * DAY}")
    report = await backfill(config)
    assert report.exit_code == 0 and report.outcome.moved == 1, report.manifest
    root = tmp_path / "lake"
    assert mirror_problems(root, await truth(emulator.url)) == []
    days = {part for part, row in dataset_rows(root, "workouts") if row["id"] == moved.id}
    assert days == {utc_day(moved.created_at)} and old_day not in days


async def test_deleted_workouts_are_removed_and_recorded_once(make_emulator: Any, tmp_path: Path) -> None:
    """Deleted at the source: gone from workouts and graphs, one deletions row each, run after run."""
    emulator = await make_emulator(workouts=60)
    config = harvest_config(emulator.url, tmp_path)
    await backfill(config)
    gone = [w.id for w in emulator.account.workouts[5:8]]
    created = {w.id: w.created_at for w in emulator.account.workouts[5:8]}
    await admin(emulator.url, "delete?" + "&".join(f"id={g}" for g in gone))
    report = await backfill(config)
    assert report.exit_code == 0 and sorted(report.outcome.deleted) == sorted(gone), report.manifest
    root = tmp_path / "lake"
    again = await backfill(config)
    assert again.outcome.deleted == []
    assert mirror_problems(root, await truth(emulator.url), deleted=set(gone)) == []
    rows = dataset_rows(root, "deletions")
    assert {row["workout_id"]: row["created_at"] for _, row in rows} == created
    user = emulator.account.user_id
    assert all(row["user_id"] == user and row["detected_at"].startswith(part) for part, row in rows)
    assert list((root / "deletions").glob(f"date=*/{user}.jsonl"))


async def test_mass_delete_is_refused_until_allowed(make_emulator: Any, tmp_path: Path) -> None:
    """Deleting 10 of 60 (over 10%) deletes nothing, exits 3 naming the flag; allowed, it deletes."""
    emulator = await make_emulator(workouts=60)
    config = harvest_config(emulator.url, tmp_path)
    await backfill(config)
    await admin(emulator.url, "delete?oldest=10")
    refused = await backfill(config)
    assert refused.exit_code == 3 and refused.outcome.deleted == []
    assert "--allow-mass-delete" in refused.outcome.failures[0].error
    allowed = await backfill(config, allow_mass_delete=True)
    assert allowed.exit_code == 0 and len(allowed.outcome.deleted) == 10
    assert mirror_problems(tmp_path / "lake", await truth(emulator.url)) == []


async def test_duplicate_page_never_deletes(make_emulator: Any, tmp_path: Path) -> None:
    """A listing that repeats a page saw fewer ids than its total: nothing is deleted."""
    emulator = await make_emulator(workouts=60)
    config = harvest_config(emulator.url, tmp_path, harvest__page_size=20)
    await backfill(config)
    await admin(emulator.url, "page_fault?kind=duplicate&page=2")
    report = await backfill(config)
    assert report.outcome.deleted == []
    assert len(dataset_rows(tmp_path / "lake", "workouts")) == 60


async def test_enabling_graphs_later_fetches_only_the_graphs(make_emulator: Any, tmp_path: Path) -> None:
    """A workouts-only backfill, then one with graphs: every graph fetched, no workout re-read."""
    emulator = await make_emulator(workouts=60)
    await backfill(harvest_config(emulator.url, tmp_path, harvest__datasets=["workouts"]))
    await admin(emulator.url, "reset")
    report = await backfill(harvest_config(emulator.url, tmp_path))
    assert report.exit_code == 0, report.manifest
    seen = await stats(emulator.url)
    assert "workout" not in seen["by_endpoint"]
    assert len(seen["by_id"]["performance_graph"]) == 60
    assert mirror_problems(tmp_path / "lake", await truth(emulator.url)) == []


async def test_backfill_of_an_unchanged_lake_only_lists(make_emulator: Any, tmp_path: Path) -> None:
    """A second backfill of a complete, unchanged lake makes only the listing requests."""
    emulator = await make_emulator(workouts=250)
    config = harvest_config(emulator.url, tmp_path)
    await backfill(config)
    await admin(emulator.url, "reset")
    report = await backfill(config)
    assert report.exit_code == 0
    seen = await stats(emulator.url)
    assert seen["by_endpoint"] == {"workouts": 3}


def damage(root: Path) -> dict[str, Path]:
    """Four kinds of damage in four files: partial line, not JSON, key twice, no final newline."""
    workouts = sorted((root / "workouts").glob("date=*/*.jsonl"))
    graphs = sorted((root / "performance_graphs").glob("date=*/*.jsonl"))
    partial, twice, no_newline = workouts[1], workouts[3], workouts[5]
    not_json = graphs[2]
    partial.write_bytes(partial.read_bytes()[:-40])
    not_json.write_bytes(b"{not json\n" + not_json.read_bytes())
    twice.write_bytes(twice.read_bytes() * 2)
    no_newline.write_bytes(no_newline.read_bytes().rstrip(b"\n"))
    return {"partial": partial, "not_json": not_json, "twice": twice, "no_newline": no_newline}


async def test_damaged_files_are_quarantined_healed_and_refetched(
    make_emulator: Any, tmp_path: Path
) -> None:
    """A run meeting damaged files keeps their whole lines, quarantines them, refetches the rest."""
    emulator = await make_emulator(workouts=120)
    config = harvest_config(emulator.url, tmp_path)
    await backfill(config)
    root = tmp_path / "lake"
    damaged = damage(root)
    report = await backfill(config)
    assert report.exit_code == 0, report.manifest
    assert report.outcome.healed
    assert mirror_problems(root, await truth(emulator.url)) == []
    kept = {p.relative_to(root / "_harvester" / "quarantine").parts[1:]
            for p in (root / "_harvester" / "quarantine").rglob("*.jsonl")}
    want = {damaged[k].relative_to(root).parts for k in ("partial", "not_json", "twice")}
    assert kept == want  # a missing final newline is fixed, not quarantined


async def test_sigkill_storm_with_deletes_and_moves_ends_a_mirror_within_two_runs(
    make_emulator: Any, tmp_path: Path
) -> None:
    """Backfills SIGKILLed while the source deletes and re-dates: two clean runs make a mirror."""
    emulator = await make_emulator(workouts=150, latency_ms=2.0, jitter_ms=2.0)
    result = await storm(emulator, tmp_path, kills=4, seed=11,
                         harvest={"concurrency": 4, "page_size": 50})
    assert result["problems"] == [] and result["finishing_runs"] <= 2, result


async def test_verify_reports_problems_and_repair_fixes_them(make_emulator: Any, tmp_path: Path) -> None:
    """verify exits 0 on a whole lake, 3 listing each damage; --repair leaves it whole (exit 0)."""
    emulator = await make_emulator(workouts=120)
    config = write_config(tmp_path, emulator.url)
    env = cli_env(tmp_path)
    assert (await run_cli_async(["backfill", "--config", str(config), "--no-progress"], env)).returncode == 0
    clean = await run_cli_async(["verify", "--config", str(config)], env)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    damaged = damage(tmp_path / "lake")
    (tmp_path / "lake" / "workouts" / ".x.jsonl.tmp-1-abcd").write_bytes(b"{")
    found = await run_cli_async(["verify", "--config", str(config)], env)
    assert found.returncode == 3, found.stderr
    for path in damaged.values():
        assert str(path) in found.stdout
    assert "temporary file" in found.stdout and "--repair" in found.stdout
    repaired = await run_cli_async(["verify", "--repair", "--config", str(config)], env)
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert (await run_cli_async(["verify", "--config", str(config)], env)).returncode == 0
    assert mirror_problems(tmp_path / "lake", await truth(emulator.url)) == []


async def test_refresh_reconciles_when_the_total_disagrees_then_stays_cheap(
    make_emulator: Any, tmp_path: Path
) -> None:
    """An old workout deleted at the source: the next refresh removes it; the one after only lists page 0."""
    emulator = await make_emulator(workouts=250)
    config = harvest_config(emulator.url, tmp_path)
    await backfill(config)
    old = emulator.account.workouts[-3].id
    await admin(emulator.url, f"delete?id={old}")
    report = await run_harvest(config, "refresh", backoff_base=0.0)
    assert report.exit_code == 0 and report.outcome.deleted == [old], report.manifest
    assert report.outcome.reconciled is not None
    assert mirror_problems(tmp_path / "lake", await truth(emulator.url), deleted={old}) == []
    await admin(emulator.url, "reset")
    quiet = await run_harvest(config, "refresh", backoff_base=0.0)
    assert quiet.outcome.reconciled is None
    assert (await stats(emulator.url))["by_endpoint"]["workouts"] == 1  # plus the look-back re-reads


async def test_refresh_reconciles_once_a_day(make_emulator: Any, tmp_path: Path) -> None:
    """With nothing changed, a refresh on a new UTC day lists everything once (pages of 100)."""
    emulator = await make_emulator(workouts=250)
    config = harvest_config(emulator.url, tmp_path)
    await backfill(config)
    store = StateStore(tmp_path / "lake")
    state = store.load(emulator.account.user_id)
    state.reconciled_day = "2000-01-01"
    store.save(state)
    await admin(emulator.url, "reset")
    report = await run_harvest(config, "refresh", backoff_base=0.0)
    assert report.outcome.reconciled == "first reconcile today"
    assert (await stats(emulator.url))["by_endpoint"]["workouts"] == 1 + 3
