"""HttpClient: retry classification, backoff, body checks, headers, error translation."""

from __future__ import annotations

import asyncio
import email.utils
import random
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from aioresponses import aioresponses

from harvester.client import (
    BASE_HEADERS,
    HttpClient,
    RejectedError,
    RequestStats,
    RetryPolicy,
    UnauthorizedError,
    interpret,
    parse_retry_after,
    translate_exception,
)
from harvester.config import ApiConfig
from harvester.errors import (
    ApiError,
    NotFoundError,
    PermanentApiError,
    RateLimitedError,
    TlsError,
    TransientApiError,
    UnexpectedResponseError,
    UnreachableError,
)
from harvester.limiter import AdaptiveLimiter

SECRET = "s3cr3t-t0ken-value"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


@dataclass
class Loopback:
    """A tiny real HTTP server on 127.0.0.1:0; each path answers from a script."""

    routes: dict[str, Handler | list[web.StreamResponse]] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    url: str = ""

    def script(self, path: str, *responses: web.StreamResponse) -> None:
        """Answer ``path`` with these responses in turn; the last one repeats."""
        self.routes[path] = list(responses)

    def count(self, path: str) -> int:
        return sum(1 for s in self.seen if s.path == path)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append(Seen(request.method, request.path, dict(request.query),
                              dict(request.headers), body))
        route = self.routes.get(request.path)
        if route is None:
            return web.json_response({"status": 404, "message": "no route"}, status=404)
        if callable(route):
            return await route(request)
        return route.pop(0) if len(route) > 1 else _clone(route[0])


def _clone(response: web.StreamResponse) -> web.StreamResponse:
    assert isinstance(response, web.Response)
    return web.Response(status=response.status, body=response.body,
                        headers={k: v for k, v in response.headers.items()
                                 if k.lower() != "content-length"})


@asynccontextmanager
async def serve() -> AsyncIterator[Loopback]:
    loopback = Loopback()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", loopback._dispatch)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    loopback.url = f"http://127.0.0.1:{port}"
    try:
        yield loopback
    finally:
        await runner.cleanup()


class RecordingSleep:
    """Stands in for anyio.sleep: records the delay, yields once, never waits."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.calls.append(delay)
        await asyncio.sleep(0)


class MaxRandom(random.Random):
    """Jitter pinned to its ceiling, to see the exponential envelope."""

    def uniform(self, a: float, b: float) -> float:
        return b


@dataclass
class Rig:
    http: HttpClient
    sleep: RecordingSleep
    stats: RequestStats
    limiter: AdaptiveLimiter


@asynccontextmanager
async def client(max_attempts: int = 4, timeout_s: float = 5.0,
                 rng: random.Random | None = None, rate: float = 1000.0) -> AsyncIterator[Rig]:
    sleep, stats, limiter = RecordingSleep(), RequestStats(), AdaptiveLimiter(rate)
    api = ApiConfig(timeout_s=timeout_s, max_attempts=max_attempts)
    async with aiohttp.ClientSession() as session:
        http = HttpClient(session, api, limiter, stats, sleep=sleep, rng=rng or random.Random(1))
        yield Rig(http, sleep, stats, limiter)


def json_reply(status: int, body: object, **headers: str) -> web.Response:
    return web.json_response(body, status=status, headers=headers)


def raw_reply(status: int, body: bytes, **headers: str) -> web.Response:
    return web.Response(status=status, body=body, headers=headers)


# --- classification (no I/O) -------------------------------------------------------------

@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (429, b"error code: 1015", RateLimitedError),
        (500, b"", TransientApiError),
        (502, b"<html>bad gateway</html>", TransientApiError),
        (503, b"", TransientApiError),
        (504, b"", TransientApiError),
        (522, b"", TransientApiError),
        (599, b"", TransientApiError),
        (401, b'{"status":401,"error_code":3020,"message":"Not logged in"}', UnauthorizedError),
        (404, b'{"status":404,"message":"Ride not found"}', NotFoundError),
        (400, b'{"message":"bad"}', RejectedError),
        (403, b'{"error":"invalid_grant"}', RejectedError),
        (301, b"", PermanentApiError),
        (200, b"", TransientApiError),
        (200, b'{"data": [1, 2', TransientApiError),
        (200, b"[1, 2]", UnexpectedResponseError),
        (200, b'"just a string"', UnexpectedResponseError),
        (200, b"<!doctype html><html>sign in</html>", UnexpectedResponseError),
    ],
)
def test_answer_classification_table(status: int, body: bytes, expected: type[ApiError]) -> None:
    """Each status/body shape maps to exactly the documented ApiError class."""
    with pytest.raises(ApiError) as info:
        interpret("GET", "https://h/x", status, body, None)
    assert type(info.value) is expected
    assert info.value.status == (429 if status == 429 else status)


def test_only_transient_errors_are_retried_by_policy() -> None:
    """The retry decision is the class: Transient yes (until max_attempts), Permanent never."""
    policy_ = RetryPolicy(max_attempts=3)
    assert policy_.should_retry(TransientApiError("t"), 1)
    assert policy_.should_retry(RateLimitedError("r"), 2)
    assert not policy_.should_retry(TransientApiError("t"), 3)
    assert not policy_.should_retry(PermanentApiError("p"), 1)
    assert not policy_.should_retry(NotFoundError("n"), 1)


@pytest.mark.parametrize(
    ("exc", "expected", "text"),
    [
        (aiohttp.ServerDisconnectedError(), TransientApiError, "connection failed"),
        (aiohttp.ClientPayloadError("short"), TransientApiError, "connection failed"),
        (aiohttp.ServerTimeoutError(), TransientApiError, "no complete answer"),
        (TimeoutError(), TransientApiError, "no complete answer"),
        (aiohttp.ClientConnectorError(None, OSError(111, "Connection refused")),  # type: ignore[arg-type]
         UnreachableError, "cannot connect to api.onepeloton.com: Connection refused"),
        (aiohttp.ClientConnectorCertificateError(None, ValueError("self-signed")),  # type: ignore[arg-type]
         TlsError, "TLS failure talking to api.onepeloton.com"),
        (aiohttp.TooManyRedirects(None, ()), UnexpectedResponseError,  # type: ignore[arg-type]
         "still redirected after 5 redirects"),
        (aiohttp.InvalidURL("no host"), PermanentApiError, "request failed"),
    ],
)
def test_exception_translation_table(exc: aiohttp.ClientError | TimeoutError,
                                     expected: type[ApiError], text: str) -> None:
    """aiohttp/timeout exceptions become Transient or Permanent with a one-line message."""
    url = f"https://user:{SECRET}@api.onepeloton.com/api/me?access_token={SECRET}"
    error = translate_exception(exc, "GET", url, 30.0)
    assert type(error) is expected
    assert text in str(error)
    assert "\n" not in str(error)
    assert SECRET not in str(error) and SECRET not in error.url


def test_error_messages_never_hold_query_strings_or_userinfo() -> None:
    """A secret in the query string or userinfo never reaches an ApiError."""
    url = f"https://me:{SECRET}@api.onepeloton.com/api/x?token={SECRET}"
    for status in (401, 403, 404, 429, 500, 302):
        with pytest.raises(ApiError) as info:
            interpret("GET", url, status, b'{"message":"nope"}', None, url)
        assert SECRET not in str(info.value)
        assert SECRET not in repr(info.value)
        assert SECRET not in info.value.url


def test_retry_after_parses_seconds_and_http_dates() -> None:
    """Retry-After may be delta-seconds or an HTTP date; garbage and absence give None."""
    now = 1_700_000_000.0
    assert parse_retry_after("7", now) == 7.0
    assert parse_retry_after(" 2.5 ", now) == 2.5
    assert parse_retry_after(email.utils.formatdate(now + 42, usegmt=True), now) == 42.0
    assert parse_retry_after(email.utils.formatdate(now - 42, usegmt=True), now) == 0.0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


# --- behaviour against a real loopback server ---------------------------------------------

async def test_retry_after_seconds_is_honoured() -> None:
    """A 429 with Retry-After: 7 waits exactly 7 s, lowers the limiter, then succeeds."""
    async with serve() as srv, client() as rig:
        srv.script("/x", raw_reply(429, b"slow down", **{"Retry-After": "7"}),
                   json_reply(200, {"ok": True}))
        assert await rig.http.request_json("GET", srv.url + "/x", endpoint="x") == {"ok": True}
    assert rig.sleep.calls == [7.0]
    assert rig.stats.throttled == 1 and rig.stats.retries == 1 and rig.stats.requests == 2
    assert rig.limiter.current_rate < rig.limiter.configured_rate


async def test_retry_after_http_date_is_honoured() -> None:
    """A 429 with an HTTP-date Retry-After waits until that date."""
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    async with serve() as srv, client() as rig:
        srv.script("/x", raw_reply(429, b"", **{"Retry-After": when}), json_reply(200, {}))
        await rig.http.request_json("GET", srv.url + "/x", endpoint="x")
    assert len(rig.sleep.calls) == 1
    assert 27.0 <= rig.sleep.calls[0] <= 30.0


async def test_1015_without_retry_after_backs_off_exponentially() -> None:
    """Cloudflare's plain 'error code: 1015' 429 backs off base*2^n, then gives up."""
    async with serve() as srv, client(max_attempts=6, rng=MaxRandom()) as rig:
        srv.script("/x", raw_reply(429, b"error code: 1015", **{"Content-Type": "text/plain"}))
        with pytest.raises(RateLimitedError) as info:
            await rig.http.request_json("GET", srv.url + "/x", endpoint="x")
    assert rig.sleep.calls == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert srv.count("/x") == 6 and rig.stats.throttled == 6
    assert info.value.retry_after is None


async def test_backoff_jitter_stays_within_the_exponential_envelope() -> None:
    """Full jitter: attempt n waits a random time in [0, min(cap, base*2^(n-1))]."""
    async with serve() as srv, client(max_attempts=10, rng=random.Random(7)) as rig:
        srv.script("/x", raw_reply(503, b""))
        with pytest.raises(TransientApiError):
            await rig.http.request_json("GET", srv.url + "/x", endpoint="x")
    assert len(rig.sleep.calls) == 9
    for n, delay in enumerate(rig.sleep.calls, start=1):
        assert 0.0 <= delay <= min(30.0, 0.5 * 2 ** (n - 1))
    assert len(set(rig.sleep.calls)) == 9  # jittered, not a fixed ladder


async def test_empty_and_truncated_bodies_are_retried() -> None:
    """An empty 200 and a truncated JSON 200 are transient; the third answer is returned."""
    async with serve() as srv, client() as rig:
        srv.script("/x", raw_reply(200, b""), raw_reply(200, b'{"data": [1, 2'),
                   json_reply(200, {"data": [1, 2]}))
        body = await rig.http.request_json("GET", srv.url + "/x", endpoint="x")
    assert body == {"data": [1, 2]}
    assert rig.stats.retries == 2 and len(rig.sleep.calls) == 2


async def test_max_attempts_is_the_total_number_of_tries() -> None:
    """With max_attempts=3 a persistent 503 is tried 3 times, then the last error is raised."""
    async with serve() as srv, client(max_attempts=3) as rig:
        srv.script("/x", raw_reply(503, b"busy"))
        with pytest.raises(TransientApiError, match="HTTP 503"):
            await rig.http.request_json("GET", srv.url + "/x", endpoint="x")
    assert srv.count("/x") == 3 and len(rig.sleep.calls) == 2
    assert rig.stats.failures == 1 and rig.stats.by_endpoint == {"x": 3}


async def test_404_raises_not_found_without_retrying() -> None:
    """404 is NotFoundError at once, carrying the server's reason."""
    async with serve() as srv, client() as rig:
        srv.script("/x", json_reply(404, {"status": 404, "message": "Ride not found"}))
        with pytest.raises(NotFoundError, match="Ride not found"):
            await rig.http.request_json("GET", srv.url + "/x", endpoint="x")
    assert srv.count("/x") == 1 and rig.sleep.calls == []


async def test_401_raises_unauthorized_without_retrying() -> None:
    """401 is UnauthorizedError at once: re-authentication is the api layer's job."""
    async with serve() as srv, client() as rig:
        srv.script("/x", json_reply(401, {"status": 401, "message": "Not logged in"}))
        with pytest.raises(UnauthorizedError):
            await rig.http.request_json("GET", srv.url + "/x", endpoint="x")
    assert srv.count("/x") == 1 and rig.sleep.calls == []


async def test_json_that_is_not_an_object_is_permanent() -> None:
    """A 200 holding a JSON list is PermanentApiError, not retried."""
    async with serve() as srv, client() as rig:
        srv.script("/x", raw_reply(200, b"[1, 2, 3]"))
        with pytest.raises(PermanentApiError, match="expected a JSON object"):
            await rig.http.request_json("GET", srv.url + "/x", endpoint="x")
    assert srv.count("/x") == 1


async def test_platform_and_user_agent_headers_on_every_attempt() -> None:
    """Every attempt, retries included, sends Peloton-Platform: web and our User-Agent."""
    async with serve() as srv, client() as rig:
        srv.script("/x", raw_reply(500, b""), json_reply(200, {}))
        await rig.http.request_json("GET", srv.url + "/x", endpoint="x",
                                    headers={"Authorization": "Bearer t"},
                                    params={"page": "0"})
    assert len(srv.seen) == 2
    for seen in srv.seen:
        assert seen.headers["Peloton-Platform"] == "web"
        assert seen.headers["User-Agent"] == BASE_HEADERS["User-Agent"]
        assert seen.headers["User-Agent"].startswith("peloton-harvester/")
        assert seen.headers["Authorization"] == "Bearer t"
        assert seen.query == {"page": "0"}


async def test_slow_answer_times_out_and_is_retried() -> None:
    """An answer slower than api.timeout_s is a transient timeout, retried up to max_attempts."""
    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(2)
        return json_reply(200, {})

    async with serve() as srv, client(max_attempts=2, timeout_s=0.2) as rig:
        srv.routes["/slow"] = slow
        with pytest.raises(TransientApiError, match=r"no complete answer within 0\.2 s"):
            await rig.http.request_json("GET", srv.url + "/slow", endpoint="slow")
    assert srv.count("/slow") == 2


async def test_connection_refused_is_retried_then_named_clearly() -> None:
    """A refused connection is transient; the final error says which host it could not reach."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with client(max_attempts=3) as rig:
        with pytest.raises(TransientApiError, match=r"^cannot connect to 127\.0\.0\.1: ") as info:
            await rig.http.request_json("GET", f"http://127.0.0.1:{port}/x", endpoint="x")
    assert type(info.value) is UnreachableError and info.value.exit_code == 75
    assert rig.stats.requests == 3 and len(rig.sleep.calls) == 2


@pytest.mark.parametrize(("shape", "failing_calls"), [("dropped", 2), ("short body", 1)])
async def test_dropped_connection_and_short_body_are_retried(shape: str,
                                                             failing_calls: int) -> None:
    """A connection dropped before the answer, or a body cut short, is retried by the policy."""
    # aiohttp itself re-sends an idempotent request once after a silent drop, so a drop
    # must happen twice before our policy sees it.
    calls = 0

    async def flaky(request: web.Request) -> web.StreamResponse:
        nonlocal calls
        calls += 1
        if calls > failing_calls:
            return json_reply(200, {"id": "a" * 32})
        assert request.transport is not None
        if shape == "dropped":
            request.transport.close()
            return web.Response()
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = 100
        await response.prepare(request)
        await response.write(b'{"id": "')
        request.transport.close()  # 8 of 100 promised bytes
        return response

    async with serve() as srv, client() as rig:
        srv.routes["/me"] = flaky
        body = await rig.http.request_json("GET", srv.url + "/me", endpoint="me")
    assert body == {"id": "a" * 32}
    assert rig.stats.requests == 2 and rig.stats.retries == 1


async def test_tls_certificate_failure_is_permanent_at_once() -> None:
    """A certificate failure is not retried and says what to check."""
    url = "https://api.onepeloton.com/api/me"
    cert_error = aiohttp.ClientConnectorCertificateError(None, ValueError("x"))  # type: ignore[arg-type]
    async with client() as rig:
        with aioresponses() as mocked:
            mocked.get(url, exception=cert_error, repeat=True)
            with pytest.raises(PermanentApiError, match=r"TLS failure talking to api\.onepel"):
                await rig.http.request_json("GET", url, endpoint="me")
    assert rig.stats.requests == 1 and rig.sleep.calls == []


async def test_success_after_throttle_recovers_the_rate() -> None:
    """A 429 lowers the shared limiter's rate; later successes start raising it again."""
    async with serve() as srv, client(rate=100.0) as rig:
        srv.script("/x", raw_reply(429, b"error code: 1015"), json_reply(200, {}))
        await rig.http.request_json("GET", srv.url + "/x", endpoint="x")
        lowered = rig.limiter.current_rate
        for _ in range(30):
            await rig.http.request_json("GET", srv.url + "/x", endpoint="x")
    assert lowered < 60.0  # halved, plus what one success added back since
    assert lowered < rig.limiter.current_rate <= 100.0
