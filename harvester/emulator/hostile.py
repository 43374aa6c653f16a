"""Hostile servers on demand: answers built to hang or exhaust a client, for its tests.

One mode at a time (``EmulatorSettings.hostile``), switched at runtime:

    listing modes (GET /api/user/{id}/workouts only)
      repeat_page       pages past the first repeat page 1 forever, always with a next page
      ignore_page       ?page= is ignored: every request gets page 0 (a proxy dropping it)
      lying_total       ``total`` states a quarter of the real count
      lying_page_count  ``page_count`` says 1 whatever the total
    body modes (the routes in ``hostile_routes``; none named: every /api/ route)
      endless_body      200, chunked, a JSON array that never ends
      drip              the real answer, one byte every ``drip_s`` seconds
      gzip_bomb         ``Content-Encoding: gzip``, about 1 MB on the wire, 1 GiB inflated
      duplicate_keys    the real object answer with one key twice, ``"duplicated": 1``
                        first and ``"duplicated": 2`` last (JSON parsers disagree:
                        orjson keeps the last, DuckDB and pyarrow refuse the line)

Each is what a broken proxy, a misconfigured base URL or a malicious endpoint can
send; none of them is what Peloton does.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import zlib
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

from harvester.emulator.state import STATE

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

LISTING_ROUTE = "workouts"
LISTING_MODES = frozenset({"repeat_page", "ignore_page", "lying_total", "lying_page_count"})
BOMB_MEMBER_BYTES = 16 * 1024 * 1024  # one gzip member of spaces, inflated
BOMB_MEMBERS = 64  # 64 x 16 MiB = 1 GiB inflated, about 1 MB on the wire
ENDLESS_ITEM = b'{"id": "' + b"f" * 32 + b'", "pad": "' + b"x" * 960 + b'"}, '
ENDLESS_CHUNK = ENDLESS_ITEM * 64  # about 64 KB per write


def applies(mode: str, routes: frozenset[str], route: str) -> bool:
    """Whether the hostile ``mode`` answers a request to the route named ``route``."""
    if mode == "none":
        return False
    if mode in LISTING_MODES:
        return route == LISTING_ROUTE
    return not routes or route in routes


async def answer(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer ``request`` the way the current hostile mode does."""
    settings = request.app[STATE].settings
    mode = settings.hostile
    if mode in LISTING_MODES:
        return await _listing(request, handler, mode)
    if mode == "endless_body":
        return await _endless(request)
    if mode == "drip":
        return await _drip(request, handler, settings.drip_s)
    if mode == "gzip_bomb":
        return _bomb()
    if mode == "duplicate_keys":
        return await _duplicate_keys(request, handler)
    raise ValueError(f"unknown hostile mode {mode!r}")


async def _listing(request: web.Request, handler: Handler, mode: str) -> web.StreamResponse:
    asked = _page(request)
    served = {"ignore_page": 0, "repeat_page": min(asked, 1)}.get(mode, asked)
    if served != asked:
        request = request.clone(rel_url=request.rel_url.update_query(page=str(served)))
    response = await handler(request)
    body = response.body if isinstance(response, web.Response) else None
    if response.status != 200 or not isinstance(body, bytes):
        return response
    envelope = orjson.loads(body)
    if mode == "repeat_page" and asked >= 1:
        envelope.update(page=asked, page_count=asked + 2, show_next=True)
    elif mode == "lying_total":
        envelope["total"] = envelope["total"] // 4
    elif mode == "lying_page_count":
        envelope["page_count"] = 1
    return web.Response(body=orjson.dumps(envelope), content_type="application/json")


def _page(request: web.Request) -> int:
    try:
        return max(0, int(request.query.get("page", "0")))
    except ValueError:
        return 0


async def _endless(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request)
    with contextlib.suppress(ConnectionError):  # the client hung up: what this is waiting for
        await response.write(b'{"data": [')
        while True:
            await response.write(ENDLESS_CHUNK)
    return response


async def _drip(request: web.Request, handler: Handler, every_s: float) -> web.StreamResponse:
    real = await handler(request)
    body = real.body if isinstance(real, web.Response) else None
    if not isinstance(body, bytes):
        return real
    response = web.StreamResponse(status=real.status, headers={"Content-Type": "application/json"})
    await response.prepare(request)
    with contextlib.suppress(ConnectionError):  # the client gave up first, as it should
        for i in range(len(body)):
            await response.write(body[i : i + 1])
            await asyncio.sleep(every_s)
        await response.write_eof()
    return response


async def _duplicate_keys(request: web.Request, handler: Handler) -> web.StreamResponse:
    real = await handler(request)
    body = real.body if isinstance(real, web.Response) else None
    if real.status != 200 or not isinstance(body, bytes) or not body.startswith(b"{") or body == b"{}":
        return real
    twice = b'{"duplicated":1,' + body[1:-1] + b',"duplicated":2}'
    return web.Response(body=twice, content_type="application/json")


def _bomb() -> web.Response:
    return web.Response(body=bomb_body(), headers={"Content-Type": "application/json",
                                                   "Content-Encoding": "gzip"})


@functools.cache
def bomb_body() -> bytes:
    """``{"data": [`` + 1 GiB of spaces + ``]}``, gzipped as concatenated members.

    A gzip stream may hold several members one after another (RFC 1952), and every
    client decodes them as one body. Compressing 16 MiB once and repeating the
    member costs a tenth of a second instead of seconds for the whole GiB.
    """
    middle = _gzip(b" " * BOMB_MEMBER_BYTES)
    return b"".join((_gzip(b'{"data": ['), middle * BOMB_MEMBERS, _gzip(b"]}")))


def _gzip(data: bytes) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: a gzip header and trailer
    return packer.compress(data) + packer.flush()
