"""The storage interface, the same tests against a local folder and moto's S3 server on loopback."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from harvester.errors import (
    ConfigError,
    StorageConflictError,
    StorageError,
    StorageUnavailableError,
)
from harvester.storage import LocalStorage, Storage, local, open_storage, parse_object_url
from harvester.storage.objects import ObjectStorage, open_object_store
from tests.s3 import CREDENTIALS, MotoS3, start_moto_process

# -- whole objects ---------------------------------------------------------------


def test_write_read_stat_walk_delete_round_trip(storage: Storage) -> None:
    """What is written reads back whole; walk lists every object under a prefix; delete removes."""
    storage.write("workouts/date=2024-01-02/a.jsonl", b'{"id":"1"}\n')
    storage.write("workouts/date=2024-01-03/a.jsonl", b'{"id":"2"}\n')
    storage.write("instructors/instructors.jsonl", b"{}\n")
    blob = storage.read("workouts/date=2024-01-02/a.jsonl")
    assert blob is not None and blob.data == b'{"id":"1"}\n' and blob.version
    stat = storage.stat("workouts/date=2024-01-03/a.jsonl")
    assert stat is not None and stat.size == 11 and stat.modified_ns > 0
    assert [e.key for e in storage.walk("workouts")] == [
        "workouts/date=2024-01-02/a.jsonl", "workouts/date=2024-01-03/a.jsonl"]
    dirs, files = storage.list_dir("workouts")
    assert dirs == ["workouts/date=2024-01-02", "workouts/date=2024-01-03"] and files == []
    storage.delete("workouts/date=2024-01-02/a.jsonl")
    storage.delete("workouts/date=2024-01-02/a.jsonl")  # absent is fine
    assert storage.read("workouts/date=2024-01-02/a.jsonl") is None
    assert storage.stat("nothing/here.json") is None
    assert [e.key for e in storage.walk("workouts")] == ["workouts/date=2024-01-03/a.jsonl"]
    assert list(storage.walk("absent")) == [] and storage.list_dir("absent") == ([], [])


def test_write_replaces_the_whole_object(storage: Storage) -> None:
    """A second write replaces the content entirely (no append, no tail of the old one)."""
    storage.write("state/x.json", b"a much longer first content\n")
    storage.write("state/x.json", b"short\n")
    blob = storage.read("state/x.json")
    assert blob is not None and blob.data == b"short\n"


def test_move_puts_the_whole_object_under_the_new_key(storage: Storage) -> None:
    """move() (quarantine uses it) leaves the content under the new key only; a missing source is an error."""
    storage.write("workouts/date=2024-01-01/u.jsonl", b"damaged\n")
    storage.write("_harvester/quarantine/u.jsonl", b"older\n")
    storage.move("workouts/date=2024-01-01/u.jsonl", "_harvester/quarantine/u.jsonl")
    assert storage.read("workouts/date=2024-01-01/u.jsonl") is None
    blob = storage.read("_harvester/quarantine/u.jsonl")
    assert blob is not None and blob.data == b"damaged\n"
    with pytest.raises(StorageError):
        storage.move("workouts/date=2024-01-01/u.jsonl", "_harvester/quarantine/v.jsonl")


def test_keys_that_escape_the_root_are_refused(storage: Storage) -> None:
    """A key is plain relative segments: '..', absolute paths and empty segments are a bug."""
    for key in ("../x", "/etc/passwd", "a//b", "a/./b", ""):
        with pytest.raises(ValueError):
            storage.write(key, b"x")


def test_batch_publishes_in_order_and_nothing_before_commit(storage: Storage) -> None:
    """Staged objects are invisible until commit; commit publishes all and removes what they replace."""
    storage.write("rides/date=2024-01-01/u.jsonl.gz", b"old variant")
    with storage.batch() as batch:
        batch.put("rides/date=2024-01-01/u.jsonl", b"r\n", replaces=["rides/date=2024-01-01/u.jsonl.gz"])
        batch.put("workouts/date=2024-01-01/u.jsonl", b"w\n")
        assert [e.key for e in storage.walk("workouts")] == []
        assert [e.key for e in storage.walk("rides")] == ["rides/date=2024-01-01/u.jsonl.gz"]
        batch.commit()
    assert [e.key for e in storage.walk("")] == [
        "rides/date=2024-01-01/u.jsonl", "workouts/date=2024-01-01/u.jsonl"]


def test_a_batch_left_without_commit_leaves_no_trace(storage: Storage, tmp_path: Path) -> None:
    """Leaving the batch block early discards the staged objects: no temporary file remains."""
    with pytest.raises(RuntimeError), storage.batch() as batch:
        batch.put("workouts/date=2024-01-01/u.jsonl", b"w\n")
        raise RuntimeError("stop")
    assert list(storage.walk("")) == []
    if isinstance(storage, LocalStorage):
        assert [p for p in storage.root.rglob("*") if p.is_file()] == []


def test_local_temporaries_are_dot_names_no_glob_sees_and_sweep_removes(tmp_path: Path) -> None:
    """A staged local file is a dot-prefixed temporary beside its target; sweep_temp removes leftovers."""
    storage = LocalStorage(tmp_path)
    batch = storage.batch()
    batch.put("workouts/date=2024-01-01/u.jsonl", b"w\n")
    staged = list((tmp_path / "workouts").rglob(".*"))
    assert len(staged) == 1 and staged[0].name.startswith(".u.jsonl.tmp-")
    assert list((tmp_path / "workouts").glob("**/*.jsonl")) == []
    assert list(storage.walk("")) == []
    assert storage.sweep_temp("") == 1 and list(tmp_path.rglob(".*")) == []


def test_private_local_objects_are_mode_0600_in_0700_folders(tmp_path: Path) -> None:
    """State and locks can name the account: private writes are readable by their owner only."""
    storage = LocalStorage(tmp_path)
    storage.write("_harvester/state/x.json", b"{}", private=True)
    assert (tmp_path / "_harvester/state/x.json").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "_harvester/state").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "_harvester").stat().st_mode & 0o777 == 0o700


# -- conditional writes ----------------------------------------------------------


def test_create_if_absent_refuses_an_existing_object(storage: Storage) -> None:
    """create() writes a new object once; a second create of the key is a conflict, content untouched."""
    version = storage.create("_harvester/locks/a.json", b"first")
    with pytest.raises(StorageConflictError) as info:
        storage.create("_harvester/locks/a.json", b"second")
    assert info.value.exit_code == 75
    blob = storage.read("_harvester/locks/a.json")
    assert blob is not None and blob.data == b"first" and blob.version == version


def test_replace_if_unchanged_refuses_a_stale_version(storage: Storage) -> None:
    """replace() succeeds on the version read and fails once another writer changed the object."""
    storage.write("instructors/instructors.jsonl", b"v1\n")
    first = storage.read("instructors/instructors.jsonl")
    assert first is not None
    second_version = storage.replace("instructors/instructors.jsonl", b"v2\n", first.version)
    with pytest.raises(StorageConflictError):
        storage.replace("instructors/instructors.jsonl", b"v3 from stale read\n", first.version)
    blob = storage.read("instructors/instructors.jsonl")
    assert blob is not None and blob.data == b"v2\n" and blob.version == second_version
    with pytest.raises(StorageConflictError):
        storage.replace("absent.json", b"x", first.version)


def test_a_local_read_hashes_the_content_only_when_its_version_is_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A local read costs no hash until compare-and-swap asks for the version; the
    version then names the content read, even if the file changed meanwhile."""
    hashed: list[bytes] = []
    version_of = local.content_version

    def counting(data: bytes) -> str:
        hashed.append(data)
        return version_of(data)

    storage = LocalStorage(tmp_path)
    storage.write("instructors/instructors.jsonl", b"v1\n")
    monkeypatch.setattr("harvester.storage.local.content_version", counting)
    blob = storage.read("instructors/instructors.jsonl")
    assert blob is not None and blob.data == b"v1\n" and hashed == []
    storage.write("instructors/instructors.jsonl", b"v2 from another writer\n")
    assert blob.version == version_of(b"v1\n") and hashed == [b"v1\n"]
    assert blob.version == version_of(b"v1\n") and len(hashed) == 1  # computed once
    with pytest.raises(StorageConflictError):
        storage.replace("instructors/instructors.jsonl", b"v3\n", blob.version)


def _append_with_cas(storage: Storage, key: str, item: str, before_write: Callable[[], None]) -> int:
    """Read-merge-write of a JSON list with compare-and-swap; returns how many conflicts it retried."""
    conflicts = 0
    while True:
        blob = storage.read(key)
        assert blob is not None
        items = orjson.loads(blob.data)
        before_write()
        try:
            storage.replace(key, orjson.dumps([*items, item]), blob.version)
            return conflicts
        except StorageConflictError:
            conflicts += 1


def test_two_writers_racing_one_wins_the_loser_retries_and_nothing_is_lost(storage: Storage) -> None:
    """Both read the same version; exactly one replace wins, the other conflicts, retries, and both items stay."""
    storage.write("instructors/shared.json", b"[]")
    both_read = threading.Barrier(2)
    first_round = [True, True]

    def writer(index: int, results: list[int]) -> None:
        def sync() -> None:
            if first_round[index]:
                first_round[index] = False
                both_read.wait(timeout=10)
        results[index] = _append_with_cas(storage, "instructors/shared.json", f"w{index}", sync)

    results = [-1, -1]
    threads = [threading.Thread(target=writer, args=(i, results)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(results) == [0, 1]  # one won at once, the other lost once and retried
    blob = storage.read("instructors/shared.json")
    assert blob is not None and sorted(orjson.loads(blob.data)) == ["w0", "w1"]


def test_many_writers_merging_by_cas_lose_no_update(storage: Storage) -> None:
    """Four threads appending ten items each through compare-and-swap: all forty are there."""
    storage.write("shared/list.json", b"[]")

    def writer(index: int) -> None:
        for n in range(10):
            _append_with_cas(storage, "shared/list.json", f"{index}-{n}", lambda: None)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    blob = storage.read("shared/list.json")
    assert blob is not None
    assert sorted(orjson.loads(blob.data)) == sorted(f"{i}-{n}" for i in range(4) for n in range(10))


# -- roots, endpoints, failures --------------------------------------------------


def test_object_urls_parse_and_bad_ones_are_config_errors() -> None:
    """s3://, gs://, az:// roots are taken apart; unknown schemes, no bucket, or '..' are ConfigError."""
    assert str(parse_object_url("s3://bucket/some/prefix/")) == "s3://bucket/some/prefix"
    assert parse_object_url("gs://bkt").prefix == "" and parse_object_url("az://box/p").scheme == "az"
    for bad in ("ftp://bucket/x", "s3:///x", "s3://bucket/../x", "s3://key:secret@bucket/x",
                "s3://bucket/x?versionId=1", "s3://b/x"):
        with pytest.raises(ConfigError):
            parse_object_url(bad)


def test_an_s3_root_is_an_object_store_never_a_local_folder(s3_root: str, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """open_storage('s3://…') writes to the bucket, and no folder named 's3:' appears."""
    monkeypatch.chdir(tmp_path)
    storage = open_storage(s3_root)
    assert isinstance(storage, ObjectStorage)
    storage.check_writable()
    storage.write("x.json", b"1")
    assert not (tmp_path / "s3:").exists() and list(tmp_path.iterdir()) == []


def test_plain_http_endpoint_is_refused_unless_loopback() -> None:
    """AWS_ENDPOINT_URL=http://… is accepted only for loopback hosts (SPEC: http only on loopback)."""
    url = parse_object_url("s3://bucket/lake")
    env = {**CREDENTIALS, "AWS_ENDPOINT_URL": "http://storage.example.com:9000"}
    with pytest.raises(ConfigError, match="AWS_ENDPOINT_URL: plain http:// is refused"):
        open_object_store(url, env)
    assert open_object_store(url, {**CREDENTIALS, "AWS_ENDPOINT_URL": "http://127.0.0.1:9"})


def test_a_missing_bucket_is_a_clear_exit_2_error(moto_s3: MotoS3, monkeypatch: pytest.MonkeyPatch) -> None:
    """Writing to a bucket that does not exist names it and exits 2 (fix the config), not 75."""
    for name, value in moto_s3.env().items():
        monkeypatch.setenv(name, value)
    storage = open_storage("s3://no-such-bucket-here/lake")
    with pytest.raises(StorageError, match="not found") as info:
        storage.check_writable()
    assert info.value.exit_code == 2 and not isinstance(info.value, StorageUnavailableError)


def test_killed_storage_server_is_a_temporary_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    """After SIGKILL of the S3 server every operation fails fast with StorageUnavailableError (exit 75)."""
    process, endpoint = start_moto_process()
    try:
        env = {**CREDENTIALS, "AWS_ENDPOINT_URL": endpoint}
        import boto3

        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                     aws_access_key_id="testing", aws_secret_access_key="testing"
                     ).create_bucket(Bucket="lake")
        storage = open_object_store(parse_object_url("s3://lake/root"), env, max_retries=1,
                                    retry_timeout_s=1.0, timeout_s=2.0)
        storage.write("workouts/date=2024-01-01/u.jsonl", b"w\n")
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        for operation in (lambda: storage.read("workouts/date=2024-01-01/u.jsonl"),
                          lambda: storage.write("x.json", b"1"),
                          lambda: list(storage.walk("workouts")),
                          lambda: storage.create("y.json", b"1")):
            with pytest.raises(StorageUnavailableError, match="cannot be reached") as info:
                operation()
            assert info.value.exit_code == 75
            assert "\n" not in str(info.value)
    finally:
        process.kill()
        process.wait(timeout=10)


def test_server_gone_mid_batch_leaves_only_whole_objects(moto_s3: MotoS3, s3_root: str) -> None:
    """The S3 server stops after the first PUT of a batch: exit-75 error; each object is whole or absent."""
    storage = open_object_store(parse_object_url(s3_root), moto_s3.env(), max_retries=1,
                                retry_timeout_s=1.0, timeout_s=2.0)
    contents = {f"workouts/date=2024-01-0{i}/u.jsonl": (b'{"id":"%d"}\n' % i) * 2000 for i in range(1, 4)}
    real_write = storage.write
    writes = 0

    def write_then_vanish(key: str, data: bytes, *, private: bool = False) -> None:
        nonlocal writes
        real_write(key, data, private=private)
        writes += 1
        if writes == 1:
            moto_s3.stop()  # the real server goes away between two PUTs of the batch

    storage.write = write_then_vanish  # type: ignore[method-assign]
    try:
        with pytest.raises(StorageUnavailableError), storage.batch() as batch:
            for key, data in contents.items():
                batch.put(key, data)
                batch.barrier()  # one at a time: PUTs between barriers may run concurrently
            batch.commit()
    finally:
        moto_s3.start()  # same port; moto keeps its objects in this process
    survivors = {e.key: storage.read(e.key) for e in storage.walk("")}
    assert list(survivors) == ["workouts/date=2024-01-01/u.jsonl"]
    for key, blob in survivors.items():
        assert blob is not None and blob.data == contents[key]


def test_the_writability_probe_survives_another_runs_sweep(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """check_writable runs before the run lock, so a run alone on the lake may sweep its probe first:
    that is no error (50 accounts in one process hit this as 'not writable: No such file')."""
    import harvester.storage.local as local

    storage = LocalStorage(tmp_path / "lake")
    real_close = local.os.close

    def close_then_swept(fd: int) -> None:
        real_close(fd)
        assert storage.sweep_temp("", recursive=False) == 1  # the probe, taken as a leftover

    monkeypatch.setattr(local.os, "close", close_then_swept)
    storage.check_writable()
    monkeypatch.undo()
    assert list((tmp_path / "lake").iterdir()) == []
