"""The HTTP face of the emulator: routes, auth checks, and the misbehaviour middleware."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from harvester.emulator import admin, universal
from harvester.emulator.account import Account
from harvester.emulator.catalog import instructor_json, metadata_mappings, ride_json
from harvester.emulator.middleware import misbehave
from harvester.emulator.oauth import read_body, token
from harvester.emulator.render import (
    instructor_page,
    me,
    overview,
    page_envelope,
    public_profile,
    workout_detail,
)
from harvester.emulator.series import performance_graph, ride_details
from harvester.emulator.settings import EmulatorSettings
from harvester.emulator.state import STATE, CacheKey, EmulatorState

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
DEFAULT_EVERY_N = 5
SESSION_COOKIE = "peloton_session_id"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

NOT_LOGGED_IN = {
    "status": 401,
    "error_code": 3020,
    "subcode": None,
    "message": "Not logged in",
    "details": None,
}
LOGIN_FAILED = {
    "status": 401,
    "error_code": 3010,
    "subcode": None,
    "message": "Login failed",
    "details": None,
}
LOGIN_GONE = {"status": 403, "message": "Access forbidden. Endpoint no longer accepting requests."}
# Inferred: clients that omit the header on /overview report a 403.
PLATFORM_REQUIRED = {
    "status": 403,
    "error_code": 3080,
    "subcode": None,
    "message": "Forbidden",
    "details": "Peloton-Platform header required",
}
ERROR_CODES = {"Workout": 3030, "Ride": 3040, "Instructor": 3050, "User": 3060}


def json_response(payload: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status, content_type="application/json")


def body_response(body: bytes) -> web.Response:
    return web.Response(body=body, content_type="application/json")


def not_found(what: str) -> web.Response:
    return json_response(
        {
            "status": 404,
            "error_code": ERROR_CODES[what],
            "subcode": None,
            "message": f"{what} not found",
            "details": None,
        },
        404,
    )


def bad_request(message: str) -> web.Response:
    return json_response(
        {"status": 400, "error_code": 3000, "subcode": None, "message": message, "details": None},
        400,
    )


def cached(state: EmulatorState, key: CacheKey, build: Callable[[], Any]) -> web.Response:
    """Serve encoded bytes from the cache, rendering and encoding once."""
    body = state.cache.get(key)
    if body is None:
        body = orjson.dumps(build())
        state.cache.put(key, body)
    return body_response(body)


ACCOUNT: web.RequestKey[Account] = web.RequestKey("emulator_account", Account)


def authed_account(request: web.Request, state: EmulatorState) -> Account | None:
    """The member a request's bearer token or session cookie belongs to, or None."""
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return state.bearer_account(auth[7:].strip())
    session = request.cookies.get(SESSION_COOKIE)
    return state.session_account(session) if session is not None else None


def privileged(handler: Handler) -> Handler:
    async def checked(request: web.Request) -> web.StreamResponse:
        account = authed_account(request, request.app[STATE])
        if account is None:
            return json_response(NOT_LOGGED_IN, 401)
        request[ACCOUNT] = account
        return await handler(request)

    return checked


def int_param(request: web.Request, name: str, default: int) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        return None


def page_params(request: web.Request) -> tuple[int, int] | None:
    page = int_param(request, "page", 0)
    limit = int_param(request, "limit", DEFAULT_LIMIT)
    if page is None or limit is None or page < 0:
        return None
    return page, max(1, min(MAX_LIMIT, limit))


# -- auth ------------------------------------------------------------------


async def login(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    if state.settings.legacy_login == "gone":
        return json_response(LOGIN_GONE, 403)
    body = await read_body(request) or {}
    index = state.account_index(body.get("username_or_email"), body.get("password"))
    if index is None:
        return json_response(LOGIN_FAILED, 401)
    state.stats.logins += 1
    session = state.issuers[index].open_session()
    response = json_response(
        {"session_id": session, "user_id": state.accounts[index].user_id, "pubsub_session": {}}
    )
    response.set_cookie(SESSION_COOKIE, session, httponly=True, path="/")
    return response


# -- data ------------------------------------------------------------------


@privileged
async def get_me(request: web.Request) -> web.StreamResponse:
    state, account = request.app[STATE], request[ACCOUNT]
    return cached(state, ("me", account.user_id, account.generation), lambda: me(account))


def own_user(request: web.Request, account: Account) -> bool:
    uid = request.match_info["id"]
    return uid in (account.user_id, account.username.split("@")[0])


@privileged
async def get_user(request: web.Request) -> web.StreamResponse:
    state, account = request.app[STATE], request[ACCOUNT]
    if not own_user(request, account):
        return not_found("User")
    return cached(state, ("user", account.user_id, account.generation),
                  lambda: public_profile(account))


@privileged
async def get_overview(request: web.Request) -> web.StreamResponse:
    state, account = request.app[STATE], request[ACCOUNT]
    if request.headers.get("Peloton-Platform", "").lower() != "web":
        return json_response(PLATFORM_REQUIRED, 403)
    if request.match_info["id"] != account.user_id:
        return not_found("User")
    return cached(state, ("overview", account.user_id, account.generation),
                  lambda: overview(account))


@privileged
async def list_workouts(request: web.Request) -> web.StreamResponse:
    state, account = request.app[STATE], request[ACCOUNT]
    if request.match_info["id"] != account.user_id:
        return not_found("User")
    params = page_params(request)
    if params is None:
        return bad_request("Invalid page or limit")
    state.note_list_request()
    page, limit = params
    joins = frozenset(j.strip() for j in request.query.get("joins", "").split(",") if j.strip())
    extra = state.settings.extra_field

    def build() -> Any:
        return page_envelope(account, page, limit, joins, extra, state.summary(account))

    fault = state.take_page_fault(page)
    if fault is not None:
        return json_response(faulty_page(fault, account, page, limit, joins, extra, state))

    live = any(w.end_time is None for w in account.workouts[page * limit : (page + 1) * limit])
    if live:  # an in-progress workout changes under the client: never cache it
        return json_response(build())
    key = ("workouts", account.user_id, account.generation, page, limit, joins, extra)
    return cached(state, key, build)


@privileged
async def get_workout(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    found = state.find_workout(request.match_info["id"])
    if found is None:
        return not_found("Workout")
    owner, w = found
    extra = state.settings.extra_field
    if w.end_time is None:
        return json_response(workout_detail(owner, w, extra))
    return cached(state, ("workout", w.id, extra), lambda: workout_detail(owner, w, extra))


@privileged
async def get_graph(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    found = state.find_workout(request.match_info["id"])
    if found is None:
        return not_found("Workout")
    owner, w = found
    every_n = int_param(request, "every_n", DEFAULT_EVERY_N)
    if every_n is None:
        return bad_request("Invalid every_n")
    every_n = max(1, every_n)
    web_platform = (
        w.kind == "outdoor" and request.headers.get("Peloton-Platform", "").lower() == "web"
    )
    if w.end_time is None:
        return json_response(performance_graph(owner, w, every_n, web_platform))
    return cached(
        state,
        ("graph", w.id, every_n, web_platform),
        lambda: performance_graph(owner, w, every_n, web_platform),
    )


async def get_ride(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    ride = state.account.rides.get(request.match_info["id"])
    if ride is None:  # the all-zeros stand-in, gym UUIDs and malformed ids alike
        return not_found("Ride")
    return cached(state, ("ride", ride.id), lambda: ride_json(ride, True))


async def get_ride_details(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    ride = state.account.rides.get(request.match_info["id"])
    if ride is None:
        return not_found("Ride")
    return cached(state, ("ride_details", ride.id), lambda: ride_details(state.account, ride))


async def list_instructors(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    params = page_params(request)
    if params is None:
        return bad_request("Invalid page or limit")
    page, limit = params
    return cached(
        state, ("instructors", page, limit), lambda: instructor_page(state.account, page, limit)
    )


async def get_instructor(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    ins = state.account.instructors_by_id.get(request.match_info["id"])
    if ins is None:
        return not_found("Instructor")
    return cached(state, ("instructor", ins.id), lambda: instructor_json(ins))


async def get_mappings(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    return cached(
        state, ("metadata_mappings",), lambda: metadata_mappings(state.account.instructors)
    )


def faulty_page(
    fault: str, account: Account, page: int, limit: int, joins: frozenset[str], extra: bool,
    state: EmulatorState,
) -> dict[str, Any]:
    """A page as a broken proxy or a buggy server gives it (admin.PAGE_FAULTS)."""
    if fault == "duplicate":  # the previous page again, as when `page` is dropped
        return page_envelope(account, max(0, page - 1), limit, joins, extra, state.summary())
    envelope = page_envelope(account, page, limit, joins, extra, state.summary())
    items = envelope["data"]
    if items:  # "damaged": a record with an id that is not one, one in milliseconds
        items[0] = {**items[0], "id": "not-an-id"}
        if len(items) > 1:
            items[-1] = {**items[-1], "created_at": int(items[-1]["created_at"]) * 1000}
    return envelope


def make_app(settings: EmulatorSettings | None = None) -> web.Application:
    """The emulator as an aiohttp application (state in app[STATE])."""
    app = web.Application(middlewares=[misbehave])
    app[STATE] = EmulatorState(settings or EmulatorSettings())
    r = app.router
    r.add_post("/oauth/token", token, name="token")
    r.add_post("/auth/login", login, name="login")
    r.add_get("/api/me", get_me, name="me")
    r.add_get("/api/user/{id}", get_user, name="user")
    r.add_get("/api/user/{id}/overview", get_overview, name="overview")
    r.add_get("/api/user/{id}/workouts", list_workouts, name="workouts")
    r.add_get("/api/workout/{id}", get_workout, name="workout")
    r.add_get("/api/workout/{id}/performance_graph", get_graph, name="performance_graph")
    r.add_get("/api/ride/metadata_mappings", get_mappings, name="metadata_mappings")
    r.add_get("/api/ride/{id}", get_ride, name="ride")
    r.add_get("/api/ride/{id}/details", get_ride_details, name="ride_details")
    r.add_get("/api/instructor", list_instructors, name="instructors")
    r.add_get("/api/instructor/{id}", get_instructor, name="instructor")
    universal.add_routes(app)
    admin.add_routes(app)
    return app
