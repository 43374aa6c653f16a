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
    if "password_clients" in changes and isinstance(changes["password_clients"], list):
        changes["password_clients"] = tuple(changes["password_clients"])
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


PAGE_FAULTS = ("duplicate", "damaged")


async def delete_workouts(request: web.Request) -> web.StreamResponse:
    """Delete workouts at the source: ``?id=X`` (repeatable) or ``?oldest=N``."""
    state = request.app[STATE]
    ids = request.query.getall("id", [])
    try:
        oldest = int(request.query.get("oldest", "0"))
    except ValueError:
        return _json({"error": "oldest must be an integer"}, 400)
    if oldest > 0:
        ids = [*ids, *(w.id for w in state.account.workouts[-oldest:])]
    return _json({"deleted": state.delete_workouts(ids)})


async def move_workout(request: web.Request) -> web.StreamResponse:
    """Change a workout's created_at at the source: ``?id=X&created_at=T`` or ``&shift=S``."""
    state = request.app[STATE]
    workout = state.account.by_id.get(request.query.get("id", ""))
    if workout is None:
        return _json({"error": "unknown workout id"}, 404)
    try:
        if "created_at" in request.query:
            created_at = int(request.query["created_at"])
        else:
            created_at = workout.created_at + int(request.query.get("shift", "0"))
    except ValueError:
        return _json({"error": "created_at and shift must be integers"}, 400)
    state.move_workout(workout.id, created_at)
    return _json({"id": workout.id, "created_at": created_at})


async def page_fault(request: web.Request) -> web.StreamResponse:
    """Serve the next ``times`` requests of list ``page`` broken: ``kind`` duplicate|damaged."""
    state = request.app[STATE]
    kind = request.query.get("kind", "")
    if kind not in PAGE_FAULTS:
        return _json({"error": f"kind must be one of {', '.join(PAGE_FAULTS)}"}, 400)
    try:
        page, times = int(request.query.get("page", "0")), int(request.query.get("times", "1"))
    except ValueError:
        return _json({"error": "page and times must be integers"}, 400)
    state.page_faults.setdefault(max(0, page), []).extend([kind] * max(0, times))
    return _json({"ok": True})


async def truth(request: web.Request) -> web.StreamResponse:
    """The source's workouts as the harvester should mirror them (for chaos checks)."""
    account = request.app[STATE].account
    return _json({
        "user_id": account.user_id,
        "workouts": [
            {"id": w.id, "created_at": w.created_at, "status": w.status,
             "ride_id": w.ride.id if w.ride is not None else None,
             "class": w.ride is not None and w.ride.id in account.rides}
            for w in account.workouts
        ],
    })


async def revoke(request: web.Request) -> web.StreamResponse:
    """End every sign-in, as a password change does: refresh tokens stop working."""
    state = request.app[STATE]
    revoked = state.tokens.revoke_all()  # not counted as reuse revocations in the stats
    return _json({"revoked": revoked})


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/_emulator/stats", get_stats)
    r.add_post("/_emulator/reset", reset)
    r.add_post("/_emulator/workouts", add_workouts)
    r.add_post("/_emulator/complete", complete)
    r.add_post("/_emulator/settings", settings)
    r.add_post("/_emulator/clock", clock)
    r.add_post("/_emulator/revoke", revoke)
    r.add_post("/_emulator/delete", delete_workouts)
    r.add_post("/_emulator/move", move_workout)
    r.add_post("/_emulator/page_fault", page_fault)
    r.add_get("/_emulator/truth", truth)
