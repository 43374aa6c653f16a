"""Typed Parquet tables derived from the raw lake (``peloton-harvester tables``).

    schemas.py  one explicit Arrow schema per table
    rows.py     raw rows -> flat records (pure)
    raw.py      the raw lake as a reader sees it: files, fingerprints, rows
    specs.py    each table's sources, partitioning and builder
    build.py    the incremental, atomic build and its manifest

The raw lake never depends on this package; this package reads the raw lake
only through its files, as any other reader does.
"""

from __future__ import annotations

from harvester.tables.build import TABLES_DIR, BuildReport, build_tables
from harvester.tables.specs import TABLES

__all__ = ["TABLES", "TABLES_DIR", "BuildReport", "build_tables"]
