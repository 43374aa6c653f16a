"""Helpers for the emulator's own tests: logged-in headers and JSON fetches."""

from __future__ import annotations

from typing import Any

import aiohttp

from harvester.emulator import Emulator
from harvester.emulator.settings import CLIENT_ID, DEFAULT_PASSWORD, DEFAULT_USERNAME


async def password_grant(http: aiohttp.ClientSession, emulator: Emulator) -> dict[str, Any]:
    body = {
        "grant_type": "password",
        "client_id": CLIENT_ID,
        "scope": "offline_access openid",
        "username": DEFAULT_USERNAME,
        "password": DEFAULT_PASSWORD,
    }
    async with http.post(f"{emulator.url}/oauth/token", json=body) as resp:
        assert resp.status == 200
        grant: dict[str, Any] = await resp.json()
        return grant


async def auth_headers(http: aiohttp.ClientSession, emulator: Emulator) -> dict[str, str]:
    grant = await password_grant(http, emulator)
    return {"Authorization": f"Bearer {grant['access_token']}", "Peloton-Platform": "web"}


async def get_json(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    async with http.get(url, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)
