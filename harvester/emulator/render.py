"""JSON for the account: workouts (list item and detail), profile, overview, pages."""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from typing import Any

from harvester.emulator.account import NO_CREATED_AT, NULL_NUMBERS, Account, Workout
from harvester.emulator.catalog import BY_SLUG, ZERO_ID, instructor_json, ride_json

EXTRA_FIELD = {"added_by": "emulator", "values": [1, None, "ü"]}
FTP_SOURCES = ("ftp_workout_source", "ftp_manual_source", "ftp_estimated_source", None)
FREE_NAMES = {"cycling": "JUST RIDE", "running": "JUST RUN", "walking": "JUST WALK"}
ZONE_KEYS = tuple(f"heart_rate_z{i}_duration" for i in range(1, 6))


def _zones(rng: random.Random, seconds: int) -> dict[str, int]:
    cuts = sorted(rng.randint(0, seconds) for _ in range(4))
    edges = [0, *cuts, seconds]
    return {k: edges[i + 1] - edges[i] for i, k in enumerate(ZONE_KEYS)}


def synthetic_ride(w: Workout) -> dict[str, Any]:
    """The small stand-in ride of a workout that was not a class (id all zeros)."""
    label = FREE_NAMES.get(w.discipline, "JUST WORKOUT")
    if w.kind == "outdoor":
        label = f"OUTDOOR {w.discipline.upper()}"
    minutes = max(1, round(w.seconds / 60))
    return {
        "id": ZERO_ID,
        "title": f"{minutes} min {label.title()}",
        "instructor": {"name": label, "image_url": None},
        "duration": w.seconds,
        "fitness_discipline": w.discipline,
        "is_archived": False,
        "image_url": None,
        "has_pedaling_metrics": w.discipline == "cycling",
    }


def embedded_ride(w: Workout, with_instructor: bool) -> dict[str, Any]:
    if w.ride is None:
        return synthetic_ride(w)
    return ride_json(w.ride, with_instructor)


def workout_item(
    account: Account, w: Workout, joins: frozenset[str], extra_field: bool
) -> dict[str, Any]:
    """A workout as the list shows it (PELOTON_API.md §4)."""
    rng = random.Random(w.id)
    d = BY_SLUG[w.discipline]
    zone_name, offset = w.zone
    nulls = bool(w.flags & NULL_NUMBERS)
    pedals = d.metrics_type in ("cycling", "caesar") and w.discipline in (
        "cycling",
        "bike_bootcamp",
        "caesar",
        "caesar_bootcamp",
    )
    watts = rng.uniform(90, 220) if pedals else 0.0
    progress = w.end_time is None
    seconds = w.seconds
    if progress:  # numbers of an unfinished workout keep changing
        seconds = max(1, min(w.seconds, int(time.time()) - w.start_time))
    free = w.kind in ("free", "outdoor")
    item: dict[str, Any] = {
        "id": w.id,
        "user_id": account.user_id,
        "created_at": w.created_at,
        "start_time": w.start_time,
        "end_time": w.end_time,
        "created": w.created_at,
        "device_time_created_at": w.created_at + offset,
        "timezone": zone_name,
        "status": w.status,
        "workout_type": "freestyle" if free else "class",
        "fitness_discipline": w.discipline,
        "metrics_type": d.metrics_type,
        "device_type": d.device_type if w.kind != "outdoor" else "iPhone",
        "platform": d.platform if w.kind != "outdoor" else "iOS_app",
        "name": f"{d.display} Workout",
        "title": None,
        "peloton_id": None if w.ride is None or w.ride.gym else f"{w.ride.id[16:]}{w.ride.id[:16]}",
        "total_work": None if nulls else round(watts * seconds, 2),
        "is_total_work_personal_record": rng.random() < 0.03,
        "has_pedaling_metrics": pedals,
        "has_leaderboard_metrics": pedals and not free,
        "is_outdoor": w.kind == "outdoor",
        "strava_id": None,
        "fitbit_id": None,
        "service_id": None,
        "effort_zones": None
        if nulls
        else {
            "total_effort_points": round(rng.uniform(2, 60), 1),
            "heart_rate_zone_durations": _zones(rng, seconds),
        },
        "total_video_watch_time_seconds": None if w.ride is None else seconds,
        "total_music_audio_play_seconds": None,
        "v2_total_video_watch_time_seconds": None if w.ride is None else seconds,
        "is_skip_intro_available": False,
    }
    if w.flags & NO_CREATED_AT:
        del item["created_at"]
    if "ride" in joins:
        item["ride"] = embedded_ride(w, "ride.instructor" in joins)
    if extra_field:
        item["future_field"] = EXTRA_FIELD
    return item


def workout_detail(account: Account, w: Workout, extra_field: bool) -> dict[str, Any]:
    """The detail: list item plus §4's extra keys, minus three list-only keys."""
    item = workout_item(account, w, frozenset({"ride", "ride.instructor"}), extra_field)
    for key in ("effort_zones", "is_outdoor", "service_id"):
        del item[key]
    rng = random.Random(w.id + "/detail")
    d = BY_SLUG[w.discipline]
    ranked = item["has_leaderboard_metrics"] and w.end_time is not None
    users = rng.randint(500, 60000)
    item.update(
        achievement_templates=[
            {
                "id": f"{rng.getrandbits(128):032x}",
                "name": "Best Output",
                "slug": "best_output",
                "image_url": None,
                "description": "A new personal record.",
            }
        ]
        if item["is_total_work_personal_record"]
        else [],
        leaderboard_rank=rng.randint(1, users) if ranked else None,
        total_leaderboard_users=users if ranked else 0,
        ftp_info={
            "ftp": rng.randint(120, 260),
            "ftp_source": rng.choice(FTP_SOURCES),
            "ftp_workout_id": f"{rng.getrandbits(128):032x}",
        },
        device_type_display_name={
            "home_bike_v1": "Peloton Bike",
            "home_tread_v1": "Peloton Tread",
            "home_row_v1": "Peloton Row",
        }.get(item["device_type"], item["device_type"]),
        total_heart_rate_zone_durations=None if w.flags & NULL_NUMBERS else _zones(rng, w.seconds),
        average_effort_score=None if d.metrics_type != "cycling" else round(rng.uniform(1, 9), 2),
    )
    return item


def page_envelope(
    account: Account,
    page: int,
    limit: int,
    joins: frozenset[str],
    extra_field: bool,
    summary: dict[str, int],
) -> dict[str, Any]:
    """One page of the workout list in the §3 envelope."""
    total = account.total
    chunk = account.workouts[page * limit : (page + 1) * limit]
    data = [workout_item(account, w, joins, extra_field) for w in chunk]
    page_count = math.ceil(total / limit)
    has_next = (page + 1) * limit < total
    last = chunk[-1] if chunk else None
    zones = dict.fromkeys(ZONE_KEYS, 0)
    zones["heart_rate_z1_duration"] = total * 191
    zones["heart_rate_z2_duration"] = total * 412
    zones["heart_rate_z3_duration"] = total * 389
    zones["heart_rate_z4_duration"] = total * 127
    zones["heart_rate_z5_duration"] = total * 23
    return {
        "data": data,
        "limit": limit,
        "page": page,
        "total": total,
        "count": len(data),
        "page_count": page_count,
        "show_previous": page > 0,
        "show_next": has_next,
        "sort_by": "-created_at,-pk",
        "next": {"workout_id": last.id, "created_at": last.created_at}
        if has_next and last
        else None,
        "summary": summary,
        "aggregate_stats": [],
        "total_heart_rate_zone_durations": zones,
    }


def month_summary(account: Account) -> dict[str, int]:
    counts = Counter(time.strftime("%Y-%m", time.gmtime(w.created_at)) for w in account.workouts)
    return dict(sorted(counts.items(), reverse=True))


def workout_counts(account: Account) -> list[dict[str, Any]]:
    counts = Counter(w.discipline for w in account.workouts)
    return [
        {
            "name": BY_SLUG[s].display,
            "slug": s,
            "count": n,
            "icon_url": f"https://s3.amazonaws.com/static-cdn.pelotoncycle.com/workout-count-icons/{s}.png",
        }
        for s, n in sorted(counts.items())
    ]


def public_profile(account: Account) -> dict[str, Any]:
    """``/api/user/{id}``: what any signed-in member may see of the account."""
    pedaling = sum(1 for w in account.workouts if w.discipline in ("cycling", "bike_bootcamp"))
    return {
        "id": account.user_id,
        "username": account.username.split("@")[0],
        "image_url": None,
        "location": "Zürich, CH",
        "is_private": False,
        "is_profile_private": False,
        "total_workouts": account.total,
        "total_pedaling_metric_workouts": pedaling,
        "total_non_pedaling_metric_workouts": account.total - pedaling,
        "total_followers": 42,
        "total_following": 17,
        "created_at": account.member_since,
        "workout_counts": workout_counts(account),
        "authed_user_follows": False,
        "category": "",
    }


def me(account: Account) -> dict[str, Any]:
    out = public_profile(account)
    out.update(
        email=account.username if "@" in account.username else f"{account.username}@example.com",
        first_name="Demo",
        last_name="Rider",
        name="Demo Rider",
        birthday=None,
        gender=None,
        height=None,
        weight=None,
        is_provisional=False,
        has_active_digital_subscription=True,
        has_active_device_subscription=True,
        cycling_ftp=190,
        cycling_ftp_source="ftp_workout_source",
        default_max_heart_rate=185,
        estimated_cycling_ftp=195,
        v1_referrals_made=0,
        obfuscated_email="d***@example.com",
    )
    return out


def overview(account: Account) -> dict[str, Any]:
    ws = account.workouts
    return {
        "id": account.user_id,
        "workout_counts": {"total_workouts": account.total, "workouts": workout_counts(account)},
        "personal_records": [
            {
                "slug": "cycling",
                "name": "Cycling",
                "records": [
                    {
                        "name": "20 min",
                        "slug": "20_min",
                        "value": 212,
                        "raw_value": 212.4,
                        "unit": "kj",
                        "unit_slug": "kj",
                        "workout_id": ws[-1].id if ws else None,
                        "workout_date": ws[-1].created_at if ws else None,
                    }
                ],
            },
        ],
        "streaks": {
            "current_weekly": 3,
            "best_weekly": 21,
            "current_daily": 1,
            "start_date_of_current_weekly": None,
        },
        "achievements": [
            {
                "id": "5" * 32,
                "name": "Century",
                "slug": "century",
                "count": account.total // 100,
                "image_url": None,
            }
        ],
    }


def instructor_page(account: Account, page: int, limit: int) -> dict[str, Any]:
    rows = account.instructors
    chunk = rows[page * limit : (page + 1) * limit]
    return {
        "data": [instructor_json(i) for i in chunk],
        "limit": limit,
        "page": page,
        "total": len(rows),
        "count": len(chunk),
        "page_count": math.ceil(len(rows) / limit),
        "show_previous": page > 0,
        "show_next": (page + 1) * limit < len(rows),
        "sort_by": "list_order",
    }
