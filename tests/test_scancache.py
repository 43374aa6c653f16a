"""The scan cache: a run re-reads only the lake files that changed, and a stale entry never hides damage."""

from __future__ import annotations

import gzip
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import orjson
import pytest

from harvester.config import Config
from harvester.heal import LakeScan, ride_ids, scan
from harvester.lake import Lake, Row
from harvester.run import run_harvest
from harvester.scancache import RACY_MARGIN_NS, ScanCache, cache_key
from harvester.storage import Entry, Storage, open_storage
from harvester.storage.local import LocalStorage
from harvester.storage.objects import ObjectStorage
from harvester.verify import check_lake, verify
from tests.chaos import mirror_problems
from tests.harness import admin, harvest_config, stats

USER = "ac6b497fc71d48fbb844366ccfa5921f"
OTHER = "0123456789abcdef0123456789abcdef"
STAMP, NEWER = "2024-03-01T10:00:00Z", "2024-03-02T10:00:00Z"
MIDNIGHT = 1_704_067_200  # 2024-01-01T00:00:00Z
DAY = 86_400


def wid(n: int) -> str:
    return f"{n:032x}"


def workout(n: int, created_at: int, stamp: str = STAMP) -> Row:
    return {"id": wid(n), "user_id": USER, "created_at": created_at, "status": "COMPLETE",
            "ride": {"id": wid(500 + n)}, "_harvested_at": stamp}


def ride(n: int, aired: int) -> Row:
    return {"ride_id": wid(500 + n), "ride": {"original_air_time": aired}, "_harvested_at": STAMP}


def later() -> int:
    """A clock past the racy margin: what the scan of a run an hour from now sees."""
    return time.time_ns() + 3600 * 10**9


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Every key either store reads, counted (the real store still reads it)."""
    counted: Counter[str] = Counter()
    for cls in (LocalStorage, ObjectStorage):
        real = cls.read

        def read(self: Any, key: str, real: Callable[[Any, str], Any] = real) -> Any:
            counted[key] += 1
            return real(self, key)

        monkeypatch.setattr(cls, "read", read)
    return counted


def lake_reads(counted: Counter[str]) -> set[str]:
    return {key for key in counted if not key.startswith("_harvester/")}


def damaged_lake(storage: Storage, compression: str = "none") -> Lake:
    """Two accounts' files and one of each fault: partial line, key twice (in a file and across
    partitions), a row in the wrong partition, a cut gzip, no final newline."""
    lake = Lake(storage, compression)
    lake.commit(USER, {"workouts": [workout(n, MIDNIGHT + n * DAY) for n in range(6)],
                       "rides": [ride(n, MIDNIGHT + n * DAY) for n in range(3)]})
    lake.commit(OTHER, {"rides": [ride(n, MIDNIGHT + n * DAY) for n in range(2, 5)]})
    suffix = ".jsonl.gz" if compression == "gzip" else ".jsonl"

    def rewrite(day: int, change: Callable[[bytes], bytes]) -> None:
        key = f"workouts/date=2024-01-0{day + 1}/{USER}{suffix}"
        blob = storage.read(key)
        assert blob is not None
        data = gzip.decompress(blob.data) if compression == "gzip" else blob.data
        changed = change(data)
        storage.write(key, gzip.compress(changed) if compression == "gzip" else changed)

    rewrite(0, lambda data: data + orjson.dumps(workout(1, MIDNIGHT + DAY, NEWER)) + b"\n")
    rewrite(2, lambda data: data * 2)
    rewrite(3, lambda data: data[:-30])
    rewrite(4, lambda data: data.rstrip(b"\n"))
    if compression == "gzip":
        key = f"workouts/date=2024-01-06/{USER}{suffix}"
        blob = storage.read(key)
        assert blob is not None
        storage.write(key, blob.data[: len(blob.data) // 2])
    return lake


def same(a: LakeScan, b: LakeScan) -> None:
    assert a.files == b.files
    assert a.copies == b.copies
    assert a.problems() == b.problems() and a.outputs_to_rewrite() == b.outputs_to_rewrite()


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_a_scan_through_the_cache_equals_a_scan_of_the_files(
    storage: Storage, compression: str, reads: Counter[str],
) -> None:
    """Faults, copies, problems and rides: the same from the files, a fresh cache and a full one (no read)."""
    lake = damaged_lake(storage, compression)
    truth = scan(lake, USER)
    assert truth.problems() and truth.outputs_to_rewrite()  # the damage is there to be found
    all_rides = lake.ride_ids()
    cache = ScanCache.load(storage, USER, now=later)
    first = scan(lake, USER, cache=cache)
    assert ride_ids(lake, USER, first, cache) == all_rides
    cache.save()
    same(first, truth)
    reads.clear()
    cache = ScanCache.load(storage, USER, now=later)
    again = scan(lake, USER, cache=cache)
    assert ride_ids(lake, USER, again, cache) == all_rides
    assert lake_reads(reads) == set()
    same(again, truth)


def test_any_change_to_a_file_is_read_again(storage: Storage, reads: Counter[str]) -> None:
    """A rewritten file (even the same size), a new one and a removed one: only those are read; the rest cached."""
    lake = Lake(storage)
    lake.commit(USER, {"workouts": [workout(n, MIDNIGHT + n * DAY) for n in range(4)]})
    cache = ScanCache.load(storage, USER, now=later)
    scan(lake, USER, cache=cache)
    cache.save()
    keys = [e.key for _, e in lake.account_files("workouts", USER)]
    blob = storage.read(keys[0])
    assert blob is not None
    storage.write(keys[0], blob.data.replace(b"COMPLETE", b"FAILURE!"))  # the same size
    storage.delete(keys[1])
    lake.commit(USER, {"workouts": [workout(9, MIDNIGHT + 9 * DAY)]})
    reads.clear()
    cache = ScanCache.load(storage, USER, now=later)
    found = scan(lake, USER, cache=cache)
    assert lake_reads(reads) == {keys[0], f"workouts/date=2024-01-10/{USER}.jsonl"}
    assert found.copies["workouts"].keys() == {wid(0), wid(2), wid(3), wid(9)}
    cache.save()
    assert cache.files == 4  # the removed file is forgotten


def test_a_local_file_written_within_the_racy_margin_is_not_cached(tmp_path: Path) -> None:
    """A file modified less than RACY_MARGIN_NS before the scan is read again next time (its mtime may repeat)."""
    storage = LocalStorage(tmp_path)
    key = f"workouts/date=2024-01-01/{USER}.jsonl"
    storage.write(key, orjson.dumps(workout(0, MIDNIGHT)) + b"\n")
    entry = storage.stat(key)
    assert entry is not None
    now = entry.modified_ns + RACY_MARGIN_NS // 2
    cache = ScanCache(storage, USER, now=lambda: now)
    cache.put(entry, [[], False, []])
    cache.save()
    assert ScanCache.load(storage, USER).get(entry) is None
    cache = ScanCache(storage, USER, now=lambda: now + RACY_MARGIN_NS)
    cache.put(entry, [[], False, []])
    cache.save()
    loaded = ScanCache.load(storage, USER)
    assert loaded.get(entry) == [[], False, []]
    for other in (Entry(key, entry.size + 1, entry.modified_ns),
                  Entry(key, entry.size, entry.modified_ns + 1),
                  Entry(key, entry.size, entry.modified_ns, "etag")):
        assert loaded.get(other) is None


def test_an_unusable_cache_is_rebuilt_silently(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Missing, cut, garbage, a flipped byte, another account's or another format's: read as empty, no warning."""
    storage = LocalStorage(tmp_path)
    lake = Lake(storage)
    lake.commit(USER, {"workouts": [workout(n, MIDNIGHT + n * DAY) for n in range(3)]})
    cache = ScanCache.load(storage, USER, now=later)
    scan(lake, USER, cache=cache)
    cache.save()
    path = tmp_path / cache_key(USER)
    good = path.read_bytes()
    header, _, payload = good.partition(b"\n")
    entries = [e for _, e in lake.account_files("workouts", USER)]
    assert len(entries) == 3 and all(ScanCache.load(storage, USER).get(e) for e in entries)
    ruined = {
        "cut": good[: len(good) // 2],
        "garbage": b"\x00\xff" * 40,
        "flipped": header + b"\n" + payload.replace(b"2024-01-02", b"2024-01-12", 1),
        "other account": good.replace(USER.encode(), OTHER.encode(), 1),
        "other format": good.replace(b'"format":1', b'"format":2', 1),
    }
    for name, data in ruined.items():
        path.write_bytes(data)
        cache = ScanCache.load(storage, USER)
        assert all(cache.get(e) is None for e in entries), name
    path.unlink()
    assert all(ScanCache.load(storage, USER).get(e) is None for e in entries)
    assert not [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")]


def test_the_cache_is_private_and_written_only_when_something_changed(tmp_path: Path) -> None:
    """Mode 0600; a scan that met the same files at the same versions leaves the object untouched."""
    storage = LocalStorage(tmp_path)
    lake = Lake(storage)
    lake.commit(USER, {"workouts": [workout(0, MIDNIGHT)]})
    cache = ScanCache.load(storage, USER, now=later)
    scan(lake, USER, cache=cache)
    cache.save()
    path = tmp_path / cache_key(USER)
    assert path.stat().st_mode & 0o777 == 0o600
    before = path.stat().st_mtime_ns
    os.utime(path, ns=(before - 10**9, before - 10**9))
    cache = ScanCache.load(storage, USER, now=later)
    scan(lake, USER, cache=cache)
    cache.save()
    assert path.stat().st_mtime_ns == before - 10**9


# -- runs -------------------------------------------------------------------------


def data_files(root: Path) -> dict[str, Path]:
    """Every lake data file (nothing under _harvester/), by storage key."""
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*.jsonl*"))
            if p.relative_to(root).parts[0] != "_harvester"}


def versions(root: Path) -> dict[str, tuple[int, int, int]]:
    return {key: (p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_ino)
            for key, p in data_files(root).items()}


def age(paths: Iterable[Path]) -> None:
    """These files as if written an hour ago: past the racy margin for the next run's scan."""
    then = time.time_ns() - 3600 * 10**9
    for path in paths:
        os.utime(path, ns=(then, then))


async def truth(url: str) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/_emulator/truth") as answer:
        found: list[dict[str, Any]] = orjson.loads(await answer.read())["workouts"]
        return found


async def cached_lake(make_emulator: Any, tmp_path: Path, **settings: Any) -> tuple[Any, Config]:
    """A backfilled lake an hour old, then a refresh that read it all and cached what it learnt."""
    emulator = await make_emulator(**settings)
    config = harvest_config(emulator.url, tmp_path, harvest__lookback_days=0)
    assert (await run_harvest(config, "backfill")).exit_code == 0
    age(data_files(tmp_path / "lake").values())
    assert (await run_harvest(config, "refresh")).exit_code == 0
    await admin(emulator.url, "reset")
    return emulator, config


async def test_a_refresh_of_an_unchanged_lake_reads_no_lake_file(
    make_emulator: Any, tmp_path: Path, reads: Counter[str],
) -> None:
    """The first refresh after a backfill reads every file once; the next reads none and asks for nothing more."""
    emulator = await make_emulator(workouts=80)
    config = harvest_config(emulator.url, tmp_path, harvest__lookback_days=0)
    assert (await run_harvest(config, "backfill")).exit_code == 0
    root = tmp_path / "lake"
    age(data_files(root).values())
    reads.clear()
    assert (await run_harvest(config, "refresh")).exit_code == 0
    assert lake_reads(reads) == data_files(root).keys()  # all new to the cache: each read once
    assert set(reads.values()) == {1}
    await admin(emulator.url, "reset")
    reads.clear()
    quiet = await run_harvest(config, "refresh")
    assert quiet.exit_code == 0 and quiet.outcome.healed == []
    assert lake_reads(reads) == set()
    assert (await stats(emulator.url))["by_endpoint"] == {"workouts": 1}  # every class known


async def test_the_next_run_reads_only_the_files_the_last_one_wrote(
    make_emulator: Any, tmp_path: Path, reads: Counter[str],
) -> None:
    """After a refresh that adds workouts, the next run reads exactly the files that one wrote."""
    emulator, config = await cached_lake(make_emulator, tmp_path, workouts=80)
    root = tmp_path / "lake"
    emulator.add_workouts(3)
    before = versions(root)
    assert (await run_harvest(config, "refresh")).outcome.rows.get("workouts") == 3
    written = {key for key, version in versions(root).items() if before.get(key) != version}
    assert {key.partition("/")[0] for key in written} >= {"workouts", "performance_graphs"}
    age(data_files(root)[key] for key in written)
    reads.clear()
    assert (await run_harvest(config, "refresh")).exit_code == 0
    assert lake_reads(reads) == written


def damage(root: Path) -> dict[str, Path]:
    """Damage written between two runs: a partial line, a key twice, a row moved to another
    partition, and a same-size rewrite (its first byte no longer JSON)."""
    workouts = sorted((root / "workouts").glob("date=*/*.jsonl"))
    graphs = sorted((root / "performance_graphs").glob("date=*/*.jsonl"))
    partial, twice, source, target, same_size = workouts[1], workouts[3], workouts[5], workouts[7], graphs[2]
    partial.write_bytes(partial.read_bytes()[:-40])
    twice.write_bytes(twice.read_bytes() + twice.read_bytes().splitlines(keepends=True)[0])
    *kept, moved = source.read_bytes().splitlines(keepends=True)
    source.write_bytes(b"".join(kept))
    target.write_bytes(target.read_bytes() + moved)
    data = same_size.read_bytes()
    same_size.write_bytes(b"[" + data[1:])
    return {"partial": partial, "twice": twice, "moved": target, "same_size": same_size}


async def test_damage_written_between_runs_is_found_and_healed(
    make_emulator: Any, tmp_path: Path,
) -> None:
    """Behind a valid cache, the next refresh still finds each damaged file, heals it and refetches what it lost."""
    emulator, config = await cached_lake(make_emulator, tmp_path, workouts=120)
    root = tmp_path / "lake"
    damaged = damage(root)
    report = await run_harvest(config, "refresh")
    assert report.exit_code == 0, report.manifest
    for name, path in damaged.items():
        assert any(str(path) in problem for problem in report.outcome.healed), (name, report.outcome.healed)
    assert mirror_problems(root, await truth(emulator.url)) == []


async def test_a_deleted_or_damaged_cache_file_changes_nothing(
    make_emulator: Any, tmp_path: Path, reads: Counter[str],
) -> None:
    """Cache deleted, cut or garbage: the refresh reads every file, rebuilds the cache, and does what it did."""
    emulator, config = await cached_lake(make_emulator, tmp_path, workouts=80)
    root = tmp_path / "lake"
    user = emulator.account.user_id
    path = root / cache_key(user)
    lake_before = {key: p.read_bytes() for key, p in data_files(root).items()}
    ruins: dict[str, Callable[[], object]] = {
        "deleted": path.unlink,
        "cut": lambda: path.write_bytes(path.read_bytes()[:100]),
        "garbage": lambda: path.write_bytes(b"\x00not a cache\n" * 10),
    }
    for name, ruin in ruins.items():
        ruin()
        reads.clear()
        report = await run_harvest(config, "refresh")
        assert report.exit_code == 0 and report.outcome.healed == [], name
        assert lake_reads(reads) == lake_before.keys(), name
        assert (await stats(emulator.url))["by_endpoint"] == {"workouts": 1}, name
        await admin(emulator.url, "reset")
        assert {key: p.read_bytes() for key, p in data_files(root).items()} == lake_before, name
        cache = ScanCache.load(LocalStorage(root), user)
        lake = Lake(root)
        assert all(cache.get(e) is not None for _, e in lake.account_files("workouts", user)), name


async def test_verify_reads_past_the_cache_and_repair_drops_it(
    make_emulator: Any, tmp_path: Path,
) -> None:
    """A same-size rewrite that keeps the old mtime (what a cache cannot see): verify finds it, --repair heals it."""
    emulator, config = await cached_lake(make_emulator, tmp_path, workouts=80)
    root = tmp_path / "lake"
    path = sorted((root / "workouts").glob("date=*/*.jsonl"))[4]
    st = path.stat()
    path.write_bytes(b"[" + path.read_bytes()[1:])
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # what `touch -r` or `cp -p` can do
    quiet = await run_harvest(config, "refresh")
    assert quiet.exit_code == 0 and quiet.outcome.healed == []  # the cache vouches for the old content
    found = await anyio.to_thread.run_sync(check_lake, config)
    assert any(str(path) in problem for problem in found.problems), found.problems
    lines: list[str] = []
    assert await verify(config, repair=True, print_line=lines.append) == 0, lines
    assert mirror_problems(root, await truth(emulator.url)) == []


async def test_a_refresh_into_s3_reads_no_object_of_an_unchanged_lake(
    make_emulator: Any, tmp_path: Path, s3_root: str, reads: Counter[str],
) -> None:
    """On S3 (ETags): the second refresh reads no lake object; damage written then is still healed."""
    emulator = await make_emulator(workouts=30)
    config = harvest_config(emulator.url, tmp_path, harvest__lookback_days=0, output__root=s3_root)
    assert (await run_harvest(config, "backfill")).exit_code == 0
    assert (await run_harvest(config, "refresh")).exit_code == 0
    await admin(emulator.url, "reset")
    reads.clear()
    assert (await run_harvest(config, "refresh")).exit_code == 0
    assert lake_reads(reads) == set()
    assert (await stats(emulator.url))["by_endpoint"] == {"workouts": 1}
    storage = open_storage(s3_root)
    key = sorted(e.key for e in storage.walk("workouts"))[2]
    blob = storage.read(key)
    assert blob is not None
    storage.write(key, blob.data[:-30])
    report = await run_harvest(config, "refresh")
    assert report.exit_code == 0 and any(key in problem for problem in report.outcome.healed)
    copy = tmp_path / "copy"
    for entry in storage.walk(""):
        data = storage.read(entry.key)
        assert data is not None
        (copy / entry.key).parent.mkdir(parents=True, exist_ok=True)
        (copy / entry.key).write_bytes(data.data)
    assert mirror_problems(copy, await truth(emulator.url)) == []
