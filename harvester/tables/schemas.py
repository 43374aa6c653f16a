"""One explicit Arrow schema per typed table, whatever the raw rows hold.

A column's type never depends on the data: a column that is null in every row
of a build is still ``double`` (or ``string``...), so every partition file of a
table has the same schema and readers need no options. Timestamps are UTC
microseconds (Parquet ``TIMESTAMP(isAdjustedToUTC, MICROS)``), which pandas,
polars, DuckDB, Spark and Trino all read natively.

Columns are named after the API's slugs so a reader can go back to the raw lake:
``workouts.total_output`` is the graph's summary ``total_output``,
``workouts.avg_cadence`` its average summary ``avg_cadence`` (else the cadence
metric's ``average_value``), ``workout_metrics.output`` the ``output`` metric's
``values``. Slugs without a column of their own land, as JSON, in
``other_summaries`` / ``other_metrics``: nothing the graph reports is dropped
silently.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

TS = pa.timestamp("us", tz="UTC")

# Per-sample metric slugs (PELOTON_API.md §5, by discipline, plus rowing's).
METRIC_SLUGS = (
    "output", "cadence", "resistance", "speed", "heart_rate", "pace", "incline", "altitude",
    "stroke_rate", "split_pace",
)
# The graph's ``summaries`` slugs with a column of their own in ``workouts``.
SUMMARY_SLUGS = ("total_output", "distance", "calories", "stroke_count", "elevation")
HR_ZONES = 5


def _workouts() -> pa.Schema:
    fields: list[pa.Field[Any]] = [
        pa.field("workout_id", pa.string(), nullable=False),
        pa.field("user_id", pa.string()),
        pa.field("created_at", TS),
        pa.field("start_time", TS),
        pa.field("end_time", TS),
        pa.field("timezone", pa.string()),
        pa.field("local_date", pa.date32()),  # created_at's date in the workout's time zone
        pa.field("local_created_at", pa.timestamp("us")),  # wall-clock time there, no zone
        pa.field("status", pa.string()),
        pa.field("workout_type", pa.string()),
        pa.field("fitness_discipline", pa.string()),
        pa.field("metrics_type", pa.string()),
        pa.field("device_type", pa.string()),
        pa.field("device_type_display_name", pa.string()),
        pa.field("platform", pa.string()),
        pa.field("name", pa.string()),
        pa.field("duration_s", pa.int64()),  # end_time - start_time
        pa.field("total_work_j", pa.float64()),
        pa.field("is_total_work_personal_record", pa.bool_()),
        pa.field("is_outdoor", pa.bool_()),
        pa.field("class_id", pa.string()),  # null for Just Ride / outdoor (the all-zero id)
        pa.field("class_title", pa.string()),
        pa.field("class_duration_s", pa.int64()),
        pa.field("class_type_ids", pa.list_(pa.string())),
        pa.field("instructor_id", pa.string()),
        pa.field("instructor_name", pa.string()),
        pa.field("leaderboard_rank", pa.int64()),
        pa.field("total_leaderboard_users", pa.int64()),
        pa.field("ftp", pa.float64()),
        pa.field("ftp_source", pa.string()),
        pa.field("ftp_workout_id", pa.string()),
        pa.field("average_effort_score", pa.float64()),
        pa.field("total_effort_points", pa.float64()),
        *(pa.field(f"hr_zone{z}_s", pa.int64()) for z in range(1, HR_ZONES + 1)),
        pa.field("has_graph", pa.bool_()),
        pa.field("graph_duration_s", pa.int64()),
        pa.field("samples", pa.int64()),
        *(pa.field(slug, pa.float64()) for slug in SUMMARY_SLUGS),
        pa.field("distance_unit", pa.string()),
        *(pa.field(f"avg_{slug}", pa.float64()) for slug in METRIC_SLUGS),
        *(pa.field(f"max_{slug}", pa.float64()) for slug in METRIC_SLUGS),
        pa.field("other_summaries", pa.string()),  # JSON {slug: value} of slugs without a column
        pa.field("harvested_at", TS),
    ]
    return pa.schema(fields)


def _workout_metrics() -> pa.Schema:
    fields: list[pa.Field[Any]] = [
        pa.field("workout_id", pa.string(), nullable=False),
        pa.field("user_id", pa.string()),
        pa.field("created_at", TS),  # the workout's: filter samples by time without a join
        pa.field("offset_s", pa.int32()),  # seconds_since_pedaling_start
        *(pa.field(slug, pa.float64()) for slug in METRIC_SLUGS),
        pa.field("other_metrics", pa.string()),  # JSON {slug: value} of slugs without a column
    ]
    return pa.schema(fields)


def _classes() -> pa.Schema:
    fields: list[pa.Field[Any]] = [
        pa.field("class_id", pa.string(), nullable=False),
        pa.field("title", pa.string()),
        pa.field("description", pa.string()),
        pa.field("instructor_id", pa.string()),
        pa.field("fitness_discipline", pa.string()),
        pa.field("duration_s", pa.int64()),
        pa.field("length_s", pa.int64()),
        pa.field("original_air_time", TS),
        pa.field("difficulty_estimate", pa.float64()),
        pa.field("difficulty_rating_avg", pa.float64()),
        pa.field("overall_rating_avg", pa.float64()),
        pa.field("total_workouts", pa.int64()),
        pa.field("class_type_ids", pa.list_(pa.string())),
        pa.field("language", pa.string()),
        pa.field("content_format", pa.string()),
        pa.field("is_explicit", pa.bool_()),
        pa.field("is_fixed_distance", pa.bool_()),
        pa.field("distance", pa.float64()),
        pa.field("distance_unit", pa.string()),
        pa.field("songs", pa.int64()),  # playlist length
        pa.field("harvested_at", TS),
    ]
    return pa.schema(fields)


def _instructors() -> pa.Schema:
    fields: list[pa.Field[Any]] = [
        pa.field("instructor_id", pa.string(), nullable=False),
        pa.field("name", pa.string()),
        pa.field("first_name", pa.string()),
        pa.field("last_name", pa.string()),
        pa.field("username", pa.string()),
        pa.field("user_id", pa.string()),
        pa.field("coach_type", pa.string()),
        pa.field("fitness_disciplines", pa.list_(pa.string())),
        pa.field("list_order", pa.int64()),
        pa.field("is_visible", pa.bool_()),
        pa.field("image_url", pa.string()),
        pa.field("harvested_at", TS),
    ]
    return pa.schema(fields)


def _class_types() -> pa.Schema:
    fields: list[pa.Field[Any]] = [
        pa.field("class_type_id", pa.string(), nullable=False),
        pa.field("name", pa.string()),
        pa.field("display_name", pa.string()),
        pa.field("fitness_discipline", pa.string()),
        pa.field("is_active", pa.bool_()),
        pa.field("list_order", pa.int64()),
        pa.field("snapshot_date", pa.date32()),  # the metadata_mappings day it comes from
    ]
    return pa.schema(fields)


def _deletions() -> pa.Schema:
    fields: list[pa.Field[Any]] = [
        pa.field("workout_id", pa.string(), nullable=False),
        pa.field("user_id", pa.string()),
        pa.field("created_at", TS),
        pa.field("detected_at", TS),
    ]
    return pa.schema(fields)


SCHEMAS: dict[str, pa.Schema] = {
    "workouts": _workouts(),
    "workout_metrics": _workout_metrics(),
    "classes": _classes(),
    "instructors": _instructors(),
    "class_types": _class_types(),
    "deletions": _deletions(),
}
