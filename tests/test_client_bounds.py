"""HttpClient bounds against a hostile server: body cap (decompressed), total deadline, redirects."""

from __future__ import annotations

import asyncio
import gzip
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import orjson
import pytest
from aiohttp import web

from harvester.client import DEFAULT_MAX_REDIRECTS, HttpClient, RequestStats
from harvester.config import ApiConfig
from harvester.errors import (
    ApiError,
    MisbehavingServerError,
    ResponseTooLargeError,
    StalledResponseError,
    TransientApiError,
    UnexpectedResponseError,
)
from harvester.limiter import AdaptiveLimiter
from tests.test_client import RecordingSleep, raw_reply, serve

CAP = 4096


@asynccontextmanager
async def capped_client(max_attempts: int = 3, timeout_s: float = 5.0) -> AsyncIterator[HttpClient]:
    api = ApiConfig(timeout_s=timeout_s, max_attempts=max_attempts)
    async with aiohttp.ClientSession() as session:
        yield HttpClient(session, api, AdaptiveLimiter(1000.0), RequestStats(),
                         sleep=RecordingSleep(), rng=random.Random(1), max_body_bytes=CAP)


def padded(size: int) -> bytes:
    """A JSON object of exactly ``size`` bytes."""
    body = orjson.dumps({"pad": ""})
    return orjson.dumps({"pad": "x" * (size - len(body))})


async def test_a_body_at_the_cap_is_read_and_one_byte_more_is_refused_once() -> None:
    """The cap is inclusive; past it the answer is ResponseTooLargeError, not retried."""
    async with serve() as srv, capped_client() as http:
        srv.script("/at", raw_reply(200, padded(CAP)))
        srv.script("/over", raw_reply(200, padded(CAP + 1)))
        assert len((await http.request_json("GET", srv.url + "/at", endpoint="x"))["pad"]) > 0
        with pytest.raises(ResponseTooLargeError, match="larger than 0 MB"):
            await http.request_json("GET", srv.url + "/over", endpoint="x")
    assert srv.count("/over") == 1


async def test_the_cap_counts_decompressed_bytes() -> None:
    """A gzip body small on the wire but past the cap inflated is refused: it is never inflated whole."""
    wire = gzip.compress(padded(CAP * 50))
    assert len(wire) < CAP
    async with serve() as srv, capped_client() as http:
        srv.script("/bomb", raw_reply(200, wire, **{"Content-Encoding": "gzip"}))
        with pytest.raises(ResponseTooLargeError):
            await http.request_json("GET", srv.url + "/bomb", endpoint="x")


async def test_a_streamed_body_without_length_is_cut_at_the_cap() -> None:
    """A chunked body that never ends stops being read once past the cap."""
    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        while True:
            await response.write(b" " * 1024)

    async with serve() as srv, capped_client() as http:
        srv.routes["/endless"] = endless
        with pytest.raises(ResponseTooLargeError):
            await http.request_json("GET", srv.url + "/endless", endpoint="x")


async def test_an_oversized_error_answer_is_still_judged_by_its_status() -> None:
    """A 503 with a huge page is a 503: transient and retried, its body left unread."""
    async with serve() as srv, capped_client(max_attempts=2) as http:
        srv.script("/busy", raw_reply(503, b"<html>" + b"x" * CAP * 4))
        with pytest.raises(TransientApiError, match="HTTP 503"):
            await http.request_json("GET", srv.url + "/busy", endpoint="x")
    assert srv.count("/busy") == 2


async def test_a_dripping_body_ends_at_the_total_deadline_and_is_not_retried() -> None:
    """Bytes that keep arriving slowly do not extend an attempt; a stalled body is not retried."""
    async def drip(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        while True:
            await response.write(b" ")
            await asyncio.sleep(0.02)  # far quicker than any idle timeout would notice

    async with serve() as srv, capped_client(max_attempts=3, timeout_s=0.3) as http:
        srv.routes["/drip"] = drip
        with pytest.raises(StalledResponseError, match=r"answer still incomplete after 0\.3 s"):
            await http.request_json("GET", srv.url + "/drip", endpoint="x")
    assert srv.count("/drip") == 1
    assert StalledResponseError("x").exit_code == 75  # temporary: the next run tries again


async def test_a_dripping_error_answer_is_judged_by_its_status() -> None:
    """A 503 whose page drips is still a 503: transient, retried, its body left unread."""
    async def drip503(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=503, headers={"Content-Type": "text/html"})
        await response.prepare(request)
        while True:
            await response.write(b"<")
            await asyncio.sleep(0.02)

    async with serve() as srv, capped_client(max_attempts=2, timeout_s=0.3) as http:
        srv.routes["/drip503"] = drip503
        with pytest.raises(TransientApiError, match="HTTP 503"):
            await http.request_json("GET", srv.url + "/drip503", endpoint="x")
    assert srv.count("/drip503") == 2


async def test_no_answer_at_all_by_the_deadline_is_still_retried() -> None:
    """Headers that never come are a transient timeout, retried: only a stalled body is not."""
    async def silent(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(5)
        return raw_reply(200, b"{}")

    async with serve() as srv, capped_client(max_attempts=2, timeout_s=0.2) as http:
        srv.routes["/silent"] = silent
        with pytest.raises(TransientApiError, match=r"no complete answer within 0\.2 s"):
            await http.request_json("GET", srv.url + "/silent", endpoint="x")
    assert srv.count("/silent") == 2


async def test_followed_redirects_are_bounded() -> None:
    """A request that follows redirects stops after DEFAULT_MAX_REDIRECTS of a loop, permanently."""
    async def loop(request: web.Request) -> web.StreamResponse:
        return web.Response(status=302, headers={"Location": "/loop"})

    async with serve() as srv, capped_client() as http:
        srv.routes["/loop"] = loop
        with pytest.raises(UnexpectedResponseError, match="still redirected after 5 redirects"):
            await http.request_json("GET", srv.url + "/loop", endpoint="x", follow_redirects=True)
    assert srv.count("/loop") == DEFAULT_MAX_REDIRECTS  # the fifth answer is a redirect too


async def test_a_few_misbehaving_answers_stop_the_client() -> None:
    """Three answers past the cap fail their requests; the fourth stops the run (exit 2)."""
    async with serve() as srv, capped_client() as http:
        srv.script("/big", raw_reply(200, padded(CAP + 1)))
        for _ in range(3):
            with pytest.raises(ResponseTooLargeError):
                await http.request_json("GET", srv.url + "/big", endpoint="x")
        with pytest.raises(MisbehavingServerError, match="sent 4 answers larger than") as info:
            await http.request_json("GET", srv.url + "/big", endpoint="x")
    assert info.value.exit_code == 2
    assert not isinstance(info.value, ApiError)  # no item failure swallows it
