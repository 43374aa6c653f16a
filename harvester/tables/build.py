"""Build the typed tables under ``<root>/tables/``, rebuilding only what changed.

One build, for each table of ``specs.TABLES``:

 1. list the raw files of its sources (``raw.list_files``) and group them into
    units (a month, or the whole table), each with the fingerprints of its files;
 2. compare with ``tables/_manifest.json``: a unit whose fingerprints differ
    (or whose table's schema changed) is rebuilt from its raw files alone;
 3. write each rebuilt unit to a dot-prefixed temporary name (no reader's glob,
    nor pandas/pyarrow directory listings, see it), one ``syncfs`` barrier, then
    rename into place; partitions whose raw files are gone are removed;
 4. record the table's fingerprints in the manifest (atomically, last), so a
    killed build redoes only what it had not recorded.

The manifest lives inside ``tables/``: deleting the folder deletes it too and
the next build starts from scratch, with the same result. Nothing here is ever
read back as data: the raw lake is the only source of truth.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from harvester.errors import LakeError, LockedError
from harvester.files import TEMP_NAME, atomic_write, sync_filesystem, temp_name
from harvester.tables.raw import RawFile, ReadStats, list_files
from harvester.tables.specs import TABLES, TableSpec

TABLES_DIR = "tables"
MANIFEST = "_manifest.json"
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


def build_tables(root: Path) -> BuildReport:
    """(Re)build every table under ``root/tables``; see the module docstring."""
    started = time.monotonic()
    out = Path(root) / TABLES_DIR
    report = BuildReport()
    try:
        out.mkdir(parents=True, exist_ok=True)
        with _locked(out):
            _clean_temp_files(out)
            manifest = _read_manifest(out / MANIFEST)
            listings = _Listings(Path(root))
            for spec in TABLES:
                recorded = manifest.setdefault(spec.name, {})
                before = dict(recorded)
                report.tables[spec.name] = _build_table(listings, out, spec, recorded, report.stats)
                if recorded != before or not (out / MANIFEST).exists():
                    atomic_write(out / MANIFEST, orjson.dumps(
                        {"version": BUILD_VERSION, "tables": manifest}, option=orjson.OPT_INDENT_2),
                        0o644)
    except OSError as exc:
        raise LakeError(f"cannot write the tables under {out}: {exc.strerror or exc}") from None
    report.seconds = time.monotonic() - started
    return report


class _Listings:
    """Each raw dataset listed once per build (two tables read performance_graphs)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._seen: dict[str, list[RawFile]] = {}

    def files(self, dataset: str) -> list[RawFile]:
        if dataset not in self._seen:
            self._seen[dataset] = list_files(self.root, dataset)
        return self._seen[dataset]


def _build_table(listings: _Listings, out: Path, spec: TableSpec, recorded: dict[str, str],
                 stats: ReadStats) -> TableReport:
    units = _units(listings, spec)
    schema_key = hashlib.sha256(spec.schema.to_string().encode()).hexdigest()[:16]
    report = TableReport(units=len(units))
    staged: list[tuple[Path, Path]] = []
    fresh: dict[str, str] = {}
    try:
        for unit, files in sorted(units.items()):
            key = _fingerprint(schema_key, files)
            target = _target(out, spec, unit)
            fresh[unit] = key
            if recorded.get(unit) == key and target.exists():
                continue
            table = spec.build(_by_source(spec, files), stats)
            staged.append((_write_temp(table, target), target))
            report.rebuilt += 1
            report.rows += table.num_rows
        if staged:
            sync_filesystem(out)
        for temp, target in staged:
            os.replace(temp, target)
        staged.clear()
    finally:
        for temp, _ in staged:
            with contextlib.suppress(OSError):
                temp.unlink()
    report.removed = _remove_stale(out / spec.name, spec, fresh)
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


def _target(out: Path, spec: TableSpec, unit: str) -> Path:
    base = out / spec.name
    return base / PART if unit == WHOLE else base / f"{MONTH_PREFIX}{unit}" / PART


def _write_temp(table: pa.Table, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(temp_name(target.name))
    try:
        pq.write_table(table, temp, compression=DEFAULT_COMPRESSION)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    return temp


def _remove_stale(base: Path, spec: TableSpec, fresh: dict[str, str]) -> int:
    """Remove partitions (and stray files) that no current unit writes; how many."""
    if not base.is_dir():
        return 0
    keep = {_target(base.parent, spec, unit) for unit in fresh}
    removed = 0
    for entry in os.scandir(base):
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            if path / PART not in keep:
                shutil.rmtree(path)
                removed += 1
        elif path not in keep and entry.name.endswith(".parquet"):
            path.unlink()
            removed += 1
    return removed


def _clean_temp_files(out: Path) -> None:
    """Temporary files a killed build left behind."""
    for directory, _, names in os.walk(out):
        for name in names:
            if TEMP_NAME.fullmatch(name):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(directory, name))


def _read_manifest(path: Path) -> dict[str, dict[str, str]]:
    """The recorded fingerprints; an unreadable or older manifest means: rebuild all."""
    try:
        data = orjson.loads(path.read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return {}
    if not isinstance(data, dict) or data.get("version") != BUILD_VERSION:
        return {}
    tables = data.get("tables")
    if not isinstance(tables, dict):
        return {}
    return {name: {str(k): str(v) for k, v in units.items()}
            for name, units in tables.items() if isinstance(units, dict)}


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    """One build at a time per lake: a second one says so instead of racing the first."""
    fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockedError(f"another tables build is running on {out}; try again later") from None
        yield
    finally:
        os.close(fd)
