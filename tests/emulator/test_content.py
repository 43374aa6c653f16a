"""Content: graphs, rides, instructors, profile, time zones and determinism by seed."""

from __future__ import annotations

import re
from typing import Any

import aiohttp

from harvester.emulator import Emulator
from harvester.emulator.catalog import ZERO_ID
from tests.emulator.helpers import auth_headers, get_json

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
SLUGS = {
    "cycling": ["output", "cadence", "resistance", "speed", "heart_rate"],
    "running": ["pace", "speed", "incline", "altitude", "heart_rate"],
    "caesar": ["output", "stroke_rate", "split_pace", "heart_rate"],
    "strength": ["heart_rate"],
}


async def test_graphs_align_and_use_discipline_slugs(
    make_emulator: Any, http: aiohttp.ClientSession
) -> None:
    """Every metric lines up with seconds_since_pedaling_start; slugs follow §5 per discipline."""
    emu = await make_emulator(workouts=300)
    h = await auth_headers(http, emu)
    checked: set[str] = set()
    nulls = late = 0
    for w in emu.account.workouts:
        url = f"{emu.url}/api/workout/{w.id}/performance_graph?every_n=5"
        status, g = await get_json(http, url, h)
        assert status == 200
        seconds = g["seconds_since_pedaling_start"]
        assert all(len(m["values"]) == len(seconds) for m in g["metrics"])
        assert seconds == sorted(seconds) and seconds[-1] <= g["duration"]
        assert len(seconds) <= g["duration"] // 5
        late += seconds[0] > 5
        nulls += any(v is None for m in g["metrics"] for v in m["values"])
        if w.discipline in SLUGS and w.kind == "class":
            assert [m["slug"] for m in g["metrics"]] == SLUGS[w.discipline]
            checked.add(w.discipline)
    assert checked == set(SLUGS) and late and nulls


async def test_outdoor_gps_only_with_web_platform(
    make_emulator: Any, http: aiohttp.ClientSession
) -> None:
    """Outdoor workouts carry location_data only when Peloton-Platform: web is sent."""
    emu = await make_emulator(workouts=400)
    h = await auth_headers(http, emu)
    outdoor = next(w for w in emu.account.workouts if w.kind == "outdoor")
    url = f"{emu.url}/api/workout/{outdoor.id}/performance_graph?every_n=10"
    _, with_web = await get_json(http, url, h)
    bare = {"Authorization": h["Authorization"]}
    _, without = await get_json(http, url, bare)
    coords = with_web["location_data"][0]["coordinates"]
    assert coords and {"latitude", "longitude", "seconds_offset_from_start"} <= set(coords[0])
    assert without["location_data"] == []


async def test_non_class_and_gym_rides_have_no_details(
    make_emulator: Any, http: aiohttp.ClientSession
) -> None:
    """Just-ride workouts carry the all-zeros ride; gym rides are UUIDs; both /details 404."""
    emu = await make_emulator(workouts=400)
    h = await auth_headers(http, emu)
    free = next(w for w in emu.account.workouts if w.kind == "free")
    gym = next(w for w in emu.account.workouts if w.kind == "gym")
    _, free_detail = await get_json(http, f"{emu.url}/api/workout/{free.id}", h)
    assert free_detail["ride"]["id"] == ZERO_ID and free_detail["peloton_id"] is None
    assert "instructor_id" not in free_detail["ride"]
    assert free_detail["ride"]["instructor"]["name"].startswith("JUST")
    _, gym_detail = await get_json(http, f"{emu.url}/api/workout/{gym.id}", h)
    assert UUID.match(gym_detail["ride"]["id"])
    for rid in (ZERO_ID, gym_detail["ride"]["id"]):
        status, body = await get_json(http, f"{emu.url}/api/ride/{rid}/details")
        assert (status, body["message"]) == (404, "Ride not found")


async def test_ride_details_and_distance_classes(
    make_emulator: Any, http: aiohttp.ClientSession
) -> None:
    """Ride details carry §6's keys, anonymously; distance classes have duration null."""
    emu = await make_emulator(workouts=500)
    rides = list(emu.account.rides.values())
    ride = rides[0]
    status, body = await get_json(http, f"{emu.url}/api/ride/{ride.id}/details")
    assert status == 200
    assert {
        "ride",
        "class_types",
        "playlist",
        "averages",
        "segments",
        "instructor_cues",
        "target_metrics_data",
        "excluded_platforms",
        "is_ftp_test",
        "events",
        "related_rides",
    } <= set(body)
    status, plain = await get_json(http, f"{emu.url}/api/ride/{ride.id}")
    assert status == 200 and plain["id"] == ride.id
    distance = next(r for r in rides if r.duration is None)
    _, d = await get_json(http, f"{emu.url}/api/ride/{distance.id}")
    assert d["duration"] is None and d["is_fixed_distance"] is True
    assert d["distance_unit"] == "metric" and d["distance"] > 0


async def test_retakes_share_rides(make_emulator: Any) -> None:
    """Many workouts share one class ride (retakes)."""
    emu = await make_emulator(workouts=300)
    ride_ids = [w.ride.id for w in emu.account.workouts if w.kind == "class" and w.ride]
    assert len(set(ride_ids)) < len(ride_ids)


async def test_instructors_and_mappings(emulator: Emulator, http: aiohttp.ClientSession) -> None:
    """About 60 instructors page in the workout envelope; each and the mappings read anonymously."""
    _, page0 = await get_json(http, f"{emulator.url}/api/instructor?limit=50&page=0")
    _, page1 = await get_json(http, f"{emulator.url}/api/instructor?limit=50&page=1")
    assert page0["total"] == 60 and page0["page_count"] == 2 and len(page1["data"]) == 10
    one = page1["data"][0]
    status, body = await get_json(http, f"{emulator.url}/api/instructor/{one['id']}")
    assert status == 200 and body == one and body["coach_type"] == "peloton_coach"
    _, mappings = await get_json(http, f"{emulator.url}/api/ride/metadata_mappings")
    assert {"instructors", "class_types", "device_type_display_names"} <= set(mappings)


async def test_overview_needs_web_platform(emulator: Emulator, http: aiohttp.ClientSession) -> None:
    """Overview answers with Peloton-Platform: web and 403 without it (inferred)."""
    h = await auth_headers(http, emulator)
    url = f"{emulator.url}/api/user/{emulator.account.user_id}/overview?version=1"
    status, body = await get_json(http, url, h)
    assert status == 200 and {
        "workout_counts",
        "personal_records",
        "streaks",
        "achievements",
    } <= set(body)
    status, _ = await get_json(http, url, {"Authorization": h["Authorization"]})
    assert status == 403


async def test_public_profile_and_other_users(
    emulator: Emulator, http: aiohttp.ClientSession
) -> None:
    """/api/user/{own id} is the profile; other users' ids answer 404."""
    h = await auth_headers(http, emulator)
    status, body = await get_json(http, f"{emulator.url}/api/user/{emulator.account.user_id}", h)
    assert status == 200 and body["total_workouts"] == 60
    other = "a" * 32
    for path in (f"/api/user/{other}", f"/api/user/{other}/workouts"):
        assert (await get_json(http, emulator.url + path, h))[0] == 404


async def test_time_zones_are_consistent(make_emulator: Any) -> None:
    """device_time_created_at = created_at + zone offset; Etc/GMT+N means UTC-N."""
    emu = await make_emulator(workouts=500)
    zones = {w.zone for w in emu.account.workouts}
    assert len(zones) > 3
    for name, offset in zones:
        if name.startswith("Etc/GMT"):
            assert offset == -int(name[7:]) * 3600
    near_midnight = [
        w
        for w in emu.account.workouts
        if min(w.created_at % 86400, 86400 - w.created_at % 86400) < 900
    ]
    assert len(near_midnight) >= 20


async def test_same_seed_same_bytes(make_emulator: Any, http: aiohttp.ClientSession) -> None:
    """Two emulators with one seed serve byte-identical data; another seed differs."""
    emus = [await make_emulator(seed=s) for s in (5, 5, 6)]
    bodies = []
    for emu in emus:
        h = await auth_headers(http, emu)
        w = emu.account.workouts[7]
        parts = []
        for path in (
            f"/api/user/{emu.account.user_id}/workouts?joins=ride,ride.instructor",
            f"/api/workout/{w.id}",
            f"/api/workout/{w.id}/performance_graph",
            "/api/instructor",
            "/api/ride/metadata_mappings",
        ):
            async with http.get(emu.url + path, headers=h) as resp:
                parts.append(await resp.read())
        bodies.append(parts)
    assert bodies[0] == bodies[1] and bodies[0] != bodies[2]
