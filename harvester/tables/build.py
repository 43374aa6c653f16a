"""Build the typed tables under ``<root>/tables/``, rebuilding only what changed.

One build, for each table of ``specs.TABLES``:

 1. list the raw files of its sources (``raw.list_files``) and group them into
    units (a month, or the whole table), each with the fingerprints of its files;
 2. compare with ``tables/_manifest.json``: a unit whose fingerprints differ
    (or whose table's schema changed) is rebuilt from its raw files alone;
 3. write each rebuilt unit through a storage batch: on a local disk a
    dot-prefixed temporary name (no reader's glob, nor pandas/pyarrow directory
    listings, see it), one ``syncfs`` barrier, then rename into place; on an
    object store one whole PUT per Parquet file (serialised in memory first).
    Partitions whose raw files are gone are removed;
 4. record the table's fingerprints in the manifest (a whole write, last), so a
    killed build redoes only what it had not recorded.

The manifest lives inside ``tables/``: deleting the folder deletes it too and
the next build starts from scratch, with the same result. Nothing here is ever
read back as data: the raw lake is the only source of truth.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from harvester.errors import LakeError, LockedError
from harvester.storage import LocalStorage, Storage, open_storage
from harvester.tables.raw import RawFile, ReadStats, list_files
from harvester.tables.specs import TABLES, TableSpec

TABLES_DIR = "tables"
MANIFEST = "_manifest.json"
MANIFEST_KEY = f"{TABLES_DIR}/{MANIFEST}"
LOCK = ".lock"
PART = "part-0.parquet"
MONTH_PREFIX = "month="
WHOLE = ""  # the unit key of an unpartitioned table
BUILD_VERSION = 1  # bump when a builder's output changes for the same input
DEFAULT_COMPRESSION: Final = "zstd"


@dataclass(slots=True)
class TableReport:
    rows: int = 0  # rows written this build (rebuilt units only)
    units: int = 0  # units (partitions) of the table
    rebuilt: int = 0
    removed: int = 0


@dataclass(slots=True)
class BuildReport:
    tables: dict[str, TableReport] = field(default_factory=dict)
    stats: ReadStats = field(default_factory=ReadStats)
    seconds: float = 0.0

    def summary(self) -> str:
        rebuilt = sum(t.rebuilt for t in self.tables.values())
        units = sum(t.units for t in self.tables.values())
        parts = ", ".join(f"{name} {t.rebuilt}/{t.units}" for name, t in self.tables.items())
        line = (f"tables: rebuilt {rebuilt} of {units} partitions in {self.seconds:.1f}s "
                f"({parts})")
        skipped = self.stats.bad_lines + len(self.stats.bad_files)
        if skipped:
            line += f"; skipped {self.stats.bad_lines} damaged lines and " \
                    f"{len(self.stats.bad_files)} unreadable files (run verify --repair)"
        return line


def build_tables(root: Path | str | Storage) -> BuildReport:
    """(Re)build every table under ``root/tables``; see the module docstring."""
    started = time.monotonic()
    storage = root if not isinstance(root, str | Path) else open_storage(str(root))
    report = BuildReport()
    try:
        with _locked(storage):
            storage.sweep_temp(TABLES_DIR)
            existing = {entry.key for entry in storage.walk(TABLES_DIR)}
            manifest = _read_manifest(storage)
            listings = _Listings(storage)
            for spec in TABLES:
                recorded = manifest.setdefault(spec.name, {})
                before = dict(recorded)
                report.tables[spec.name] = _build_table(listings, spec, recorded, existing,
                                                        report.stats)
                if recorded != before or MANIFEST_KEY not in existing:
                    storage.write(MANIFEST_KEY, orjson.dumps(
                        {"version": BUILD_VERSION, "tables": manifest}, option=orjson.OPT_INDENT_2))
                    existing.add(MANIFEST_KEY)
    except OSError as exc:
        raise LakeError(f"cannot write the tables under {storage.url}/{TABLES_DIR}: "
                        f"{exc.strerror or exc}") from None
    report.seconds = time.monotonic() - started
    return report


class _Listings:
    """Each raw dataset listed once per build (two tables read performance_graphs)."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._seen: dict[str, list[RawFile]] = {}

    def files(self, dataset: str) -> list[RawFile]:
        if dataset not in self._seen:
            self._seen[dataset] = list_files(self.storage, dataset)
        return self._seen[dataset]


def _build_table(listings: _Listings, spec: TableSpec, recorded: dict[str, str],
                 existing: set[str], stats: ReadStats) -> TableReport:
    units = _units(listings, spec)
    schema_key = hashlib.sha256(spec.schema.to_string().encode()).hexdigest()[:16]
    report = TableReport(units=len(units))
    fresh: dict[str, str] = {}
    # Local: each put is a temporary file; commit is one barrier, then the renames.
    # Object store: commit PUTs each Parquet file whole.
    with listings.storage.batch() as batch:
        for unit, files in sorted(units.items()):
            key = _fingerprint(schema_key, files)
            target = _target(spec, unit)
            fresh[unit] = key
            if recorded.get(unit) == key and target in existing:
                continue
            table = spec.build(_by_source(spec, files), stats)
            batch.put(target, _parquet(table))
            existing.add(target)
            report.rebuilt += 1
            report.rows += table.num_rows
        batch.commit()
    report.removed = _remove_stale(listings.storage, spec, fresh, existing)
    recorded.clear()
    recorded.update(fresh)
    return report


def _units(listings: _Listings, spec: TableSpec) -> dict[str, list[RawFile]]:
    units: dict[str, list[RawFile]] = {} if spec.monthly else {WHOLE: []}
    for dataset in spec.sources:
        for raw in listings.files(dataset):
            if spec.monthly:
                if raw.day is None:
                    continue  # not in a date= partition: not part of a partitioned dataset
                units.setdefault(raw.day[:7], []).append(raw)
            else:
                units[WHOLE].append(raw)
    # A partitioned table with nothing to partition still gets its (empty) file, so
    # readers find a table with its schema rather than no table.
    return units or {WHOLE: []}


def _fingerprint(schema_key: str, files: list[RawFile]) -> str:
    digest = hashlib.sha256(schema_key.encode())
    for raw in files:
        digest.update(orjson.dumps(raw.fingerprint))
    return digest.hexdigest()[:32]


def _by_source(spec: TableSpec, files: list[RawFile]) -> dict[str, list[RawFile]]:
    grouped: dict[str, list[RawFile]] = {dataset: [] for dataset in spec.sources}
    for raw in files:
        grouped[raw.rel.split("/", 1)[0]].append(raw)
    return grouped


def _target(spec: TableSpec, unit: str) -> str:
    base = f"{TABLES_DIR}/{spec.name}"
    return f"{base}/{PART}" if unit == WHOLE else f"{base}/{MONTH_PREFIX}{unit}/{PART}"


def _parquet(table: pa.Table) -> bytes:
    """The table as one whole Parquet file, in memory (an object store takes whole objects)."""
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression=DEFAULT_COMPRESSION)
    return buffer.getvalue()


def _remove_stale(storage: Storage, spec: TableSpec, fresh: dict[str, str],
                  existing: set[str]) -> int:
    """Remove partitions (and stray files) that no current unit writes; how many."""
    keep = {_target(spec, unit) for unit in fresh}
    base = f"{TABLES_DIR}/{spec.name}"
    stale = sorted(key for key in existing
                   if key.startswith(f"{base}/") and key.endswith(".parquet") and key not in keep)
    for key in stale:
        storage.delete(key)
        existing.discard(key)
        if storage.is_local and isinstance(storage, LocalStorage):
            _remove_empty_folder(storage.path(key).parent, storage.path(base))
    return len(stale)


def _remove_empty_folder(folder: Path, base: Path) -> None:
    """A removed partition's folder, once empty, goes too (readers list folders)."""
    if folder != base:
        with contextlib.suppress(OSError):
            folder.rmdir()


def _read_manifest(storage: Storage) -> dict[str, dict[str, str]]:
    """The recorded fingerprints; an unreadable or older manifest means: rebuild all."""
    blob = storage.read(MANIFEST_KEY)
    try:
        data = orjson.loads(blob.data) if blob is not None else None
    except orjson.JSONDecodeError:
        return {}
    if not isinstance(data, dict) or data.get("version") != BUILD_VERSION:
        return {}
    tables = data.get("tables")
    if not isinstance(tables, dict):
        return {}
    return {name: {str(k): str(v) for k, v in units.items()}
            for name, units in tables.items() if isinstance(units, dict)}


@contextlib.contextmanager
def _locked(storage: Storage) -> Iterator[None]:
    """One build at a time per local lake: a second one says so instead of racing the first.

    On an object store there is no lock: two concurrent builds each write whole
    objects from the same raw input, so the last one's files and manifest stand.
    """
    if not isinstance(storage, LocalStorage):
        yield
        return
    out = storage.path(TABLES_DIR)
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockedError(f"another tables build is running on {out}; try again later") from None
        yield
    finally:
        os.close(fd)
