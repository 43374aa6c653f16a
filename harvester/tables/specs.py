"""What each table is made of: its raw sources, its partitioning, its builder.

A table is built in *units*. A monthly table has one unit per ``month=YYYY-MM``
of its sources' ``date=`` partitions and writes
``tables/<name>/month=YYYY-MM/part-0.parquet``; a whole table has one unit,
``tables/<name>/part-0.parquet``. A unit is rebuilt when the fingerprints of
its raw files change, from those files alone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from harvester.tables import rows
from harvester.tables.raw import RawFile, ReadStats, read_rows
from harvester.tables.schemas import METRIC_SLUGS, SCHEMAS

Sources = Mapping[str, Sequence[RawFile]]  # raw dataset -> the unit's files
Builder = Callable[[Sources, ReadStats], pa.Table]


@dataclass(frozen=True, slots=True)
class TableSpec:
    name: str
    sources: tuple[str, ...]  # raw datasets read
    monthly: bool  # one unit (and Hive partition month=YYYY-MM) per month of date=
    build: Builder

    @property
    def schema(self) -> pa.Schema:
        return SCHEMAS[self.name]


def _table(name: str, records: list[rows.Record]) -> pa.Table:
    return pa.Table.from_pylist(records, schema=SCHEMAS[name])


def _latest(files: Sequence[RawFile], stats: ReadStats, key: str) -> dict[str, rows.Row]:
    """Rows by ``key``; on a repeat (a row caught mid-move) the newest harvest wins."""
    found: dict[str, rows.Row] = {}
    for raw in files:
        for row in read_rows(raw, stats):
            value = row.get(key)
            if not isinstance(value, str):
                stats.bad_lines += 1
                continue
            held = found.get(value)
            if held is None or str(row.get("_harvested_at", "")) >= str(held.get("_harvested_at", "")):
                found[value] = row
    return found


def build_workouts(sources: Sources, stats: ReadStats) -> pa.Table:
    workouts = _latest(sources["workouts"], stats, "id")
    graphs = _latest(sources["performance_graphs"], stats, "workout_id")
    records = [rows.workout_record(w, graphs.get(wid)) for wid, w in sorted(workouts.items())]
    return _table("workouts", records)


def build_workout_metrics(sources: Sources, stats: ReadStats) -> pa.Table:
    schema = SCHEMAS["workout_metrics"]
    columns: dict[str, list[object]] = {name: [] for name in schema.names}
    for _, graph in sorted(_latest(sources["performance_graphs"], stats, "workout_id").items()):
        rows.add_samples(columns, graph)
    arrays = [_array(columns[f.name], f.type, f.name in METRIC_SLUGS or f.name == "offset_s")
              for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def _array(values: list[object], kind: pa.DataType, numeric: bool) -> pa.Array[Any]:
    """One column in one conversion; per-value checks only if the raw data is odd."""
    try:
        return pa.array(values, type=kind)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
        if not numeric:
            raise
    clean = rows.integer if pa.types.is_integer(kind) else rows.num
    return pa.array([clean(v) for v in values], type=kind)


def build_classes(sources: Sources, stats: ReadStats) -> pa.Table:
    rides = _latest(sources["rides"], stats, "ride_id")
    return _table("classes", [rows.class_record(r) for _, r in sorted(rides.items())])


def build_instructors(sources: Sources, stats: ReadStats) -> pa.Table:
    found = _latest(sources["instructors"], stats, "id")
    return _table("instructors", [rows.instructor_record(r) for _, r in sorted(found.items())])


def build_class_types(sources: Sources, stats: ReadStats) -> pa.Table:
    """The class types of the newest metadata_mappings snapshot."""
    files = [f for f in sources["metadata_mappings"] if f.day is not None]
    if not files:
        return _table("class_types", [])
    newest = max(f.day for f in files if f.day is not None)
    records: dict[str, rows.Record] = {}
    for raw in files:
        if raw.day == newest:
            for row in read_rows(raw, stats):
                for record in rows.class_type_records(row, newest):
                    records[str(record["class_type_id"])] = record
    return _table("class_types", [records[k] for k in sorted(records)])


def build_deletions(sources: Sources, stats: ReadStats) -> pa.Table:
    found = _latest(sources["deletions"], stats, "workout_id")
    return _table("deletions", [rows.deletion_record(r) for _, r in sorted(found.items())])


TABLES: tuple[TableSpec, ...] = (
    TableSpec("workouts", ("workouts", "performance_graphs"), True, build_workouts),
    TableSpec("workout_metrics", ("performance_graphs",), True, build_workout_metrics),
    TableSpec("classes", ("rides",), True, build_classes),
    TableSpec("instructors", ("instructors",), False, build_instructors),
    TableSpec("class_types", ("metadata_mappings",), False, build_class_types),
    TableSpec("deletions", ("deletions",), False, build_deletions),
)
