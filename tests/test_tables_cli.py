"""The seed endpoints in the lake, and the `tables` command and `output.tables` over the CLI."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from harvester.run import run_harvest
from harvester.storage import Storage, open_storage
from harvester.tables import TABLES, build_tables
from tests.harness import cli_env, harvest_config, lake_files, lake_rows, run_cli, run_cli_async, write_config


async def test_metadata_mappings_and_public_profile_land_in_the_lake(make_emulator: Any, tmp_path: Path) -> None:
    """One metadata_mappings row under today's UTC date decodes every class_type_id; profiles carry `user`."""
    emulator = await make_emulator(workouts=80)
    report = await run_harvest(harvest_config(emulator.url, tmp_path), "backfill")
    assert report.exit_code == 0, report.manifest
    root = tmp_path / "lake"
    today = datetime.now(UTC).date().isoformat()
    [path] = lake_files(root, "metadata_mappings")
    assert path.parent.name == f"date={today}" and path.name == "metadata_mappings.jsonl"
    [mappings] = lake_rows(root, "metadata_mappings")
    assert {"instructors", "class_types", "device_type_display_names", "difficulty_levels"} <= set(mappings)
    class_types = {c["id"]: c for c in mappings["class_types"]}
    assert all({"name", "display_name", "fitness_discipline"} <= set(c) for c in class_types.values())
    used = {cid for w in lake_rows(root, "workouts") for cid in (w["ride"].get("class_type_ids") or [])}
    assert used and used <= set(class_types)
    device_types = {d["device_type"] for d in mappings["device_type_display_names"]}
    assert {w["device_type"] for w in lake_rows(root, "workouts")} <= device_types

    [profile] = lake_rows(root, "profiles")
    assert profile["user"]["id"] == emulator.account.user_id == profile["user_id"]
    assert "total_workouts" in profile["user"] and "overview" in profile


async def test_tables_command_builds_and_is_incremental(make_emulator: Any, tmp_path: Path) -> None:
    """`tables` builds every table (exit 0, one summary line); run again it rebuilds nothing."""
    emulator = await make_emulator(workouts=40)
    config = write_config(tmp_path, emulator.url)
    done = await run_cli_async(["backfill", "--config", str(config)], cli_env(tmp_path))
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "lake" / "tables").exists()  # output.tables is off by default
    first = await run_cli_async(["tables", "--config", str(config)], cli_env(tmp_path))
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("tables: rebuilt ") and "workouts" in first.stdout
    frame = pd.read_parquet(tmp_path / "lake" / "tables" / "workouts")
    assert len(frame) == 40
    types = pd.read_parquet(tmp_path / "lake" / "tables" / "class_types")
    assert set(frame["class_type_ids"].explode().dropna()) <= set(types["class_type_id"])
    again = await run_cli_async(["tables", "--config", str(config)], cli_env(tmp_path))
    assert again.returncode == 0 and again.stdout.startswith("tables: rebuilt 0 of "), again.stdout


async def test_output_tables_builds_after_each_harvest(make_emulator: Any, tmp_path: Path) -> None:
    """With output.tables = true a backfill leaves the tables built from what it wrote."""
    emulator = await make_emulator(workouts=30)
    config = write_config(tmp_path, emulator.url, output={"tables": True})
    done = await run_cli_async(["backfill", "--config", str(config)], cli_env(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "tables: rebuilt " in done.stdout
    assert len(pd.read_parquet(tmp_path / "lake" / "tables" / "workouts")) == 30


def test_tables_without_a_lake_exits_2_with_one_line(tmp_path: Path) -> None:
    """`tables` on a root that does not exist: exit 2, one line saying what to do, no traceback."""
    done = run_cli(["tables", "--out", str(tmp_path / "nowhere")], cli_env(tmp_path))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "run backfill first" in done.stderr
    assert not (tmp_path / "nowhere").exists()


async def test_source_deletes_and_moves_reach_the_tables(make_emulator: Any, tmp_path: Path) -> None:
    """After the mirror deletes and moves workouts, an incremental build drops and moves their rows
    and lists the deletions, exactly as a build from scratch does."""
    from harvester.tables import build_tables
    from tests.harness import admin

    emulator = await make_emulator(workouts=60)
    config = harvest_config(emulator.url, tmp_path)
    assert (await run_harvest(config, "backfill")).exit_code == 0
    root = tmp_path / "lake"
    build_tables(root)
    gone = [w.id for w in emulator.account.workouts[5:8]]
    moved = emulator.account.workouts[20]
    await admin(emulator.url, "delete?" + "&".join(f"id={g}" for g in gone))
    await admin(emulator.url, f"move?id={moved.id}&shift={-40 * 86_400}")
    report = await run_harvest(config, "backfill")
    assert report.exit_code == 0 and report.outcome.moved == 1, report.manifest

    build_tables(root)
    workouts = pd.read_parquet(root / "tables" / "workouts")
    assert len(workouts) == 57 and not set(gone) & set(workouts["workout_id"])
    row = workouts[workouts["workout_id"] == moved.id].iloc[0]
    assert row["created_at"] == pd.Timestamp(moved.created_at, unit="s", tz="UTC")
    assert row["month"] == datetime.fromtimestamp(moved.created_at, UTC).strftime("%Y-%m")
    metrics = pd.read_parquet(root / "tables" / "workout_metrics")
    assert not set(gone) & set(metrics["workout_id"])
    assert set(metrics.loc[metrics["workout_id"] == moved.id, "month"]) == {row["month"]}
    deletions = pd.read_parquet(root / "tables" / "deletions")
    assert sorted(deletions["workout_id"]) == sorted(gone)

    incremental = workouts.drop(columns="month").sort_values("workout_id").reset_index(drop=True)
    import shutil

    shutil.rmtree(root / "tables")
    build_tables(root)
    fresh = pd.read_parquet(root / "tables" / "workouts").drop(columns="month")
    pd.testing.assert_frame_equal(fresh.sort_values("workout_id").reset_index(drop=True), incremental)


async def test_two_accounts_share_one_mappings_row_and_one_set_of_tables(
        make_emulator: Any, tmp_path: Path) -> None:
    """Two accounts in one lake: one metadata_mappings row for the day, a `user` per profile,
    and tables (built after the run) holding both accounts' workouts."""
    from tests.test_accounts import members_config

    emulator = await make_emulator(workouts=12, accounts=2)
    path, env = members_config(tmp_path, emulator.url, 2)
    path.write_text(path.read_text(encoding="utf-8").replace("[output]\n", "[output]\ntables = true\n"),
                    encoding="utf-8")
    done = await run_cli_async(["backfill", "--config", str(path), "--no-progress"], env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("tables: rebuilt ") == 1  # once, after both accounts
    root = tmp_path / "lake"
    assert len(lake_rows(root, "metadata_mappings")) == 1
    users = {a.user_id for a in emulator.state.accounts}
    assert {p["user"]["id"] for p in lake_rows(root, "profiles")} == users
    workouts = pd.read_parquet(root / "tables" / "workouts")
    assert workouts.groupby("user_id").size().to_dict() == {u: 12 for u in users}


async def test_tables_on_an_s3_lake_match_the_raw_lake_and_are_incremental(
    make_emulator: Any, tmp_path: Path, s3_root: str
) -> None:
    """On an s3:// lake (moto), output.tables builds Parquet objects whose rows match a local
    build of the same raw objects; `tables` run again rebuilds nothing."""
    emulator = await make_emulator(workouts=40)
    config = write_config(tmp_path, emulator.url, output={"root": s3_root, "tables": True})
    env = cli_env(tmp_path)
    done = await run_cli_async(["backfill", "--config", str(config), "--no-progress"], env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("tables: rebuilt ") == 1
    storage = open_storage(s3_root)
    keys = [entry.key for entry in storage.walk("")]
    raw = tmp_path / "raw"  # the raw objects as files, to build the same tables locally
    for key in keys:
        if not key.startswith(("tables/", "_harvester/")):
            download(storage, key, raw / key)
    build_tables(raw)
    parquet = sorted(key for key in keys if key.startswith("tables/") and key.endswith(".parquet"))
    assert {key.split("/")[1] for key in parquet} == {spec.name for spec in TABLES}
    assert "tables/_manifest.json" in keys
    copy = tmp_path / "copy"
    for key in parquet:
        download(storage, key, copy / key)
    for spec in TABLES:
        remote = pd.read_parquet(copy / "tables" / spec.name)
        assert len(remote) == len(pd.read_parquet(raw / "tables" / spec.name)), spec.name
    assert len(pd.read_parquet(copy / "tables" / "workouts")) == len(lake_rows(raw, "workouts")) == 40

    again = await run_cli_async(["tables", "--config", str(config)], env)
    assert again.returncode == 0 and again.stdout.startswith("tables: rebuilt 0 of "), again.stdout
    assert [entry.key for entry in storage.walk("tables")] == [k for k in keys if k.startswith("tables/")]


def download(storage: Storage, key: str, dest: Path) -> None:
    blob = storage.read(key)
    assert blob is not None, key
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(blob.data)
