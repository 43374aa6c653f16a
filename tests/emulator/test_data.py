"""Data endpoints: shapes, paging and 404s as PELOTON_API.md §2-§7 describe them."""

from __future__ import annotations

import math

import aiohttp

from harvester.emulator import Emulator
from harvester.emulator.catalog import ZERO_ID
from tests.emulator.helpers import auth_headers, get_json


async def test_me_total_matches_list_total(emulator: Emulator, http: aiohttp.ClientSession) -> None:
    """/api/me total_workouts equals the list envelope's total."""
    h = await auth_headers(http, emulator)
    _, me = await get_json(http, f"{emulator.url}/api/me", h)
    _, page = await get_json(http, f"{emulator.url}/api/user/{me['id']}/workouts", h)
    assert me["total_workouts"] == page["total"] == 60
    assert me["id"] == emulator.account.user_id


async def test_list_pages_cover_all_workouts_newest_first(
    emulator: Emulator, http: aiohttp.ClientSession
) -> None:
    """Paging at a fixed limit yields every workout once, newest first, with a partial last page."""
    h = await auth_headers(http, emulator)
    uid = emulator.account.user_id
    seen: list[dict[str, object]] = []
    for page in range(3):
        url = f"{emulator.url}/api/user/{uid}/workouts?limit=25&page={page}&sort_by=-created"
        status, body = await get_json(http, url, h)
        assert status == 200
        assert body["page_count"] == math.ceil(60 / 25) == 3
        assert body["count"] == len(body["data"]) == (10 if page == 2 else 25)
        assert body["show_previous"] is (page > 0)
        assert body["show_next"] is (page < 2)
        assert body["sort_by"] == "-created_at,-pk"
        seen.extend(body["data"])
    ids = [w["id"] for w in seen]
    assert len(set(ids)) == 60
    created = [w["created_at"] for w in seen]
    assert created == sorted(created, reverse=True)


async def test_page_past_end_is_empty(emulator: Emulator, http: aiohttp.ClientSession) -> None:
    """A page past the end answers 200 with data [] and the true total."""
    h = await auth_headers(http, emulator)
    url = f"{emulator.url}/api/user/{emulator.account.user_id}/workouts?limit=50&page=7"
    status, body = await get_json(http, url, h)
    assert status == 200
    assert body["data"] == [] and body["count"] == 0 and body["total"] == 60
    assert body["show_next"] is False and body["next"] is None


async def test_limit_is_capped_at_100_and_defaults_to_20(
    make_emulator: object, http: aiohttp.ClientSession
) -> None:
    """limit=500 serves 100 items; no limit serves 20."""
    emu = await make_emulator(workouts=150)  # type: ignore[operator]
    h = await auth_headers(http, emu)
    base = f"{emu.url}/api/user/{emu.account.user_id}/workouts"
    _, big = await get_json(http, f"{base}?limit=500", h)
    _, default = await get_json(http, base, h)
    assert big["limit"] == 100 and len(big["data"]) == 100 and big["page_count"] == 2
    assert default["limit"] == 20 and len(default["data"]) == 20


async def test_joins_embed_ride_and_instructor(
    emulator: Emulator, http: aiohttp.ClientSession
) -> None:
    """joins=ride,ride.instructor embeds the ride and its instructor; no joins, no ride."""
    h = await auth_headers(http, emulator)
    base = f"{emulator.url}/api/user/{emulator.account.user_id}/workouts?limit=100"
    _, joined = await get_json(http, f"{base}&joins=ride,ride.instructor", h)
    _, bare = await get_json(http, base, h)
    assert all("ride" not in w for w in bare["data"])
    classes = [w for w in joined["data"] if w["ride"]["id"] != ZERO_ID]
    assert classes and all(
        w["ride"]["instructor"]["id"] == w["ride"]["instructor_id"] for w in classes
    )


async def test_workout_detail_adds_and_drops_keys(
    emulator: Emulator, http: aiohttp.ClientSession
) -> None:
    """The detail is the list item plus §4's extra keys, minus three list-only keys."""
    h = await auth_headers(http, emulator)
    base = f"{emulator.url}/api/user/{emulator.account.user_id}/workouts?joins=ride,ride.instructor"
    _, page = await get_json(http, base, h)
    item = page["data"][0]
    status, detail = await get_json(http, f"{emulator.url}/api/workout/{item['id']}", h)
    assert status == 200
    extra = {
        "achievement_templates",
        "leaderboard_rank",
        "total_leaderboard_users",
        "ftp_info",
        "device_type_display_name",
        "total_heart_rate_zone_durations",
        "average_effort_score",
    }
    dropped = {"effort_zones", "is_outdoor", "service_id"}
    assert set(detail) == (set(item) | extra) - dropped
    assert detail["ftp_info"]["ftp_source"] in (
        "ftp_workout_source",
        "ftp_manual_source",
        "ftp_estimated_source",
        None,
    )


async def test_unknown_and_malformed_ids_answer_404(
    emulator: Emulator, http: aiohttp.ClientSession
) -> None:
    """Unknown or malformed ids get the documented 404 bodies."""
    h = await auth_headers(http, emulator)
    cases = {
        "/api/workout/" + "f" * 32: "Workout not found",
        "/api/workout/not-an-id/performance_graph": "Workout not found",
        "/api/ride/" + "e" * 32: "Ride not found",
        f"/api/ride/{ZERO_ID}/details": "Ride not found",
        "/api/instructor/xyz": "Instructor not found",
    }
    for path, message in cases.items():
        status, body = await get_json(http, emulator.url + path, h)
        assert status == 404, path
        assert body["status"] == 404 and body["message"] == message
        assert isinstance(body["error_code"], int)
