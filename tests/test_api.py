"""PelotonApi: id validation before URLs, envelopes, the 401 -> refresh -> retry-once rule."""

from __future__ import annotations

import re
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from aiohttp import web
from anyio.streams.memory import MemoryObjectReceiveStream
from yarl import URL

from harvester.api import (
    NULL_RIDE_ID,
    PelotonApi,
    WorkoutRef,
    is_hex32,
    is_ride_id,
    open_api,
    workout_ref,
)
from harvester.auth import make_authenticator
from harvester.client import JsonObject, RequestStats
from harvester.config import ApiConfig, AuthConfig, Config, Credentials, HarvestConfig
from harvester.emulator.settings import DEFAULT_PASSWORD as DEMO_PASSWORD
from harvester.emulator.settings import DEFAULT_USERNAME as DEMO_USERNAME
from harvester.errors import (
    AuthError,
    LegacyLoginGoneError,
    NotFoundError,
    PermanentApiError,
    RateLimitedError,
)
from harvester.limiter import AdaptiveLimiter
from tests.conftest import MakeEmulator
from tests.test_auth import USER_ID, FakePeloton, config_for, peloton
from tests.test_backfill import assert_server_saw_the_pace, busiest_second
from tests.test_client import RecordingSleep, json_reply

WORKOUT_ID = "3a5af153444941c0aa54c52aee4726fa"
RIDE_ID = "fbd71d16462c473d8c7aae32b440a775"
GYM_RIDE_ID = "301aabb0-7139-42cb-b44e-786182646316"


@asynccontextmanager
async def api_on(tmp_path: Path, method: str = "password",
                 **knobs: object) -> AsyncIterator[tuple[FakePeloton, PelotonApi]]:
    async with peloton(**knobs) as (fake, http):
        config = config_for(fake.srv.url, tmp_path, method)
        yield fake, PelotonApi(http, make_authenticator(config, http), config)


@pytest.mark.parametrize(
    ("value", "hex32", "ride"),
    [
        (WORKOUT_ID, True, True),
        (NULL_RIDE_ID, True, True),
        (GYM_RIDE_ID, False, True),
        (WORKOUT_ID.upper(), False, False),
        (WORKOUT_ID + "\n", False, False),
        (WORKOUT_ID[:31], False, False),
        ("../../api/me" + "0" * 20, False, False),
        (GYM_RIDE_ID + "/details", False, False),
        (None, False, False),
        (123, False, False),
    ],
)
def test_id_shapes(value: object, hex32: bool, ride: bool) -> None:
    """hex32 means exactly 32 lower-case hex digits; ride ids also accept the gym UUID form."""
    assert is_hex32(value) is hex32
    assert is_ride_id(value) is ride


def test_workout_ref_reads_the_list_item() -> None:
    """A class workout yields id, created_at, status and the ride id."""
    item: dict[str, object] = {"id": WORKOUT_ID, "created_at": 1670191449, "status": "COMPLETE",
                               "ride": {"id": RIDE_ID}, "new_field": [1]}
    assert workout_ref(item) == WorkoutRef(WORKOUT_ID, 1670191449, "COMPLETE", RIDE_ID)


@pytest.mark.parametrize(
    ("ride", "expected"),
    [({"id": NULL_RIDE_ID, "title": "20 min Just Ride"}, None), (None, None),
     ({"id": GYM_RIDE_ID}, GYM_RIDE_ID)],
)
def test_workout_ref_ride_id(ride: object, expected: str | None) -> None:
    """Just Ride's all-zero id and a missing ride give None; a gym UUID is kept."""
    ref = workout_ref({"id": WORKOUT_ID, "ride": ride, "created_at": None, "status": 7})
    assert ref.ride_id == expected
    assert ref.created_at is None and ref.status is None


@pytest.mark.parametrize("bad", [None, "", "XYZ", WORKOUT_ID.upper(), 42, "../etc/passwd"])
def test_workout_ref_rejects_invalid_ids(bad: object) -> None:
    """An item whose id is not hex32 is PermanentApiError, for the pipeline to quarantine."""
    with pytest.raises(PermanentApiError, match="invalid id"):
        workout_ref({"id": bad})


async def test_invalid_ids_are_rejected_before_any_request(tmp_path: Path) -> None:
    """No malformed id ever reaches a URL: PermanentApiError and zero requests."""
    async with api_on(tmp_path) as (fake, api):
        calls = [api.workout("../me"), api.performance_graph("x" * 32, 5),
                 api.ride_details(RIDE_ID + "/../x"), api.overview("me"),
                 api.workouts_page(WORKOUT_ID + "?page=9", 0, 10)]
        for call in calls:
            with pytest.raises(PermanentApiError, match="invalid id"):
                await call
        with pytest.raises(ValueError, match="all-zero ride id"):
            await api.ride_details(NULL_RIDE_ID)
    assert fake.srv.seen == []


@pytest.mark.parametrize("base", [
    "http://127.0.0.1:8080", "https://api.onepeloton.com/", "https://API.OnePeloton.com:443",
    "http://[::1]:99/pre%20fix/", "https://bücher.example/p", "http://h/x/..", "http://h?x=1",
    "http://h#f"])
@pytest.mark.parametrize(("path", "params"), [
    ("/api/me", None),
    (f"/api/workout/{WORKOUT_ID}/performance_graph", {"every_n": "5"}),
    (f"/api/user/{USER_ID}/workouts", {"joins": "ride,ride.instructor", "limit": "100",
                                       "page": "3", "sort_by": "-created"}),
    (f"/api/ride/{GYM_RIDE_ID}/details", None),
    ("/api/ride/not plain", None),
])
def test_built_urls_are_the_ones_aiohttp_would_parse(base: str, path: str,
                                                      params: dict[str, str] | None) -> None:
    """The URL sent is what aiohttp made of base_url + path and ``params=`` before."""
    api = PelotonApi(None, None, Config(api=ApiConfig(base_url=base)))  # type: ignore[arg-type]
    parsed = URL(f"{base.rstrip('/')}{path}")
    expected = parsed.extend_query(params) if params else parsed
    built = api._url(path, params)
    assert built == expected
    assert str(built) == str(expected)


async def test_workouts_page_sends_the_documented_query(tmp_path: Path) -> None:
    """The list is asked newest first with rides joined, and its envelope is read."""
    async with api_on(tmp_path) as (fake, api):
        fake.srv.script(f"/api/user/{USER_ID}/workouts", json_reply(200, {
            "data": [{"id": WORKOUT_ID}], "total": 1234, "page_count": 13, "show_next": True,
            "limit": 100, "page": 2}))
        page = await api.workouts_page(USER_ID, 2, 100)
    assert page.items == [{"id": WORKOUT_ID}]
    assert (page.total, page.page_count, page.show_next) == (1234, 13, True)
    seen = fake.srv.seen[-1]
    assert seen.query == {"joins": "ride,ride.instructor", "limit": "100", "page": "2",
                          "sort_by": "-created"}
    assert seen.headers["Authorization"].startswith("Bearer ")


@pytest.mark.parametrize("body", [{"detail": "x"}, {"data": None}, {"data": {"a": 1}},
                                  {"data": [1, 2]}])
async def test_page_without_a_data_list_is_permanent(tmp_path: Path,
                                                     body: dict[str, object]) -> None:
    """A 200 page lacking a 'data' list of objects is PermanentApiError, not retried."""
    async with api_on(tmp_path) as (fake, api):
        fake.srv.script("/api/instructor", json_reply(200, body))
        with pytest.raises(PermanentApiError, match="'data'"):
            await api.instructors_page(0, 100)
    assert fake.srv.count("/api/instructor") == 1


async def test_endpoints_use_documented_paths_and_stats_names(tmp_path: Path) -> None:
    """Each call hits its documented path and counts under its endpoint name."""
    async with api_on(tmp_path) as (fake, api):
        for path in (f"/api/user/{USER_ID}/overview", f"/api/workout/{WORKOUT_ID}",
                     f"/api/workout/{WORKOUT_ID}/performance_graph",
                     f"/api/ride/{GYM_RIDE_ID}/details"):
            fake.srv.script(path, json_reply(200, {"path": path}))
        assert (await api.overview(USER_ID))["path"] == f"/api/user/{USER_ID}/overview"
        await api.workout(WORKOUT_ID)
        await api.performance_graph(WORKOUT_ID, 5)
        await api.ride_details(GYM_RIDE_ID)
        stats = api._http.stats
    queries = {s.path: s.query for s in fake.srv.seen}
    assert queries[f"/api/user/{USER_ID}/overview"] == {"version": "1"}
    assert queries[f"/api/workout/{WORKOUT_ID}/performance_graph"] == {"every_n": "5"}
    assert stats.by_endpoint == {"token": 1, "overview": 1, "workout": 1,
                                 "performance_graph": 1, "ride_details": 1}


async def test_unknown_ride_is_not_found(tmp_path: Path) -> None:
    """A gym ride whose details are 404 raises NotFoundError once, for the pipeline to record."""
    async with api_on(tmp_path) as (fake, api):
        fake.srv.script(f"/api/ride/{GYM_RIDE_ID}/details",
                        json_reply(404, {"status": 404, "message": "Ride not found"}))
        with pytest.raises(NotFoundError, match="Ride not found"):
            await api.ride_details(GYM_RIDE_ID)
    assert fake.srv.count(f"/api/ride/{GYM_RIDE_ID}/details") == 1


async def test_user_id_comes_from_me_and_is_cached(tmp_path: Path) -> None:
    """With OAuth tokens that do not name the account, the user id is read from /api/me once."""
    async with api_on(tmp_path) as (fake, api):
        assert await api.user_id() == USER_ID
        assert await api.user_id() == USER_ID
    assert fake.srv.count("/api/me") == 1


@pytest.mark.parametrize(("claim", "me_calls"),
                         [(USER_ID, 0), ("../../api/me", 1), (USER_ID.upper(), 1), (123, 1), ("", 1)])
async def test_user_id_comes_from_the_token_claim_when_it_is_an_id(
    tmp_path: Path, claim: object, me_calls: int
) -> None:
    """An access token naming the account spares /api/me; a claim that is not an id does not."""
    async with api_on(tmp_path, user_claim=claim) as (fake, api):
        assert await api.user_id() == USER_ID
        assert await api.user_id() == USER_ID
    assert fake.srv.count("/api/me") == me_calls


async def test_user_id_comes_free_with_a_session_login(tmp_path: Path) -> None:
    """With the legacy session the login response's user id is used; /api/me is not called."""
    async with api_on(tmp_path, "session") as (fake, api):
        assert await api.user_id() == USER_ID
    assert fake.srv.count("/api/me") == 0


async def test_invalid_user_id_from_me_is_permanent(tmp_path: Path) -> None:
    """/api/me answering a malformed id is PermanentApiError, never used in a URL."""
    async with api_on(tmp_path) as (fake, api):
        fake.srv.script("/api/me", json_reply(200, {"id": "../../x"}))
        with pytest.raises(PermanentApiError, match="invalid user id"):
            await api.user_id()


async def test_32_concurrent_401s_cause_one_refresh_then_each_retries(tmp_path: Path) -> None:
    """All 32 workers get 401, one refresh grant happens, and every request succeeds."""
    async with api_on(tmp_path) as (fake, api):
        await api.me()
        fake.access.clear()  # the server forgets the access token
        results: list[dict[str, object]] = []

        async def call() -> None:
            results.append(await api.me())

        async with anyio.create_task_group() as tg:
            for _ in range(32):
                tg.start_soon(call)
    assert len(results) == 32 and all(r["id"] == USER_ID for r in results)
    assert fake.grants == {"password": 1, "refresh_token": 1}
    assert fake.srv.count("/api/me") == 1 + 32 + 32


async def test_second_401_is_an_auth_error(tmp_path: Path) -> None:
    """401 again after the shared refresh: AuthError telling the user what to do."""
    async def always_401(request: web.Request) -> web.StreamResponse:
        return json_reply(401, {"status": 401, "message": "Not logged in"})

    async with api_on(tmp_path) as (fake, api):
        fake.srv.routes["/api/me"] = always_401
        with pytest.raises(AuthError, match="run again or check PELOTON_"):
            await api.me()
    assert fake.srv.count("/api/me") == 2
    assert fake.grants == {"password": 1, "refresh_token": 1}


async def test_open_api_shares_one_session_and_closes_it(tmp_path: Path) -> None:
    """open_api wires client, limiter and auth; token and data requests count in one stats."""
    stats = RequestStats()
    async with peloton() as (fake, _):
        config: Config = config_for(fake.srv.url, tmp_path)
        async with open_api(config, stats) as api:
            assert await api.user_id() == USER_ID
            session = api._http._session
            assert session.connector is not None and session.connector.limit == 8 + 4
        assert session.closed
    assert stats.by_endpoint == {"token": 1, "me": 1} and stats.requests == 2


# --- against the emulator ----------------------------------------------------------------

def emu_config(url: str, tmp_path: Path, method: str = "password", *, rps: float = 2000.0,
               timeout_s: float = 5.0, max_attempts: int = 6,
               password: str = DEMO_PASSWORD) -> Config:
    return Config(
        api=ApiConfig(base_url=url, auth_url=url, timeout_s=timeout_s, max_attempts=max_attempts),
        auth=AuthConfig(method=method, token_cache=str(tmp_path / "tokens.json")),
        harvest=HarvestConfig(concurrency=8, requests_per_second=rps),
        credentials=Credentials(username=DEMO_USERNAME, password=password),
    )


async def all_refs(api: PelotonApi) -> list[WorkoutRef]:
    user_id, refs, page = await api.user_id(), [], 0
    while True:
        listing = await api.workouts_page(user_id, page, 25)
        refs += [workout_ref(item) for item in listing.items]
        if not listing.show_next:
            return refs
        page += 1


async def fetch_each(api: PelotonApi, refs: list[WorkoutRef]) -> list[JsonObject]:
    """Detail + graph for every ref with 8 workers over a bounded stream."""
    got: list[JsonObject] = []
    send, receive = anyio.create_memory_object_stream[WorkoutRef](8)

    async def worker(stream: MemoryObjectReceiveStream[WorkoutRef]) -> None:
        async with stream:
            async for ref in stream:
                got.append(await api.workout(ref.id))
                got.append(await api.performance_graph(ref.id, 5))

    async with anyio.create_task_group() as tg:
        async with receive:
            for _ in range(8):
                tg.start_soon(worker, receive.clone())
        async with send:
            for ref in refs:
                await send.send(ref)
    return got


async def test_emulator_sweep_survives_hostile_faults(make_emulator: MakeEmulator,
                                                      tmp_path: Path) -> None:
    """Every workout and graph arrives despite 5xx, resets, empty, truncated and slow answers."""
    emu = await make_emulator(workouts=60, faults="hostile", slow_s=2.0)
    stats = RequestStats()
    config = emu_config(emu.url, tmp_path, timeout_s=0.5, max_attempts=12)
    async with open_api(config, stats, sleep=RecordingSleep()) as api:
        refs = await all_refs(api)
        got = await fetch_each(api, refs)
    assert len({r.id for r in refs}) == 60 and len(got) == 120
    assert sum(emu.stats.faults.values()) > 0 and stats.retries > 0
    assert stats.failures == 0


async def test_emulator_cloudflare_429s_lower_the_rate_and_all_succeed(
        make_emulator: MakeEmulator, tmp_path: Path) -> None:
    """Plain-text 1015 floods are backed off; the limiter slows and every request completes."""
    emu = await make_emulator(workouts=40, rate_limit=100.0, rate_burst=5.0)
    stats = RequestStats()
    config = emu_config(emu.url, tmp_path, rps=400.0, max_attempts=10)
    async with open_api(config, stats, backoff_base=0.01) as api:
        refs = await all_refs(api)
        got = await fetch_each(api, refs)
    assert len(got) == 80 and stats.failures == 0
    assert stats.throttled > 0 and emu.stats.throttled == stats.throttled


@pytest.mark.parametrize(("style", "low", "high"), [("retry-after", 1.0, 2.0),
                                                     ("http-date", 0.0, 3.0)])
async def test_emulator_retry_after_styles_are_parsed(make_emulator: MakeEmulator,
                                                      tmp_path: Path, style: str,
                                                      low: float, high: float) -> None:
    """The emulator's Retry-After (seconds or HTTP date) becomes the backoff, not a guess."""
    emu = await make_emulator(workouts=5, rate_limit=0.5, rate_burst=2.0, rate_limit_style=style)
    sleep = RecordingSleep()
    async with open_api(emu_config(emu.url, tmp_path, max_attempts=2), RequestStats(),
                        sleep=sleep) as api:
        await api.me()  # the token and this take the burst
        with pytest.raises(RateLimitedError):
            await api.me()
    assert len(sleep.calls) == 1 and low <= sleep.calls[0] <= high


async def test_emulator_expired_token_gets_one_shared_refresh(make_emulator: MakeEmulator,
                                                              tmp_path: Path) -> None:
    """32 concurrent requests all 401 after the server's clock jumps; one refresh serves all."""
    emu = await make_emulator(workouts=5, token_ttl=3600.0)
    stats = RequestStats()
    async with open_api(emu_config(emu.url, tmp_path), stats) as api:
        await api.me()
        emu.state.clock_offset += 7200  # server now sees our token as expired
        async with anyio.create_task_group() as tg:
            for _ in range(32):
                tg.start_soon(api.me)
    assert dict(emu.stats.token_grants) == {"password": 1, "refresh_token": 1}
    assert emu.stats.by_endpoint["me"] == 1 + 32 + 32 and stats.reauths == 1


async def test_emulator_token_cache_spares_the_next_run_a_login(make_emulator: MakeEmulator,
                                                                tmp_path: Path) -> None:
    """A second run with a fresh cached token sends no token request at all."""
    emu = await make_emulator(workouts=5)
    for _ in range(2):
        async with open_api(emu_config(emu.url, tmp_path), RequestStats()) as api:
            await api.me()
    assert dict(emu.stats.token_grants) == {"password": 1}
    assert stat.S_IMODE((tmp_path / "tokens.json").stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("method", "legacy", "password", "expected", "text"),
    [("password", "ok", "x-Wr0ng-pw", AuthError, "invalid_grant"),
     ("session", "ok", "x-Wr0ng-pw", AuthError, "wrong username or password"),
     ("session", "gone", DEMO_PASSWORD, LegacyLoginGoneError, 'auth.method = "login"')],
)
async def test_emulator_auth_failures_are_clear(make_emulator: MakeEmulator, tmp_path: Path,
                                                method: str, legacy: str, password: str,
                                                expected: type[AuthError], text: str) -> None:
    """Each way a login fails on the emulator gives its own actionable AuthError."""
    emu = await make_emulator(workouts=5, legacy_login=legacy)
    config = emu_config(emu.url, tmp_path, method, password=password)
    async with open_api(config, RequestStats()) as api:
        with pytest.raises(expected, match=re.escape(text)) as info:
            await api.me()
    assert password not in str(info.value) or password == DEMO_PASSWORD


async def test_emulator_session_login_supplies_user_id(make_emulator: MakeEmulator,
                                                       tmp_path: Path) -> None:
    """The legacy login works against the emulator and its user id needs no /api/me."""
    emu = await make_emulator(workouts=5)
    async with open_api(emu_config(emu.url, tmp_path, "session"), RequestStats()) as api:
        user_id = await api.user_id()
        page = await api.workouts_page(user_id, 0, 100)
    assert is_hex32(user_id) and len(page.items) == 5
    assert emu.stats.by_endpoint.get("me", 0) == 0 and emu.stats.logins == 1


async def test_emulator_sees_no_second_with_more_than_the_rate(make_emulator: MakeEmulator,
                                                               tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """At 100 requests/s the limiter releases at most 100 in any 1 s window, and the server counts no more
    than that plus what the measured delivery lag explains (never a burst)."""
    released: list[float] = []
    check_window = AdaptiveLimiter._within_window

    async def recording(self: AdaptiveLimiter, slot: float) -> float:
        at = await check_window(self, slot)
        released.append(at)
        return at

    monkeypatch.setattr(AdaptiveLimiter, "_within_window", recording)
    emu = await make_emulator(workouts=150)
    async with open_api(emu_config(emu.url, tmp_path, rps=100.0), RequestStats()) as api:
        refs = await all_refs(api)
        async with anyio.create_task_group() as tg:
            for ref in refs[:110]:
                tg.start_soon(api.workout, ref.id)
    arrivals = sorted(emu.stats.arrivals)
    assert len(arrivals) == len(released) > 110
    assert 90 <= busiest_second(sorted(released)) <= 100
    assert_server_saw_the_pace(arrivals, released)
