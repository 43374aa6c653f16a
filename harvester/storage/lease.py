"""The run lock, one per account: an ``flock`` on a local lake, a lease object on an object store.

    _harvester/locks/<account>.lock     local: flock'ed while the run lives; the kernel frees it
    _harvester/lock                     local: shared by all runs, exclusive only to sweep temporaries
    _harvester/locks/<account>.json     object store: the lease, {"holder", "expires_at", ...}

A lease is taken with a conditional write: ``create`` when there is none,
``replace`` on the version read when the one there has expired (its holder
died or was released), so of two runs racing for it exactly one wins. The
holder renews it every third of its lifetime (``replace`` on its own last
version); a renewal that finds another version means the lease was taken
over while this run stalled past its expiry: the run stops (LeaseLostError).
Expiry is judged by the reader's clock against the writer's ``expires_at``:
machines sharing a lake need clocks within a small part of the lifetime (NTP).
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio
import orjson

from harvester.errors import (
    LeaseLostError,
    LockedError,
    StateError,
    StorageConflictError,
    StorageUnavailableError,
)
from harvester.storage.base import Storage
from harvester.storage.local import LocalStorage, RunFileLock

log = logging.getLogger(__name__)

DEFAULT_LEASE_TTL_S = 60.0
DEFAULT_LAKE_WAIT_S = 30.0  # longest wait for another run's sweep of temporaries
LAKE_POLL_S = 0.05
LOCKS_PREFIX = "_harvester/locks"
LAKE_LOCK = "_harvester/lock"
ACCOUNT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def check_account_name(name: str) -> str:
    """The name, if it is safe as a file name and short; StateError otherwise."""
    if not ACCOUNT_NAME.fullmatch(name):
        raise StateError(f"account name {name!r:.70} must be 1-64 letters, digits, '_', '.' or '-'")
    return name


def describe_holder(raw: bytes) -> str:
    """``pid N on host H, `command`, since T`` from a lock's content, as far as it says."""
    try:
        info = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        info = None
    if not isinstance(info, dict):
        return "a process that has not yet written its details"
    return (f"pid {info.get('pid', '?')} on host {info.get('host', '?')}, "
            f"`{info.get('command', '?')}`, since {info.get('started_at', '?')}")


class Lease:
    """One account's lease object; blocking calls (run them in a thread)."""

    def __init__(
        self, storage: Storage, account: str, command: str, *,
        ttl_s: float = DEFAULT_LEASE_TTL_S, clock: Callable[[], float] = time.time,
    ) -> None:
        self.storage = storage
        self.account = check_account_name(account)
        self.key = f"{LOCKS_PREFIX}/{account}.json"
        self.ttl_s = ttl_s
        self.clock = clock
        self._info = {"holder": uuid.uuid4().hex, "pid": os.getpid(), "host": socket.gethostname(),
                      "command": command, "account": account, "started_at": _iso(clock())}
        self._version: str | None = None  # of the lease object as this run last wrote it

    @property
    def held(self) -> bool:
        return self._version is not None

    def acquire(self) -> None:
        """Take the lease, or LockedError naming its live holder."""
        blob = self.storage.read(self.key)
        if blob is None:
            try:
                self._version = self.storage.create(self.key, self._body(), private=True)
                return
            except StorageConflictError:
                blob = self.storage.read(self.key)  # another run created it just now
            if blob is None:
                raise self._locked("another run is taking it right now")
        expires = _expires_at(blob.data)
        if expires is not None and expires > self.clock():
            raise self._locked(f"{describe_holder(blob.data)}, lease valid until {_iso(expires)}")
        try:
            self._version = self.storage.replace(self.key, self._body(), blob.version, private=True)
        except StorageConflictError:
            raise self._locked("another run took over its expired lease just now") from None
        log.info("took over the expired lease of account %s", self.account)

    def renew(self) -> None:
        """Push the expiry forward; LeaseLostError if another run holds the lease now."""
        if self._version is None:
            raise LeaseLostError(f"the lease on account {self.account} is not held")
        try:
            self._version = self.storage.replace(self.key, self._body(), self._version, private=True)
        except StorageConflictError:
            self._version = None
            raise LeaseLostError(
                f"another run took over the lease on account {self.account} at {self.storage.url} "
                "(this run stalled past its expiry); stopping"
            ) from None

    def release(self) -> None:
        """Mark the lease expired, if it is still this run's; never raises for a lost lease."""
        version, self._version = self._version, None
        if version is None:
            return
        body = orjson.dumps({**self._info, "expires_at": 0, "released_at": _iso(self.clock())})
        try:
            self.storage.replace(self.key, body + b"\n", version, private=True)
        except (StorageConflictError, StorageUnavailableError) as exc:
            log.warning("could not release the lease on account %s (%s); it expires by itself",
                        self.account, exc)

    def _body(self) -> bytes:
        expires = self.clock() + self.ttl_s
        return orjson.dumps({**self._info, "expires_at": expires,
                             "expires_at_iso": _iso(expires)}) + b"\n"

    def _locked(self, why: str) -> LockedError:
        return LockedError(
            f"account {self.account} in the lake at {self.storage.url} is in use by another run "
            f"({why}); wait for it to finish"
        )


@asynccontextmanager
async def hold_lease(lease: Lease) -> AsyncIterator[None]:
    """Hold ``lease`` while the block runs, renewing it; a lost lease cancels the block."""
    await anyio.to_thread.run_sync(lease.acquire)
    error: BaseException | None = None
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(_renew, lease)
            try:
                yield
            finally:
                group.cancel_scope.cancel()
    except BaseExceptionGroup as grouped:
        if len(grouped.exceptions) != 1:
            raise
        error = grouped.exceptions[0]  # as itself, not wrapped by the renewer's task group
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(lease.release)
    if error is not None:
        raise error


async def _renew(lease: Lease) -> None:
    """Renew every third of the lifetime; a storage outage is tolerated until the lease would lapse."""
    interval = lease.ttl_s / 3
    last_ok = lease.clock()
    while True:
        await anyio.sleep(interval)
        try:
            await anyio.to_thread.run_sync(lease.renew)
            last_ok = lease.clock()
        except StorageUnavailableError as exc:
            if lease.clock() + interval >= last_ok + lease.ttl_s:
                raise
            log.warning("could not renew the lease on account %s (%s); retrying", lease.account, exc)


@asynccontextmanager
async def run_lock(
    storage: Storage, account: str, command: str, *, ttl_s: float = DEFAULT_LEASE_TTL_S,
    sweep: Callable[[], object] | None = None,
) -> AsyncIterator[None]:
    """The account's run lock on ``storage``: a local flock, or a renewed lease object.

    ``sweep`` (removing temporaries killed runs left) runs only where no other
    run can be writing: locally, while this run alone holds the lake's lock.
    """
    check_account_name(account)
    if isinstance(storage, LocalStorage):
        with _AccountFileLock(storage, account, command), _LakeLock(storage) as lake:
            await lake.enter(sweep)
            yield
        return
    async with hold_lease(Lease(storage, account, command, ttl_s=ttl_s)):
        yield


class _LakeLock:
    """``_harvester/lock``: held shared by every run on a local lake, exclusive only to sweep.

    A temporary file in the lake may be another live run's staged commit, so
    only a run that finds itself alone (the exclusive flock) removes them.
    """

    def __init__(self, storage: LocalStorage) -> None:
        self.storage = storage
        self.path = storage.path(LAKE_LOCK)
        self._fd: int | None = None

    def __enter__(self) -> _LakeLock:
        try:
            self.storage.ensure_parent(self.path, private=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise StateError(f"cannot open lock file {self.path}: {exc.strerror or exc}") from None
        return self

    def __exit__(self, *exc: object) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # releases the flock

    async def enter(self, sweep: Callable[[], object] | None) -> None:
        """Sweep if alone, then hold the lock shared; wait out another run's short sweep."""
        assert self._fd is not None
        if self._try(fcntl.LOCK_EX):
            if sweep is not None:
                await anyio.to_thread.run_sync(sweep)
            fcntl.flock(self._fd, fcntl.LOCK_SH)  # we hold it exclusively: this cannot wait
            return
        with anyio.move_on_after(DEFAULT_LAKE_WAIT_S):
            # Another process holds the flock: there is no event to await, and a
            # blocking flock in a thread could not be cancelled.
            while not self._try(fcntl.LOCK_SH):  # noqa: ASYNC110
                await anyio.sleep(LAKE_POLL_S)
            return
        raise LockedError(f"the lake at {self.storage.root} stayed locked exclusively for "
                          f"{DEFAULT_LAKE_WAIT_S:.0f} s (an older version's run?); try again later")

    def _try(self, mode: int) -> bool:
        assert self._fd is not None
        try:
            fcntl.flock(self._fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True


class _AccountFileLock:
    """The local run lock of one account: ``RunFileLock`` with the refusal worded for users."""

    def __init__(self, storage: LocalStorage, account: str, command: str) -> None:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                "account": account, "started_at": _iso(time.time())}
        self.storage = storage
        self.root = storage.root
        self.account = account
        self.lock = RunFileLock(storage.path(f"{LOCKS_PREFIX}/{account}.lock"),
                                orjson.dumps(info) + b"\n")

    def __enter__(self) -> None:
        try:
            self.storage.ensure_parent(self.lock.path, private=True)
            holder = self.lock.acquire()
        except OSError as exc:
            raise StateError(f"cannot lock {self.lock.path}: {exc.strerror or exc}") from None
        if holder is not None:
            raise LockedError(
                f"account {self.account} in the lake at {self.root} is in use by another run "
                f"({describe_holder(holder)}); wait for it to finish"
            )

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


def _expires_at(raw: bytes) -> float | None:
    """The lease's expiry, or None if the object is not a lease (then it counts as expired)."""
    try:
        info = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    expires = info.get("expires_at") if isinstance(info, dict) else None
    return float(expires) if isinstance(expires, int | float) and not isinstance(expires, bool) else None


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
