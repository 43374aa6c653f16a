"""Reading the raw lake as any outside reader would: by glob, never through lake.py.

The tables are a reader of the lake like DuckDB or Spark: they see the files the
``<root>/<dataset>/**/*.jsonl[.gz]`` glob sees (never dot-prefixed temporary
files), and a file's fingerprint (size, mtime in ns) says whether it changed
since the last build. A damaged line (a kill of some other writer, a disk
error) is skipped and counted, never fatal: ``verify --repair`` rewrites the
file, its fingerprint changes, and the next build picks the repair up.
"""

from __future__ import annotations

import gzip
import logging
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson

log = logging.getLogger(__name__)

Row = dict[str, object]
SUFFIXES = (".jsonl", ".jsonl.gz")
PARTITION_PREFIX = "date="


@dataclass(frozen=True, slots=True)
class RawFile:
    """One raw lake file as listed: where, which partition, its fingerprint."""

    path: str  # a str, not a Path: a long history lists thousands of files per build
    rel: str  # relative to the lake root, '/'-separated: the manifest's key
    day: str | None  # the YYYY-MM-DD of its date= directory; None when unpartitioned
    size: int
    mtime_ns: int

    @property
    def fingerprint(self) -> tuple[str, int, int]:
        return (self.rel, self.size, self.mtime_ns)


@dataclass(slots=True)
class ReadStats:
    """Lines a build could not use, so the CLI can say so."""

    bad_lines: int = 0
    bad_files: list[str] = field(default_factory=list)


def list_files(root: Path, dataset: str) -> list[RawFile]:
    """Every file of ``dataset`` a reader's glob sees, sorted by path."""
    base = os.path.join(root, dataset)
    found: list[RawFile] = []
    for directory, day in _directories(base):
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            continue
        for entry in entries:
            if entry.name.startswith(".") or not entry.name.endswith(SUFFIXES):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # replaced or removed since the listing
            if not entry.is_file(follow_symlinks=False):
                continue
            folder = dataset if day is None else f"{dataset}/{PARTITION_PREFIX}{day}"
            rel = f"{folder}/{entry.name}"
            found.append(RawFile(entry.path, rel, day, st.st_size, st.st_mtime_ns))
    found.sort(key=lambda f: f.rel)
    return found


def _directories(base: str) -> Iterator[tuple[str, str | None]]:
    """The dataset directory itself, then each ``date=YYYY-MM-DD`` partition under it."""
    if not os.path.isdir(base):
        return
    yield base, None
    for entry in sorted(os.scandir(base), key=lambda e: e.name):
        if entry.name.startswith(PARTITION_PREFIX) and entry.is_dir(follow_symlinks=False):
            yield entry.path, entry.name[len(PARTITION_PREFIX):]


def read_rows(raw: RawFile, stats: ReadStats) -> Iterator[Row]:
    """The file's JSON objects; damaged lines and unreadable files are counted, skipped."""
    try:
        with open(raw.path, "rb") as handle:
            data = handle.read()
        if raw.path.endswith(".gz"):
            data = gzip.decompress(data)
    except FileNotFoundError:
        return  # removed since listed: its fingerprint is gone too, the next build settles it
    except (OSError, EOFError, zlib.error) as exc:
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
