"""The local-disk backend: a folder, files replaced by rename, durability by fsync or ``syncfs``.

Guarantees are files.py's: a file is written to a dot-prefixed temporary name
in its own directory and renamed over the target, so a reader sees the old
file or the new one, never a part, and no ``*.jsonl`` glob sees a temporary.
A single ``write`` is durable on its own (fsync file, rename, fsync directory);
a ``batch`` is made durable with one ``syncfs`` barrier before its renames and
one after, as the lake's commit does today.

``create`` is ``link(2)`` of a complete temporary file, which fails if the
name exists. ``replace`` compares the current content's hash with the
version it was given and renames. Both hold an ``flock`` on the file's
directory while they do, and so does a batch's ``put_if`` while it checks and
renames, so compare-and-swap writers of one directory take turns.
``RunFileLock`` is the per-account run lock: an ``flock`` the kernel frees
when its holder dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType

from harvester.errors import StorageConflictError, StorageError
from harvester.files import TEMP_NAME, fsync_dir, locked_dir, sync_filesystem, temp_name, write_temp
from harvester.storage.base import Batch, Blob, Entry, check_key, check_prefix

PUBLIC_MODE = 0o666  # lake files follow the umask: readers need them
PRIVATE_MODE = 0o600  # state, manifests, locks: they can name the account
PRIVATE_DIR_MODE = 0o700


def content_version(data: bytes) -> str:
    """The local version token: size and a hash of the content (inode and mtime get reused)."""
    return f"{len(data)}-{hashlib.blake2b(data, digest_size=16).hexdigest()}"


class LocalStorage:
    """Whole files under a folder; see the module docstring and base.Storage."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._made: set[str] = set()  # parent directories known to exist

    @property
    def url(self) -> str:
        return str(self.root)

    @property
    def is_local(self) -> bool:
        return True

    def path(self, key: str) -> Path:
        return self.root / check_key(key)

    def check_writable(self) -> None:
        probe = self.root / temp_name("probe")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            # The probe is written before the run takes its lock: another account's
            # run, alone on the lake for a moment, may sweep it as a leftover first.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(probe)
        except OSError as exc:
            raise StorageError(
                f"output root {self.root} is not writable: {exc.strerror or exc}; "
                "fix its permissions or choose another --out"
            ) from None

    def read(self, key: str) -> Blob | None:
        path = self.path(key)
        try:
            data = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise _error("read", path, exc) from None
        return Blob(data, content_version)  # hashed only if compare-and-swap asks

    def stat(self, key: str) -> Entry | None:
        path = self.path(key)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise _error("read", path, exc) from None
        return Entry(key, st.st_size, st.st_mtime_ns)

    def write(self, key: str, data: bytes, *, private: bool = False) -> None:
        path = self.path(key)
        try:
            self.ensure_parent(path, private)
            _put_durably(path, data, private)
        except OSError as exc:
            raise _error("write", path, exc) from None

    def create(self, key: str, data: bytes, *, private: bool = False) -> str:
        path = self.path(key)
        try:
            self.ensure_parent(path, private)
            temp = _durable_temp(path, data, private)
            try:
                with locked_dir(path.parent):  # a batch's put_if checks, then renames
                    os.link(temp, path)  # fails if the name exists, atomically
            except FileExistsError:
                raise StorageConflictError(f"{path} already exists") from None
            finally:
                _unlink(temp)
            fsync_dir(path.parent)
        except OSError as exc:
            raise _error("create", path, exc) from None
        return content_version(data)

    def replace(self, key: str, data: bytes, version: str, *, private: bool = False) -> str:
        path = self.path(key)
        try:
            self.ensure_parent(path, private)
            with locked_dir(path.parent):
                try:
                    current = content_version(path.read_bytes())
                except FileNotFoundError:
                    current = None
                if current != version:
                    raise StorageConflictError(f"{path} changed since it was read")
                _put_durably(path, data, private)
        except OSError as exc:
            raise _error("replace", path, exc) from None
        return content_version(data)

    def delete(self, key: str) -> None:
        path = self.path(key)
        try:
            path.unlink(missing_ok=True)
            fsync_dir(path.parent)
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            raise _error("delete", path, exc) from None

    def move(self, key: str, to: str) -> None:
        """Rename ``key`` to ``to`` (replacing it), durably; StorageError if ``key`` is absent."""
        source, target = self.path(key), self.path(to)
        try:
            self.ensure_parent(target, private=to.startswith("_harvester/"))
            os.replace(source, target)
            fsync_dir(target.parent)
            if source.parent != target.parent:
                fsync_dir(source.parent)
        except OSError as exc:
            raise _error("move", source, exc) from None

    def walk(self, prefix: str) -> Iterator[Entry]:
        """Every file under ``prefix``, recursively, in key order; no temporaries, no folders."""
        dirs, files = self.list_dir(prefix)
        merged = [(e.key, e) for e in files] + [(d, None) for d in dirs]
        for key, entry in sorted(merged, key=lambda item: item[0]):
            if entry is not None:
                yield entry
            else:
                yield from self.walk(key)

    def list_dir(self, prefix: str) -> tuple[list[str], list[Entry]]:
        """The sub-folders (as key prefixes) and files directly under ``prefix``, sorted."""
        prefix = check_prefix(prefix)
        directory = self.root / prefix if prefix else self.root
        base = f"{prefix}/" if prefix else ""
        dirs: list[str] = []
        files: list[Entry] = []
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    if TEMP_NAME.fullmatch(entry.name):
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        dirs.append(base + entry.name)
                    elif entry.is_file(follow_symlinks=False):
                        st = entry.stat(follow_symlinks=False)
                        files.append(Entry(base + entry.name, st.st_size, st.st_mtime_ns))
        except (FileNotFoundError, NotADirectoryError):
            return [], []
        except OSError as exc:
            raise StorageError(
                f"cannot read lake directory {directory}: {exc.strerror or exc}; fix its permissions "
                "(the harvester needs to read and write every folder of the lake)") from None
        return sorted(dirs), sorted(files, key=lambda e: e.key)

    def batch(self) -> LocalBatch:
        return LocalBatch(self)

    def sweep_temp(self, prefix: str, *, recursive: bool = True) -> int:
        """Delete temporary files under ``prefix`` that killed writers left; call holding the lock."""
        prefix = check_prefix(prefix)
        top = self.root / prefix if prefix else self.root
        removed = 0
        for directory, _, names in os.walk(top):
            if not recursive and directory != str(top):
                break
            for name in names:
                if TEMP_NAME.fullmatch(name):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(directory, name))
                    removed += 1
        return removed

    def ensure_parent(self, path: Path, private: bool) -> None:
        """Create ``path``'s folder (mode 0700 from the root down when ``private``)."""
        parent = path.parent
        if str(parent) in self._made and not private:
            return
        if private:
            self.root.mkdir(parents=True, exist_ok=True)
            for directory in reversed([parent, *parent.parents]):
                if self.root not in directory.parents:
                    continue
                directory.mkdir(mode=PRIVATE_DIR_MODE, exist_ok=True)
                if directory.stat().st_mode & 0o777 != PRIVATE_DIR_MODE:
                    directory.chmod(PRIVATE_DIR_MODE)
        else:
            parent.mkdir(parents=True, exist_ok=True)
        self._made.add(str(parent))


class _Unless:
    """A ``put_if`` entry's condition: the version its data was merged from, and how to
    merge again from what another writer left there instead."""

    __slots__ = ("remerge", "version")

    def __init__(self, version: str | None, remerge: Callable[[bytes | None], bytes]) -> None:
        self.version = version
        self.remerge = remerge


class LocalBatch:
    """Temporary files staged now, made durable and renamed into place by ``commit``."""

    def __init__(self, storage: LocalStorage) -> None:
        self._storage = storage
        # (temp or None to remove target, target, removed after, put_if's condition):
        # in staging order
        self._staged: list[tuple[Path | None, Path, list[Path], _Unless | None]] = []

    def put(self, key: str, data: bytes, *, replaces: Sequence[str] = ()) -> None:
        self._put(key, data, replaces, None)

    def put_if(self, key: str, data: bytes, version: str | None,
               remerge: Callable[[bytes | None], bytes]) -> None:
        """Stage ``data`` for a file other processes write too (compare-and-swap in the batch).

        ``data`` was merged from the file at ``version`` (None: absent). At commit,
        after the first barrier, the file's directory is locked (as ``create`` and
        ``replace`` lock it), and if the file changed since, ``remerge(what it holds
        now)`` is written instead of ``data``, made durable before its rename. So no
        writer's update is lost, and the usual case costs no fsync of its own.
        """
        self._put(key, data, (), _Unless(version, remerge))

    def _put(self, key: str, data: bytes, replaces: Sequence[str], unless: _Unless | None) -> None:
        target = self._storage.path(key)
        stale = [self._storage.path(k) for k in replaces if k != key]
        try:
            self._storage.ensure_parent(target, private=False)
            self._staged.append((write_temp(target, data, PUBLIC_MODE), target, stale, unless))
        except OSError as exc:
            raise _error("write", target, exc) from None

    def remove(self, key: str) -> None:
        self._staged.append((None, self._storage.path(key), [], None))

    def barrier(self) -> None:
        """Renames happen in staging order: nothing to do."""

    def commit(self) -> None:
        """One barrier, the renames in staging order (and removals), a second barrier."""
        if not self._staged:
            return  # nothing staged: no barrier to pay for
        root = self._storage.root
        try:
            sync_filesystem(root)
            while self._staged:
                temp, target, stale, unless = self._staged[0]
                if unless is not None and temp is not None:
                    _replace_unless_changed(temp, target, unless)
                elif temp is not None:
                    os.replace(temp, target)
                else:
                    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                        target.unlink()
                self._staged.pop(0)
                for path in stale:
                    path.unlink(missing_ok=True)
            sync_filesystem(root)
        except OSError as exc:
            raise _error("write", root, exc) from None

    def __enter__(self) -> Batch:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        while self._staged:
            temp = self._staged.pop()[0]
            if temp is not None:
                _unlink(temp)


class RunFileLock:
    """An exclusive ``flock`` on a file, held while the ``with`` block runs; None if taken.

    The file is never deleted (deleting a flock'ed file lets two holders lock two
    inodes). ``info`` is written into it only to name the holder to the next comer.
    """

    def __init__(self, path: Path, info: bytes) -> None:
        self.path = path
        self.info = info
        self._fd: int | None = None

    def acquire(self) -> bytes | None:
        """Take the lock: None on success, else what the holder wrote (may be empty)."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, PRIVATE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0)
            os.close(fd)
            return holder
        except BaseException:
            os.close(fd)
            raise
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, self.info, 0)
        except BaseException:
            os.close(fd)  # closing the last descriptor releases the flock
            raise
        self._fd = fd
        return None

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            # No stale holder info for the next reader. On a disk that turned read-only
            # this fails: harmless (closing frees the lock), and it must not mask the
            # error that is ending the run.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def _replace_unless_changed(temp: Path, target: Path, unless: _Unless) -> None:
    """``temp`` over ``target`` if ``target`` still holds ``unless.version``, else what
    ``unless.remerge`` makes of its content now (fsynced: it was not in the barrier)."""
    with locked_dir(target.parent):
        try:
            current: bytes | None = target.read_bytes()
        except FileNotFoundError:
            current = None
        if (None if current is None else content_version(current)) == unless.version:
            os.replace(temp, target)
            return
        fresh = _durable_temp(target, unless.remerge(current), private=False)
        try:
            os.replace(fresh, target)
        except BaseException:
            _unlink(fresh)
            raise
    _unlink(temp)


def _put_durably(path: Path, data: bytes, private: bool) -> None:
    """``data`` at ``path``, whole and durable: a synced temporary renamed into place."""
    temp = _durable_temp(path, data, private)
    try:
        os.replace(temp, path)
    except BaseException:
        _unlink(temp)
        raise
    fsync_dir(path.parent)


def _durable_temp(target: Path, data: bytes, private: bool) -> Path:
    temp = write_temp(target, data, PRIVATE_MODE if private else PUBLIC_MODE)
    try:
        fd = os.open(temp, os.O_RDONLY)
        try:
            if private:
                os.fchmod(fd, PRIVATE_MODE)  # whatever the umask says
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        _unlink(temp)
        raise
    return temp


def _unlink(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _error(op: str, path: Path, exc: OSError) -> StorageError:
    return StorageError(f"cannot {op} {path}: {exc.strerror or exc}")
