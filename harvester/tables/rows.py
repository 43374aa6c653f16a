"""Raw lake rows -> flat records of the typed tables (pure functions, no I/O).

The raw rows are the API's JSON as returned, so every field is read defensively:
a value of an unexpected type becomes null rather than an error (the raw lake
keeps the original; the API has changed types under clients before).
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson

from harvester.tables.schemas import HR_ZONES, METRIC_SLUGS, SUMMARY_SLUGS

Row = dict[str, object]
Record = dict[str, object]
NULL_RIDE_ID = "0" * 32  # Just Ride / outdoor: no class behind the workout
_US = 1_000_000
_EPOCH_DAY = date(1970, 1, 1)
_MAX_EPOCH_S = 253_402_300_799  # 9999-12-31T23:59:59Z


# -- defensive accessors --------------------------------------------------------


def num(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def integer(value: object) -> int | None:
    number = num(value)
    return int(number) if number is not None and abs(number) < 2**63 else None


def text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def flag(value: object) -> bool | None:
    return value if isinstance(value, bool) else None


def obj(value: object) -> Row:
    return value if isinstance(value, dict) else {}


def texts(value: object) -> list[str] | None:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else None


def epoch_us(value: object) -> int | None:
    """Epoch seconds -> epoch microseconds, or None when not a plausible instant."""
    seconds = num(value)
    if seconds is None or not 0 <= seconds <= _MAX_EPOCH_S:
        return None
    return round(seconds * _US)


def iso_us(value: object) -> int | None:
    """An ISO-8601 stamp (``...Z`` or with an offset) -> epoch microseconds."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    delta = parsed - datetime(1970, 1, 1, tzinfo=UTC)
    return delta // timedelta(microseconds=1)


@lru_cache(maxsize=256)
def _zone(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


def local_wall_clock(row: Row) -> datetime | None:
    """``created_at`` as wall-clock time in the workout's ``timezone`` (naive).

    ``timezone`` is an IANA name or ``Etc/GMT±N`` (POSIX sign, zoneinfo knows it).
    Without a usable zone, ``device_time_created_at`` (local time written as if
    UTC) says the same thing.
    """
    created = num(row.get("created_at"))
    name = row.get("timezone")
    zone = _zone(name) if isinstance(name, str) and name else None
    if created is not None and zone is not None and 0 <= created <= _MAX_EPOCH_S:
        return datetime.fromtimestamp(created, zone).replace(tzinfo=None)
    device = num(row.get("device_time_created_at"))
    if device is not None and 0 <= device <= _MAX_EPOCH_S:
        return datetime.fromtimestamp(device, UTC).replace(tzinfo=None)
    return None


# -- workouts --------------------------------------------------------------------


def workout_record(workout: Row, graph: Row | None) -> Record:
    """One ``workouts`` row from a workout (detail) row and its graph row, if any."""
    ride = obj(workout.get("ride"))
    ride_id = text(ride.get("id"))
    instructor = obj(ride.get("instructor"))
    ftp = obj(workout.get("ftp_info"))
    start, end = integer(workout.get("start_time")), integer(workout.get("end_time"))
    wall = local_wall_clock(workout)
    record: Record = {
        "workout_id": text(workout.get("id")),
        "user_id": text(workout.get("user_id")),
        "created_at": epoch_us(workout.get("created_at")),
        "start_time": epoch_us(start),
        "end_time": epoch_us(end),
        "timezone": text(workout.get("timezone")),
        "local_date": (wall.date() - _EPOCH_DAY).days if wall else None,
        "local_created_at": _naive_us(wall) if wall else None,
        "duration_s": end - start if start is not None and end is not None else None,
        "total_work_j": num(workout.get("total_work")),
        "class_id": None if ride_id == NULL_RIDE_ID else ride_id,
        "class_title": text(ride.get("title")),
        "class_duration_s": integer(ride.get("duration")),
        "class_type_ids": texts(ride.get("class_type_ids")),
        "instructor_id": text(ride.get("instructor_id")) or text(instructor.get("id")),
        "instructor_name": text(instructor.get("name")),
        "leaderboard_rank": integer(workout.get("leaderboard_rank")),
        "total_leaderboard_users": integer(workout.get("total_leaderboard_users")),
        "ftp": num(ftp.get("ftp")),
        "ftp_source": text(ftp.get("ftp_source")),
        "ftp_workout_id": text(ftp.get("ftp_workout_id")),
        "average_effort_score": num(workout.get("average_effort_score")),
        "harvested_at": iso_us(workout.get("_harvested_at")),
    }
    for key in ("status", "workout_type", "fitness_discipline", "metrics_type", "device_type",
                "device_type_display_name", "platform", "name"):
        record[key] = text(workout.get(key))
    for key in ("is_total_work_personal_record", "is_outdoor"):
        record[key] = flag(workout.get(key))
    record.update(_effort(workout, graph))
    record.update(graph_summary(graph))
    return record


def _naive_us(wall: datetime) -> int:
    return (wall - datetime(1970, 1, 1)) // timedelta(microseconds=1)


def _effort(workout: Row, graph: Row | None) -> Record:
    """Effort points and heart-rate zone seconds: the detail's, else the list's or graph's."""
    effort = obj(workout.get("effort_zones")) or obj(obj(graph).get("effort_zones"))
    zones = obj(workout.get("total_heart_rate_zone_durations")) or obj(
        effort.get("heart_rate_zone_durations"))
    record: Record = {"total_effort_points": num(effort.get("total_effort_points"))}
    for z in range(1, HR_ZONES + 1):
        record[f"hr_zone{z}_s"] = integer(zones.get(f"heart_rate_z{z}_duration"))
    return record


def graph_summary(graph: Row | None) -> Record:
    """The graph's summaries, averages and per-metric maxima as ``workouts`` columns."""
    record: Record = {"has_graph": graph is not None}
    if graph is None:
        return record
    summaries = _by_slug(graph.get("summaries"))
    distance_unit = text(summaries.get("distance", {}).get("display_unit"))
    averages = _by_slug(graph.get("average_summaries"))
    metrics = _by_slug(graph.get("metrics"))
    offsets = graph.get("seconds_since_pedaling_start")
    record["graph_duration_s"] = integer(graph.get("duration"))
    record["samples"] = len(offsets) if isinstance(offsets, list) else None
    for slug in SUMMARY_SLUGS:
        record[slug] = num(summaries.pop(slug, {}).get("value"))
    record["distance_unit"] = distance_unit
    for slug in METRIC_SLUGS:
        metric = metrics.get(slug, {})
        average = averages.pop(f"avg_{slug}", None)
        record[f"avg_{slug}"] = num(average.get("value") if average else metric.get("average_value"))
        record[f"max_{slug}"] = num(metric.get("max_value"))
    other = {slug: item.get("value") for slug, item in (summaries | averages).items()}
    record["other_summaries"] = orjson.dumps(other).decode() if other else None
    return record


def _by_slug(items: object) -> dict[str, Row]:
    if not isinstance(items, list):
        return {}
    return {item["slug"]: item for item in items
            if isinstance(item, dict) and isinstance(item.get("slug"), str)}


# -- workout_metrics --------------------------------------------------------------


def add_samples(columns: dict[str, list[object]], graph: Row) -> None:
    """Append one graph's samples to ``columns`` (one list per workout_metrics column).

    ``values[i]`` lines up with ``seconds_since_pedaling_start[i]``; a series
    shorter than the offsets is padded with nulls, a longer one cut.
    """
    offsets = graph.get("seconds_since_pedaling_start")
    if not isinstance(offsets, list) or not offsets:
        return
    n = len(offsets)
    columns["workout_id"].extend([text(graph.get("workout_id"))] * n)
    columns["user_id"].extend([text(graph.get("user_id"))] * n)
    columns["created_at"].extend([epoch_us(graph.get("created_at"))] * n)
    columns["offset_s"].extend(offsets)
    others: dict[str, list[object]] = {}
    metrics = _by_slug(graph.get("metrics"))
    for slug, metric in metrics.items():
        values = metric.get("values")
        series: list[object] = values[:n] if isinstance(values, list) else []
        series = series + [None] * (n - len(series))
        if slug in columns:
            columns[slug].extend(series)
        else:
            others[slug] = series
    for slug in METRIC_SLUGS:
        if slug not in metrics:
            columns[slug].extend([None] * n)
    columns["other_metrics"].extend(_other_samples(others, n))


def _other_samples(others: dict[str, list[object]], n: int) -> list[object]:
    if not others:
        return [None] * n
    return [orjson.dumps({slug: series[i] for slug, series in others.items()}).decode()
            for i in range(n)]


# -- classes, instructors, class types, deletions ------------------------------------


def class_record(details: Row) -> Record:
    """One ``classes`` row from a rides row (``/api/ride/{id}/details`` + ``ride_id``)."""
    ride = obj(details.get("ride"))
    songs = obj(details.get("playlist")).get("songs")
    return {
        "class_id": text(details.get("ride_id")) or text(ride.get("id")),
        "title": text(ride.get("title")),
        "description": text(ride.get("description")),
        "instructor_id": text(ride.get("instructor_id")),
        "fitness_discipline": text(ride.get("fitness_discipline")),
        "duration_s": integer(ride.get("duration")),
        "length_s": integer(ride.get("length")),
        "original_air_time": epoch_us(ride.get("original_air_time")),
        "difficulty_estimate": num(ride.get("difficulty_estimate")),
        "difficulty_rating_avg": num(ride.get("difficulty_rating_avg")),
        "overall_rating_avg": num(ride.get("overall_rating_avg")),
        "total_workouts": integer(ride.get("total_workouts")),
        "class_type_ids": texts(ride.get("class_type_ids")),
        "language": text(ride.get("language")),
        "content_format": text(ride.get("content_format")),
        "is_explicit": flag(ride.get("is_explicit")),
        "is_fixed_distance": flag(ride.get("is_fixed_distance")),
        "distance": num(ride.get("distance")),
        "distance_unit": text(ride.get("distance_unit")),
        "songs": len(songs) if isinstance(songs, list) else None,
        "harvested_at": iso_us(details.get("_harvested_at")),
    }


def instructor_record(row: Row) -> Record:
    record: Record = {"instructor_id": text(row.get("id"))}
    for key in ("name", "first_name", "last_name", "username", "user_id", "coach_type",
                "image_url"):
        record[key] = text(row.get(key))
    record["fitness_disciplines"] = texts(row.get("fitness_disciplines"))
    record["list_order"] = integer(row.get("list_order"))
    record["is_visible"] = flag(row.get("is_visible"))
    record["harvested_at"] = iso_us(row.get("_harvested_at"))
    return record


def class_type_records(mappings: Row, day: str) -> list[Record]:
    """The ``class_types`` of one metadata_mappings snapshot."""
    items = mappings.get("class_types")
    snapshot = (date.fromisoformat(day) - _EPOCH_DAY).days
    records: list[Record] = []
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            continue
        records.append({
            "class_type_id": item["id"],
            "name": text(item.get("name")),
            "display_name": text(item.get("display_name")) or text(item.get("name")),
            "fitness_discipline": text(item.get("fitness_discipline")),
            "is_active": flag(item.get("is_active")),
            "list_order": integer(item.get("list_order")),
            "snapshot_date": snapshot,
        })
    return records


def deletion_record(row: Row) -> Record:
    return {
        "workout_id": text(row.get("workout_id")),
        "user_id": text(row.get("user_id")),
        "created_at": epoch_us(row.get("created_at")),
        "detected_at": iso_us(row.get("detected_at")) or epoch_us(row.get("detected_at")),
    }
