"""State, failures, manifests and the run lock (storage/lease.py, local) under <root>/_harvester."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import pytest

from harvester.errors import LeaseLostError, LockedError, StateError
from harvester.state import AccountState, FailedItem, StateStore
from harvester.storage import LocalStorage, Storage
from harvester.storage.lease import run_lock

USER = "ac6b497fc71d48fbb844366ccfa5921f"
OTHER = "0123456789abcdef0123456789abcdef"
T0 = 1_709_287_200.0  # 2024-03-01T10:00:00Z



def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def full_state() -> AccountState:
    return AccountState(
        user_id=USER, watermark=1_700_000_000, daily={"profiles": "2024-03-01"},
        failures=[FailedItem("ride", "f" * 32, "/api/ride/x/details", "HTTP 503", 6)],
        in_progress=["a" * 32], missing_rides=["301aabb0-7139-42cb-b44e-786182646316"],
        backfill_complete=True,
        last_run={"run_id": "abc", "command": "refresh", "exit_code": 0},
    )


@contextmanager
def lock_holder(root: Path) -> Iterator[subprocess.Popen[str]]:
    """A separate python process holding account 'default''s run lock until its stdin closes."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.Popen([sys.executable, "-m", "tests.lease_holder", str(root), "default", "60"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


# -- state ------------------------------------------------------------------------


def test_missing_state_loads_as_fresh(tmp_path: Path) -> None:
    """An account with no state file starts with no watermark and nothing to retry."""
    state = StateStore(tmp_path).load(USER)
    assert state == AccountState(user_id=USER)
    assert not (tmp_path / "_harvester").exists()


def test_state_round_trips_every_field(tmp_path: Path) -> None:
    """save then load gives back an equal AccountState."""
    store = StateStore(tmp_path)
    store.save(full_state())
    assert store.load(USER) == full_state()
    assert store.accounts() == [USER]


async def test_state_files_are_0600_in_0700_dirs(tmp_path: Path) -> None:
    """State, failures, manifests and the locks are private to the user."""
    store = StateStore(tmp_path, now=lambda: T0)
    store.save(full_state())
    store.write_failures(USER, full_state().failures)
    manifest = store.write_manifest({"run_id": "abc123", "user_id": USER})
    async with run_lock(LocalStorage(tmp_path), "default", "refresh"):
        pass
    base = tmp_path / "_harvester"
    files = [base / "state" / f"{USER}.json", base / "failures" / f"{USER}.json", tmp_path / manifest,
             base / "lock", base / "locks" / "default.lock"]
    assert [mode(p) for p in files] == [0o600] * 5
    dirs = (base, base / "state", base / "failures", base / "runs", base / "locks")
    assert {mode(d) for d in dirs} == {0o700}


def test_unreadable_state_raises_state_error_naming_the_file(tmp_path: Path) -> None:
    """Truncated JSON or a wrong shape gives a one-line StateError with the path."""
    store = StateStore(tmp_path)
    store.save(full_state())
    path = tmp_path / "_harvester" / "state" / f"{USER}.json"
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(StateError, match=str(path)) as info:
        store.load(USER)
    assert "\n" not in str(info.value)
    path.write_bytes(orjson.dumps({"user_id": USER, "watermark": "soon"}))
    with pytest.raises(StateError, match="watermark"):
        store.load(USER)


def test_state_of_another_account_is_refused(tmp_path: Path) -> None:
    """A state file whose user_id differs from its name is not silently used."""
    store = StateStore(tmp_path)
    store.save(full_state())
    src = tmp_path / "_harvester" / "state" / f"{USER}.json"
    src.rename(src.with_name(f"{OTHER}.json"))
    with pytest.raises(StateError, match="belongs to"):
        store.load(OTHER)


def test_invalid_user_ids_never_reach_a_path(tmp_path: Path) -> None:
    """Ids that are not hex32 raise StateError on load, save and write_failures."""
    store = StateStore(tmp_path)
    with pytest.raises(StateError):
        store.load("../../x")
    with pytest.raises(StateError):
        store.save(AccountState(user_id="ABC"))
    with pytest.raises(StateError):
        store.write_failures("x/y", [])
    assert not (tmp_path / "_harvester").exists()


def test_unknown_keys_from_a_newer_version_are_ignored(tmp_path: Path) -> None:
    """Extra keys in a state file do not make it unreadable."""
    path = tmp_path / "_harvester" / "state" / f"{USER}.json"
    path.parent.mkdir(parents=True)
    path.write_bytes(orjson.dumps({"user_id": USER, "watermark": 5, "future": [1]}))
    assert StateStore(tmp_path).load(USER).watermark == 5


def test_failures_file_is_pretty_json_listing_each_item(tmp_path: Path) -> None:
    """The failures file holds every failed item, indented for people to read."""
    store = StateStore(tmp_path, now=lambda: T0)
    store.write_failures(USER, full_state().failures)
    path = tmp_path / "_harvester" / "failures" / f"{USER}.json"
    text = path.read_text(encoding="utf-8")
    assert "\n  " in text
    document = orjson.loads(text)
    assert document["updated_at"] == "2024-03-01T10:00:00Z"
    assert [FailedItem.from_dict(f) for f in document["failures"]] == full_state().failures


# -- manifests ------------------------------------------------------------------


def test_manifest_name_and_latest_per_account(tmp_path: Path) -> None:
    """Manifests are named <UTC stamp>-<run_id>.json and the newest of an account is found."""
    clock = iter([T0, T0 + 60, T0 + 120])
    store = StateStore(tmp_path, now=lambda: next(clock))
    first = store.write_manifest({"run_id": "r1", "user_id": USER, "n": 1})
    store.write_manifest({"run_id": "r2", "user_id": USER, "n": 2})
    store.write_manifest({"run_id": "r3", "user_id": OTHER, "n": 3})
    assert first == "_harvester/runs/20240301T100000.000000Z-r1.json"
    assert store.latest_manifest(USER) == {"run_id": "r2", "user_id": USER, "n": 2}
    assert store.latest_manifest("f" * 32) is None
    with pytest.raises(StateError, match="run_id"):
        store.write_manifest({"run_id": "../evil"})


def test_state_temp_files_are_cleaned(tmp_path: Path) -> None:
    """Temporary files a killed run left in _harvester are removed, real files kept."""
    store = StateStore(tmp_path)
    store.save(full_state())
    leftover = tmp_path / "_harvester" / "state" / f".{USER}.json.tmp-42-0badcafe"
    leftover.write_bytes(b"{")
    assert store.clean_temp_files() == 1
    assert not leftover.exists()
    assert store.load(USER) == full_state()


# -- the run lock ---------------------------------------------------------------


async def test_lock_held_by_another_process_is_refused_naming_it(tmp_path: Path) -> None:
    """A second run of the account gets LockedError (exit 75) naming the holder's pid and command."""
    with lock_holder(tmp_path) as holder, pytest.raises(LockedError) as info:
        async with run_lock(LocalStorage(tmp_path), "default", "refresh"):
            pass
    message = str(info.value)
    assert f"pid {holder.pid}" in message
    assert "`backfill`" in message
    assert str(tmp_path) in message
    assert "\n" not in message and info.value.exit_code == 75


async def test_lock_of_a_sigkilled_holder_is_free(tmp_path: Path) -> None:
    """The kernel frees the flock when its holder dies, even by SIGKILL."""
    with lock_holder(tmp_path) as holder:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    assert (tmp_path / "_harvester" / "locks" / "default.lock").exists()
    async with run_lock(LocalStorage(tmp_path), "default", "refresh"):
        pass


async def test_lock_is_released_on_exit_and_refused_while_held(tmp_path: Path) -> None:
    """Within one process a held lock refuses a second holder; after exit it is free again."""
    storage = LocalStorage(tmp_path)
    async with run_lock(storage, "default", "backfill"):
        with pytest.raises(LockedError, match=f"pid {os.getpid()}"):
            async with run_lock(storage, "default", "refresh"):
                pass
        async with run_lock(storage, "other", "refresh"):  # another account: side by side
            pass
    async with run_lock(storage, "default", "refresh"):
        pass
    assert (tmp_path / "_harvester" / "locks" / "default.lock").read_bytes() == b""


# -- the same state on both backends (a local folder, moto's S3 server) -----------------


def test_state_manifests_and_failures_round_trip_on_both_backends(storage: Storage) -> None:
    """State, manifests and failures live under _harvester/ on the lake's own storage."""
    clock = iter([T0, T0 + 30, T0 + 60])  # failures, then two manifests
    store = StateStore(storage, now=lambda: next(clock))
    assert store.accounts() == [] and store.load(USER) == AccountState(user_id=USER)
    store.save(full_state())
    store.write_failures(USER, full_state().failures)
    store.write_manifest({"run_id": "r1", "user_id": USER, "n": 1})
    store.write_manifest({"run_id": "r2", "user_id": USER, "n": 2})
    again = StateStore(storage)
    assert again.load(USER) == full_state() and again.accounts() == [USER]
    assert again.latest_manifest(USER) == {"run_id": "r2", "user_id": USER, "n": 2}
    blob = storage.read(f"_harvester/failures/{USER}.json")
    assert blob is not None and len(orjson.loads(blob.data)["failures"]) == len(full_state().failures)


def test_a_run_that_lost_its_lease_cannot_overwrite_the_state(storage: Storage) -> None:
    """Two runs load one state; the one that saves second (its lease was taken over) gets exit 75, state kept."""
    StateStore(storage).save(AccountState(user_id=USER, watermark=1))
    stalled, taker = StateStore(storage), StateStore(storage)
    stalled.load(USER)
    taker.load(USER)
    taker.save(AccountState(user_id=USER, watermark=2))
    with pytest.raises(LeaseLostError, match="another run") as info:
        stalled.save(AccountState(user_id=USER, watermark=3))
    assert info.value.exit_code == 75
    assert StateStore(storage).load(USER).watermark == 2
    taker.save(AccountState(user_id=USER, watermark=4))  # the holder's own saves go on
    assert StateStore(storage).load(USER).watermark == 4
