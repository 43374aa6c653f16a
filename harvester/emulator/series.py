"""Time series and class structure: performance graphs (§5) and ride details (§6).

Values come from one shared noise table indexed arithmetically, not from a
random call per sample: a graph must render in well under a millisecond.
"""

from __future__ import annotations

import random
from typing import Any

from harvester.emulator.account import Account, Workout
from harvester.emulator.catalog import BY_SLUG, CLASS_TYPES, Ride, class_type_id, ride_json

_NOISE_RNG = random.Random(20240607)
NOISE = [_NOISE_RNG.uniform(-1.0, 1.0) for _ in range(256)]

# slug -> (display name, unit, base, amplitude, decimals)
METRICS: dict[str, tuple[str, str, float, float, int]] = {
    "output": ("Output", "watts", 150.0, 60.0, 0),
    "cadence": ("Cadence", "rpm", 85.0, 15.0, 0),
    "resistance": ("Resistance", "%", 42.0, 12.0, 0),
    "speed": ("Speed", "mph", 17.0, 4.0, 1),
    "heart_rate": ("Heart Rate", "bpm", 140.0, 25.0, 0),
    "pace": ("Pace", "min/mi", 10.5, 1.5, 2),
    "incline": ("Incline", "%", 2.0, 2.0, 1),
    "altitude": ("Elevation", "ft", 120.0, 40.0, 1),
    "stroke_rate": ("Stroke Rate", "spm", 24.0, 4.0, 0),
    "split_pace": ("500m Split Pace", "/500m", 130.0, 12.0, 0),
}
SLUGS_BY_TYPE = {
    "cycling": ("output", "cadence", "resistance", "speed", "heart_rate"),
    "running": ("pace", "speed", "incline", "altitude", "heart_rate"),
    "caesar": ("output", "stroke_rate", "split_pace", "heart_rate"),
}
PEDALING = {"cycling", "bike_bootcamp", "running", "walking", "caesar", "caesar_bootcamp"}


def metric_slugs(w: Workout) -> tuple[str, ...]:
    if w.discipline not in PEDALING:
        return ("heart_rate",)
    return SLUGS_BY_TYPE[BY_SLUG[w.discipline].metrics_type]


def segment_list(seconds: int, metrics_type: str, seed: str) -> list[dict[str, Any]]:
    """Warmup, main, cooldown covering [0, seconds)."""
    rng = random.Random(seed)
    warm = min(seconds // 4, rng.randint(120, 600))
    cool = min(seconds // 5, rng.randint(60, 300))
    parts = (
        ("Warmup", "warmup", 0, warm, 3.5),
        ("Main", "main", warm, seconds - warm - cool, 7.2),
        ("Cool Down", "cooldown", seconds - cool, cool, 2.5),
    )
    return [
        {
            "id": f"{rng.getrandbits(128):032x}",
            "name": name,
            "start_time_offset": start,
            "length": length,
            "icon_url": f"https://s3.amazonaws.com/static/{icon}.png",
            "icon_slug": icon,
            "icon_name": icon,
            "intensity_in_mets": mets,
            "metrics_type": metrics_type,
        }
        for name, icon, start, length, mets in parts
        if length > 0
    ]


def _series(slug: str, positions: list[int], phase: int, step: int) -> list[float | int | None]:
    _, _, base, amp, decimals = METRICS[slug]
    noise = NOISE
    if decimals == 0:
        values: list[float | int | None] = [
            int(base + amp * noise[(i * step + phase) & 255]) for i in positions
        ]
    else:
        values = [round(base + amp * noise[(i * step + phase) & 255], decimals) for i in positions]
    if slug == "heart_rate":  # the strap drops out now and then
        for k, i in enumerate(positions):
            if noise[(i * 7 + phase) & 255] > 0.97:
                values[k] = None
    return values


def _sample_positions(n: int, rng: random.Random) -> list[int]:
    """Sample indexes 0..n-1 with a late start and a gap or two."""
    late = rng.randint(0, min(3, max(0, n - 1)))
    keep = list(range(late, n))
    if n > 40 and rng.random() < 0.6:
        at = rng.randrange(len(keep) // 4, len(keep) // 2)
        del keep[at : at + rng.randint(1, 6)]
    return keep


def performance_graph(account: Account, w: Workout, every_n: int, web: bool) -> dict[str, Any]:
    rng = random.Random(f"{w.id}/graph")
    seconds = w.seconds
    mtype = BY_SLUG[w.discipline].metrics_type
    positions = _sample_positions(seconds // every_n, rng)
    offsets = [(i + 1) * every_n for i in positions]  # never past `duration`
    phase, step = rng.randrange(256), rng.choice((1, 3, 5, 7))
    metrics: list[dict[str, Any]] = []
    for slug in metric_slugs(w):
        name, unit, _base, _amp, _ = METRICS[slug]
        values = _series(slug, positions, phase + len(metrics) * 31, step)
        present = [v for v in values if v is not None]
        metric: dict[str, Any] = {
            "display_name": name,
            "display_unit": unit,
            "max_value": max(present) if present else None,
            "average_value": round(sum(present) / len(present), 1) if present else None,
            "values": values,
            "slug": slug,
        }
        if slug == "heart_rate":
            metric["missing_data_duration"] = (len(values) - len(present)) * every_n
            metric["zones"] = [
                {
                    "display_name": f"Zone {z}",
                    "slug": f"zone{z}",
                    "range": f"{100 + 17 * z}-{116 + 17 * z} bpm",
                    "duration": seconds // 5,
                    "max_value": 116 + 17 * z,
                    "min_value": 100 + 17 * z,
                }
                for z in range(1, 6)
            ]
        metrics.append(metric)
    avg_output = metrics[0]["average_value"] if metrics[0]["slug"] == "output" else None
    total_kj = round((avg_output or 0) * seconds / 1000)
    return {
        "duration": seconds,
        "is_class_plan_shown": w.ride is not None,
        "segment_list": segment_list(seconds, mtype, f"{w.id}/segments"),
        "seconds_since_pedaling_start": offsets,
        "average_summaries": [
            {
                "display_name": "Avg Output",
                "display_unit": "watts",
                "value": avg_output,
                "slug": "avg_output",
            },
        ],
        "summaries": [
            {
                "display_name": "Total Output",
                "display_unit": "kj",
                "value": total_kj,
                "slug": "total_output",
            },
            {
                "display_name": "Distance",
                "display_unit": "mi",
                "value": round(seconds / 190, 2),
                "slug": "distance",
            },
            {
                "display_name": "Calories",
                "display_unit": "kcal",
                "value": round(seconds / 3.4),
                "slug": "calories",
            },
        ],
        "metrics": metrics,
        "has_apple_watch_metrics": False,
        "location_data": _location(w, offsets, rng) if web and w.kind == "outdoor" else [],
        "splits_data": _splits(seconds) if mtype == "running" else {},
        "target_metrics_performance_data": {"target_metrics": [], "time_in_metric": []},
        "effort_zones": {
            "total_effort_points": round(seconds / 180, 1),
            "heart_rate_zone_durations": {"heart_rate_z1_duration": seconds // 6},
        },
    }


def _location(w: Workout, offsets: list[int], rng: random.Random) -> list[dict[str, Any]]:
    lat, lon = 37.19 + rng.uniform(-0.5, 0.5), -94.45 + rng.uniform(-0.5, 0.5)
    coords = [
        {
            "seconds_offset_from_start": s,
            "latitude": round(lat + s * 1e-5, 6),
            "longitude": round(lon + NOISE[s & 255] * 1e-3, 6),
            "accuracy": 12.6,
            "distance": round(s / 600, 3),
            "distance_display_unit": "mi",
        }
        for s in offsets
    ]
    return [{"segment_id": None, "is_gap": False, "coordinates": coords}]


def _splits(seconds: int) -> dict[str, Any]:
    miles = max(1, seconds // 600)
    return {
        "distance_marker_display_unit": "mi",
        "elevation_change_display_unit": "ft",
        "splits": [
            {"distance_marker": m, "seconds": 600, "elevation_change": None}
            for m in range(1, miles + 1)
        ],
    }


def ride_details(account: Account, ride: Ride) -> dict[str, Any]:
    """Class, playlist, segments, averages and cues (§6)."""
    rng = random.Random(f"{ride.id}/details")
    full = ride_json(ride, True)
    length = ride.duration or 1800
    mtype = BY_SLUG[ride.discipline].metrics_type
    segments = segment_list(length, mtype, f"{ride.id}/segments")
    for seg in segments:
        seg["subsegments_v2"] = [
            {
                "type": "cycling" if mtype == "cycling" else "floor",
                "offset": seg["start_time_offset"],
                "length": seg["length"],
                "display_name": seg["name"],
                "rounds": 1,
                "movements": [],
            }
        ]
    songs: list[dict[str, Any]] = [
        {
            "id": f"{rng.getrandbits(128):032x}",
            "title": f"Track {n}",
            "artists": [
                {"artist_id": f"{rng.getrandbits(128):032x}", "artist_name": "The Emulators"}
            ],
            "album": {"id": f"{rng.getrandbits(128):032x}", "name": "Loopback", "image_url": None},
            "start_time_offset": n * 210,
            "cue_time_offset": n * 210 + 60,
            "liked": False,
            "explicit_rating": 0,
        }
        for n in range(max(1, length // 210))
    ]
    return {
        "ride": full,
        "class_types": [
            {
                "id": class_type_id(ride.discipline, ride.class_type),
                "name": CLASS_TYPES[ride.discipline][ride.class_type],
            }
        ],
        "playlist": {
            "id": f"{rng.getrandbits(128):032x}",
            "ride_id": ride.id,
            "songs": songs,
            "top_artists": [songs[0]["artists"][0]],
            "top_albums": [songs[0]["album"]],
            "stream_id": None,
            "stream_url": None,
            "is_top_artists_shown": True,
            "is_playlist_shown": True,
            "is_in_class_music_shown": True,
        },
        "averages": {
            "average_total_work": round(rng.uniform(150e3, 450e3), 2),
            "average_distance": round(rng.uniform(5, 15), 2),
            "average_calories": round(rng.uniform(150, 600), 2),
            "average_avg_power": round(rng.uniform(100, 220), 2),
            "average_avg_speed": round(rng.uniform(14, 22), 2),
            "average_avg_cadence": round(rng.uniform(70, 95), 2),
            "average_avg_resistance": round(rng.uniform(30, 50), 2),
        },
        "segments": {
            "segment_list": segments,
            "segment_category_distribution": {
                s["icon_slug"]: round(s["length"] / length, 3) for s in segments
            },
            "segment_body_focus_distribution": {},
        },
        "instructor_cues": [
            {
                "offsets": {"start": s, "end": s + 59},
                "resistance_range": {"upper": 50, "lower": 35},
                "cadence_range": {"upper": 95, "lower": 80},
            }
            for s in range(60, length - 60, 240)
        ]
        if mtype == "cycling"
        else [],
        "target_metrics_data": {"target_metrics": [], "total_expected_output": {}},
        "excluded_platforms": [],
        "is_ftp_test": "FTP" in ride.title,
        "events": [],
        "related_rides": [],
        "disabled_leaderboard_filters": {},
        "sampled_top_tags": [],
    }
