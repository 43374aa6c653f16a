"""Atomic file replacement and durability barriers, shared by the lake, state and token cache.

A file is replaced by writing a dot-prefixed temporary name in the same
directory and renaming it over the target, so a reader sees the old file or the
new one, never a part. Durability is a separate concern: ``atomic_write`` makes
one small file durable on its own (fsync file, then directory); the lake stages
many files and makes them durable together with ``sync_filesystem`` (one
``syncfs`` barrier instead of an fsync per file, as databases group commits).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import itertools
import os
import re
import secrets
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

TEMP_NAME = re.compile(r"\..+\.tmp-\d+-[0-9a-f]+")


class _TempNames:
    """Process id, a tag drawn once per process and a counter: unique among processes
    sharing a directory, even where process ids repeat (other hosts, containers),
    without a random draw per file. A forked child draws its own tag."""

    def __init__(self) -> None:
        self.reseed()

    def reseed(self) -> None:
        self.prefix = f"tmp-{os.getpid()}-{secrets.token_hex(4)}"
        self.sequence = itertools.count()


_NAMES = _TempNames()
os.register_at_fork(after_in_child=_NAMES.reseed)


def temp_name(name: str) -> str:
    """A sibling name for ``name`` that no ``*.jsonl`` glob (nor Spark, nor DuckDB) sees."""
    return f".{name}.{_NAMES.prefix}{next(_NAMES.sequence):x}"


def write_temp(target: Path, data: bytes, mode: int) -> Path:
    """Write ``data`` to a new temporary sibling of ``target``; no fsync."""
    tmp = target.with_name(temp_name(target.name))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            view = memoryview(data)  # straight to the fd: no buffered file object per file
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


def atomic_write(target: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``target`` with ``data`` atomically and durably (file and directory fsynced)."""
    tmp = target.with_name(temp_name(target.name))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)  # whatever the umask says
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(target.parent)


@contextlib.contextmanager
def locked_dir(directory: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``directory`` itself while the block runs.

    Writers that read, merge and replace a file shared by several processes
    (a compare-and-swap) hold it on the file's directory, so they take turns.
    """
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the flock


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@functools.cache  # on the first commit, in its thread: ctypes is 4 ms of start-up otherwise
def _syncfs() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        syncfs = libc.syncfs
    except (OSError, AttributeError):
        return None
    syncfs.argtypes = [ctypes.c_int]
    syncfs.restype = ctypes.c_int
    return cast(Callable[[int], int], syncfs)


class _SyncGroup:
    """Group commit for one path's filesystem: a ``syncfs`` that starts after a caller's
    writes covers them, so callers arriving while one runs share the next one.

    Threads of one process (several accounts' commits at once) each ask for a barrier;
    one of them syncs for everyone who asked before its sync began. A failed sync
    covers no one: each waiting caller then syncs (and fails) for itself.
    """

    def __init__(self) -> None:
        self._count = threading.Lock()
        self._turn = threading.Lock()
        self._asked = 0  # barriers asked for, numbered
        self._covered = 0  # every barrier up to this number is done

    def sync(self, path: Path) -> None:
        with self._count:
            self._asked += 1
            ticket = self._asked
        with self._turn:
            if self._covered >= ticket:
                return  # a sync that began after this caller's writes has finished
            with self._count:
                covers = self._asked  # all asked so far wrote before the sync below began
            _sync_now(path)
            self._covered = covers


_GROUPS: dict[str, _SyncGroup] = {}
_GROUPS_LOCK = threading.Lock()


def _forget_groups() -> None:  # a forked child has one thread: no lock another thread holds
    global _GROUPS_LOCK
    _GROUPS.clear()
    _GROUPS_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_forget_groups)


def sync_filesystem(path: Path) -> None:
    """Make everything written to ``path``'s filesystem durable (``syncfs``; ``sync`` elsewhere).

    Concurrent callers for one path share barriers (``_SyncGroup``)."""
    with _GROUPS_LOCK:
        group = _GROUPS.get(str(path))
        if group is None:
            group = _GROUPS[str(path)] = _SyncGroup()
    group.sync(path)


def _sync_now(path: Path) -> None:
    syncfs = _syncfs()
    if syncfs is None:
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if syncfs(fd) != 0:
            import ctypes

            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno))
    finally:
        os.close(fd)
