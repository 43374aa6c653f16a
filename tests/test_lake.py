"""The lake: partition maths, atomic merge, exactly-once files that DuckDB reads."""

from __future__ import annotations

import gzip
import os
import stat
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import orjson
import pytest

from harvester.errors import LakeError
from harvester.lake import Lake, Row, partition_date, primary_key
from harvester.storage import Storage

USER = "ac6b497fc71d48fbb844366ccfa5921f"
OTHER = "0123456789abcdef0123456789abcdef"
STAMP = "2024-03-01T10:00:00Z"
MIDNIGHT = 1_704_067_200  # 2024-01-01T00:00:00Z


def wid(n: int) -> str:
    return f"{n:032x}"


def workout(n: int, created_at: int, **extra: object) -> Row:
    return {"id": wid(n), "user_id": USER, "created_at": created_at,
            "timezone": "Etc/GMT+6", "status": "COMPLETE", "_harvested_at": STAMP, **extra}


def graph(n: int, created_at: int) -> Row:
    return {"duration": 60, "metrics": [], "workout_id": wid(n), "user_id": USER,
            "created_at": created_at, "_harvested_at": STAMP}


def lake_files(root: Path, dataset: str) -> list[Path]:
    return sorted(p for p in (root / dataset).rglob("*") if p.is_file())


def read_rows(path: Path) -> list[Row]:
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        data = gzip.decompress(data)
    return [orjson.loads(line) for line in data.splitlines()]


# -- partition maths ------------------------------------------------------------


def test_workout_partition_is_utc_date_at_midnight_edges() -> None:
    """A second before UTC midnight is the previous day; midnight itself is the new day."""
    assert partition_date("workouts", workout(1, MIDNIGHT - 1)) == "2023-12-31"
    assert partition_date("workouts", workout(1, MIDNIGHT)) == "2024-01-01"
    assert partition_date("performance_graphs", graph(1, MIDNIGHT + 86_399)) == "2024-01-01"


def test_partition_ignores_the_workouts_local_timezone() -> None:
    """Local time fields (timezone, device_time_created_at) never shift the UTC partition."""
    row = workout(1, MIDNIGHT + 3600, timezone="Etc/GMT+10",
                  device_time_created_at=MIDNIGHT + 3600 - 10 * 3600)
    assert partition_date("workouts", row) == "2024-01-01"


def test_ride_partition_uses_air_time_with_epoch_fallback() -> None:
    """Rides partition by the ride's original_air_time, or 1970-01-01 when it is missing."""
    aired = {"ride_id": wid(9), "ride": {"original_air_time": MIDNIGHT - 1}}
    assert partition_date("rides", aired) == "2023-12-31"
    assert partition_date("rides", {"ride_id": wid(9), "ride": {"original_air_time": None}}) == (
        "1970-01-01"
    )
    assert partition_date("rides", {"ride_id": wid(9)}) == "1970-01-01"


def test_profiles_partition_by_run_day_and_instructors_are_unpartitioned() -> None:
    """Profiles key on (user_id, run day); instructors have no partition."""
    profile: Row = {"id": USER, "user_id": USER, "_harvested_at": "2024-02-29T23:59:59Z"}
    assert partition_date("profiles", profile) == "2024-02-29"
    assert primary_key("profiles", profile) == f"{USER}|2024-02-29"
    assert partition_date("instructors", {"id": wid(3)}) is None


def test_rows_without_key_or_created_at_are_refused() -> None:
    """A workout with no created_at or no id raises LakeError instead of landing in a bad file."""
    with pytest.raises(LakeError, match="created_at"):
        partition_date("workouts", {"id": wid(1), "created_at": None})
    with pytest.raises(LakeError, match="'id'"):
        primary_key("workouts", {"created_at": 1})
    with pytest.raises(LakeError, match="_harvested_at"):
        partition_date("profiles", {"user_id": USER, "_harvested_at": "yesterday"})


# -- commit and merge -------------------------------------------------------------


def test_commit_writes_hive_partitioned_files_per_account(tmp_path: Path) -> None:
    """Files land at <dataset>/date=YYYY-MM-DD/<user_id>.jsonl, instructors in one shared unpartitioned file."""
    lake = Lake(tmp_path)
    counts = lake.commit(USER, {
        "workouts": [workout(1, MIDNIGHT), workout(2, MIDNIGHT - 1)],
        "performance_graphs": [graph(1, MIDNIGHT)],
        "instructors": [{"id": wid(7), "name": "Ann", "_harvested_at": STAMP}],
    })
    assert counts == {"workouts": 2, "performance_graphs": 1, "instructors": 1}
    assert (tmp_path / "workouts/date=2024-01-01" / f"{USER}.jsonl").is_file()
    assert (tmp_path / "workouts/date=2023-12-31" / f"{USER}.jsonl").is_file()
    assert (tmp_path / "performance_graphs/date=2024-01-01" / f"{USER}.jsonl").is_file()
    assert (tmp_path / "instructors" / "instructors.jsonl").is_file()


def test_merge_new_row_wins_and_keeps_one_row_per_key(tmp_path: Path) -> None:
    """Committing an updated row replaces the old one; other rows stay."""
    lake = Lake(tmp_path)
    lake.commit(USER, {"workouts": [workout(1, MIDNIGHT, total_work=1), workout(2, MIDNIGHT)]})
    lake.commit(USER, {"workouts": [workout(1, MIDNIGHT, total_work=2)]})
    rows = read_rows(tmp_path / "workouts/date=2024-01-01" / f"{USER}.jsonl")
    assert [(r["id"], r.get("total_work")) for r in rows] == [(wid(1), 2), (wid(2), None)]


def test_duplicate_keys_in_one_batch_keep_the_last(tmp_path: Path) -> None:
    """Within one batch the later row of a key wins and is counted once."""
    counts = Lake(tmp_path).commit(USER, {"workouts": [workout(1, MIDNIGHT, v=1),
                                                       workout(1, MIDNIGHT, v=2)]})
    assert counts == {"workouts": 1}
    rows = read_rows(tmp_path / "workouts/date=2024-01-01" / f"{USER}.jsonl")
    assert [r["v"] for r in rows] == [2]


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_commit_is_idempotent_byte_for_byte(tmp_path: Path, compression: str) -> None:
    """The same rows committed twice, in any order, give identical bytes."""
    lake = Lake(tmp_path, compression)
    rows = [workout(n, MIDNIGHT + n) for n in range(5)]
    lake.commit(USER, {"workouts": rows})
    (path,) = lake_files(tmp_path, "workouts")
    first = path.read_bytes()
    lake.commit(USER, {"workouts": list(reversed(rows))})
    assert path.read_bytes() == first


def test_switching_compression_never_duplicates_rows(tmp_path: Path) -> None:
    """none -> gzip -> none rewrites a touched partition in the new form only."""
    Lake(tmp_path, "none").commit(USER, {"workouts": [workout(1, MIDNIGHT)]})
    Lake(tmp_path, "gzip").commit(USER, {"workouts": [workout(2, MIDNIGHT)]})
    (gz,) = lake_files(tmp_path, "workouts")
    assert gz.name == f"{USER}.jsonl.gz"
    assert [r["id"] for r in read_rows(gz)] == [wid(1), wid(2)]
    with gzip.open(gz) as fh:  # a real gzip stream with no timestamp
        assert fh.read().count(b"\n") == 2
    assert gz.read_bytes()[4:8] == b"\0\0\0\0"
    Lake(tmp_path, "none").commit(USER, {"workouts": [workout(3, MIDNIGHT)]})
    (plain,) = lake_files(tmp_path, "workouts")
    assert plain.name == f"{USER}.jsonl"
    assert [r["id"] for r in read_rows(plain)] == [wid(1), wid(2), wid(3)]


def test_non_ascii_survives_as_utf8(tmp_path: Path) -> None:
    """Names with accents and emoji are stored as raw UTF-8 and read back unchanged."""
    lake = Lake(tmp_path, "gzip")
    lake.commit(USER, {"instructors": [{"id": wid(1), "name": "Rad López 💪",
                                        "_harvested_at": STAMP}]})
    lake.commit(USER, {"instructors": [{"id": wid(2), "name": "Zoë", "_harvested_at": STAMP}]})
    (path,) = lake_files(tmp_path, "instructors")
    assert [r["name"] for r in read_rows(path)] == ["Rad López 💪", "Zoë"]
    assert "López".encode() in gzip.decompress(path.read_bytes())


def test_accounts_write_separate_files(tmp_path: Path) -> None:
    """Two accounts in one lake never share a file and are counted apart."""
    lake = Lake(tmp_path)
    lake.commit(USER, {"workouts": [workout(1, MIDNIGHT)]})
    lake.commit(OTHER, {"workouts": [{**workout(2, MIDNIGHT), "user_id": OTHER}]})
    assert len(lake_files(tmp_path, "workouts")) == 2
    assert lake.row_counts(USER)["workouts"] == 1
    assert lake.row_counts()["workouts"] == 2
    assert lake.workout_ids(OTHER) == {wid(2): MIDNIGHT}


def test_invalid_user_id_is_refused_before_any_path_is_built(tmp_path: Path) -> None:
    """A user id that is not hex32 (e.g. a path) raises LakeError and writes nothing."""
    with pytest.raises(LakeError, match="hex"):
        Lake(tmp_path).commit("../../etc/passwd", {"workouts": [workout(1, MIDNIGHT)]})
    assert list(tmp_path.iterdir()) == []


def test_bad_row_fails_the_whole_commit_before_writing(tmp_path: Path) -> None:
    """One unusable row aborts the commit with no file written."""
    batch: dict[str, list[Row]] = {"performance_graphs": [graph(1, MIDNIGHT)],
                                   "workouts": [{"id": wid(1)}]}
    with pytest.raises(LakeError, match="created_at"):
        Lake(tmp_path).commit(USER, batch)
    assert list(tmp_path.iterdir()) == []


# -- reading ------------------------------------------------------------------------


def test_workout_ids_ride_ids_and_row_counts(tmp_path: Path) -> None:
    """The lake reports committed workouts, every ride and rows per dataset."""
    lake = Lake(tmp_path, "gzip")
    lake.commit(USER, {
        "workouts": [workout(1, MIDNIGHT), workout(2, MIDNIGHT - 90_000)],
        "rides": [{"ride_id": wid(8), "ride": {"original_air_time": 0}, "_harvested_at": STAMP}],
        "profiles": [{"id": USER, "user_id": USER, "_harvested_at": STAMP}],
    })
    assert lake.workout_ids(USER) == {wid(1): MIDNIGHT, wid(2): MIDNIGHT - 90_000}
    assert lake.ride_ids() == {wid(8)}
    assert lake.row_counts(USER) == {"workouts": 2, "performance_graphs": 0, "rides": 1,
                                     "instructors": 0, "profiles": 1, "deletions": 0,
                                     "metadata_mappings": 0}


def test_unreadable_lake_file_raises_lake_error_naming_it(tmp_path: Path) -> None:
    """A file that is not JSON lines raises LakeError with its path."""
    lake = Lake(tmp_path)
    lake.commit(USER, {"workouts": [workout(1, MIDNIGHT)]})
    (path,) = lake_files(tmp_path, "workouts")
    path.write_bytes(b'{"id": "x"\n')
    with pytest.raises(LakeError, match=str(path)):
        lake.workout_ids(USER)
    gz = path.with_name(path.name + ".gz")
    path.unlink()
    gz.write_bytes(b"not gzip")
    with pytest.raises(LakeError, match=str(gz)):
        lake.row_counts()


def test_workout_ids_of_20000_workouts_stay_memory_light(tmp_path: Path) -> None:
    """Scanning 20,000 committed workouts allocates well under 50 MB."""
    padding = "x" * 2000  # about the size of a real workout detail
    for day in range(1000):
        created = MIDNIGHT + day * 86_400
        day_name = partition_date("workouts", workout(0, created))
        directory = tmp_path / "workouts" / f"date={day_name}"
        directory.mkdir(parents=True)
        rows = (workout(day * 20 + i, created + i, pad=padding) for i in range(20))
        (directory / f"{USER}.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    tracemalloc.start()
    try:
        ids = Lake(tmp_path).workout_ids(USER)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(ids) == 20_000
    assert peak < 20 * 1024 * 1024


# -- atomicity and temp files -----------------------------------------------------------


def test_temp_files_are_invisible_to_the_glob_and_cleaned(tmp_path: Path) -> None:
    """A killed run's temp files never match **/*.jsonl and clean_temp_files removes them."""
    lake = Lake(tmp_path)
    lake.commit(USER, {"workouts": [workout(1, MIDNIGHT)]})
    part = tmp_path / "workouts/date=2024-01-01"
    leftovers = [part / f".{USER}.jsonl.tmp-123-deadbeef",
                 part / f".{USER}.jsonl.gz.tmp-9-00ff00ff",
                 tmp_path / ".probe.tmp-1-abcdef12"]
    for path in leftovers:
        path.write_bytes(b'{"id": "half')
    keep = tmp_path / "_harvester" / ".state.json.tmp-1-abcdef12"
    keep.parent.mkdir()
    keep.write_bytes(b"")
    assert sorted(tmp_path.glob("workouts/**/*.jsonl")) == [part / f"{USER}.jsonl"]
    assert sorted(tmp_path.glob("workouts/**/*.jsonl.gz")) == []
    assert lake.clean_temp_files() == 3
    assert not any(p.exists() for p in leftovers)
    assert keep.exists()  # _harvester belongs to the state store
    assert lake.row_counts()["workouts"] == 1


def test_clean_settles_a_partition_left_in_both_compressions(tmp_path: Path) -> None:
    """A kill between rename and unlink leaves both variants; cleaning keeps one, no duplicates."""
    Lake(tmp_path, "none").commit(USER, {"workouts": [workout(1, MIDNIGHT)]})
    (plain,) = lake_files(tmp_path, "workouts")
    old = plain.read_bytes()
    Lake(tmp_path, "gzip").commit(USER, {"workouts": [workout(2, MIDNIGHT)]})
    plain.write_bytes(old)  # as if the unlink of the old variant never happened
    os.utime(plain, ns=(0, 0))
    lake = Lake(tmp_path, "gzip")
    assert lake.clean_temp_files() == 0
    (only,) = lake_files(tmp_path, "workouts")
    assert [r["id"] for r in read_rows(only)] == [wid(1), wid(2)]


def test_check_writable_creates_root_and_reports_one_line(tmp_path: Path) -> None:
    """A writable root is created; an unwritable one gives a one-line LakeError."""
    Lake(tmp_path / "a" / "b").check_writable()
    assert (tmp_path / "a" / "b").is_dir()
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(LakeError, match="is not writable") as info:
        Lake(blocker / "lake").check_writable()
    assert "\n" not in str(info.value)
    if os.geteuid() != 0:
        locked = tmp_path / "ro"
        locked.mkdir()
        locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
        with pytest.raises(LakeError, match="is not writable"):
            Lake(locked).check_writable()


def test_unknown_compression_and_dataset_are_refused(tmp_path: Path) -> None:
    """Misuse raises LakeError rather than writing somewhere odd."""
    with pytest.raises(LakeError, match="compression"):
        Lake(tmp_path, "zstd")
    with pytest.raises(LakeError, match="unknown dataset"):
        Lake(tmp_path).commit(USER, {"sessions": [{"id": "1"}]})


# -- readers --------------------------------------------------------------------------


@pytest.mark.parametrize(("compression", "suffix"), [("none", "jsonl"), ("gzip", "jsonl.gz")])
def test_duckdb_reads_workouts_with_a_utc_date_column(
    tmp_path: Path, compression: str, suffix: str
) -> None:
    """DuckDB reads one row per workout, with hive column date = UTC day of created_at."""
    lake = Lake(tmp_path, compression)
    created = [MIDNIGHT - 1, MIDNIGHT, MIDNIGHT + 86_399, 1_600_000_000]
    rows = [workout(n, c, title="Zoë’s ride") for n, c in enumerate(created)]
    lake.commit(USER, {"workouts": rows})
    lake.commit(USER, {"workouts": [workout(0, created[0], title="again")]})
    glob = f"{tmp_path}/workouts/**/*.{suffix}"
    found = duckdb.sql(
        f"select id, created_at, cast(date as varchar), title "
        f"from read_json('{glob}', hive_partitioning=true) order by id"
    ).fetchall()
    assert [r[0] for r in found] == [wid(n) for n in range(4)]
    for _, created_at, day, _ in found:
        assert day == datetime.fromtimestamp(created_at, UTC).date().isoformat()
    assert [r[3] for r in found] == ["again", "Zoë’s ride", "Zoë’s ride", "Zoë’s ride"]


def test_failed_commit_touches_nothing_and_leaves_no_temp_files(tmp_path: Path) -> None:
    """A commit that cannot read one partition writes none and leaves no temporary file."""
    lake = Lake(tmp_path)
    lake.commit(USER, {"workouts": [workout(1, MIDNIGHT + 86_400 * 5)]})
    (broken,) = lake_files(tmp_path, "workouts")
    broken.write_bytes(b'{"id": "cut')  # a file damaged outside the harvester
    with pytest.raises(LakeError, match="partial line"):
        lake.commit(USER, {"workouts": [workout(2, MIDNIGHT), workout(3, MIDNIGHT + 86_400 * 5)],
                           "performance_graphs": [graph(2, MIDNIGHT)]})
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == [broken.name]


# -- the same lake on both backends (a local folder, moto's S3 server) ------------------


def stored_rows(storage: Storage, key: str) -> list[Row]:
    blob = storage.read(key)
    assert blob is not None, key
    data = gzip.decompress(blob.data) if key.endswith(".gz") else blob.data
    return [orjson.loads(line) for line in data.splitlines()]


def test_commit_merge_and_move_behave_alike_on_both_backends(storage: Storage) -> None:
    """Per-account partition files, newest row wins, a moved row leaves its old partition, empty files go."""
    lake = Lake(storage)
    lake.commit(USER, {"workouts": [workout(1, MIDNIGHT, v=1), workout(2, MIDNIGHT)],
                       "performance_graphs": [graph(1, MIDNIGHT)]})
    lake.commit(OTHER, {"workouts": [{**workout(9, MIDNIGHT), "user_id": OTHER}]})
    lake.commit(USER, {"workouts": [workout(1, MIDNIGHT, v=2)]})
    day = "workouts/date=2024-01-01"
    assert [(r["id"], r.get("v")) for r in stored_rows(storage, f"{day}/{USER}.jsonl")] == [
        (wid(1), 2), (wid(2), None)]
    # workout 2 moves a day on: it lands in its new partition and leaves the old one.
    lake.commit(USER, {"workouts": [workout(2, MIDNIGHT + 86_400)]},
                {"workouts": {"2024-01-01": [wid(2)]}})
    assert [r["id"] for r in stored_rows(storage, f"{day}/{USER}.jsonl")] == [wid(1)]
    assert [r["id"] for r in stored_rows(storage, f"workouts/date=2024-01-02/{USER}.jsonl")] == [wid(2)]
    lake.commit(USER, {"workouts": [workout(1, MIDNIGHT + 86_400)]},
                {"workouts": {"2024-01-01": [wid(1)]}})
    assert storage.stat(f"{day}/{USER}.jsonl") is None  # its last row left: no empty file
    assert storage.stat(f"{day}/{OTHER}.jsonl") is not None  # another account's file untouched
    fresh = Lake(storage)  # a new run's view, listed from the store
    assert fresh.workout_ids(USER) == {wid(1): MIDNIGHT + 86_400, wid(2): MIDNIGHT + 86_400}
    assert fresh.row_counts(USER)["workouts"] == 2 and fresh.row_counts()["workouts"] == 3


def test_switching_compression_keeps_one_variant_on_both_backends(storage: Storage) -> None:
    """none -> gzip rewrites a touched file as .jsonl.gz and removes the .jsonl, rows merged."""
    Lake(storage, "none").commit(USER, {"workouts": [workout(1, MIDNIGHT)]})
    Lake(storage, "gzip").commit(USER, {"workouts": [workout(2, MIDNIGHT)]})
    keys = [e.key for e in storage.walk("workouts")]
    assert keys == [f"workouts/date=2024-01-01/{USER}.jsonl.gz"]
    assert [r["id"] for r in stored_rows(storage, keys[0])] == [wid(1), wid(2)]


def test_quarantine_keeps_the_damaged_bytes_on_both_backends(storage: Storage) -> None:
    """A damaged file is kept whole under _harvester/quarantine/<stamp>/ before it is rewritten."""
    key = f"workouts/date=2024-01-01/{USER}.jsonl"
    storage.write(key, b'{"id": "cut')
    lake = Lake(storage)
    assert [(p, e.key) for p, e in lake.account_files("workouts", USER)] == [("2024-01-01", key)]
    kept = lake.quarantine(key, "20240101T000000Z")
    assert kept == f"_harvester/quarantine/20240101T000000Z/{key}"
    blob = storage.read(kept)
    assert blob is not None and blob.data == b'{"id": "cut'
    files = [(p, e.key) for p, e in lake.account_files("workouts", USER)]
    assert files == [("2024-01-01", key)]  # not a lake file twice


def ride(n: int, aired: int, stamp: str = STAMP) -> Row:
    return {"ride_id": wid(n), "ride": {"id": wid(n), "original_air_time": aired}, "_harvested_at": stamp}


def test_classes_of_two_accounts_share_one_file_per_day(tmp_path: Path) -> None:
    """A class two accounts committed is one row, in the day's shared rides file."""
    lake = Lake(tmp_path)
    lake.commit(USER, {"rides": [ride(1, MIDNIGHT), ride(2, MIDNIGHT)]})
    lake.commit(OTHER, {"rides": [ride(2, MIDNIGHT, "2024-03-02T10:00:00Z"), ride(3, MIDNIGHT)]})
    (path,) = lake_files(tmp_path, "rides")
    assert path.name == "rides.jsonl"
    assert [(r["ride_id"], r["_harvested_at"]) for r in read_rows(path)] == [
        (wid(1), STAMP), (wid(2), "2024-03-02T10:00:00Z"), (wid(3), STAMP)]


def test_heal_moves_a_shared_class_to_the_day_its_newest_copy_names(tmp_path: Path) -> None:
    """A class in two days' shared files (its air time changed): heal keeps the newest copy,
    in its day, and drops the old one while the old day's other classes stay."""
    from harvester.heal import heal, scan

    lake = Lake(tmp_path)
    lake.commit(USER, {"rides": [ride(1, MIDNIGHT), ride(2, MIDNIGHT)]})
    lake.commit(USER, {"rides": [ride(1, MIDNIGHT + 86_400, "2024-03-02T10:00:00Z")]})
    found = scan(lake, USER)
    assert any("held 2 times" in p for p in found.problems())
    assert heal(lake, found)
    held = {path.parent.name: [r["ride_id"] for r in read_rows(path)] for path in lake_files(tmp_path, "rides")}
    assert held == {"date=2024-01-01": [wid(2)], "date=2024-01-02": [wid(1)]}
    assert scan(lake, USER).problems() == []
