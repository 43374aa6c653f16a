"""Typed tables: every reader reads them with no options, counts equal the raw lake,
one schema whatever is null, incremental and rebuildable, atomic."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from harvester.lake import Lake
from harvester.tables import TABLES, build_tables
from harvester.tables.schemas import SCHEMAS
from tests.harness import lake_rows

TABLE_NAMES = [spec.name for spec in TABLES]
DEMO_WORKOUTS = 120


def demo_lake(parent: Path, workouts: int = DEMO_WORKOUTS, seed: int = 1) -> Path:
    """A lake as `demo` makes it (emulator subprocess, real backfill): parent/peloton-lake."""
    root = parent / "peloton-lake"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PELOTON_")}
    done = subprocess.run(
        [sys.executable, "-m", "harvester", "demo", "--out", str(root), "--workouts", str(workouts),
         "--seed", str(seed), "--no-progress"],
        env=env, capture_output=True, text=True, timeout=120, check=False, cwd=parent,
    )
    assert done.returncode == 0, done.stderr
    return root


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One demo lake per module (its tables are built by demo itself)."""
    return demo_lake(tmp_path_factory.mktemp("demo"))


def raw_counts(root: Path) -> dict[str, int]:
    """What each table must hold, counted from the raw lake without the tables' code."""
    graphs = lake_rows(root, "performance_graphs")
    mappings = sorted(lake_rows(root, "metadata_mappings"), key=lambda r: r["_harvested_at"])
    return {
        "workouts": len(lake_rows(root, "workouts")),
        "workout_metrics": sum(len(g["seconds_since_pedaling_start"]) for g in graphs),
        "classes": len(lake_rows(root, "rides")),
        "instructors": len(lake_rows(root, "instructors")),
        "class_types": len(mappings[-1]["class_types"]) if mappings else 0,
        "deletions": len(lake_rows(root, "deletions")),
    }


def table_dir(root: Path, name: str) -> Path:
    return root / "tables" / name


READERS: dict[str, Callable[[Path], int]] = {
    "pandas": lambda d: len(pd.read_parquet(d)),
    "polars": lambda d: pl.scan_parquet(f"{d}/**/*.parquet").select(pl.len()).collect().item(),
    "pyarrow": lambda d: ds.dataset(d, partitioning="hive").count_rows(),
    "duckdb": lambda d: duckdb.sql(
        f"SELECT count(*) FROM read_parquet('{d}/**/*.parquet', hive_partitioning=true)").fetchall()[0][0],
}


@pytest.mark.parametrize("reader", sorted(READERS))
def test_every_reader_reads_every_table_with_no_options(lake: Path, reader: str) -> None:
    """pandas, polars, pyarrow and DuckDB read each table as is; row counts equal the raw lake."""
    expected = raw_counts(lake)
    assert expected["workouts"] > 100 and expected["workout_metrics"] > 10_000
    got = {name: READERS[reader](table_dir(lake, name)) for name in TABLE_NAMES}
    assert got == expected


def test_every_file_has_its_tables_schema(lake: Path) -> None:
    """Each Parquet file of a table carries exactly the table's declared schema."""
    for name in TABLE_NAMES:
        files = sorted(table_dir(lake, name).glob("**/*.parquet"))
        assert files, name
        for path in files:
            assert pq.read_schema(path).remove_metadata() == SCHEMAS[name], path


def test_schema_does_not_depend_on_nulls(tmp_path: Path) -> None:
    """A table whose optional columns are all null has the same schema as a full one."""
    root = tmp_path / "lake"
    lake = Lake(root)
    user = "a" * 32
    bare = {"id": "b" * 32, "user_id": user, "created_at": 1_700_000_000,
            "_harvested_at": "2026-01-01T00:00:00Z"}  # no graph, no ride, nothing optional
    lake.commit(user, {"workouts": [bare]})
    build_tables(root)
    for name in TABLE_NAMES:
        frame = pq.read_table(next(table_dir(root, name).glob("**/*.parquet")))
        assert frame.schema.remove_metadata() == SCHEMAS[name], name
    row = pd.read_parquet(table_dir(root, "workouts")).iloc[0]
    assert row["workout_id"] == "b" * 32 and pd.isna(row["ftp"]) and not row["has_graph"]
    # every reader agrees on the column types of the all-null columns
    polars_schema = pl.scan_parquet(f"{table_dir(root, 'workouts')}/**/*.parquet").collect_schema()
    assert polars_schema["ftp"] == pl.Float64 and polars_schema["instructor_name"] == pl.String
    assert polars_schema["created_at"] == pl.Datetime("us", "UTC")


def test_records_fill_exactly_the_schemas_columns(lake: Path) -> None:
    """The row builders name every column of the schema and no other (typos cannot hide as nulls)."""
    from harvester.tables import rows

    workout = lake_rows(lake, "workouts")[0]
    graph = next(g for g in lake_rows(lake, "performance_graphs") if g["workout_id"] == workout["id"])
    record = rows.workout_record(workout, graph)
    assert set(record) == set(SCHEMAS["workouts"].names)
    ride = lake_rows(lake, "rides")[0]
    assert set(rows.class_record(ride)) == set(SCHEMAS["classes"].names)
    assert set(rows.instructor_record(lake_rows(lake, "instructors")[0])) == set(SCHEMAS["instructors"].names)
    mappings = lake_rows(lake, "metadata_mappings")[0]
    assert set(rows.class_type_records(mappings, "2026-01-01")[0]) == set(SCHEMAS["class_types"].names)
    deletion = {"workout_id": "c" * 32, "user_id": "a" * 32, "created_at": 1, "detected_at": "2026-01-01T00:00:00Z"}
    assert set(rows.deletion_record(deletion)) == set(SCHEMAS["deletions"].names)


def sorted_table(root: Path, name: str) -> pa.Table:
    table = ds.dataset(table_dir(root, name), partitioning="hive").to_table()
    keys = [c for c in ("workout_id", "class_id", "instructor_id", "class_type_id", "offset_s")
            if c in table.column_names]
    return table.sort_by([(k, "ascending") for k in keys])


def test_incremental_build_touches_only_changed_months_and_equals_a_fresh_build(
        lake: Path, tmp_path: Path) -> None:
    """A new workout rebuilds only its month; removing tables/ and rebuilding gives the same tables."""
    root = tmp_path / "peloton-lake"
    shutil.copytree(lake, root)
    assert build_tables(root).tables["workouts"].rebuilt == 0  # nothing changed since demo built
    before = {p: p.stat().st_mtime_ns for p in (root / "tables").glob("**/*.parquet")}
    workout = lake_rows(root, "workouts")[0]
    moved = {**workout, "id": "f" * 32, "created_at": 1_500_000_000}  # 2017-07: a new month
    graph = next(g for g in lake_rows(root, "performance_graphs") if g["workout_id"] == workout["id"])
    Lake(root).commit(workout["user_id"], {
        "workouts": [moved],
        "performance_graphs": [{**graph, "workout_id": "f" * 32, "created_at": 1_500_000_000}]})

    report = build_tables(root)
    assert report.tables["workouts"].rebuilt == 1 and report.tables["workout_metrics"].rebuilt == 1
    assert report.tables["classes"].rebuilt == 0
    changed = {p for p, mtime in before.items() if p.stat().st_mtime_ns != mtime}
    assert changed == set()  # months that existed were not rewritten
    assert (root / "tables/workouts/month=2017-07/part-0.parquet").is_file()
    assert sorted_table(root, "workouts").num_rows == raw_counts(root)["workouts"]

    incremental = {name: sorted_table(root, name) for name in TABLE_NAMES}
    shutil.rmtree(root / "tables")
    assert build_tables(root).tables["workouts"].rebuilt == report.tables["workouts"].units
    for name in TABLE_NAMES:
        assert sorted_table(root, name).equals(incremental[name]), name


def test_a_month_whose_raw_files_are_gone_leaves_the_tables(lake: Path, tmp_path: Path) -> None:
    """When a month's raw partitions disappear, its table partitions go too."""
    root = tmp_path / "peloton-lake"
    shutil.copytree(lake, root)
    days = sorted((root / "workouts").glob("date=*"))
    month = days[0].name[len("date="):][:7]
    for dataset in ("workouts", "performance_graphs"):
        for day in (root / dataset).glob(f"date={month}-*"):
            shutil.rmtree(day)
    build_tables(root)
    assert not (root / f"tables/workouts/month={month}").exists()
    assert not (root / f"tables/workout_metrics/month={month}").exists()
    assert len(pd.read_parquet(table_dir(root, "workouts"))) == raw_counts(root)["workouts"]


def test_deletions_table_comes_from_the_raw_deletions(tmp_path: Path) -> None:
    """Raw deletions rows become typed rows; with none the table is empty but has its schema."""
    root = tmp_path / "lake"
    user = "a" * 32
    Lake(root).commit(user, {"workouts": [{"id": "b" * 32, "user_id": user, "created_at": 1_700_000_000,
                                           "_harvested_at": "2026-01-01T00:00:00Z"}]})
    build_tables(root)
    empty = duckdb.sql(f"SELECT * FROM read_parquet('{root}/tables/deletions/**/*.parquet')")
    assert empty.fetchall() == [] and empty.columns == SCHEMAS["deletions"].names
    day = root / "deletions" / "date=2026-02-03"
    day.mkdir(parents=True)
    (day / f"{user}.jsonl").write_bytes(orjson.dumps(
        {"workout_id": "c" * 32, "user_id": user, "created_at": 1_600_000_000,
         "detected_at": "2026-02-03T04:05:06Z"}) + b"\n")
    assert build_tables(root).tables["deletions"].rebuilt == 1
    frame = pd.read_parquet(root / "tables" / "deletions")
    assert frame["workout_id"].tolist() == ["c" * 32]
    assert str(frame["detected_at"].iloc[0]) == "2026-02-03 04:05:06+00:00"


def test_temporary_files_are_invisible_and_cleaned(tmp_path: Path) -> None:
    """A killed build's temporary file is not read by pandas or the glob, and the next build removes it."""
    root = tmp_path / "lake"
    user = "a" * 32
    Lake(root).commit(user, {"workouts": [{"id": "b" * 32, "user_id": user, "created_at": 1_700_000_000,
                                           "_harvested_at": "2026-01-01T00:00:00Z"}]})
    build_tables(root)
    part = next((root / "tables/workouts").glob("month=*/part-0.parquet"))
    from harvester.files import temp_name

    stray = part.with_name(temp_name(part.name))
    stray.write_bytes(b"half a parquet file")
    assert len(pd.read_parquet(root / "tables/workouts")) == 1
    assert duckdb.sql(f"SELECT count(*) FROM read_parquet('{root}/tables/workouts/**/*.parquet')").fetchall() == [(1,)]
    build_tables(root)
    assert not stray.exists()


def test_damaged_raw_line_is_skipped_and_reported(tmp_path: Path) -> None:
    """A line that is not JSON costs that row only; the build says so and succeeds."""
    root = tmp_path / "lake"
    user = "a" * 32
    Lake(root).commit(user, {"workouts": [{"id": "b" * 32, "user_id": user, "created_at": 1_700_000_000,
                                           "_harvested_at": "2026-01-01T00:00:00Z"}]})
    path = next((root / "workouts").glob("date=*/*.jsonl"))
    path.write_bytes(path.read_bytes() + b'{"id": "trunc\n')
    report = build_tables(root)
    assert report.stats.bad_lines == 1 and "damaged" in report.summary()
    assert len(pd.read_parquet(root / "tables/workouts")) == 1


def test_local_date_follows_the_workouts_time_zone() -> None:
    """Etc/GMT+6 is UTC-6 (POSIX sign), IANA names follow DST, unknown zones fall back to device time."""
    from harvester.tables.rows import local_wall_clock

    at = 1_670_191_449  # 2022-12-04T22:04:09Z
    assert str(local_wall_clock({"created_at": at, "timezone": "Etc/GMT+6"})) == "2022-12-04 16:04:09"
    assert str(local_wall_clock({"created_at": at, "timezone": "Asia/Tokyo"})) == "2022-12-05 07:04:09"
    summer = 1_656_000_000  # 2022-06-23T16:00:00Z
    assert str(local_wall_clock({"created_at": summer, "timezone": "America/New_York"})) == "2022-06-23 12:00:00"
    fallback = {"created_at": at, "timezone": "Mars/Olympus", "device_time_created_at": at - 3600}
    assert str(local_wall_clock(fallback)) == "2022-12-04 21:04:09"


def test_odd_values_become_nulls_not_errors(tmp_path: Path) -> None:
    """A string where a number belongs, or a metric value that is not a number, is null in the table."""
    root = tmp_path / "lake"
    user = "a" * 32
    workout: dict[str, Any] = {
        "id": "b" * 32, "user_id": user, "created_at": 1_700_000_000, "total_work": "lots",
        "leaderboard_rank": True, "ftp_info": None, "ride": "not an object",
        "_harvested_at": "2026-01-01T00:00:00Z"}
    graph = {"workout_id": "b" * 32, "user_id": user, "created_at": 1_700_000_000,
             "seconds_since_pedaling_start": [5, 10, 15],
             "metrics": [{"slug": "output", "values": [100, "x", None]},
                         {"slug": "heart_rate", "values": [120]},
                         {"slug": "power_zone", "values": [1, 2, 3]}],
             "_harvested_at": "2026-01-01T00:00:00Z"}
    Lake(root).commit(user, {"workouts": [workout], "performance_graphs": [graph]})
    build_tables(root)
    w = pd.read_parquet(root / "tables/workouts").iloc[0]
    assert pd.isna(w["total_work_j"]) and pd.isna(w["leaderboard_rank"]) and pd.isna(w["class_id"])
    m = pl.read_parquet(root / "tables/workout_metrics/**/*.parquet").sort("offset_s")
    assert m["output"].to_list() == [100.0, None, None]
    assert m["heart_rate"].to_list() == [120.0, None, None]
    assert [orjson.loads(v) for v in m["other_metrics"].to_list()] == [
        {"power_zone": 1}, {"power_zone": 2}, {"power_zone": 3}]


def test_gzip_lake_gives_the_same_tables(lake: Path, tmp_path: Path) -> None:
    """A lake written with compression = "gzip" builds tables equal to the plain one's."""
    root = tmp_path / "gz"
    gz = Lake(root, "gzip")
    for dataset in ("workouts", "performance_graphs", "rides", "instructors", "metadata_mappings"):
        by_user: dict[str, list[dict[str, Any]]] = {}
        for row in lake_rows(lake, dataset):
            by_user.setdefault(str(row.get("user_id") or "a" * 32), []).append(row)
        for user, rows in by_user.items():
            gz.commit(user, {dataset: rows})
    assert not list(root.glob("workouts/**/*.jsonl")) and list(root.glob("workouts/**/*.jsonl.gz"))
    build_tables(root)
    for name in ("workouts", "workout_metrics", "classes", "instructors", "class_types"):
        assert sorted_table(root, name).equals(sorted_table(lake, name)), name


def one_workout_lake(root: Path) -> None:
    user = "a" * 32
    Lake(root).commit(user, {"workouts": [{"id": "b" * 32, "user_id": user, "created_at": 1_700_000_000,
                                           "_harvested_at": "2026-01-01T00:00:00Z"}]})


def test_an_unreadable_manifest_means_a_full_rebuild(tmp_path: Path) -> None:
    """A damaged tables/_manifest.json is not trusted: every partition is rebuilt, and the tables stay whole."""
    root = tmp_path / "lake"
    one_workout_lake(root)
    first = build_tables(root)
    (root / "tables" / "_manifest.json").write_bytes(b'{"version": 1, "tables": ')
    again = build_tables(root)
    assert {n: t.rebuilt for n, t in again.tables.items()} == {n: t.units for n, t in first.tables.items()}
    assert len(pd.read_parquet(root / "tables/workouts")) == 1


def test_a_second_build_at_the_same_time_is_refused(tmp_path: Path) -> None:
    """While one build holds tables/.lock, another says so (LockedError) instead of racing it."""
    import fcntl

    from harvester.errors import LockedError

    root = tmp_path / "lake"
    one_workout_lake(root)
    build_tables(root)
    with open(root / "tables" / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(LockedError, match="another tables build"):
            build_tables(root)
    assert build_tables(root).tables["workouts"].units == 1
