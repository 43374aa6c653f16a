"""The lake: Hive-partitioned JSONL files, one per account and partition, on a storage backend.

Layout (SPEC "The lake")::

    <root>/<dataset>/date=YYYY-MM-DD/<user_id>.jsonl[.gz]
    <root>/rides/date=YYYY-MM-DD/rides.jsonl[.gz]   (shared by all accounts)
    <root>/instructors/instructors.jsonl[.gz]       (shared by all accounts)
    <root>/_harvester/                       state.py's; only quarantine is written here

Every byte goes through ``harvester.storage`` (a local folder or an object
store). A commit rewrites only the partition files its rows touch:

 1. stage: for each file, read the existing rows (both compression variants),
    merge by primary key with the new rows winning, and stage the result,
    sorted by key, in one storage batch;
 2. publish the batch: locally one ``syncfs`` barrier, the renames in order and
    a second barrier (storage/local.py); on an object store one whole PUT per
    file, the files of one dataset concurrently (storage/objects.py). Datasets
    go in COMMIT_ORDER (graphs before workouts), and within a dataset the
    partitions gaining rows before those losing some.

A file shared by all accounts (classes, instructors, metadata_mappings) is merged
with compare-and-swap (read with its version, merge, write only if the file is
still at that version, else read and merge again), so runs of different
accounts, on one machine or several, never lose each other's rows, and a class
two accounts took is one row. On a local disk that merge is staged first in the
commit's batch (lakefile.stage_shared: checked and renamed under the directory's
lock after the first barrier), so the batch's barriers make it durable and no
shared file costs an fsync of its own; on an object store, where each PUT is
durable alone, the shared files are merged before the batch, concurrently. An account's own
file of a shared dataset, which versions before 2026-12 wrote for classes, is
read as the account's and moved into the shared file by heal.py.

Which files exist is listed once per dataset per ``Lake`` (a run's lake), and
kept up to date by its own commits: a new partition costs no lookup. This is
sound because only the run holding an account's lock writes that account's
files; shared files are always read afresh.

The code is blocking: the pipeline calls it from a worker thread.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import orjson

from harvester.errors import LakeError, StorageError
from harvester.files import TEMP_NAME
from harvester.keys import (
    DATASETS,
    check_user_id,
    class_of,
    partition_date,
    primary_key,
    row_problem,
    utc_day,
    workout_day,
)
from harvester.lakefile import (
    SUFFIXES,
    Row,
    encode,
    inflate,
    inflate_partial,
    keyed_lines,
    lines,
    merge_shared,
    stage_shared,
)
from harvester.storage import Batch, Entry, LocalStorage, Storage, open_storage
from harvester.storage.local import LocalBatch

__all__ = ["DATASETS", "Encoded", "Lake", "Row", "check_user_id", "class_of", "encoded", "partition_date",
           "primary_key", "row_problem", "utc_day", "workout_day"]

# Workouts last: a workout row in the lake implies its graph was committed before it. (Its
# class may come later: classes wait for their day, classes.py; a missing one is fetched
# by the account's next run.)
# Deletions first: a workout removed from the lake is recorded as deleted before it goes.
COMMIT_ORDER = ("deletions", "performance_graphs", "rides", "instructors", "profiles",
                "metadata_mappings", "workouts")
STATE_DIR = "_harvester"

_UNPARTITIONED = frozenset({"instructors"})
# Instructors and classes are the same for every account: one shared file keeps each
# id once in a lake that several accounts share (two accounts that took one class
# would otherwise each write it), merged with compare-and-swap; so is the daily
# metadata_mappings row (one file per day, shared by every account).
SHARED_FILES = {"instructors": "instructors", "rides": "rides", "metadata_mappings": "metadata_mappings"}
SHARED_MERGE_WORKERS = 8  # shared files merged at once on an object store


@dataclass(frozen=True, slots=True)
class Encoded:
    """A row serialised before its commit (one JSON line), with its key and partition.

    What a run holds in memory for a while (classes waiting for their day to
    complete) costs the size of its JSON this way, not that of a dict of dicts.
    """

    key: str
    part: str | None
    line: bytes


def encoded(dataset: str, row: Row) -> Encoded:
    """``row`` as the line ``Lake.commit`` would write; LakeError if it cannot be."""
    key = primary_key(dataset, row)
    return Encoded(key, partition_date(dataset, row), _line(dataset, key, row))


def _line(dataset: str, key: str, row: Row) -> bytes:
    try:
        return orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE)  # no copy to add the newline
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise LakeError(f"{dataset} row {key} cannot be written as JSON: {exc}") from None


@dataclass(frozen=True, slots=True)
class _Change:
    """One partition file's new content (None: remove it) and the variants it replaces."""

    key: str
    data: bytes | None
    stale: tuple[str, ...]


# -- the lake ------------------------------------------------------------------


class Lake:
    """Partitioned JSONL datasets on ``storage``; see the module docstring."""

    def __init__(self, storage: Storage | Path | str, compression: str = "none") -> None:
        if compression not in SUFFIXES:
            raise LakeError(f"compression must be 'none' or 'gzip', got {compression!r}")
        self.storage = open_storage(str(storage)) if isinstance(storage, str | Path) else storage
        self.compression = compression
        self._suffix = SUFFIXES[compression]
        self._known: dict[str, dict[str, Entry]] = {}  # dataset -> its files, listed once
        self._shared_written: set[str] = set()  # shared files this lake wrote that the listing lacked
        self._lock = threading.Lock()
        # dataset -> {"new": rows whose key the file lacked, "changed": rows that differ
        # from the stored version beyond _harvested_at}: what the summary reports.
        self.tally: dict[str, dict[str, int]] = {}

    def has_workouts(self, user_id: str) -> bool:
        """Whether the lake holds any workout file of the account."""
        check_user_id(user_id)
        return next(self._files("workouts", user_id), None) is not None

    @property
    def url(self) -> str:
        return self.storage.url

    def check_writable(self) -> None:
        """Create the root if needed and prove an object can be written to it."""
        try:
            self.storage.check_writable()
        except StorageError as exc:
            if exc.exit_code != 2:
                raise
            raise LakeError(str(exc)) from None

    def commit(
        self, user_id: str, batch: Mapping[str, Sequence[Row | Encoded]],
        removals: Mapping[str, Mapping[str, Collection[str]]] | None = None,
    ) -> dict[str, int]:
        """Merge ``batch`` into the account's partition files; rows written per dataset.

        ``removals`` (dataset -> partition -> keys) leave those partitions in the
        same commit, after the rows that replace them landed: a moved row is
        never lost to a kill, at worst briefly in two partitions (healed next run).
        Every row is validated and serialised before the first write, so a bad
        row fails the commit without touching the lake; an ``Encoded`` row was
        serialised (and validated) when it was made.
        """
        check_user_id(user_id)
        unknown = sorted(set(batch) - set(DATASETS))
        if unknown:
            raise LakeError(f"unknown dataset(s) {unknown}; expected one of {', '.join(DATASETS)}")
        plan: list[tuple[str, str | None, dict[str, bytes], frozenset[str]]] = []
        counts: dict[str, int] = {}
        for dataset in COMMIT_ORDER:
            groups = self._group(dataset, batch.get(dataset) or ())
            gone = (removals or {}).get(dataset, {})
            for part in sorted({*groups, *gone}, key=lambda p: p or ""):
                drop = frozenset(gone.get(part, ())) if part is not None else frozenset()
                plan.append((dataset, part, groups.get(part, {}), drop))
            written = sum(len(rows) for rows in groups.values())
            if written:
                counts[dataset] = written
        # Shared files first (a commit's classes before the workouts naming them).
        shared = [p for p in plan if p[0] in SHARED_FILES]
        with self.storage.batch() as staged:
            if isinstance(staged, LocalBatch):  # durable with the batch: staged in it
                for item in shared:
                    self._stage_shared(staged, *item)
            else:  # each PUT durable alone: merged now, before the batch publishes anything
                self._merge_all_shared(shared)
            changes: list[_Change] = []
            for dataset in COMMIT_ORDER:
                steps = [p for p in plan if p[0] == dataset and dataset not in SHARED_FILES]
                # Partitions only gaining rows before those losing some (a moved row's old home).
                for losing in (False, True):
                    for _, part, new, drop in steps:
                        if bool(drop) == losing:
                            change = self._stage(dataset, part, user_id, new, drop)
                            if change is not None:
                                changes.append(_add(staged, change))
                    staged.barrier()
            staged.commit()
        self._committed(changes)
        return counts

    def workout_ids(self, user_id: str) -> dict[str, int]:
        """``id -> created_at`` of every committed workout of the account."""
        return self.workout_index(user_id)[0]

    def workout_index(self, user_id: str) -> tuple[dict[str, int], set[str]]:
        """``id -> created_at`` of the account's committed workouts, and the ride ids they name."""
        check_user_id(user_id)
        ids: dict[str, int] = {}
        rides: set[str] = set()
        for key in self._files("workouts", user_id):
            # One file (one day of one account) in memory at a time; rows are dropped at once.
            for _, row in lines(self._read(key), self._where(key)):
                workout_id, created, ride_id = row.get("id"), row.get("created_at"), class_of(row)
                if isinstance(workout_id, str) and isinstance(created, int | float):
                    ids[workout_id] = int(created)
                if ride_id is not None:
                    rides.add(ride_id)
        return ids, rides

    def ride_ids(self) -> set[str]:
        """Every ``ride_id`` in the lake, whichever account wrote it."""
        found: set[str] = set()
        for key in self._files("rides", None):
            found.update(self.keys_in("rides", key))
        return found

    def keys_in(self, dataset: str, key: str) -> list[str]:
        """The primary key of each row of one file, in file order.

        Tolerant (damage is heal's to report): another account's damaged rides file
        costs at most a refetch of its classes.
        """
        found: list[str] = []
        for line in self.read_file(key)[0].splitlines():
            with contextlib.suppress(orjson.JSONDecodeError, LakeError):
                row = orjson.loads(line)
                if isinstance(row, dict):
                    found.append(primary_key(dataset, row))
        return found

    def row_counts(self, user_id: str | None = None) -> dict[str, int]:
        """Rows per dataset, of one account or (None) of all."""
        if user_id is not None:
            check_user_id(user_id)
        return {
            dataset: sum(self._read(key).count(b"\n") for key in self._files(dataset, user_id))
            for dataset in DATASETS
        }

    def clean_temp_files(self) -> int:
        """Delete temporary files left by killed runs (local only); returns how many.

        Also settles a partition a kill left holding both compression variants
        (between the write of one and the removal of the other), so no reader
        sees a row twice. Call it only while holding the run lock.
        """
        removed = self.storage.sweep_temp("", recursive=False)
        for dataset in DATASETS:
            removed += self.storage.sweep_temp(dataset)
            keys = {entry.key for entry in self.storage.walk(dataset)}
            for key in sorted(keys):
                if key.endswith(".jsonl") and f"{key}.gz" in keys:
                    prefix, _, name = key.rpartition("/")
                    stem = name.removesuffix(".jsonl")
                    self._known.pop(dataset, None)
                    if dataset in SHARED_FILES:
                        self._merge_shared(dataset, _part_of(dataset, prefix), {}, frozenset())
                        continue
                    change = self._stage(dataset, _part_of(dataset, prefix), stem, {})
                    if change is not None:
                        with self.storage.batch() as staged:
                            _add(staged, change)
                            staged.commit()
        self._known.clear()
        return removed

    # -- whole files, for reconcile.py (healing and verify) ----------------------

    def account_files(self, dataset: str, user_id: str) -> list[tuple[str | None, Entry]]:
        """``(partition day, listing entry)`` of the dataset's files this account writes (or shares).

        The entry's size, time and ETag say which version of the file was listed (heal.py's
        scan cache)."""
        return [(_part_of(dataset, entry.key.rpartition("/")[0]), entry)
                for entry in self._entries(dataset, check_user_id(user_id))]

    def other_accounts_files(self, dataset: str, user_id: str) -> list[Entry]:
        """The listing entries of the dataset's files other accounts write (of a shared dataset:
        those an older version wrote per account, until that account's next run moves them).

        From this lake's last listing of the dataset (``account_files`` made one a moment ago).
        """
        mine = _names(check_user_id(user_id), SHARED_FILES.get(dataset))
        return [entry for entry in self._entries(dataset, None, fresh=False)
                if entry.key.rpartition("/")[2] not in mine]

    def unshared_files(self, dataset: str) -> list[str]:
        """The files of a shared dataset that an older version wrote per account (each
        account's next run moves their rows to the shared files); none for other datasets."""
        if dataset not in SHARED_FILES:
            return []
        shared = _names(SHARED_FILES[dataset])
        return [entry.key for entry in self._entries(dataset, None)
                if entry.key.rpartition("/")[2] not in shared]

    def read_file(self, key: str) -> tuple[bytes, str | None]:
        """The file's bytes (decompressed), and why they stop short (a damaged gzip), or None."""
        blob = self.storage.read(key)
        return (b"", None) if blob is None else inflate_partial(blob.data, key)

    def replace_files(
        self, dataset: str,
        files: Sequence[tuple[str | None, str, Mapping[str, bytes], frozenset[str]]],
    ) -> None:
        """Replace each ``(partition, stem, lines by key, keys leaving)`` file whole with these
        lines; none: removed.

        A file shared by all accounts is merged instead (compare-and-swap): the lines
        replace theirs, the keys leaving go, and a row another account's run adds
        meanwhile is kept.
        """
        if dataset in SHARED_FILES:
            shared = SHARED_FILES[dataset]
            self._merge_all_shared([(dataset, part, content, drop)
                                    for part, stem, content, drop in files if stem == shared],
                                   tolerant=True)
            # An account's own file of a shared dataset (written before the dataset was
            # shared): heal moved its rows to the shared file above; it goes.
            files = [(part, stem, {}, drop) for part, stem, _, drop in files if stem != shared]
        changes: list[_Change] = []
        with self.storage.batch() as staged:
            for part, stem, content, _ in files:
                prefix = _prefix(dataset, part)
                target = f"{prefix}/{stem}{self._suffix}"
                variants = tuple(self._variants(dataset, prefix, stem))
                data = encode(content, self.compression) if content else None
                if data is None and not variants:
                    continue
                changes.append(_add(staged, _Change(target, data,
                                                    tuple(v for v in variants if v != target))))
            staged.commit()
        self._committed(changes)

    def quarantine(self, key: str, stamp: str) -> str:
        """Keep ``key`` as it is under ``_harvester/quarantine/<stamp>/`` before it is rewritten."""
        target = f"{STATE_DIR}/quarantine/{stamp}/{key}"
        blob = self.storage.read(key)
        if blob is not None and self.storage.stat(target) is None:
            self.storage.write(target, blob.data, private=True)
        return target

    def temp_files(self) -> list[str]:
        """Temporary files a killed run left in the lake (verify reports them): local only."""
        if not isinstance(self.storage, LocalStorage):
            return []  # an object store has no temporary objects
        root = self.storage.root
        found: list[str] = []
        for top in (root, *(root / d for d in DATASETS)):
            for directory, _, names in os.walk(top):
                found += [os.path.relpath(os.path.join(directory, n), root)
                          for n in names if TEMP_NAME.fullmatch(n)]
                if top == root:
                    break
        return sorted(found)

    # -- internals -------------------------------------------------------------

    def _group(
        self, dataset: str, rows: Sequence[Row | Encoded],
    ) -> dict[str | None, dict[str, bytes]]:
        """Serialised rows by partition then key; a later row of the same key wins."""
        latest: dict[str, tuple[str | None, Row | Encoded]] = {}
        for row in rows:
            if isinstance(row, Encoded):
                latest[row.key] = (row.part, row)
            else:
                latest[primary_key(dataset, row)] = (partition_date(dataset, row), row)
        groups: dict[str | None, dict[str, bytes]] = {}
        for key, (part, row) in latest.items():
            line = row.line if isinstance(row, Encoded) else _line(dataset, key, row)
            groups.setdefault(part, {})[key] = line
        return groups

    def _stage(
        self, dataset: str, part: str | None, stem: str, new: dict[str, bytes],
        drop: frozenset[str] = frozenset(),
    ) -> _Change | None:
        """The file ``stem`` of the partition with its rows and ``new`` merged (new wins), minus
        ``drop``; None when there is nothing to change."""
        prefix = _prefix(dataset, part)
        variants = self._variants(dataset, prefix, stem)
        if not new and not variants:
            return None  # only removals, from a file that does not exist
        merged: dict[str, bytes] = {}
        for key in variants:
            merged.update(keyed_lines(dataset, self._read(key), self._where(key)))
        self._count(dataset, merged, new)
        merged.update(new)
        for key in drop - new.keys():
            merged.pop(key, None)
        target = f"{prefix}/{stem}{self._suffix}"
        if not merged:
            return _Change(target, None, tuple(variants))
        return _Change(target, encode(merged, self.compression),
                       tuple(v for v in variants if v != target))

    def _merge_all_shared(
        self, merges: Sequence[tuple[str, str | None, Mapping[str, bytes], frozenset[str]]],
        *, tolerant: bool = False,
    ) -> None:
        """``_merge_shared`` each ``(dataset, partition, rows, keys to drop)``: one after another on
        a local disk; on an object store concurrently (each is two round trips, and a backfill's
        classes span hundreds of days). The first error is raised once all have ended."""
        def merge(item: tuple[str, str | None, Mapping[str, bytes], frozenset[str]]) -> None:
            self._merge_shared(*item, tolerant=tolerant)

        if self.storage.is_local or len(merges) < 2:
            for item in merges:
                merge(item)
            return
        with ThreadPoolExecutor(max_workers=SHARED_MERGE_WORKERS) as pool:
            list(pool.map(merge, merges))

    def _merge_shared(
        self, dataset: str, part: str | None, new: Mapping[str, bytes], drop: frozenset[str],
        *, tolerant: bool = False,
    ) -> None:
        """Merge ``new`` into the shared file with compare-and-swap (lakefile.merge_shared)."""
        target, variants = self._shared_keys(dataset, part)
        # On an object store a read is a round trip: a file the dataset's listing (taken
        # once) did not show, and this lake has not written since, is created unread.
        absent = not self.storage.is_local and target not in self._known_files(dataset)
        if absent:
            with self._lock:
                absent = target not in self._shared_written
        merge_shared(self.storage, dataset, target, variants,
                     self._shared_change(dataset, new, drop, tolerant=tolerant),
                     self.compression, tolerant=tolerant, absent=absent)
        if absent:
            with self._lock:
                self._shared_written.add(target)

    def _stage_shared(
        self, staged: LocalBatch, dataset: str, part: str | None, new: Mapping[str, bytes],
        drop: frozenset[str],
    ) -> None:
        """The same merge staged in a local commit's batch (lakefile.stage_shared), or, when
        the partition holds both compression variants, done on its own first."""
        target, variants = self._shared_keys(dataset, part)
        if not stage_shared(self.storage, staged, dataset, target, variants,
                            self._shared_change(dataset, new, drop), self.compression):
            self._merge_shared(dataset, part, new, drop)

    def _shared_keys(self, dataset: str, part: str | None) -> tuple[str, list[str]]:
        """The shared file's key in the configured compression, and every variant's."""
        prefix, stem = _prefix(dataset, part), SHARED_FILES[dataset]
        return (f"{prefix}/{stem}{self._suffix}",
                [f"{prefix}/{stem}{suffix}" for suffix in SUFFIXES.values()])

    def _shared_change(
        self, dataset: str, new: Mapping[str, bytes], drop: frozenset[str], *,
        tolerant: bool = False,
    ) -> Callable[[dict[str, bytes]], dict[str, bytes]]:
        """``new`` merged in (and counted, unless ``tolerant``), ``drop`` taken out."""
        def change(merged: dict[str, bytes]) -> dict[str, bytes]:
            if not tolerant:
                self._count(dataset, merged, new)
            merged.update(new)
            for key in drop - new.keys():
                merged.pop(key, None)
            return merged

        return change

    def _count(self, dataset: str, stored: Mapping[str, bytes], new: Mapping[str, bytes]) -> None:
        """Add ``new``'s rows to the tally: new keys, and known keys whose content changed."""
        fresh = changed = 0
        for key, line in new.items():
            before = stored.get(key)
            if before is None:
                fresh += 1
            elif before != line and _content(before) != _content(line):
                changed += 1
        if fresh or changed:
            with self._lock:
                tally = self.tally.setdefault(dataset, {"new": 0, "changed": 0})
                tally["new"] += fresh
                tally["changed"] += changed

    def _known_files(self, dataset: str) -> dict[str, Entry]:
        """The dataset's files as this lake last saw them: listed once, then kept by commits."""
        with self._lock:
            known = self._known.get(dataset)
        if known is None:
            known = {entry.key: entry for entry in self.storage.walk(dataset)}
            with self._lock:
                known = self._known.setdefault(dataset, known)
        return known

    def _committed(self, changes: Sequence[_Change]) -> None:
        """Keep the listing up to date with what this lake just wrote."""
        now = time.time_ns()
        with self._lock:
            for change in changes:
                known = self._known.get(change.key.partition("/")[0])
                if known is None:
                    continue
                for key in change.stale:
                    known.pop(key, None)
                if change.data is None:
                    known.pop(change.key, None)
                else:
                    known[change.key] = Entry(change.key, len(change.data), now)

    def _variants(self, dataset: str, prefix: str, stem: str) -> list[str]:
        """Existing files of ``stem`` in any compression, oldest first (the newest wins a merge).

        Only a kill between a write and the removal of the other leaves two; the
        one written last holds the merge of both. On equal times the configured
        compression counts as newer.
        """
        known = self._known_files(dataset)
        found: list[tuple[int, bool, str]] = []
        for suffix in SUFFIXES.values():
            entry = known.get(f"{prefix}/{stem}{suffix}")
            if entry is not None:
                found.append((entry.modified_ns, suffix == self._suffix, entry.key))
        return [key for _, _, key in sorted(found)]

    def _files(self, dataset: str, user_id: str | None) -> Iterator[str]:
        """The dataset's files, of one account or of all; listed afresh, never temporaries."""
        return (entry.key for entry in self._entries(dataset, user_id))

    def _entries(self, dataset: str, user_id: str | None, *, fresh: bool = True) -> Iterator[Entry]:
        """``_files``, as the listing's entries; not ``fresh``: as this lake last listed them."""
        if fresh:
            entries = list(self.storage.walk(dataset))
            with self._lock:
                self._known[dataset] = {entry.key: entry for entry in entries}
        else:
            entries = list(self._known_files(dataset).values())
        # One account's files of a shared dataset: the shared one, and its own from before
        # the dataset was shared (heal moves their rows to the shared file).
        names = _names(user_id, SHARED_FILES.get(dataset)) if user_id is not None else None
        for entry in entries:
            prefix, _, name = entry.key.rpartition("/")
            if prefix != dataset if dataset in _UNPARTITIONED else (
                prefix.count("/") != 1 or not prefix.startswith(f"{dataset}/date=")
            ):
                continue
            if name.startswith("."):
                continue
            if name in names if names is not None else name.endswith(tuple(SUFFIXES.values())):
                yield entry

    def _read(self, key: str) -> bytes:
        """The file's decompressed bytes (empty if gone); LakeError naming it if damaged."""
        blob = self.storage.read(key)
        return b"" if blob is None else inflate(blob.data, self._where(key))

    def _where(self, key: str) -> str:
        return f"{self.url}/{key}"


# -- file helpers --------------------------------------------------------------


def _names(*stems: str | None) -> set[str]:
    """The file names of these stems, in every compression."""
    return {f"{stem}{suffix}" for stem in stems if stem for suffix in SUFFIXES.values()}


def _prefix(dataset: str, part: str | None) -> str:
    return dataset if part is None else f"{dataset}/date={part}"


def _part_of(dataset: str, prefix: str) -> str | None:
    name = prefix.rpartition("/")[2]
    return name.removeprefix("date=") if name.startswith("date=") and prefix != dataset else None


def _add(staged: Batch, change: _Change) -> _Change:
    if change.data is None:
        for key in (change.key, *change.stale):
            staged.remove(key)
    else:
        staged.put(change.key, change.data, replaces=change.stale)
    return change


def _content(line: bytes) -> object:
    """A row without its ``_harvested_at`` stamp, to tell a changed row from a re-fetched one."""
    row = orjson.loads(line)
    if isinstance(row, dict):
        row.pop("_harvested_at", None)
    return row
