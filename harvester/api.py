"""Peloton endpoints: validated ids in, JSON objects and typed refs out.

Every id is checked before it is put into a URL; a bad one is a PermanentApiError
so the pipeline can quarantine the item. A 401 triggers one shared
re-authentication and one more try; a second 401 is an AuthError.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import anyio
from yarl import URL

from harvester.auth import Authenticator, Paste, make_authenticator
from harvester.client import (
    DEFAULT_BACKOFF_BASE_S,
    HttpClient,
    JsonObject,
    RequestStats,
    UnauthorizedError,
)
from harvester.config import Config
from harvester.errors import AuthError, PermanentApiError, UnexpectedResponseError
from harvester.limiter import AdaptiveLimiter

HEX32 = re.compile(r"^[0-9a-f]{32}$")
UUID_RE = re.compile(
    r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.IGNORECASE
)
NULL_RIDE_ID = "0" * 32  # Just Ride / outdoor / Lanebreak: no class behind it
WORKOUT_JOINS = "ride,ride.instructor"
WORKOUT_SORT = "-created"
EXTRA_CONNECTIONS = 4  # beyond concurrency: the producer's page, auth, a spare
# What _url puts into a path without encoding: literal segments and validated ids.
_PLAIN_PATH = re.compile(r"[A-Za-z0-9/_-]*")


def is_hex32(s: object) -> bool:
    # fullmatch: "$" alone would accept a trailing newline
    return isinstance(s, str) and HEX32.fullmatch(s) is not None


def is_ride_id(s: object) -> bool:
    """A class id: hex32, or the UUID form Peloton Gym uses."""
    return is_hex32(s) or (isinstance(s, str) and UUID_RE.fullmatch(s) is not None)


@dataclass(frozen=True, slots=True)
class WorkoutRef:
    """What the pipeline needs to schedule a workout; the raw item stays as returned."""

    id: str
    created_at: int | None
    status: str | None
    ride_id: str | None  # None for the all-zero id or a missing ride


@dataclass(frozen=True, slots=True)
class WorkoutPage:
    """One page of a paged list (workouts, instructors), items as returned."""

    items: list[JsonObject]
    total: int | None
    page_count: int | None
    show_next: bool | None


def workout_ref(item: JsonObject) -> WorkoutRef:
    """Typed view of a list item; PermanentApiError when its id is not hex32."""
    workout_id = item.get("id")
    if not isinstance(workout_id, str) or not is_hex32(workout_id):
        raise PermanentApiError(f"workout list item has an invalid id {_shown(workout_id)}")
    created = item.get("created_at")
    status = item.get("status")
    return WorkoutRef(
        id=workout_id,
        created_at=_as_int(created),
        status=status if isinstance(status, str) else None,
        ride_id=_ride_id(item),
    )


def _ride_id(item: JsonObject) -> str | None:
    ride = item.get("ride")
    ride_id = ride.get("id") if isinstance(ride, dict) else None
    if ride_id is None:
        ride_id = item.get("peloton_id")
    if not isinstance(ride_id, str) or ride_id in ("", NULL_RIDE_ID):
        return None
    return ride_id  # kept even if malformed: ride_details() rejects it visibly


def _as_int(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


def _shown(value: object) -> str:
    return repr(value)[:60]


def _require_id(kind: str, value: str, valid: Callable[[object], bool] = is_hex32) -> str:
    if not valid(value):
        raise PermanentApiError(f"refusing to request {kind} with invalid id {_shown(value)}")
    return value


class PelotonApi:
    """The endpoints the harvester reads, over one HttpClient and one Authenticator."""

    def __init__(self, http: HttpClient, auth: Authenticator, config: Config) -> None:
        self._http = http
        self._auth = auth
        self._base = config.api.base_url.rstrip("/")
        origin = URL(self._base)
        # None: a base_url with a query or fragment, parsed whole with each path as before
        self._origin = None if origin.raw_query_string or origin.raw_fragment else origin
        self._prefix = origin.raw_path.rstrip("/")
        self._user_id: str | None = None
        self._me: JsonObject | None = None

    async def me(self) -> JsonObject:
        return await self._get("/api/me", "me")

    async def account(self) -> JsonObject:
        """``/api/me``, asked once per run: user_id() and the profile row share it."""
        if self._me is None:
            self._me = await self.me()
        return self._me

    async def user_id(self) -> str:
        """The account's id: as authenticating told it, else from /api/me.

        A session login answers with the id, and Peloton's access tokens carry it
        in a claim, so usually the listing can start without waiting for /api/me:
        one round trip less before the first workout, and a refresh that finds
        nothing new costs one request. The profile dataset still reads /api/me.
        """
        if self._user_id is None:
            await self._auth.headers()  # logs in or loads tokens: may tell us the id
            told = self._auth.user_id
            if told is not None and is_hex32(told):
                self._user_id = told
                return told
            candidate: object = (await self.account()).get("id")
            if not isinstance(candidate, str) or not is_hex32(candidate):
                raise UnexpectedResponseError(
                    f"/api/me returned an invalid user id {_shown(candidate)}; check api.base_url")
            self._user_id = candidate
        return self._user_id

    async def user(self, user_id: str) -> JsonObject:
        """The public profile, ``/api/user/{id}``."""
        uid = _require_id("a user", user_id)
        return await self._get(f"/api/user/{uid}", "user")

    async def metadata_mappings(self) -> JsonObject:
        """What ``class_type_ids``, difficulty levels and device types mean."""
        return await self._get("/api/ride/metadata_mappings", "metadata_mappings")

    async def sign_in(self, paste: Paste | None = None) -> str:
        """Sign in now (headless, or with a pasted browser callback), store it; the account id."""
        await self._auth.sign_in(paste)
        return await self.user_id()

    async def overview(self, user_id: str) -> JsonObject:
        uid = _require_id("a user", user_id)
        return await self._get(f"/api/user/{uid}/overview", "overview", {"version": "1"})

    async def workouts_page(self, user_id: str, page: int, limit: int) -> WorkoutPage:
        uid = _require_id("a user", user_id)
        params = {"joins": WORKOUT_JOINS, "limit": str(limit), "page": str(page),
                  "sort_by": WORKOUT_SORT}
        return _page(await self._get(f"/api/user/{uid}/workouts", "workouts", params),
                     "GET /api/user/{id}/workouts")

    async def workout(self, workout_id: str) -> JsonObject:
        wid = _require_id("a workout", workout_id)
        return await self._get(f"/api/workout/{wid}", "workout")

    async def performance_graph(self, workout_id: str, every_n: int) -> JsonObject:
        wid = _require_id("a workout", workout_id)
        if not isinstance(every_n, int) or every_n < 1:
            raise ValueError(f"every_n must be a positive integer, got {every_n!r}")
        return await self._get(f"/api/workout/{wid}/performance_graph", "performance_graph",
                               {"every_n": str(every_n)})

    async def ride_details(self, ride_id: str) -> JsonObject:
        if ride_id == NULL_RIDE_ID:
            raise ValueError("the all-zero ride id has no details; do not ask for it")
        rid = _require_id("a ride", ride_id, is_ride_id)
        return await self._get(f"/api/ride/{rid}/details", "ride_details")

    async def instructors_page(self, page: int, limit: int) -> WorkoutPage:
        params = {"limit": str(limit), "page": str(page)}
        return _page(await self._get("/api/instructor", "instructors", params),
                     "GET /api/instructor")

    async def _get(self, path: str, endpoint: str,
                   params: Mapping[str, str] | None = None) -> JsonObject:
        """GET with auth; after a 401 one shared re-authentication and one more try."""
        url, target = f"{self._base}{path}", self._url(path, params)
        sent = await self._auth.headers()
        try:
            return await self._http.request_json("GET", url, endpoint=endpoint, headers=sent,
                                                 target=target)
        except UnauthorizedError:
            await self._auth.handle_unauthorized(sent)
        sent = await self._auth.headers()
        try:
            return await self._http.request_json("GET", url, endpoint=endpoint, headers=sent,
                                                 target=target)
        except UnauthorizedError as exc:
            raise AuthError(
                "Peloton rejected the credentials again right after re-authenticating (HTTP 401); "
                "run again or check PELOTON_* variables") from exc

    def _url(self, path: str, params: Mapping[str, str] | None) -> URL:
        """``base_url + path`` with ``params`` as its query: the URL aiohttp would make of
        them, built from encoded parts instead of parsed (a few microseconds a request)."""
        if self._origin is None or not _PLAIN_PATH.fullmatch(path):
            url = URL(f"{self._base}{path}")
            return url.extend_query(params) if params else url
        origin = self._origin
        return URL.build(scheme=origin.scheme, authority=origin.raw_authority,
                         path=self._prefix + path,
                         query_string=_query_string(tuple(params.items())) if params else "",
                         encoded=True)


@functools.lru_cache(maxsize=64)
def _query_string(params: tuple[tuple[str, str], ...]) -> str:
    """``params`` encoded as aiohttp's ``params=`` does (yarl's ``extend_query``)."""
    return URL("/").extend_query(dict(params)).raw_query_string


def _page(body: JsonObject, where: str) -> WorkoutPage:
    data = body.get("data")
    if not isinstance(data, list):
        raise UnexpectedResponseError(f"{where}: response has no 'data' list; check api.base_url")
    items: list[JsonObject] = []
    for item in data:
        if not isinstance(item, dict):
            raise UnexpectedResponseError(
                f"{where}: 'data' holds a {type(item).__name__}, not objects")
        items.append(item)
    total, page_count, show_next = (body.get(k) for k in ("total", "page_count", "show_next"))
    return WorkoutPage(items, _as_int(total), _as_int(page_count),
                       show_next if isinstance(show_next, bool) else None)


@asynccontextmanager
async def open_api(
    config: Config,
    stats: RequestStats,
    *,
    sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    backoff_base: float = DEFAULT_BACKOFF_BASE_S,
    cache_path: Path | None = None,
    session: aiohttp.ClientSession | None = None,
) -> AsyncIterator[PelotonApi]:
    """One ClientSession, one limiter, one authenticator for the whole run; all closed on exit.

    ``session``: a ClientSession shared with other accounts' runs (one connection
    pool), made by ``open_session`` and closed by its owner; the limiter stays this run's.
    """
    limiter = AdaptiveLimiter(config.harvest.requests_per_second)
    async with contextlib.AsyncExitStack() as stack:
        if session is None:
            session = await stack.enter_async_context(open_session(config.harvest.concurrency))
        http = HttpClient(session, config.api, limiter, stats, sleep=sleep,
                          backoff_base=backoff_base)
        auth = make_authenticator(config, http, cache_path=cache_path)
        yield PelotonApi(http, auth, config)


def open_session(concurrency: int) -> aiohttp.ClientSession:
    """A ClientSession whose pool holds ``concurrency`` connections plus a few for auth and paging."""
    connector = aiohttp.TCPConnector(limit=concurrency + EXTRA_CONNECTIONS)
    # Cookies are sent explicitly by SessionAuth; a jar would resend edge cookies unasked.
    return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())
