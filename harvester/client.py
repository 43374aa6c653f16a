"""HTTP transport policy: pacing, retries, and the one place aiohttp errors become ApiErrors.

    request_json(method, url)
      1. wait for the shared limiter (every attempt, auth requests included)
      2. send with Peloton-Platform and User-Agent; each attempt has a total deadline
         (api.timeout_s: connect, headers and the whole body), reads at most
         max_body_bytes of decompressed body, and follows at most DEFAULT_MAX_REDIRECTS;
         a body still incomplete at the deadline is StalledResponseError (not retried:
         a dripping server would cost a whole deadline per attempt)
      3. classify: status / exception / body  ->  JsonObject or an ApiError subclass
      4. TransientApiError -> back off (Retry-After, else full jitter) and repeat,
         up to api.max_attempts attempts; anything else is raised at once

Messages name the method, the path (never the query string) and the status;
they never hold request bodies, headers, cookies or tokens.
"""

from __future__ import annotations

import email.utils
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple
from urllib.parse import urlsplit

import aiohttp
import anyio
import orjson
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from harvester import __version__
from harvester.bounds import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_REDIRECTS,
    STALLED,
    Misbehaviour,
    oversized,
    read_capped,
)
from harvester.config import ApiConfig
from harvester.errors import (
    ApiError,
    NotFoundError,
    PermanentApiError,
    RateLimitedError,
    ResponseTooLargeError,
    StalledResponseError,
    TlsError,
    TransientApiError,
    UnexpectedResponseError,
    UnreachableError,
)
from harvester.limiter import AdaptiveLimiter

JsonObject = dict[str, object]
log = logging.getLogger(__name__)

DEFAULT_USER_AGENT = (
    f"peloton-harvester/{__version__} (+https://github.com/peloton-harvester/peloton-harvester)"
)
DEFAULT_BACKOFF_BASE_S = 0.5
DEFAULT_BACKOFF_CAP_S = 30.0
DEFAULT_MAX_RETRY_AFTER_S = 600.0  # honour Retry-After, but never park a run for hours
DEFAULT_MAX_HEADER_SETS = 16  # merged header sets kept: one per token or cookie in use
BASE_HEADERS: Mapping[str, str] = {
    "Peloton-Platform": "web",  # needed by /overview; adds GPS to performance graphs
    "User-Agent": DEFAULT_USER_AGENT,
    "Accept": "application/json",
}

# Retry policy as data. 429 is here for completeness; it becomes RateLimitedError.
# 52x are Cloudflare's "origin unreachable/timed out" family.
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504, 520, 521, 522, 523, 524})
# Statuses that are permanent for a known reason; every other 4xx is too.
NOT_FOUND_STATUS = 404
UNAUTHORIZED_STATUS = 401
_REASON_KEYS = ("error", "message", "error_description")
_MAX_REASON_CHARS = 120


class RejectedError(PermanentApiError):
    """A 4xx (other than 404); ``reason`` is the server's short error code or message."""

    def __init__(self, message: str, *, status: int, url: str, reason: str) -> None:
        super().__init__(message, status=status, url=url)
        self.reason = reason


class UnauthorizedError(RejectedError):
    """401: the credentials sent are missing, invalid or expired."""


@dataclass
class RequestStats:
    """Counters for one run (one event loop: no locks)."""

    requests: int = 0  # attempts sent, retries included
    retries: int = 0
    throttled: int = 0  # 429 answers
    reauths: int = 0  # logins/refreshes after the first
    failures: int = 0  # request_json calls that ended in an ApiError other than 401
    by_endpoint: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Which errors are retried (by class), how often, and how long to wait."""

    max_attempts: int
    backoff_base: float = DEFAULT_BACKOFF_BASE_S
    backoff_cap: float = DEFAULT_BACKOFF_CAP_S
    retry_on: tuple[type[ApiError], ...] = (TransientApiError,)

    def should_retry(self, exc: ApiError, attempt: int) -> bool:
        return isinstance(exc, self.retry_on) and attempt < self.max_attempts

    def delay(self, exc: ApiError, attempt: int, rng: random.Random) -> float:
        """Seconds to wait after failed ``attempt`` (1-based)."""
        if isinstance(exc, RateLimitedError) and exc.retry_after is not None:
            return min(max(exc.retry_after, 0.0), DEFAULT_MAX_RETRY_AFTER_S)
        ceiling = min(self.backoff_cap, self.backoff_base * 2 ** (attempt - 1))
        return rng.uniform(0.0, ceiling)  # "full jitter"


# NamedTuples, not frozen dataclasses: as immutable, and built in a fraction of the time.
class _Reply(NamedTuple):
    status: int
    body: bytes
    retry_after: str | None
    location: str | None


class _Request(NamedTuple):
    """One logical request, the same on every attempt."""

    method: str
    url: str  # what messages name (never with its query string)
    target: str | URL  # what is sent: ``url``, or the yarl URL given for it
    endpoint: str  # the name it is counted under in RequestStats
    params: Mapping[str, str] | None
    headers: CIMultiDictProxy[str]
    json: object
    data: Mapping[str, str] | None
    follow_redirects: bool = False


class HttpClient:
    """JSON over one shared ClientSession, with pacing, retries and error translation."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        api: ApiConfig,
        limiter: AdaptiveLimiter,
        stats: RequestStats,
        *,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        rng: random.Random | None = None,
        backoff_base: float = DEFAULT_BACKOFF_BASE_S,
        backoff_cap: float = DEFAULT_BACKOFF_CAP_S,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        self._session = session
        # total, not only an idle timeout: a body dripping a byte a second ends here too
        self._timeout = aiohttp.ClientTimeout(total=api.timeout_s)
        self._max_body = max_body_bytes
        self._misbehaviour = Misbehaviour()  # oversized or stalled success answers this run
        self._limiter = limiter
        self.stats = stats
        self._sleep = sleep
        self._rng = rng or random.Random()
        self.policy = RetryPolicy(api.max_attempts, backoff_base, backoff_cap)
        # BASE_HEADERS merged with the caller's, per distinct caller's headers (an
        # access token's or a session cookie's): merged once, and a multidict aiohttp
        # takes without converting it.
        self._merged: dict[tuple[tuple[str, str], ...], CIMultiDictProxy[str]] = {}

    @property
    def limiter(self) -> AdaptiveLimiter:
        """The run's one limiter, for requests that need a transport of their own (sign-in)."""
        return self._limiter

    @property
    def timeout(self) -> aiohttp.ClientTimeout:
        return self._timeout

    async def request_json(
        self,
        method: str,
        url: str,
        *,
        endpoint: str,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        json: object = None,
        data: Mapping[str, str] | None = None,
        follow_redirects: bool = False,
        target: URL | None = None,
    ) -> JsonObject:
        """Send until a JSON object comes back or the policy gives up.

        ``target``: the URL to send, query included, already built (``params`` then
        None): aiohttp sends it without parsing ``url``, which messages still name."""
        request = _Request(method, url, url if target is None else target, endpoint, params,
                           self._headers(headers), json, data, follow_redirects)
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._attempt(request)
            except ApiError as exc:
                if not self.policy.should_retry(exc, attempt):
                    if not isinstance(exc, UnauthorizedError):  # the api layer recovers those
                        self.stats.failures += 1
                    raise
                self.stats.retries += 1
                delay = self.policy.delay(exc, attempt, self._rng)
                log.debug("%s; retry %d of %d in %.2f s", exc, attempt,
                          self.policy.max_attempts - 1, delay)
                await self._sleep(delay)

    def _headers(self, headers: Mapping[str, str] | None) -> CIMultiDictProxy[str]:
        """BASE_HEADERS with ``headers`` over them (same names: theirs win)."""
        key = tuple(headers.items()) if headers else ()
        merged = self._merged.get(key)
        if merged is None:
            if len(self._merged) >= DEFAULT_MAX_HEADER_SETS:
                self._merged.clear()  # tokens were renewed: the old ones are not sent again
            merged = CIMultiDictProxy(CIMultiDict({**BASE_HEADERS, **(headers or {})}))
            self._merged[key] = merged
        return merged

    async def _attempt(self, request: _Request) -> JsonObject:
        method, url, endpoint = request.method, request.url, request.endpoint
        sent_at = await self._limiter.acquire()  # what `async with` does, two coroutines fewer
        self.stats.requests += 1
        self.stats.by_endpoint[endpoint] = self.stats.by_endpoint.get(endpoint, 0) + 1
        reply = await self._send(request)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s -> HTTP %d, %d bytes", method, _path(url), reply.status, len(reply.body))
        if reply.status == 429:
            self.stats.throttled += 1
            before = self._limiter.current_rate
            self._limiter.on_throttled(sent_at)
            if self._limiter.current_rate < before:
                log.info("HTTP 429 from %s: request rate lowered to %.3g/s",
                         urlsplit(url).hostname, self._limiter.current_rate)
        else:
            self._limiter.on_success(sent_at)  # any other answer passed the server's rate limit
        return interpret(method, url, reply.status, reply.body, reply.retry_after, reply.location)

    async def _send(self, request: _Request) -> _Reply:
        try:
            async with self._session.request(
                request.method, request.target, params=request.params, headers=request.headers,
                json=request.json, data=request.data, timeout=self._timeout,
                allow_redirects=request.follow_redirects, max_redirects=DEFAULT_MAX_REDIRECTS,
            ) as resp:
                try:
                    body = await read_capped(resp, self._max_body)
                except TimeoutError:
                    body = self._stalled(request, resp.status)
                if body is None:
                    body = self._oversized(request, resp.status)
                status = resp.status
                if 200 <= status < 300:  # interpret() reads neither header for these
                    return _Reply(status, body, None, None)
                return _Reply(status, body, resp.headers.get("Retry-After"),
                              resp.headers.get("Location"))
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise translate_exception(exc, request.method, request.url, self._timeout.total) from exc

    def _stalled(self, request: _Request, status: int) -> bytes:
        """As ``_oversized``: an error answer is judged by its status, a success one refused."""
        if not 200 <= status < 300:
            return b""
        self._misbehaviour.note(request.method, request.url, STALLED)
        path = _path(request.url)
        raise StalledResponseError(
            f"{request.method} {path}: HTTP {status} answer still incomplete after "
            f"{self._timeout.total:g} s (the server sends its body too slowly or stalls); "
            "not retried in this run", status=status, url=path)

    def _oversized(self, request: _Request, status: int) -> bytes:
        """An error answer's status still tells enough; a success answer that big is refused."""
        if not 200 <= status < 300:
            return b""
        self._misbehaviour.note(request.method, request.url, oversized(self._max_body))
        path = _path(request.url)
        raise ResponseTooLargeError(
            f"{request.method} {path}: HTTP {status} answer larger than "
            f"{self._max_body // (1024 * 1024)} MB (decompressed); stopped reading it. No Peloton "
            "answer is that big: check api.base_url and any proxy in between",
            status=status, url=path)


def translate_exception(
    exc: aiohttp.ClientError | TimeoutError, method: str, url: str, timeout_s: float | None
) -> ApiError:
    """The boundary: an aiohttp/timeout exception becomes a Transient or Permanent ApiError."""
    host = urlsplit(url).hostname or url
    path = _path(url)
    where = f"{method} {path}"
    if isinstance(exc, aiohttp.ClientSSLError):  # incl. certificate errors: retrying won't help
        return TlsError(
            f"TLS failure talking to {host}: {_os_reason(exc)}; check the system's CA "
            "certificates, proxy or api.base_url", url=path)
    if isinstance(exc, TimeoutError):  # aiohttp's ServerTimeoutError is one too
        return TransientApiError(f"{where}: no complete answer within {timeout_s:g} s", url=path)
    if isinstance(exc, aiohttp.TooManyRedirects):
        return UnexpectedResponseError(
            f"{where}: still redirected after {DEFAULT_MAX_REDIRECTS} redirects; check "
            "api.base_url and api.auth_url", url=path)
    if isinstance(exc, aiohttp.ClientConnectorError):  # DNS failure, refused, unreachable
        return UnreachableError(
            f"cannot connect to {host}: {_os_reason(exc)}; check api.base_url, api.auth_url "
            "and the network", url=path)
    if isinstance(exc, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError):
        return TransientApiError(f"{where}: connection failed: {type(exc).__name__}", url=path)
    return PermanentApiError(f"{where}: request failed: {type(exc).__name__}", url=path)


def interpret(
    method: str, url: str, status: int, body: bytes, retry_after: str | None,
    location: str | None = None,
) -> JsonObject:
    """Map one HTTP answer to a JSON object or the ApiError that describes it."""
    if 200 <= status < 300:
        return _decode_object(method, url, status, body)
    path = _path(url)
    where = f"{method} {path}"
    if status == 429:
        wait = parse_retry_after(retry_after)
        hint = f" (Retry-After {wait:g} s)" if wait is not None else ""
        raise RateLimitedError(f"{where}: HTTP 429 rate limited{hint}", retry_after=wait, url=path)
    if status in RETRY_STATUSES or status >= 500:
        raise TransientApiError(f"{where}: HTTP {status} server error", status=status, url=path)
    if 300 <= status < 400:
        target = _path(location) if location else "?"
        raise PermanentApiError(
            f"{where}: unexpected HTTP {status} redirect to {target}; check api.base_url",
            status=status, url=path)
    reason = _reason(body)
    detail = f" {reason}" if reason else ""
    if status == NOT_FOUND_STATUS:
        raise NotFoundError(f"{where}: HTTP 404 not found{detail}", status=status, url=path)
    cls = UnauthorizedError if status == UNAUTHORIZED_STATUS else RejectedError
    raise cls(f"{where}: HTTP {status}{detail}", status=status, url=path, reason=reason)


def _decode_object(method: str, url: str, status: int, body: bytes) -> JsonObject:
    try:
        value = orjson.loads(body)  # the usual case first: the error texts cost more than it
    except orjson.JSONDecodeError:
        text = body.lstrip()
        path = _path(url)
        if not text:
            raise TransientApiError(f"{method} {path}: empty response body",
                                    status=status, url=path) from None
        if text[:1] == b"<":  # a web page: cut-off JSON never starts like this, so don't retry
            raise UnexpectedResponseError(
                f"{method} {path}: HTTP {status} answered with HTML, not JSON; api.base_url or "
                "api.auth_url does not point at the Peloton API", status=status, url=path) from None
        raise TransientApiError(
            f"{method} {path}: truncated or invalid JSON ({len(body)} bytes)", status=status, url=path
        ) from None
    if not isinstance(value, dict):
        path = _path(url)
        raise UnexpectedResponseError(
            f"{method} {path}: expected a JSON object, got {type(value).__name__}; "
            "check api.base_url", status=status, url=path)
    return value


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP date; None if absent/garbled."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        return max(float(text), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    current = time.time() if now is None else now
    return max(when.timestamp() - current, 0.0)


def _reason(body: bytes) -> str:
    """The server's short error code/message from a JSON error body, else ''."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ""
    if not isinstance(value, dict):
        return ""
    for key in _REASON_KEYS:
        text = value.get(key)
        if isinstance(text, str) and text:
            return "".join(c if c.isprintable() else " " for c in text)[:_MAX_REASON_CHARS]
    return ""


def _os_reason(exc: aiohttp.ClientError) -> str:
    os_error = getattr(exc, "os_error", None)
    if isinstance(os_error, OSError) and os_error.strerror:
        return os_error.strerror
    return type(exc).__name__


def _path(url: str) -> str:
    """The URL without query string or fragment, where secrets could hide."""
    parts = urlsplit(url)
    if not parts.hostname:
        return parts.path
    port = f":{parts.port}" if parts.port else ""  # never userinfo: it may hold a password
    return f"{parts.scheme}://{parts.hostname}{port}{parts.path}"
