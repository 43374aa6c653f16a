"""Auth: the OAuth token endpoint, legacy session login, and the 401 for everything else."""

from __future__ import annotations

import base64
from typing import Any

import aiohttp
import orjson

from harvester.emulator import Emulator
from harvester.emulator.settings import CLIENT_ID, DEFAULT_PASSWORD, DEFAULT_USERNAME
from tests.emulator.helpers import get_json, password_grant

NOT_LOGGED_IN = {
    "status": 401,
    "error_code": 3020,
    "subcode": None,
    "message": "Not logged in",
    "details": None,
}


def claims(jwt: str) -> dict[str, Any]:
    payload = jwt.split(".")[1]
    decoded: dict[str, Any] = orjson.loads(base64.urlsafe_b64decode(payload + "=" * 4))
    return decoded


async def test_password_grant_returns_jwt_and_refresh_token(
    emulator: Emulator, http: aiohttp.ClientSession
) -> None:
    """A password grant answers a JWT (sub = user id, exp = iat + ttl) and a v1. refresh token."""
    grant = await password_grant(http, emulator)
    assert grant["token_type"] == "Bearer" and grant["expires_in"] == 172800
    assert grant["refresh_token"].startswith("v1.") and grant["id_token"].count(".") == 2
    c = claims(grant["access_token"])
    assert c["sub"] == emulator.account.user_id and c["exp"] - c["iat"] == 172800


async def test_form_encoded_refresh_grant_rotates_the_refresh_token(
    emulator: Emulator, http: aiohttp.ClientSession
) -> None:
    """Form-encoded refresh works; each answers a new refresh token and the old one dies."""
    refresh = (await password_grant(http, emulator))["refresh_token"]
    seen = {refresh}
    for _ in range(3):
        form = {"grant_type": "refresh_token", "client_id": CLIENT_ID, "refresh_token": refresh}
        async with http.post(f"{emulator.url}/oauth/token", data=form) as resp:
            assert resp.status == 200
            refresh = (await resp.json())["refresh_token"]
        assert refresh not in seen
        seen.add(refresh)
    assert emulator.stats_snapshot()["token_grants"] == {
        "password": 1, "refresh_token": 3, "authorization_code": 0}


async def test_bad_grants_answer_403_invalid_grant(
    emulator: Emulator, http: aiohttp.ClientSession
) -> None:
    """Wrong password and unknown refresh token both answer 403 invalid_grant."""
    bad = {
        "grant_type": "password",
        "client_id": CLIENT_ID,
        "username": DEFAULT_USERNAME,
        "password": "nope",
    }
    async with http.post(f"{emulator.url}/oauth/token", json=bad) as resp:
        assert resp.status == 403
        assert await resp.json() == {
            "error": "invalid_grant",
            "error_description": "Wrong email or password.",
        }
    stale = {"grant_type": "refresh_token", "client_id": CLIENT_ID, "refresh_token": "v1.zzz"}
    async with http.post(f"{emulator.url}/oauth/token", json=stale) as resp:
        assert resp.status == 403
        assert (await resp.json())["error"] == "invalid_grant"


async def test_privileged_routes_need_auth(emulator: Emulator, http: aiohttp.ClientSession) -> None:
    """No credentials, a forged token or an unknown cookie all get the 3020 body."""
    url = f"{emulator.url}/api/me"
    forged = {"Authorization": "Bearer aaa.bbb.ccc"}
    cookie = {"Cookie": "peloton_session_id=deadbeef"}
    for headers in (None, forged, cookie):
        assert await get_json(http, url, headers) == (401, NOT_LOGGED_IN)


async def test_expired_token_is_refused(emulator: Emulator, http: aiohttp.ClientSession) -> None:
    """Once the emulator's clock passes exp, the bearer token gets 401."""
    grant = await password_grant(http, emulator)
    headers = {"Authorization": f"Bearer {grant['access_token']}"}
    assert (await get_json(http, f"{emulator.url}/api/me", headers))[0] == 200
    emulator.advance_clock(172800 + 1)
    assert await get_json(http, f"{emulator.url}/api/me", headers) == (401, NOT_LOGGED_IN)


async def test_short_token_ttl_is_honoured(make_emulator: Any, http: aiohttp.ClientSession) -> None:
    """token_ttl sets expires_in and exp."""
    emu = await make_emulator(token_ttl=30)
    grant = await password_grant(http, emu)
    assert grant["expires_in"] == 30
    emu.advance_clock(31)
    headers = {"Authorization": f"Bearer {grant['access_token']}"}
    assert (await get_json(http, f"{emu.url}/api/me", headers))[0] == 401


async def test_legacy_login_sets_a_session_cookie(
    emulator: Emulator, http: aiohttp.ClientSession
) -> None:
    """/auth/login answers session_id + user_id and the cookie authenticates data calls."""
    body = {"username_or_email": DEFAULT_USERNAME, "password": DEFAULT_PASSWORD}
    async with http.post(f"{emulator.url}/auth/login", json=body) as resp:
        assert resp.status == 200
        login = await resp.json()
        assert resp.cookies["peloton_session_id"].value == login["session_id"]
    assert login["user_id"] == emulator.account.user_id and login["pubsub_session"] == {}
    cookie = {"Cookie": f"peloton_session_id={login['session_id']}"}
    assert (await get_json(http, f"{emulator.url}/api/me", cookie))[0] == 200
    assert emulator.stats_snapshot()["logins"] == 1


async def test_legacy_login_wrong_password_is_3010(
    emulator: Emulator, http: aiohttp.ClientSession
) -> None:
    """Wrong credentials on /auth/login answer 401 error_code 3010."""
    body = {"username_or_email": DEFAULT_USERNAME, "password": "wrong"}
    async with http.post(f"{emulator.url}/auth/login", json=body) as resp:
        assert resp.status == 401
        assert (await resp.json())["error_code"] == 3010


async def test_legacy_login_gone_answers_403(
    make_emulator: Any, http: aiohttp.ClientSession
) -> None:
    """legacy_login=gone answers every login with the Nov-2025 403 body."""
    emu = await make_emulator(legacy_login="gone")
    body = {"username_or_email": DEFAULT_USERNAME, "password": DEFAULT_PASSWORD}
    async with http.post(f"{emu.url}/auth/login", json=body) as resp:
        assert resp.status == 403
        assert await resp.json() == {
            "status": 403,
            "message": "Access forbidden. Endpoint no longer accepting requests.",
        }


async def test_wrong_client_id_is_refused(emulator: Emulator, http: aiohttp.ClientSession) -> None:
    """Only the documented client_id may use the token endpoint."""
    body = {
        "grant_type": "password",
        "client_id": "other",
        "username": DEFAULT_USERNAME,
        "password": DEFAULT_PASSWORD,
    }
    async with http.post(f"{emulator.url}/oauth/token", json=body) as resp:
        assert resp.status == 401
