"""Primary keys and partitions of lake rows (SPEC "The lake"): pure functions, no I/O."""

from __future__ import annotations

import functools
import math
import re
from datetime import UTC, date, datetime

import orjson

from harvester.errors import LakeError

Row = dict[str, object]

DATASETS = ("workouts", "performance_graphs", "rides", "instructors", "profiles", "deletions",
            "metadata_mappings")
DEFAULT_RIDE_DATE = "1970-01-01"  # rides without an air time still get a real partition
_KEY_FIELDS = {"workouts": "id", "performance_graphs": "workout_id", "rides": "ride_id",
               "instructors": "id", "deletions": "workout_id"}
# A workout's created_at must be whole epoch seconds between these: a millisecond
# stamp or a float is a bad record (quarantined), never a partition in year 58000.
MIN_EPOCH_S = 946_684_800  # 2000-01-01
MAX_EPOCH_S = 4_102_444_800  # 2100-01-01
DAY_S = 86_400  # UTC has no leap seconds in epoch time: a day is always this long
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_HEX32 = re.compile(r"[0-9a-f]{32}")
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


# -- keys and partitions (pure) ------------------------------------------------


def primary_key(dataset: str, row: Row) -> str:
    """The row's primary key: profiles by ``user_id|run date``, metadata_mappings by run date."""
    if dataset == "profiles":
        return f"{_text(dataset, row, 'user_id')}|{_iso_day(row, '_harvested_at')}"
    if dataset == "metadata_mappings":
        return _iso_day(row, "_harvested_at")
    field = _KEY_FIELDS.get(dataset)
    if field is None:
        raise LakeError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
    return _text(dataset, row, field)


def partition_date(dataset: str, row: Row) -> str | None:
    """The UTC ``YYYY-MM-DD`` of the row's ``date=`` partition; None for instructors."""
    if dataset in ("workouts", "performance_graphs"):
        day = workout_day(row.get("created_at"))
        if day is None:
            key = primary_key(dataset, row)
            raise LakeError(f"{dataset} row {key} has no whole epoch-seconds created_at "
                            f"between 2000 and 2100")
        return day
    if dataset == "deletions":
        return _iso_day(row, "detected_at")
    if dataset == "rides":
        ride = row.get("ride")
        aired = ride.get("original_air_time") if isinstance(ride, dict) else None
        return utc_day(aired) or DEFAULT_RIDE_DATE
    if dataset in ("profiles", "metadata_mappings"):
        return _iso_day(row, "_harvested_at")
    if dataset == "instructors":
        return None
    raise LakeError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")


def workout_day(created_at: object) -> str | None:
    """The UTC day of a workout's ``created_at``: whole seconds in range, or None."""
    if type(created_at) is not int:  # a bool is an int but never a time
        return None
    if not MIN_EPOCH_S <= created_at < MAX_EPOCH_S:
        return None
    return _day_name(created_at // DAY_S)


@functools.lru_cache(maxsize=4096)  # a run asks for each day many times (keys, frontier, writer)
def _day_name(day: int) -> str:
    return date.fromordinal(_EPOCH_ORDINAL + day).isoformat()


def class_of(workout: Row) -> str | None:
    """The id of the class a workout row (the API's detail) names under ``ride``, as given."""
    ride = workout.get("ride")
    ride_id = ride.get("id") if isinstance(ride, dict) else None
    return ride_id if isinstance(ride_id, str) else None


def row_problem(dataset: str, row: Row) -> str | None:
    """Why the lake cannot hold ``row`` (no key, no partition, not JSON), or None."""
    try:
        primary_key(dataset, row)
        partition_date(dataset, row)
        orjson.dumps(row)
    except LakeError as exc:
        return str(exc)
    except (TypeError, orjson.JSONEncodeError) as exc:
        return f"{dataset} row cannot be written as JSON: {exc}"
    return None


def utc_day(epoch_s: object) -> str | None:
    """``YYYY-MM-DD`` in UTC of an epoch-seconds number, or None if it is not one."""
    if isinstance(epoch_s, bool) or not isinstance(epoch_s, int | float):
        return None
    if not math.isfinite(epoch_s):
        return None
    try:
        return datetime.fromtimestamp(epoch_s, UTC).date().isoformat()
    except (OverflowError, OSError, ValueError):
        return None


def _iso_day(row: Row, field: str) -> str:
    stamp = row.get(field)
    day = stamp[:10] if isinstance(stamp, str) else ""
    try:
        if _DAY.fullmatch(day):
            date.fromisoformat(day)
            return day
    except ValueError:
        pass
    raise LakeError(f"row has no ISO-8601 {field} (got {type(stamp).__name__})")


def _text(dataset: str, row: Row, field: str) -> str:
    value = row.get(field)
    if not isinstance(value, str) or not value:
        raise LakeError(f"{dataset} row has no string {field!r} (got {type(value).__name__})")
    return value


def check_user_id(user_id: str) -> str:
    """The id, if it is 32 lower-case hex digits (safe in a path); else LakeError."""
    if not isinstance(user_id, str) or not _HEX32.fullmatch(user_id):
        raise LakeError(f"user id {user_id!r:.60} is not 32 lower-case hex digits")
    return user_id


