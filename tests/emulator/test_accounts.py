"""Several members (--accounts N): distinct logins and histories, shared instructors and classes."""

from __future__ import annotations

from typing import Any

import aiohttp

from harvester.emulator import Emulator
from harvester.emulator.settings import CLIENT_ID, DEFAULT_PASSWORD, DEFAULT_USERNAME, EmulatorSettings
from tests.conftest import MakeEmulator
from tests.emulator.helpers import get_json


async def login(http: aiohttp.ClientSession, emulator: Emulator, username: str, password: str) -> Any:
    body = {"grant_type": "password", "client_id": CLIENT_ID, "username": username, "password": password}
    async with http.post(f"{emulator.url}/oauth/token", json=body) as resp:
        return resp.status, await resp.json()


def bearer(grant: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {grant['access_token']}", "Peloton-Platform": "web"}


def test_logins_follow_the_documented_pattern() -> None:
    """Account 1 is --username/--password; account K is userK@example.com / passK."""
    assert EmulatorSettings(accounts=3).logins() == [
        (DEFAULT_USERNAME, DEFAULT_PASSWORD), ("user2@example.com", "pass2"), ("user3@example.com", "pass3")]


async def test_each_member_signs_in_to_their_own_history(
    make_emulator: MakeEmulator, http: aiohttp.ClientSession
) -> None:
    """Three logins give three user ids; each lists its own workouts and gets 404 for another's list."""
    emulator = await make_emulator(workouts=40, accounts=3)
    headers, ids = [], []
    for username, password in emulator.state.settings.logins():
        status, grant = await login(http, emulator, username, password)
        assert status == 200
        headers.append(bearer(grant))
        status, me = await get_json(http, f"{emulator.url}/api/me", headers[-1])
        ids.append(me["id"])
    assert len(set(ids)) == 3
    assert [a.user_id for a in emulator.state.accounts] == ids
    workouts: list[set[str]] = []
    for user_id, header in zip(ids, headers, strict=True):
        status, page = await get_json(http, f"{emulator.url}/api/user/{user_id}/workouts?limit=100", header)
        assert status == 200 and page["total"] == 40
        workouts.append({w["id"] for w in page["data"]})
    assert not workouts[0] & workouts[1] and not workouts[1] & workouts[2]
    status, _ = await get_json(http, f"{emulator.url}/api/user/{ids[0]}/workouts", headers[1])
    assert status == 404
    status, _ = await login(http, emulator, "user2@example.com", "pass3")
    assert status == 403


async def test_members_share_instructors_and_classes(
    make_emulator: MakeEmulator, http: aiohttp.ClientSession
) -> None:
    """The instructor list is the same for all; a class one member took is served, and some are taken by two."""
    emulator = await make_emulator(workouts=150, accounts=2)
    first, second = emulator.state.accounts
    assert first.instructors is second.instructors
    rides = [{w.ride.id for w in a.workouts if w.ride is not None and w.kind == "class"}
             for a in (first, second)]
    assert rides[0] & rides[1], "no class taken by both members"
    status, grant = await login(http, emulator, "user2@example.com", "pass2")
    only_second = next(iter(rides[1] - rides[0]))
    status, details = await get_json(http, f"{emulator.url}/api/ride/{only_second}/details", bearer(grant))
    assert status == 200 and details["ride"]["id"] == only_second
