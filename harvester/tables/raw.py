"""Reading the raw lake as any outside reader would: by listing, never through lake.py.

The tables are a reader of the lake like DuckDB or Spark: they see the files the
``<root>/<dataset>/**/*.jsonl[.gz]`` glob sees (never dot-prefixed temporary
files), listed and read through the lake's Storage (a local folder or an object
store). A file's fingerprint says whether it changed since the last build: its
size and mtime in ns on a local disk, its size and ETag on an object store. A
damaged line (a kill of some other writer, a disk error) is skipped and
counted, never fatal: ``verify --repair`` rewrites the file, its fingerprint
changes, and the next build picks the repair up.
"""

from __future__ import annotations

import gzip
import logging
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import orjson

from harvester.errors import StorageError, StorageUnavailableError
from harvester.storage import Storage

log = logging.getLogger(__name__)

Row = dict[str, object]
SUFFIXES = (".jsonl", ".jsonl.gz")
PARTITION_PREFIX = "date="


@dataclass(frozen=True, slots=True)
class RawFile:
    """One raw lake file as listed: where, which partition, its fingerprint."""

    storage: Storage = field(compare=False, repr=False)
    rel: str  # the storage key, '/'-separated, relative to the lake root: the manifest's key
    day: str | None  # the YYYY-MM-DD of its date= directory; None when unpartitioned
    size: int
    version: str | int  # the object's ETag, or (local disk) its mtime in ns

    @property
    def fingerprint(self) -> tuple[str, int, str | int]:
        return (self.rel, self.size, self.version)


@dataclass(slots=True)
class ReadStats:
    """Lines a build could not use, so the CLI can say so."""

    bad_lines: int = 0
    bad_files: list[str] = field(default_factory=list)


def list_files(storage: Storage, dataset: str) -> list[RawFile]:
    """Every file of ``dataset`` a reader's glob sees, sorted by key.

    That is ``<dataset>/<name>`` and ``<dataset>/date=YYYY-MM-DD/<name>``; no
    deeper folder, no dot-prefixed name, only ``.jsonl`` and ``.jsonl.gz``.
    """
    found: list[RawFile] = []
    for entry in storage.walk(dataset):
        parts = entry.key.split("/")[1:]
        name = parts[-1]
        if name.startswith(".") or not name.endswith(SUFFIXES):
            continue
        if len(parts) == 1:
            day = None
        elif len(parts) == 2 and parts[0].startswith(PARTITION_PREFIX):
            day = parts[0][len(PARTITION_PREFIX):]
        else:
            continue
        found.append(RawFile(storage, entry.key, day, entry.size, entry.etag or entry.modified_ns))
    found.sort(key=lambda f: f.rel)
    return found


def read_rows(raw: RawFile, stats: ReadStats) -> Iterator[Row]:
    """The file's JSON objects; damaged lines and unreadable files are counted, skipped."""
    try:
        blob = raw.storage.read(raw.rel)
        if blob is None:
            return  # removed since listed: its fingerprint is gone too, the next build settles it
        data = blob.data
        if raw.rel.endswith(".gz"):
            data = gzip.decompress(data)
    except StorageUnavailableError:
        raise  # the store is down: the build fails (75), it does not skip the file
    except (StorageError, OSError, EOFError, zlib.error) as exc:
        log.warning("tables: cannot read lake file %s (%s); skipped", raw.rel, exc)
        stats.bad_files.append(raw.rel)
        return
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            row = orjson.loads(line)
        except orjson.JSONDecodeError:
            row = None
        if isinstance(row, dict):
            yield row
        else:
            stats.bad_lines += 1
            log.warning("tables: %s holds a line that is not a JSON object; skipped", raw.rel)
