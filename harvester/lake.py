"""The lake: Hive-partitioned JSONL files, merged atomically, one file per account and partition.

Layout (SPEC "The lake")::

    <root>/<dataset>/date=YYYY-MM-DD/<user_id>.jsonl[.gz]
    <root>/instructors/instructors.jsonl[.gz]   (shared by all accounts)
    <root>/_harvester/                       state.py's; never read or written here

A commit rewrites only the partition files its rows touch, in three steps:

 1. stage: for each file, read the existing rows (both compression variants),
    merge by primary key with the new rows winning, and write the result sorted
    by key to a dot-prefixed temporary name in the same directory;
 2. one ``syncfs`` barrier makes every staged file durable at once (a backfill
    writes thousands of small files: an fsync each would cost more than the
    rest of the harvest together);
 3. rename each into place (graphs and rides before workouts), remove the other
    compression variant, and a second barrier makes the renames durable.

A reader therefore only ever sees whole files, and the ``*.jsonl`` glob never
matches a temporary file. A kill before a rename leaves the old file whole.

The code is blocking: the pipeline calls it from a worker thread.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import threading
import zlib
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

from harvester.errors import LakeError
from harvester.files import TEMP_NAME, locked_dir, sync_filesystem, temp_name, write_temp
from harvester.keys import (
    DATASETS,
    check_user_id,
    partition_date,
    primary_key,
    row_problem,
    utc_day,
    workout_day,
)

Row = dict[str, object]
__all__ = ["DATASETS", "Lake", "Row", "check_user_id", "partition_date", "primary_key",
           "row_problem", "utc_day", "workout_day"]

# Workouts last: a workout row in the lake implies its graph and ride were committed before it.
# Deletions first: a workout removed from the lake is recorded as deleted before it goes.
COMMIT_ORDER = ("deletions", "performance_graphs", "rides", "instructors", "profiles",
                "metadata_mappings", "workouts")
SUFFIXES = {"none": ".jsonl", "gzip": ".jsonl.gz"}
STATE_DIR = "_harvester"
DEFAULT_GZIP_LEVEL = 6

_UNPARTITIONED = frozenset({"instructors"})
# Instructors are the same for every account: one shared file keeps each id once
# in a lake that several accounts share; runs of different accounts may commit at
# once, so its merge holds the directory's flock (_shared_files_lock).
SHARED_FILES = {"instructors": "instructors", "metadata_mappings": "metadata_mappings"}

# -- the lake ------------------------------------------------------------------


class Lake:
    """Partitioned JSONL datasets under ``root``; see the module docstring."""

    def __init__(self, root: Path, compression: str = "none") -> None:
        if compression not in SUFFIXES:
            raise LakeError(f"compression must be 'none' or 'gzip', got {compression!r}")
        self.root = Path(root)
        self.compression = compression
        self._suffix = SUFFIXES[compression]
        # Partition directories known to exist, as strings: a Path costs three times
        # the memory, and a long history has thousands of partitions.
        self._dirs: set[str] = set()
        # dataset -> {"new": rows whose key the file lacked, "changed": rows that differ
        # from the stored version beyond _harvested_at}: what the summary reports.
        self.tally: dict[str, dict[str, int]] = {}
        self._tally_lock = threading.Lock()  # the daily datasets commit beside the writer

    def has_workouts(self, user_id: str) -> bool:
        """Whether the lake holds any workout file of the account."""
        check_user_id(user_id)
        return next(self._files("workouts", user_id), None) is not None

    def check_writable(self) -> None:
        """Create the root if needed and prove a file can be created in it."""
        probe = self.root / temp_name("probe")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            os.unlink(probe)
        except OSError as exc:
            raise LakeError(
                f"output root {self.root} is not writable: {exc.strerror or exc}; "
                "fix its permissions or choose another --out"
            ) from None

    def commit(
        self, user_id: str, batch: Mapping[str, Sequence[Row]],
        removals: Mapping[str, Mapping[str, Collection[str]]] | None = None,
    ) -> dict[str, int]:
        """Merge ``batch`` into the account's partition files; rows written per dataset.

        ``removals`` (dataset -> partition -> keys) leave those partitions in the
        same commit, after the rows that replace them landed: a moved row is
        never lost to a kill, at worst briefly in two partitions (healed next run).
        Every row is validated and serialised before the first write, so a bad
        row fails the commit without touching the lake.
        """
        check_user_id(user_id)
        unknown = sorted(set(batch) - set(DATASETS))
        if unknown:
            raise LakeError(f"unknown dataset(s) {unknown}; expected one of {', '.join(DATASETS)}")
        plan: list[tuple[str, Path, dict[str, bytes], frozenset[str]]] = []
        counts: dict[str, int] = {}
        for dataset in COMMIT_ORDER:
            groups = self._group(dataset, batch.get(dataset) or ())
            gone = (removals or {}).get(dataset, {})
            # Partitions gaining rows before those only losing some.
            for part in sorted({*groups, *gone}, key=lambda p: (p not in groups, p or "")):
                plan.append((dataset, self._partition_dir(dataset, part), groups.get(part, {}),
                             frozenset(gone.get(part, ())) if part is not None else frozenset()))
            written = sum(len(lines) for lines in groups.values())
            if written:
                counts[dataset] = written
        # The plan is in COMMIT_ORDER, so workouts are renamed last: a committed
        # workout implies its graph and ride files were renamed before it.
        staged: list[_Staged] = []
        try:
            with self._shared_files_lock(plan):
                for dataset, directory, lines, drop in plan:
                    step = self._stage(dataset, directory, SHARED_FILES.get(dataset, user_id), lines, drop)
                    if step is not None:
                        staged.append(step)
                self._publish(staged)
        except OSError as exc:
            raise LakeError(f"cannot write the lake at {self.root}: {exc.strerror or exc}") from None
        finally:
            _discard(staged)  # whatever an error left unrenamed; empty after a publish
        return counts

    @contextlib.contextmanager
    def _shared_files_lock(self, plan: Sequence[tuple[str, Path, object, object]]) -> Iterator[None]:
        """Runs of different accounts commit side by side: a commit that merges a file shared
        by all accounts (instructors) holds its directory's flock from read to rename."""
        shared = sorted({str(directory) for dataset, directory, *_ in plan if dataset in SHARED_FILES})
        with contextlib.ExitStack() as stack:
            for directory in shared:  # one order everywhere: no deadlock
                Path(directory).mkdir(parents=True, exist_ok=True)
                stack.enter_context(locked_dir(Path(directory)))
            yield

    def workout_ids(self, user_id: str) -> dict[str, int]:
        """``id -> created_at`` of every committed workout of the account."""
        return self.workout_index(user_id)[0]

    def workout_index(self, user_id: str) -> tuple[dict[str, int], set[str]]:
        """``id -> created_at`` of the account's committed workouts, and the ride ids they name."""
        check_user_id(user_id)
        ids: dict[str, int] = {}
        rides: set[str] = set()
        for path in self._files("workouts", user_id):
            # One file (one day of one account) in memory at a time; rows are dropped at once.
            for row in _rows(path):
                workout_id, created, ride = row.get("id"), row.get("created_at"), row.get("ride")
                if isinstance(workout_id, str) and isinstance(created, int | float):
                    ids[workout_id] = int(created)
                ride_id = ride.get("id") if isinstance(ride, dict) else None
                if isinstance(ride_id, str):
                    rides.add(ride_id)
        return ids, rides

    def ride_ids(self) -> set[str]:
        """Every ``ride_id`` in the lake, whichever account wrote it."""
        found: set[str] = set()
        for path in self._files("rides", None):
            # Tolerant: another account's damaged file costs at most a refetch of its rides.
            for line in self.read_file(path)[0].splitlines():
                with contextlib.suppress(orjson.JSONDecodeError):
                    row = orjson.loads(line)
                    ride_id = row.get("ride_id") if isinstance(row, dict) else None
                    if isinstance(ride_id, str):
                        found.add(ride_id)
        return found

    def row_counts(self, user_id: str | None = None) -> dict[str, int]:
        """Rows per dataset, of one account or (None) of all."""
        if user_id is not None:
            check_user_id(user_id)
        return {
            dataset: sum(_read(path).count(b"\n") for path in self._files(dataset, user_id))
            for dataset in DATASETS
        }

    def clean_temp_files(self) -> int:
        """Delete temporary files left by killed runs; returns how many.

        Also settles a partition a kill left holding both compression variants
        (between the rename and the removal of the other variant), so no reader
        sees a row twice. Call it only while holding the run lock.
        """
        removed = 0
        for dataset, directory in self._directories():
            names = set()
            for entry in _scandir(directory):
                if entry.is_file(follow_symlinks=False) and TEMP_NAME.fullmatch(entry.name):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                    removed += 1
                else:
                    names.add(entry.name)
            if dataset is None:
                continue
            for name in sorted(names):
                if name.endswith(".jsonl") and not name.startswith(".") and f"{name}.gz" in names:
                    self._merge(dataset, directory, name.removesuffix(".jsonl"), {})
        return removed

    # -- whole files, for reconcile.py (healing and verify) ----------------------

    def account_files(self, dataset: str, user_id: str) -> list[tuple[str | None, Path]]:
        """``(partition day, path)`` of the dataset's files this account writes (or shares)."""
        found: list[tuple[str | None, Path]] = []
        for path in self._files(dataset, check_user_id(user_id)):
            name = path.parent.name
            found.append((name.removeprefix("date=") if name.startswith("date=") else None, path))
        return found

    def read_file(self, path: Path) -> tuple[bytes, str | None]:
        """The file's bytes (decompressed), and why they stop short (a damaged gzip), or None."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return b"", None
        except OSError as exc:
            raise LakeError(f"cannot read lake file {path}: {exc.strerror or exc}") from None
        if not path.name.endswith(".gz"):
            return data, None
        inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            out = inflate.decompress(data)
        except zlib.error as exc:
            return b"", f"not gzip: {exc}"
        return out, None if inflate.eof else "gzip stream cut short"

    def replace_files(
        self, dataset: str, files: Sequence[tuple[str | None, str, Mapping[str, bytes]]],
    ) -> None:
        """Replace each ``(partition, stem)`` file whole with these lines (by key); none: removed."""
        staged: list[_Staged] = []
        # A file shared by all accounts is rewritten under the lock its merges hold.
        shared = [(dataset, self._partition_dir(dataset, part), None, None) for part, _, _ in files]
        try:
            with self._shared_files_lock(shared):
                for part, stem, lines in files:
                    directory = self._partition_dir(dataset, part)
                    target = directory / f"{stem}{self._suffix}"
                    variants = _variants(directory, stem, self._suffix) if directory.is_dir() else []
                    if not lines:
                        staged.append(_Staged(None, target, variants))
                        continue
                    directory.mkdir(parents=True, exist_ok=True)
                    data = b"".join(lines[key] for key in sorted(lines))
                    if self.compression == "gzip":
                        data = gzip.compress(data, compresslevel=DEFAULT_GZIP_LEVEL, mtime=0)
                    staged.append(_Staged(write_temp(target, data, 0o666), target,
                                          [v for v in variants if v != target]))
                self._publish(staged)
        except OSError as exc:
            raise LakeError(f"cannot write the lake at {self.root}: {exc.strerror or exc}") from None
        finally:
            _discard(staged)

    def quarantine(self, path: Path, stamp: str) -> Path:
        """Keep ``path`` as it is under ``_harvester/quarantine/<stamp>/`` before it is rewritten."""
        target = self.root / STATE_DIR / "quarantine" / stamp / path.relative_to(self.root)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                # A hard link: free, and the lake's rename-over leaves it holding the old bytes.
                os.link(path, target)
        except OSError as exc:
            raise LakeError(f"cannot quarantine {path}: {exc.strerror or exc}") from None
        return target

    def temp_files(self) -> list[Path]:
        """Temporary files a killed run left in the lake (verify reports them)."""
        return [
            Path(entry.path)
            for _, directory in self._directories()
            for entry in _scandir(directory)
            if entry.is_file(follow_symlinks=False) and TEMP_NAME.fullmatch(entry.name)
        ]

    # -- internals -------------------------------------------------------------

    def _group(self, dataset: str, rows: Sequence[Row]) -> dict[str | None, dict[str, bytes]]:
        """Serialised rows by partition then key; a later row of the same key wins."""
        latest: dict[str, tuple[str | None, Row]] = {}
        for row in rows:
            latest[primary_key(dataset, row)] = (partition_date(dataset, row), row)
        groups: dict[str | None, dict[str, bytes]] = {}
        for key, (part, row) in latest.items():
            try:
                line = orjson.dumps(row) + b"\n"
            except (TypeError, orjson.JSONEncodeError) as exc:
                raise LakeError(f"{dataset} row {key} cannot be written as JSON: {exc}") from None
            groups.setdefault(part, {})[key] = line
        return groups

    def _partition_dir(self, dataset: str, part: str | None) -> Path:
        base = self.root / dataset
        return base if part is None else base / f"date={part}"

    def _merge(self, dataset: str, directory: Path, stem: str, new: dict[str, bytes]) -> None:
        """Rewrite ``directory/stem`` with its rows and ``new`` merged, durably, on its own."""
        try:
            step = self._stage(dataset, directory, stem, new)
            self._publish([step] if step is not None else [])
        except OSError as exc:
            raise LakeError(f"cannot write lake file {directory / stem}: {exc.strerror or exc}") from None

    def _publish(self, staged: list[_Staged]) -> None:
        """Make the staged files durable, rename them into place in order, make that durable.

        ``staged`` is consumed; temporary files an error leaves unrenamed are removed.
        """
        try:
            sync_filesystem(self.root)
            while staged:
                step = staged[0]
                if step.temp is not None:
                    os.replace(step.temp, step.target)
                else:  # every row left: no empty file behind
                    step.target.unlink(missing_ok=True)
                staged.pop(0)
                for path in step.stale:
                    path.unlink(missing_ok=True)
            sync_filesystem(self.root)
        finally:
            _discard(staged)

    def _stage(
        self, dataset: str, directory: Path, stem: str, new: dict[str, bytes],
        drop: frozenset[str] = frozenset(),
    ) -> _Staged | None:
        """Write ``directory/stem``'s rows merged with ``new`` (new wins), minus ``drop``,
        to a temporary file; None when there is nothing to change."""
        if not new and not directory.is_dir():
            return None  # only removals, from a partition that does not exist
        # A partition directory this call creates holds no file to merge with (the
        # usual case in a backfill): two stat calls fewer per new file.
        variants = [] if self._made_dir(directory) else _variants(directory, stem, self._suffix)
        merged: dict[str, bytes] = {}
        for path in variants:
            for line, row in _lines(path):
                merged[_stored_key(dataset, row, path)] = line
        self._count(dataset, merged, new)
        merged.update(new)
        for key in drop - new.keys():
            merged.pop(key, None)
        target = directory / f"{stem}{self._suffix}"
        if not merged:
            return _Staged(None, target, variants) if variants else None
        data = b"".join(merged[key] for key in sorted(merged))
        if self.compression == "gzip":
            data = gzip.compress(data, compresslevel=DEFAULT_GZIP_LEVEL, mtime=0)
        temp = write_temp(target, data, 0o666)  # lake files follow the umask: readers need them
        return _Staged(temp, target, [path for path in variants if path != target])

    def _count(self, dataset: str, stored: dict[str, bytes], new: dict[str, bytes]) -> None:
        """Add ``new``'s rows to the tally: new keys, and known keys whose content changed."""
        fresh = changed = 0
        for key, line in new.items():
            before = stored.get(key)
            if before is None:
                fresh += 1
            elif before != line and _content(before) != _content(line):
                changed += 1
        if fresh or changed:
            with self._tally_lock:
                tally = self.tally.setdefault(dataset, {"new": 0, "changed": 0})
                tally["new"] += fresh
                tally["changed"] += changed

    def _made_dir(self, directory: Path) -> bool:
        """Make sure ``directory`` exists; True if this call created it (so it is empty)."""
        key = str(directory)
        if key in self._dirs:
            return False
        try:
            directory.mkdir(parents=True)
            created = True
        except FileExistsError:
            created = False
        self._dirs.add(key)
        return created

    def _files(self, dataset: str, user_id: str | None) -> Iterator[Path]:
        """The dataset's files, of one account or of all; never temporary files."""
        base = self.root / dataset
        if not base.is_dir():
            return
        dirs = [base] if dataset in _UNPARTITIONED else sorted(base.glob("date=*"))
        stem = SHARED_FILES.get(dataset) or user_id or "*"
        for directory in dirs:
            for suffix in SUFFIXES.values():
                for path in sorted(directory.glob(stem + suffix)):
                    if not path.name.startswith("."):
                        yield path

    def _directories(self) -> Iterator[tuple[str | None, Path]]:
        """The root and every dataset and partition directory (never ``_harvester``)."""
        if not self.root.is_dir():
            return
        yield None, self.root
        for dataset in DATASETS:
            base = self.root / dataset
            if not base.is_dir():
                continue
            yield dataset, base
            if dataset not in _UNPARTITIONED:
                for directory in sorted(base.glob("date=*")):
                    if directory.is_dir():
                        yield dataset, directory


# -- file helpers --------------------------------------------------------------


def _variants(directory: Path, stem: str, current: str) -> list[Path]:
    """Existing files of ``stem`` in any compression, oldest first (the newest wins a merge).

    Only a kill between rename and unlink leaves two; the one written last holds
    the merge of both. On equal mtimes the configured compression counts as newer.
    """
    found: list[tuple[int, bool, Path]] = []
    for suffix in SUFFIXES.values():
        path = directory / f"{stem}{suffix}"
        try:
            mtime = path.stat().st_mtime_ns
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise LakeError(f"cannot read lake file {path}: {exc.strerror or exc}") from None
        found.append((mtime, suffix == current, path))
    return [path for _, _, path in sorted(found)]


def _scandir(directory: Path) -> list[os.DirEntry[str]]:
    """The directory's entries; LakeError naming it when it cannot be read (permissions, I/O)."""
    try:
        with os.scandir(directory) as entries:
            return list(entries)
    except OSError as exc:
        raise LakeError(
            f"cannot read lake directory {directory}: {exc.strerror or exc}; fix its permissions "
            "(the harvester needs to read and write every folder of the lake)") from None


def _read(path: Path) -> bytes:
    """The file's decompressed bytes; LakeError naming the file if it cannot be read."""
    try:
        data = path.read_bytes()
        return gzip.decompress(data) if path.name.endswith(".gz") else data
    except FileNotFoundError:
        return b""  # removed by a merge since it was listed
    except (OSError, EOFError, zlib.error) as exc:
        raise LakeError(
            f"cannot read lake file {path}: {exc}; move it aside and run backfill"
        ) from None


def _lines(path: Path) -> Iterator[tuple[bytes, Row]]:
    """Each line (with its newline) and its parsed row."""
    data = _read(path)
    if data and not data.endswith(b"\n"):
        raise LakeError(f"lake file {path} ends in a partial line; move it aside and run backfill")
    start = 0
    number = 0
    while start < len(data):
        end = data.index(b"\n", start) + 1
        number += 1
        try:
            row = orjson.loads(data[start:end])
        except orjson.JSONDecodeError as exc:
            raise LakeError(f"lake file {path} line {number} is not JSON: {exc}") from None
        if not isinstance(row, dict):
            raise LakeError(f"lake file {path} line {number} is not a JSON object")
        yield data[start:end], row
        start = end


def _rows(path: Path) -> Iterator[Row]:
    for _, row in _lines(path):
        yield row


def _content(line: bytes) -> object:
    """A row without its ``_harvested_at`` stamp, to tell a changed row from a re-fetched one."""
    row = orjson.loads(line)
    if isinstance(row, dict):
        row.pop("_harvested_at", None)
    return row


def _stored_key(dataset: str, row: Row, path: Path) -> str:
    try:
        return primary_key(dataset, row)
    except LakeError as exc:
        raise LakeError(f"lake file {path}: {exc}") from None


def _discard(staged: list[_Staged]) -> None:
    while staged:
        temp = staged.pop().temp
        if temp is not None:
            with contextlib.suppress(OSError):
                os.unlink(temp)


@dataclass(frozen=True, slots=True)
class _Staged:
    """A merged partition file written to ``temp``, waiting to be renamed over ``target``."""

    temp: Path | None  # None: remove target (and stale), it has no rows left
    target: Path
    stale: list[Path]  # the other compression variant, removed after the rename
