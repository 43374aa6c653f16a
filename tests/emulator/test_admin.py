"""/_emulator/*: stats shape, reset, clock; and the command-line entry point."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from typing import Any

import aiohttp

from harvester.emulator import Emulator, add_arguments, serve, settings_from_args
from tests.emulator.helpers import auth_headers, get_json


async def test_stats_count_endpoints_ids_and_statuses(
    emulator: Emulator, http: aiohttp.ClientSession
) -> None:
    """Stats name each endpoint, count per id and per status, and list arrivals on request."""
    h = await auth_headers(http, emulator)
    wid = emulator.account.workouts[0].id
    for _ in range(2):
        await get_json(http, f"{emulator.url}/api/workout/{wid}", h)
    await get_json(http, f"{emulator.url}/api/workout/{'f' * 32}", h)
    await get_json(http, f"{emulator.url}/api/me")
    status, stats = await get_json(http, f"{emulator.url}/_emulator/stats?arrivals=1")
    assert status == 200
    assert stats["requests"] == 5
    assert stats["by_endpoint"] == {"token": 1, "workout": 3, "me": 1}
    assert stats["by_id"]["workout"] == {wid: 2, "f" * 32: 1}
    assert stats["status"] == {"200": 3, "404": 1, "401": 1}
    assert stats["token_grants"] == {"password": 1, "refresh_token": 0, "authorization_code": 0}
    assert stats["peak_concurrency"] >= 1 and stats["throttled"] == 0 and stats["faults"] == {}
    assert len(stats["arrivals"]) == stats["requests"]
    _, plain = await get_json(http, f"{emulator.url}/_emulator/stats")
    assert "arrivals" not in plain


async def test_reset_clears_stats(emulator: Emulator, http: aiohttp.ClientSession) -> None:
    """POST /_emulator/reset zeroes every counter."""
    await get_json(http, f"{emulator.url}/api/instructor")
    async with http.post(f"{emulator.url}/_emulator/reset") as resp:
        assert resp.status == 200
    _, stats = await get_json(http, f"{emulator.url}/_emulator/stats")
    assert stats["requests"] == 0 and stats["by_endpoint"] == {}


async def test_clock_route_expires_tokens(emulator: Emulator, http: aiohttp.ClientSession) -> None:
    """POST /_emulator/clock?advance=S moves the token clock on."""
    h = await auth_headers(http, emulator)
    async with http.post(f"{emulator.url}/_emulator/clock?advance=200000") as resp:
        assert resp.status == 200
    assert (await get_json(http, f"{emulator.url}/api/me", h))[0] == 401


async def test_arguments_round_trip_with_defaults_in_help() -> None:
    """add_arguments + settings_from_args give settings, host and port; help shows defaults."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    ns = parser.parse_args(
        [
            "--port",
            "0",
            "--workouts",
            "9",
            "--quirks",
            "bad_id,null_numbers",
            "--faults",
            "flaky",
            "--legacy-login",
            "gone",
            "--in-progress",
        ]
    )
    settings, host, port = settings_from_args(ns)
    assert (host, port, settings.workouts, settings.faults) == ("127.0.0.1", 0, 9, "flaky")
    assert settings.quirks == frozenset({"bad_id", "null_numbers"}) and settings.in_progress
    assert "demo@example.com" in parser.format_help() and "peloton-demo" in parser.format_help()


async def test_serve_prints_url_first_and_stops_on_cancel(capsys: Any) -> None:
    """serve() prints the base URL as its first stdout line and exits cleanly when cancelled."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    settings, host, port = settings_from_args(parser.parse_args(["--port", "0", "--workouts", "5"]))
    task = asyncio.create_task(serve(settings, host, port))
    for _ in range(200):
        await asyncio.sleep(0.01)
        if capsys.readouterr().out.startswith("http://127.0.0.1:"):
            break
    else:
        raise AssertionError("no URL printed")
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert task.done()
