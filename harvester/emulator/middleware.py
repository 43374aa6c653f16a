"""Misbehaviour on the wire: counting, rate limiting, latency and injected faults."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

from harvester.emulator import hostile
from harvester.emulator.faults import retry_after_value
from harvester.emulator.state import STATE, EmulatorState

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(payload: object, status: int) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status, content_type="application/json")


EDGE_HTML = (
    "<html><head><title>{0}</title></head><body><center><h1>{0}</h1></center>"
    "<hr><center>cloudflare</center></body></html>"
)


def throttled(state: EmulatorState, wait: float) -> web.Response:
    style = state.settings.rate_limit_style
    value = retry_after_value(style, wait, time.time())
    if style == "cloudflare":
        return web.Response(status=429, text="error code: 1015", content_type="text/plain")
    response = json_response({"status": 429, "message": "Too Many Requests"}, 429)
    if value is not None:
        response.headers["Retry-After"] = value
    return response


async def faulty(request: web.Request, handler: Handler, kind: str) -> web.StreamResponse:
    """Answer a request the way the named fault would."""
    state = request.app[STATE]
    if kind == "500":
        return json_response({"status": 500, "message": "Internal Server Error"}, 500)
    if kind in ("502", "503"):
        title = "502 Bad Gateway" if kind == "502" else "503 Service Temporarily Unavailable"
        return web.Response(
            status=int(kind), text=EDGE_HTML.format(title), content_type="text/html"
        )
    if kind == "reset":
        if request.transport is not None:
            request.transport.abort()
        raise asyncio.CancelledError  # nothing can be written to an aborted connection
    if kind == "empty":
        return web.Response(status=200, body=b"", content_type="application/json")
    if kind == "slow":
        await asyncio.sleep(state.settings.slow_s)
        return await handler(request)
    response = await handler(request)  # "truncated": a real body cut short
    body = response.body if isinstance(response, web.Response) else None
    if not isinstance(body, bytes) or len(body) < 2:
        return response
    return web.Response(
        status=response.status, body=body[: len(body) // 2], content_type="application/json"
    )


@web.middleware
async def misbehave(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count, rate-limit, delay and break requests; admin routes pass untouched."""
    if request.path.startswith("/_emulator/"):
        return await handler(request)
    state = request.app[STATE]
    route = request.match_info.route
    name = route.name or "unknown"
    data = request.path.startswith("/api/")
    state.stats.begin(name, request.match_info.get("id"), time.monotonic())
    status = 0  # stays 0 for a reset connection: no status was ever sent
    try:
        response = await _answer(request, handler, state, data)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except Exception:
        status = 500  # what aiohttp answers for a handler bug
        raise
    finally:
        state.stats.end(status)


async def _answer(
    request: web.Request, handler: Handler, state: EmulatorState, data: bool
) -> web.StreamResponse:
    s = state.settings
    if state.bucket is not None:
        wait = state.bucket.take(time.monotonic())
        if wait > 0:
            return throttled(state, wait)
    if s.latency_ms or s.jitter_ms:
        await asyncio.sleep((s.latency_ms + s.jitter_ms * state.jitter.random()) / 1000)
    if data and hostile.applies(s.hostile, s.hostile_routes, request.match_info.route.name or ""):
        state.stats.faults[s.hostile] += 1
        return await hostile.answer(request, handler)
    kind = state.faults.draw(s.faults) if data else None
    if kind is None:
        return await handler(request)
    state.stats.faults[kind] += 1
    return await faulty(request, handler, kind)
