"""/_emulator/*: observe and steer a running emulator (never rate-limited or faulted)."""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web

from harvester.emulator.settings import SettingsError
from harvester.emulator.state import STATE, EmulatorState


def _json(payload: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status, content_type="application/json")


def change_settings(state: EmulatorState, changes: dict[str, Any]) -> None:
    """Apply runtime knob changes; SettingsError names a bad or fixed knob."""
    for key in ("quirks", "hostile_routes"):  # JSON has lists, the settings hold sets
        if key in changes and isinstance(changes[key], list):
            changes[key] = frozenset(changes[key])
    state.apply(state.settings.updated(changes))


async def get_stats(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    arrivals = request.query.get("arrivals") in ("1", "true")
    return _json(state.stats.snapshot(arrivals))


async def reset(request: web.Request) -> web.StreamResponse:
    request.app[STATE].stats.reset(time.monotonic())
    return _json({"ok": True})


async def add_workouts(request: web.Request) -> web.StreamResponse:
    try:
        count = int(request.query.get("count", "1"))
    except ValueError:
        return _json({"error": "count must be an integer"}, 400)
    added = request.app[STATE].add_workouts(max(0, count))
    return _json({"ids": [w.id for w in added]})


async def complete(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    w = state.account.complete(state.now())
    return _json({"completed": w.id if w else None})


async def settings(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    try:
        changes = orjson.loads(await request.read())
        if not isinstance(changes, dict):
            raise SettingsError("body must be a JSON object")
        change_settings(state, changes)
    except (orjson.JSONDecodeError, SettingsError) as exc:
        return _json({"error": str(exc)}, 400)
    return _json({"ok": True})


async def clock(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    try:
        state.clock_offset += float(request.query.get("advance", "0"))
    except ValueError:
        return _json({"error": "advance must be a number of seconds"}, 400)
    return _json({"now": state.now()})


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/_emulator/stats", get_stats)
    r.add_post("/_emulator/reset", reset)
    r.add_post("/_emulator/workouts", add_workouts)
    r.add_post("/_emulator/complete", complete)
    r.add_post("/_emulator/settings", settings)
    r.add_post("/_emulator/clock", clock)
