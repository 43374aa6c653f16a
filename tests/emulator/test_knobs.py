"""Knobs: rate limiting styles, latency, fault profiles, arrivals, in-progress, quirks."""

from __future__ import annotations

from collections import Counter
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import orjson
import pytest

from harvester.emulator import Emulator, EmulatorSettings, SettingsError
from tests.emulator.helpers import auth_headers, get_json


async def test_cloudflare_style_429_is_plain_text_without_retry_after(
    make_emulator: Any, http: aiohttp.ClientSession
) -> None:
    """Over the rate, the default style answers 429 'error code: 1015' and no Retry-After."""
    emu = await make_emulator(rate_limit=1.0)
    url = f"{emu.url}/api/instructor"
    statuses = []
    for _ in range(3):
        async with http.get(url) as resp:
            statuses.append(resp.status)
            if resp.status == 429:
                assert await resp.text() == "error code: 1015"
                assert "Retry-After" not in resp.headers
                assert resp.content_type == "text/plain"
    assert statuses[0] == 200 and 429 in statuses
    assert emu.stats_snapshot()["throttled"] == statuses.count(429)


@pytest.mark.parametrize("style", ["retry-after", "http-date"])
async def test_retry_after_styles(
    make_emulator: Any, http: aiohttp.ClientSession, style: str
) -> None:
    """retry-after sends whole seconds; http-date sends an HTTP date; both with a JSON body."""
    emu = await make_emulator(rate_limit=0.5, rate_burst=1, rate_limit_style=style)
    async with http.get(f"{emu.url}/api/instructor") as resp:
        assert resp.status == 200
    async with http.get(f"{emu.url}/api/instructor") as resp:
        assert resp.status == 429
        value = resp.headers["Retry-After"]
        assert (await resp.json())["status"] == 429
    if style == "retry-after":
        assert int(value) >= 1
    else:
        assert parsedate_to_datetime(value).tzinfo is not None


async def test_admin_routes_are_never_throttled(
    make_emulator: Any, http: aiohttp.ClientSession
) -> None:
    """/_emulator/* ignores the rate limit and is not counted."""
    emu = await make_emulator(rate_limit=1.0)
    for _ in range(5):
        status, _ = await get_json(http, f"{emu.url}/_emulator/stats")
        assert status == 200
    assert emu.stats_snapshot()["requests"] == 0


async def test_latency_and_jitter_still_answer(
    make_emulator: Any, http: aiohttp.ClientSession
) -> None:
    """Latency and jitter delay but do not change answers."""
    emu = await make_emulator(latency_ms=2, jitter_ms=3)
    status, body = await get_json(http, f"{emu.url}/api/instructor?limit=5")
    assert status == 200 and len(body["data"]) == 5


async def _fault_census(emu: Emulator, auth: aiohttp.ClientSession, n: int) -> Counter[str]:
    """Sequential requests, tallied by what the client saw.

    aiohttp itself retries a GET once when the server drops the connection, so
    the client sees fewer resets than the server made.
    """
    h = await auth_headers(auth, emu)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        return await _census(emu, http, h, n)


async def _census(
    emu: Emulator, http: aiohttp.ClientSession, h: dict[str, str], n: int
) -> Counter[str]:
    seen: Counter[str] = Counter()
    wid = emu.account.workouts[0].id
    for _ in range(n):
        try:
            async with http.get(f"{emu.url}/api/workout/{wid}", headers=h) as resp:
                body = await resp.read()
                if resp.status != 200:
                    seen[str(resp.status)] += 1
                elif not body:
                    seen["empty"] += 1
                else:
                    try:
                        orjson.loads(body)
                        seen["ok"] += 1
                    except orjson.JSONDecodeError:
                        seen["truncated"] += 1
        except aiohttp.ClientError:
            seen["reset"] += 1
    return seen


async def test_hostile_profile_produces_every_fault(
    make_emulator: Any, http: aiohttp.ClientSession
) -> None:
    """hostile yields 5xx, resets, empty and truncated bodies and slow answers, ~20% in all."""
    emu = await make_emulator(faults="hostile", slow_s=0.01)
    seen = await _fault_census(emu, http, 400)
    faults = emu.stats_snapshot()["faults"]
    assert set(faults) == {"500", "502", "503", "reset", "empty", "truncated", "slow"}
    for kind in ("500", "502", "503", "reset", "empty", "truncated"):
        assert 1 <= seen[kind] <= faults[kind], kind
    assert 40 <= sum(faults.values()) <= 130


async def test_flaky_profile_is_mostly_fine(
    make_emulator: Any, http: aiohttp.ClientSession
) -> None:
    """flaky fails a few percent of data requests and never the token endpoint."""
    emu = await make_emulator(faults="flaky")
    seen = await _fault_census(emu, http, 300)
    assert 0 < 300 - seen["ok"] <= 40


async def test_faults_switch_off_at_runtime(
    make_emulator: Any, http: aiohttp.ClientSession
) -> None:
    """POST /_emulator/settings {faults: none} stops all faults."""
    emu = await make_emulator(faults="hostile", slow_s=0.01)
    async with http.post(f"{emu.url}/_emulator/settings", json={"faults": "none"}) as resp:
        assert resp.status == 200
    seen = await _fault_census(emu, http, 50)
    assert seen == Counter(ok=50)


async def test_settings_route_refuses_account_knobs(
    emulator: Emulator, http: aiohttp.ClientSession
) -> None:
    """Knobs that shape the account (workouts, seed) cannot change at runtime: 400."""
    async with http.post(f"{emulator.url}/_emulator/settings", json={"workouts": 5}) as resp:
        assert resp.status == 400
    with pytest.raises(SettingsError):
        EmulatorSettings(faults="chaotic")


async def test_arrivals_shift_pages(make_emulator: Any, http: aiohttp.ClientSession) -> None:
    """arrive_every=2: every second list request brings one newer workout; totals follow."""
    emu = await make_emulator(arrive_every=2)
    h = await auth_headers(http, emu)
    url = f"{emu.url}/api/user/{emu.account.user_id}/workouts?limit=10"
    _, first = await get_json(http, url, h)
    _, second = await get_json(http, url, h)
    assert first["total"] == 60 and second["total"] == 61
    assert second["data"][1]["id"] == first["data"][0]["id"]
    assert second["data"][0]["created_at"] > first["data"][0]["created_at"]
    _, me = await get_json(http, f"{emu.url}/api/me", h)
    assert me["total_workouts"] == 61


async def test_admin_adds_workouts_newest_first(
    emulator: Emulator, http: aiohttp.ClientSession
) -> None:
    """POST /_emulator/workouts?count=3 adds three newest workouts and returns their ids."""
    async with http.post(f"{emulator.url}/_emulator/workouts?count=3") as resp:
        ids = (await resp.json())["ids"]
    assert len(ids) == 3
    assert [w.id for w in emulator.account.workouts[:3]] == ids[::-1]


async def test_in_progress_workout_completes(
    make_emulator: Any, http: aiohttp.ClientSession
) -> None:
    """in_progress makes the newest IN_PROGRESS with end_time null; /complete finishes it."""
    emu = await make_emulator(in_progress=True)
    h = await auth_headers(http, emu)
    wid = emu.account.workouts[0].id
    _, before = await get_json(http, f"{emu.url}/api/workout/{wid}", h)
    assert before["status"] == "IN_PROGRESS" and before["end_time"] is None
    async with http.post(f"{emu.url}/_emulator/complete") as resp:
        assert (await resp.json())["completed"] == wid
    _, after = await get_json(http, f"{emu.url}/api/workout/{wid}", h)
    assert after["status"] == "COMPLETE" and after["end_time"] >= after["start_time"]


async def test_extra_field_appears_in_list_and_detail(
    make_emulator: Any, http: aiohttp.ClientSession
) -> None:
    """extra_field adds the undocumented future_field to list items and details."""
    emu = await make_emulator(extra_field=True)
    h = await auth_headers(http, emu)
    _, page = await get_json(http, f"{emu.url}/api/user/{emu.account.user_id}/workouts", h)
    _, detail = await get_json(http, f"{emu.url}/api/workout/{page['data'][0]['id']}", h)
    expected = {"added_by": "emulator", "values": [1, None, "ü"]}
    assert page["data"][0]["future_field"] == expected == detail["future_field"]


async def test_quirks(make_emulator: Any, http: aiohttp.ClientSession) -> None:
    """Quirks plant a bad id, a missing created_at, null numbers and an unknown discipline."""
    emu = await make_emulator(
        quirks=frozenset({"bad_id", "missing_created_at", "null_numbers", "unknown_enum"})
    )
    h = await auth_headers(http, emu)
    url = f"{emu.url}/api/user/{emu.account.user_id}/workouts?limit=100"
    _, page = await get_json(http, url, h)
    items = page["data"]
    assert sum(w["id"] == "../../etc/passwd" for w in items) == 1
    missing = [w for w in items if "created_at" not in w]
    assert len(missing) == 1
    _, detail = await get_json(http, f"{emu.url}/api/workout/{missing[0]['id']}", h)
    assert "created_at" not in detail
    assert any(w["total_work"] is None for w in items)
    odd = [w for w in items if w["fitness_discipline"] == "pilates_v2"]
    assert odd and all(w["status"] == "COMPLETE" for w in odd)
