"""The whole harvester against a real S3 server (moto) on loopback: the lake, its state and lock in a bucket."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import anyio
import orjson

from harvester.lake import Lake
from harvester.storage import Storage, open_storage
from tests.chaos import mirror_problems
from tests.harness import PASSWORD, USERNAME, cli_env, comparable, lake_rows, run_cli_async, write_config
from tests.procs import start_cli, wait_until, whole_files
from tests.s3 import MotoS3

STAMP = "2026-11-30T00:00:00Z"


def snapshot(storage: Storage, dest: Path) -> Path:
    """Every object of the lake copied to ``dest`` (the same keys as paths), to check it as files."""
    for entry in storage.walk(""):
        blob = storage.read(entry.key)
        assert blob is not None, entry.key
        (dest / entry.key).parent.mkdir(parents=True, exist_ok=True)
        (dest / entry.key).write_bytes(blob.data)
    return dest


def truth(emulator: Any, index: int = 0) -> list[dict[str, Any]]:
    """The source's workouts of one member, as /_emulator/truth gives them."""
    account = emulator.state.accounts[index]
    return [{"id": w.id, "created_at": w.created_at, "status": w.status} for w in account.workouts]


def detail_requests(emulator: Any) -> int:
    return sum(emulator.stats_snapshot()["by_id"].get("workout", {}).values())


def expire_lease(storage: Storage, account: str = "default") -> None:
    """What 60 s without renewal does to a killed holder's lease, without waiting them out."""
    key = f"_harvester/locks/{account}.json"
    blob = storage.read(key)
    assert blob is not None and orjson.loads(blob.data)["expires_at"] > 0
    storage.replace(key, orjson.dumps({**orjson.loads(blob.data), "expires_at": 0}), blob.version)


async def test_backfill_and_refresh_into_s3_mirror_the_source(
    make_emulator: Any, tmp_path: Path, s3_root: str
) -> None:
    """backfill into s3:// mirrors the source (state and manifest in the bucket); refresh and status follow."""
    emulator = await make_emulator(workouts=30)
    config = write_config(tmp_path, emulator.url, output={"root": s3_root})
    env = cli_env(tmp_path)
    done = await run_cli_async(["backfill", "--config", str(config), "--no-progress"], env)
    assert done.returncode == 0, done.stderr
    storage = open_storage(s3_root)
    lake = snapshot(storage, tmp_path / "copy")
    assert mirror_problems(lake, truth(emulator)) == []
    user = emulator.account.user_id
    assert (lake / "_harvester" / "state" / f"{user}.json").is_file()
    assert list((lake / "_harvester" / "runs").glob("*.json"))
    # Objects per account are bounded by partitions (one per day), not by workouts.
    days = {p.parent.name for p in (lake / "workouts").glob("date=*/*.jsonl")}
    assert len(list((lake / "workouts").glob("date=*/*.jsonl"))) == len(days)
    assert not (tmp_path / "s3:").exists()

    emulator.add_workouts(3)
    again = await run_cli_async(["refresh", "--config", str(config), "--no-progress"], env)
    assert again.returncode == 0, again.stderr
    assert mirror_problems(snapshot(storage, tmp_path / "copy2"), truth(emulator)) == []
    status = await run_cli_async(["status", "--config", str(config)], env)
    assert status.returncode == 0 and f"account {user}" in status.stdout, status.stderr
    verify = await run_cli_async(["verify", "--config", str(config)], env)
    assert verify.returncode == 0 and "the lake is whole" in verify.stdout, verify.stdout


async def test_backfill_sigkilled_into_s3_then_resumed_holds_each_key_once(
    make_emulator: Any, tmp_path: Path, s3_root: str
) -> None:
    """SIGKILL mid-backfill into S3: every object whole; the lease blocks until it expires; the resume mirrors."""
    emulator = await make_emulator(workouts=100, latency_ms=3.0, jitter_ms=3.0)
    config = write_config(tmp_path, emulator.url, output={"root": s3_root},
                          harvest={"concurrency": 4, "page_size": 50})
    env = cli_env(tmp_path)
    args = ["backfill", "--config", str(config), "--no-progress"]
    storage = open_storage(s3_root)
    for attempt, target in enumerate((40,)):
        cli = await start_cli(args, env, tmp_path / "logs", f"attempt{attempt}")
        await wait_until(lambda target=target: detail_requests(emulator) >= target)
        cli.process.send_signal(signal.SIGKILL)
        assert await cli.wait() == -signal.SIGKILL, cli.stderr()
        copy = snapshot(storage, tmp_path / f"copy{attempt}")
        assert whole_files(copy) == []  # whole objects only, and no temporary ever
        held = {row["id"] for row in lake_rows(copy, "workouts")}
        assert held <= {row["workout_id"] for row in lake_rows(copy, "performance_graphs")}
        comparable(copy)  # no key twice
        blocked = await run_cli_async(args, env)  # the dead holder's lease has not expired yet
        assert blocked.returncode == 75 and "in use by another run" in blocked.stderr, blocked.stderr
        expire_lease(storage)
    done = await run_cli_async(args, env)
    assert done.returncode == 0, done.stderr
    assert mirror_problems(snapshot(storage, tmp_path / "final"), truth(emulator)) == []


async def test_two_processes_harvest_different_accounts_into_one_bucket_at_once(
    make_emulator: Any, tmp_path: Path, s3_root: str
) -> None:
    """alice and bob (two processes, standing for two machines) fill one bucket at once; a second alice exits 75."""
    emulator = await make_emulator(workouts=40, accounts=2, latency_ms=5.0)
    config = write_config(tmp_path, emulator.url, output={"root": s3_root}, harvest={"concurrency": 2})
    entries = "".join(
        f'[[accounts]]\nname = "{name}"\nusername_env = "{name.upper()}_USER"\n'
        f'password_env = "{name.upper()}_PASS"\ntoken_cache = "{tmp_path}/{name}.json"\n'
        for name in ("alice", "bob"))
    config.write_text(config.read_text(encoding="utf-8") + "\n" + entries, encoding="utf-8")
    env = cli_env(tmp_path, ALICE_USER=USERNAME, ALICE_PASS=PASSWORD,
                  BOB_USER="user2@example.com", BOB_PASS="pass2")
    common = ["--config", str(config), "--rps", "60", "--no-progress"]
    alice = await start_cli(["backfill", *common, "--account", "alice"], env, tmp_path / "logs", "alice")
    bob = await start_cli(["backfill", *common, "--account", "bob"], env, tmp_path / "logs", "bob")
    await wait_until(lambda: detail_requests(emulator) >= 10)
    alice.process.send_signal(signal.SIGSTOP)  # holding her lease, however loaded the machine
    stopped = alice.process.returncode is None
    again = await run_cli_async(["refresh", *common, "--account", "alice"], env)
    alice.process.send_signal(signal.SIGCONT)
    assert again.returncode == 75 and "account alice" in again.stderr, again.stderr
    assert await bob.wait() == 0, bob.stderr()
    assert await alice.wait() == 0, alice.stderr()
    assert stopped, "alice finished before the second run started: the test proved nothing"
    lake = snapshot(open_storage(s3_root), tmp_path / "copy")
    for index in (0, 1):
        user = emulator.state.accounts[index].user_id
        mine = [p for p in (lake / "workouts").glob(f"date=*/{user}.jsonl")]
        rows = sum(p.read_bytes().count(b"\n") for p in mine)
        assert rows == 40
    instructors = lake_rows(lake, "instructors")
    assert len({row["id"] for row in instructors}) == len(instructors) > 0


def test_a_cas_conflict_on_the_shared_instructors_object_loses_no_update(s3_root: str) -> None:
    """Another account's commit lands between a read and its replace: the replace conflicts, retries, keeps both."""
    storage = open_storage(s3_root)
    users = ["a" * 32, "b" * 32]
    other = Lake(open_storage(s3_root))
    conflicts = 0
    real_replace = storage.replace

    def replace_after_a_rival(key: str, data: bytes, version: str, *, private: bool = False) -> str:
        nonlocal conflicts
        if key.startswith("instructors/") and conflicts == 0:
            conflicts += 1  # the rival writes first: this replace must now fail and be retried
            other.commit(users[1], {"instructors": [{"id": "f" * 32, "_harvested_at": STAMP}]})
        return real_replace(key, data, version, private=private)

    storage.replace = replace_after_a_rival  # type: ignore[method-assign]
    lake = Lake(storage)
    lake.commit(users[0], {"instructors": [{"id": "0" * 32, "_harvested_at": STAMP}]})
    lake.commit(users[0], {"instructors": [{"id": "1" * 32, "_harvested_at": STAMP}]})
    blob = storage.read("instructors/instructors.jsonl")
    assert blob is not None and conflicts == 1
    assert sorted(orjson.loads(line)["id"] for line in blob.data.splitlines()) == [
        "0" * 32, "1" * 32, "f" * 32]


def test_a_shared_object_the_listing_lacks_is_created_unread_and_a_rivals_copy_is_kept(
    s3_root: str,
) -> None:
    """A class file of a day the lake's listing did not show is created without reading it
    first (a GET saved per file); one a rival created after that listing makes the create
    conflict, is read and keeps both rows; one this lake wrote is read before it changes."""
    storage = open_storage(s3_root)
    reads: list[str] = []
    real_read = storage.read

    def read(key: str) -> Any:
        reads.append(key)
        return real_read(key)

    storage.read = read  # type: ignore[method-assign]

    def ride(ride_id: str, day: int) -> dict[str, Any]:
        return {"ride_id": ride_id, "ride": {"original_air_time": 1_704_067_200 + day * 86_400},
                "_harvested_at": STAMP}

    lake = Lake(storage)
    lake.commit("a" * 32, {"rides": [ride("0" * 32, 0), ride("1" * 32, 1)]})
    targets = {"rides/date=2024-01-01/rides.jsonl", "rides/date=2024-01-02/rides.jsonl"}
    assert not targets & set(reads)  # only the .gz variants were looked for
    assert {f"{key}.gz" for key in targets} <= set(reads)

    Lake(open_storage(s3_root)).commit("b" * 32, {"rides": [ride("2" * 32, 2)]})  # after the listing
    reads.clear()
    lake.commit("a" * 32, {"rides": [ride("3" * 32, 2), ride("4" * 32, 0)]})
    assert "rides/date=2024-01-03/rides.jsonl" in reads  # the create conflicted: read, merged
    assert "rides/date=2024-01-01/rides.jsonl" in reads  # its own earlier file: read first

    def ids(day: str) -> list[str]:
        blob = real_read(f"rides/date={day}/rides.jsonl")
        assert blob is not None
        return sorted(orjson.loads(line)["ride_id"] for line in blob.data.splitlines())

    assert ids("2024-01-01") == ["0" * 32, "4" * 32]
    assert ids("2024-01-02") == ["1" * 32]
    assert ids("2024-01-03") == ["2" * 32, "3" * 32]


def test_racing_writers_of_the_shared_instructors_object_lose_nothing(s3_root: str) -> None:
    """Two accounts' lakes (threads, separate clients) merging instructors into one bucket: every id stays."""
    users = ["a" * 32, "b" * 32]

    def commit_many(index: int) -> None:
        lake = Lake(open_storage(s3_root))
        for n in range(15):
            row = {"id": f"{index:x}{n:031x}", "_harvested_at": STAMP}
            lake.commit(users[index], {"instructors": [row]})

    threads = [threading.Thread(target=commit_many, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    blob = open_storage(s3_root).read("instructors/instructors.jsonl")
    assert blob is not None
    lines = blob.data.splitlines()
    assert len(lines) == 30 and len(set(lines)) == 30


async def test_the_storage_server_going_away_mid_run_is_exit_75_and_tears_nothing(
    make_emulator: Any, tmp_path: Path, s3_root: str
) -> None:
    """The S3 server stops mid-backfill: one line on stderr, exit 75; back up, every object is whole."""
    emulator = await make_emulator(workouts=150, latency_ms=3.0)
    server = MotoS3().start()  # its own port, moto's shared backends: the bucket is there
    try:
        config = write_config(tmp_path, emulator.url, output={"root": s3_root},
                              harvest={"concurrency": 4, "page_size": 50})
        env = cli_env(tmp_path, AWS_ENDPOINT_URL=server.endpoint)
        cli = await start_cli(["backfill", "--config", str(config), "--no-progress"], env,
                              tmp_path / "logs", "gone")
        await wait_until(lambda: detail_requests(emulator) >= 40)
        await anyio.to_thread.run_sync(server.stop)
        code = await cli.wait()
        errors = [line for line in cli.stderr().splitlines() if line.startswith("peloton-harvester: error:")]
        assert code == 75, cli.stderr()
        # One error line (a warning that the lease could not be released may precede it).
        assert len(errors) == 1 and "cannot be reached" in errors[0] and "try again" in errors[0], errors
        assert "Traceback" not in cli.stderr()
    finally:
        server.start()  # same port: moto kept every object
        server.stop()
    copy = snapshot(open_storage(s3_root), tmp_path / "copy")
    assert whole_files(copy) == []
    comparable(copy)
