"""Runs of different accounts on one local lake proceed side by side; a second run of one account is refused."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import orjson

from harvester.lake import Lake
from tests.harness import PASSWORD, USERNAME, cli_env, run_cli_async, write_config
from tests.procs import start_cli, wait_until, whole_files

STAMP = "2026-11-30T00:00:00Z"


def test_concurrent_commits_to_the_shared_instructors_file_lose_nothing(tmp_path: Path) -> None:
    """Two accounts' commits merging instructors at once (separate Lake objects, threads): every id stays."""
    users = ["a" * 32, "b" * 32]

    def commit_many(index: int) -> None:
        lake = Lake(tmp_path)
        for n in range(40):
            row = {"id": f"{index:x}{n:031x}", "name": f"i{index}-{n}", "_harvested_at": STAMP}
            lake.commit(users[index], {"instructors": [row]})

    threads = [threading.Thread(target=commit_many, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    lines = (tmp_path / "instructors" / "instructors.jsonl").read_bytes().splitlines()
    assert len(lines) == 80 and len(set(lines)) == 80


def test_one_processes_merges_of_a_shared_file_take_turns_and_never_conflict(
    tmp_path: Path, monkeypatch: Any,
) -> None:
    """24 threads of one process merging one day's classes file at once by compare-and-swap
    (lakefile.merge_shared: an object store's way, and a local partition holding both
    compression variants): every row lands, no merge loses a compare-and-swap to another of
    the process (each write made slow, so racing merges would), and the waiting merges share
    writes."""
    from harvester.errors import StorageConflictError
    from harvester.lakefile import merge_shared
    from harvester.storage.local import LocalStorage

    counts = {"writes": 0, "conflicts": 0}
    lock = threading.Lock()
    real_create, real_replace = LocalStorage.create, LocalStorage.replace

    def counted(real: Any) -> Any:
        def write(self: LocalStorage, *args: Any, **kwargs: Any) -> str:
            time.sleep(0.005)  # a slow disk: the window another merge would fall into
            try:
                version: str = real(self, *args, **kwargs)
            except StorageConflictError:
                with lock:
                    counts["conflicts"] += 1
                raise
            with lock:
                counts["writes"] += 1
            return version
        return write

    monkeypatch.setattr(LocalStorage, "create", counted(real_create))
    monkeypatch.setattr(LocalStorage, "replace", counted(real_replace))
    start = threading.Barrier(24)
    key = "rides/date=2024-01-01/rides.jsonl"

    def merge(index: int) -> None:
        line = orjson.dumps({"ride_id": f"{index:032x}", "_harvested_at": STAMP}) + b"\n"

        def change(rows: dict[str, bytes]) -> dict[str, bytes]:
            return {**rows, f"{index:032x}": line}

        storage = LocalStorage(tmp_path)
        start.wait()
        merge_shared(storage, "rides", key, [key, f"{key}.gz"], change, "none")

    threads = [threading.Thread(target=merge, args=(i,)) for i in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    lines = (tmp_path / key).read_bytes().splitlines()
    assert len(set(lines)) == len(lines) == 24
    assert counts["conflicts"] == 0 and counts["writes"] < 24, counts


def test_commits_of_one_shared_file_at_once_lose_nothing_and_fsync_no_file(
    tmp_path: Path, monkeypatch: Any,
) -> None:
    """24 accounts' commits of one day's classes at once (threads, each its own Lake) stage the
    shared file in their batches: every row lands, and the only fsyncs are of the merges
    redone under the directory's lock because another commit renamed first."""
    fsyncs = {"n": 0}
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        fsyncs["n"] += 1
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    start = threading.Barrier(24)

    def commit(index: int) -> None:
        lake = Lake(tmp_path)
        row = {"ride_id": f"{index:032x}", "ride": {"original_air_time": 1_704_067_200},
               "_harvested_at": STAMP}
        start.wait()
        lake.commit(f"{index + 1:032x}", {"rides": [row]})

    threads = [threading.Thread(target=commit, args=(i,)) for i in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    lines = (tmp_path / "rides" / "date=2024-01-01" / "rides.jsonl").read_bytes().splitlines()
    assert len(set(lines)) == len(lines) == 24
    assert fsyncs["n"] <= 23  # at most one merge redone per commit that lost the race

    # One commit alone, of classes on 50 days: not one fsync (the batch's syncfs barriers).
    fsyncs["n"] = 0
    rows = [{"ride_id": f"{1000 + day:032x}", "ride": {"original_air_time": 1_704_067_200 + day * 86_400},
             "_harvested_at": STAMP} for day in range(50)]
    Lake(tmp_path).commit("f" * 32, {"rides": rows})
    assert fsyncs["n"] == 0
    assert len(list((tmp_path / "rides").glob("date=*/rides.jsonl"))) == 50


def test_a_shared_file_changed_between_staging_and_rename_is_merged_again(
    tmp_path: Path, monkeypatch: Any,
) -> None:
    """Another process's class lands in the day's shared file after this commit read it and
    before it renames (during its first barrier): the commit merges again under the
    directory's lock, so the file holds both classes, and the commit's workout lands too."""
    import harvester.storage.local as local

    first = {"ride_id": "a" * 32, "ride": {"original_air_time": 1_704_067_200}, "_harvested_at": STAMP}
    Lake(tmp_path).commit("1" * 32, {"rides": [first]})
    other = {"ride_id": "b" * 32, "ride": {"original_air_time": 1_704_067_200}, "_harvested_at": STAMP}
    mine = {"ride_id": "c" * 32, "ride": {"original_air_time": 1_704_067_200}, "_harvested_at": STAMP}
    real_sync = local.sync_filesystem
    raced = []

    def sync(path: Path) -> None:
        if not raced:  # the first barrier of the commit below: another writer gets in first
            raced.append(True)
            Lake(tmp_path).commit("2" * 32, {"rides": [other]})
        real_sync(path)

    monkeypatch.setattr(local, "sync_filesystem", sync)
    fsyncs = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (fsyncs.append(fd), real_fsync(fd))[1])
    workout = {"id": "d" * 32, "created_at": 1_704_100_000, "_harvested_at": STAMP}
    Lake(tmp_path).commit("3" * 32, {"rides": [mine], "workouts": [workout]})
    assert raced and len(fsyncs) == 1  # the merge redone under the lock, made durable alone
    rows = [orjson.loads(line) for line in
            (tmp_path / "rides" / "date=2024-01-01" / "rides.jsonl").read_bytes().splitlines()]
    assert sorted(row["ride_id"] for row in rows) == ["a" * 32, "b" * 32, "c" * 32]
    assert list((tmp_path / "workouts").glob("date=*/" + "3" * 32 + ".jsonl"))
    assert not [p for p in tmp_path.rglob(".*") if p.is_file()]  # no temporary left behind


def accounts_config(tmp_path: Path, url: str) -> Path:
    path = write_config(tmp_path, url, harvest={"concurrency": 2})
    entries = "".join(
        f'[[accounts]]\nname = "{name}"\nusername_env = "{name.upper()}_USER"\n'
        f'password_env = "{name.upper()}_PASS"\ntoken_cache = "{tmp_path}/{name}.json"\n'
        for name in ("alice", "bob")
    )
    path.write_text(path.read_text(encoding="utf-8") + "\n" + entries, encoding="utf-8")
    return path


async def test_two_accounts_harvest_one_lake_at_once(make_emulator: Any, tmp_path: Path) -> None:
    """While alice's backfill runs, bob's runs to the end beside it, and a second alice run exits 75."""
    emulator = await make_emulator(workouts=40, accounts=2, latency_ms=5.0)
    config = accounts_config(tmp_path, emulator.url)
    env = cli_env(tmp_path, ALICE_USER=USERNAME, ALICE_PASS=PASSWORD,
                  BOB_USER="user2@example.com", BOB_PASS="pass2")
    alice = await start_cli(["backfill", "--config", str(config), "--account", "alice", "--rps", "40",
                             "--no-progress"], env, tmp_path / "logs", "alice")
    alice_id, bob_id = (a.user_id for a in emulator.state.accounts)
    await wait_until(lambda: any((tmp_path / "lake" / "workouts").glob(f"date=*/{alice_id}.jsonl")))
    alice.process.send_signal(signal.SIGSTOP)  # mid-run, holding her lock, however loaded the machine
    alice_running = alice.process.returncode is None
    done: dict[str, subprocess.CompletedProcess[str]] = {}

    async def run(name: str, args: list[str]) -> None:
        done[name] = await run_cli_async(args, env)

    async with anyio.create_task_group() as group:  # both while alice runs
        group.start_soon(run, "again", ["refresh", "--config", str(config), "--account", "alice"])
        group.start_soon(run, "bob", ["backfill", "--config", str(config), "--account", "bob",
                                      "--no-progress"])
    again, bob = done["again"], done["bob"]
    alice.process.send_signal(signal.SIGCONT)
    assert again.returncode == 75 and "account alice" in again.stderr, again.stderr
    assert bob.returncode == 0, bob.stderr
    assert await alice.wait() == 0, alice.stderr()
    assert alice_running, "alice finished before bob ran: the test proved nothing"
    for user_id in (alice_id, bob_id):
        rows = sum(p.read_bytes().count(b"\n")
                   for p in (tmp_path / "lake" / "workouts").glob(f"date=*/{user_id}.jsonl"))
        assert rows == 40
    assert whole_files(tmp_path / "lake") == []
