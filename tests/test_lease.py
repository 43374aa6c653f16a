"""The run lock per account: a lease object on S3 (moto on loopback) and on a folder, a flock locally."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import anyio
import orjson
import pytest

from harvester.errors import LeaseLostError, LockedError
from harvester.storage import Storage, open_storage
from harvester.storage.lease import Lease, hold_lease
from tests.procs import wait_until

REPO = Path(__file__).resolve().parent.parent
TTL_S = 30.0


def lease_body(storage: Storage, account: str) -> dict[str, object]:
    blob = storage.read(f"_harvester/locks/{account}.json")
    assert blob is not None
    body = orjson.loads(blob.data)
    assert isinstance(body, dict)
    return body


def test_a_held_lease_refuses_a_second_run_of_the_account_not_of_another(storage: Storage) -> None:
    """While alice's lease is valid a second taker gets LockedError (exit 75) naming the holder; bob's is free."""
    first = Lease(storage, "alice", "backfill", ttl_s=TTL_S)
    first.acquire()
    with pytest.raises(LockedError, match=rf"account alice .* in use by another run \(pid {os.getpid()}") as info:
        Lease(storage, "alice", "refresh", ttl_s=TTL_S).acquire()
    assert info.value.exit_code == 75
    other = Lease(storage, "bob", "refresh", ttl_s=TTL_S)
    other.acquire()
    assert first.held and other.held


def test_an_expired_lease_is_taken_over_and_its_old_holder_learns_it(storage: Storage) -> None:
    """Past its expiry a lease is taken over; the stalled holder's renewal then fails with LeaseLostError."""
    stalled = Lease(storage, "alice", "backfill", ttl_s=TTL_S)
    stalled.acquire()
    later = Lease(storage, "alice", "refresh", ttl_s=TTL_S, clock=lambda: time.time() + TTL_S + 1)
    later.acquire()
    assert lease_body(storage, "alice")["command"] == "refresh"
    with pytest.raises(LeaseLostError, match="took over the lease on account alice"):
        stalled.renew()
    stalled.release()  # must not clobber the new holder's lease
    assert lease_body(storage, "alice")["command"] == "refresh"
    later.renew()
    later.release()
    assert lease_body(storage, "alice")["expires_at"] == 0
    Lease(storage, "alice", "backfill", ttl_s=TTL_S).acquire()  # released: free at once


def test_racing_takers_exactly_one_wins(storage: Storage) -> None:
    """Threads taking one account's lease at the same instant: exactly one holds it, every round."""
    for round_ in range(4):
        account = f"racer{round_}"
        if round_ % 2:  # odd rounds race over an expired lease (replace), even ones over none (create)
            Lease(storage, account, "old", ttl_s=0.0).acquire()
        start = threading.Barrier(3)
        won: list[bool] = []
        threads = [threading.Thread(target=take, args=(storage, account, start, won)) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert sorted(won) == [False, False, True], round_


def take(storage: Storage, account: str, start: threading.Barrier, won: list[bool]) -> None:
    """Wait for the other takers, then try for the lease; record whether this one won."""
    lease = Lease(storage, account, "backfill", ttl_s=TTL_S)
    start.wait(timeout=10)
    try:
        lease.acquire()
        won.append(True)
    except LockedError:
        won.append(False)


async def test_a_held_lease_is_renewed_while_the_block_runs_and_released_after(s3_root: str) -> None:
    """hold_lease() pushes expires_at forward in the background; leaving the block releases the lease."""
    storage = open_storage(s3_root)
    lease = Lease(storage, "alice", "backfill", ttl_s=0.3)
    async with hold_lease(lease):
        first = lease_body(storage, "alice")["expires_at"]
        await wait_until(lambda: lease_body(storage, "alice")["expires_at"] != first)
        assert lease.held
    assert lease_body(storage, "alice")["expires_at"] == 0 and not lease.held


async def test_a_lease_lost_while_held_stops_the_block(s3_root: str) -> None:
    """When another run takes over a stalled lease, the holder's block is cancelled with LeaseLostError."""
    storage = open_storage(s3_root)
    lease = Lease(storage, "alice", "backfill", ttl_s=0.3)
    with anyio.fail_after(10), pytest.raises(LeaseLostError):
        async with hold_lease(lease):
            thief = Lease(storage, "alice", "thief", ttl_s=TTL_S, clock=lambda: time.time() + 1)
            while not thief.held:
                with contextlib.suppress(LockedError):  # a renewal landed between read and replace
                    thief.acquire()
            await anyio.sleep(10)  # cancelled by the failed renewal well before this ends
    assert lease_body(storage, "alice")["command"] == "thief"


# -- processes -------------------------------------------------------------------


def start_holder(root: str, account: str, ttl_s: float = TTL_S) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.lease_holder", root, account, str(ttl_s)], cwd=REPO,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def stop(process: subprocess.Popen[str]) -> str:
    """Kill (if still running), reap, close the pipes; what it wrote on stderr."""
    process.kill()
    _, err = process.communicate(timeout=10)
    return err


def wait_held(process: subprocess.Popen[str]) -> None:
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line == "held\n", (line, process.stderr.read() if process.stderr else "")


def roots(tmp_path: Path, request: pytest.FixtureRequest, kind: str) -> str:
    return str(tmp_path / "lake") if kind == "local" else str(request.getfixturevalue("s3_root"))


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_two_processes_fighting_over_one_account_one_wins_the_other_exits_75(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Two runs (processes standing for machines) start at once for alice: one holds, the other exits 75."""
    root = roots(tmp_path, request, kind)
    both = [start_holder(root, "alice"), start_holder(root, "alice")]
    try:
        codes = []
        for process in both:
            assert process.stdout is not None
            line = process.stdout.readline()
            codes.append(0 if line == "held\n" else process.wait(timeout=30))
        assert sorted(codes) == [0, 75]
        lines = stop(both[codes.index(75)]).strip().splitlines()
        assert len(lines) == 1 and "account alice" in lines[0] and "in use by another run" in lines[0]
        bob = start_holder(root, "bob")  # another account proceeds side by side
        wait_held(bob)
        stop(bob)
    finally:
        for process in both:
            stop(process)


def test_a_sigkilled_holders_lease_expires_and_is_taken_over(s3_root: str) -> None:
    """A SIGKILLed holder cannot release: its lease blocks until it expires, then another run takes over."""
    holder = start_holder(s3_root, "alice")
    try:
        wait_held(holder)
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
    finally:
        stop(holder)
    storage = open_storage(s3_root)
    with pytest.raises(LockedError, match=f"pid {holder.pid}"):
        Lease(storage, "alice", "refresh", ttl_s=TTL_S).acquire()
    after_expiry = Lease(storage, "alice", "refresh", ttl_s=TTL_S, clock=lambda: time.time() + TTL_S + 1)
    after_expiry.acquire()
    assert lease_body(storage, "alice")["pid"] == os.getpid()


def test_a_sigkilled_local_holder_frees_the_account_at_once(tmp_path: Path) -> None:
    """Locally the lock is an flock: the kernel frees it when its holder is SIGKILLed, no expiry needed."""
    root = str(tmp_path / "lake")
    holder = start_holder(root, "alice")
    wait_held(holder)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=10)
    stop(holder)
    next_run = start_holder(root, "alice")
    try:
        wait_held(next_run)
    finally:
        stop(next_run)
