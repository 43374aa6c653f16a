"""Signing in with method "login": Universal Login steps, every failure, the token store, rotation."""

from __future__ import annotations

import base64
import stat
import time
from dataclasses import replace
from pathlib import Path

import anyio
import orjson
import pytest
from aiohttp import web

from harvester.api import open_api
from harvester.auth import Clocks, make_authenticator, tokens, universal
from harvester.client import RequestStats
from harvester.config import Config, Credentials
from harvester.errors import (
    AuthError,
    LoginAnomalyError,
    LoginRetryLaterError,
    SessionEndedError,
    UnexpectedResponseError,
    first_harvester_error,
)
from harvester.run import run_harvest
from tests.conftest import MakeEmulator
from tests.harness import PASSWORD, USERNAME, harvest_config
from tests.test_client import client, serve

TWO_DAYS = 2 * 86400.0


async def sign_in(config: Config) -> tuple[str, RequestStats]:
    stats = RequestStats()
    async with open_api(config, stats) as api:
        return await api.user_id(), stats


async def test_headless_sign_in_stores_private_tokens_and_knows_the_account(
        make_emulator: MakeEmulator, tmp_path: Path) -> None:
    """Steps 1-4 once; tokens stored 0600 without the password; the id from the token."""
    emulator = await make_emulator(workouts=3)
    user_id, stats = await sign_in(harvest_config(emulator.url, tmp_path))
    assert user_id == emulator.account.user_id
    assert stats.by_endpoint == {"login": 9, "token": 1}  # 6 on the auth host, 3 on auth-orca
    store = tmp_path / "tokens.json"
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    assert PASSWORD.encode() not in store.read_bytes() and b"refresh_token" in store.read_bytes()
    seen = emulator.stats_snapshot()
    assert seen["token_grants"] == {"password": 0, "refresh_token": 0, "authorization_code": 1}
    again, stats = await sign_in(harvest_config(emulator.url, tmp_path))
    assert again == user_id and stats.requests == 0  # the next run starts from the store


@pytest.mark.parametrize(("auth_host", "orca_host"), [("127.0.0.1", "localhost"),
                                                      ("localhost", "127.0.0.1")])
async def test_cookie_jar_keeps_two_hosts_apart(make_emulator: MakeEmulator, tmp_path: Path,
                                                auth_host: str, orca_host: str) -> None:
    """The chain crosses an IP host and a named one, each checking its own `did` cookie."""
    emulator = await make_emulator(workouts=1, orca_host=orca_host)
    url = emulator.url.replace("127.0.0.1", auth_host)
    assert (await sign_in(harvest_config(url, tmp_path)))[0] == emulator.account.user_id
    assert emulator.stats_snapshot()["by_endpoint"]["orca_continue"] == 1


@pytest.mark.parametrize(("knobs", "error", "words", "code"), [
    ({"password": "x-Wr0ng"}, AuthError, "wrong email or password", 4),
    ({"verification": True}, AuthError, "login --browser", 4),
    ({"anomalies": 2}, LoginAnomalyError, "sometimes transient", 75),
    ({"missing_csrf": 2}, LoginAnomalyError, "no _csrf cookie", 75),
])
async def test_sign_in_failures_are_one_clear_error(
        make_emulator: MakeEmulator, tmp_path: Path, knobs: dict[str, object],
        error: type[AuthError], words: str, code: int) -> None:
    """Wrong password, a verification step, repeated anomalies: each its error and exit code."""
    password = str(knobs.pop("password", PASSWORD))
    emulator = await make_emulator(workouts=1, **knobs)
    config = harvest_config(emulator.url, tmp_path)
    config = replace(config, credentials=Credentials(username=USERNAME, password=password))
    with pytest.raises(error) as info:
        await sign_in(config)
    assert words in str(info.value) and info.value.exit_code == code
    assert password not in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "tokens.json").exists()


@pytest.mark.parametrize("knob", ["anomalies", "missing_csrf"])
async def test_one_transient_anomaly_is_retried_once(make_emulator: MakeEmulator,
                                                     tmp_path: Path, knob: str) -> None:
    """One AnomalyDetected or one missing _csrf: the second attempt signs in."""
    emulator = await make_emulator(workouts=1, **{knob: 1})
    assert (await sign_in(harvest_config(emulator.url, tmp_path)))[0] == emulator.account.user_id
    assert emulator.stats_snapshot()["by_endpoint"]["authorize"] == 2


async def test_too_many_attempts_says_wait_and_exits_75(make_emulator: MakeEmulator,
                                                        tmp_path: Path) -> None:
    """Auth0's brute-force block (429 too_many_attempts) is a wait, not a wrong password."""
    emulator = await make_emulator(workouts=1, lockout_after=1)
    emulator.state.login.failures = 1
    with pytest.raises(LoginRetryLaterError, match="too_many_attempts") as info:
        await sign_in(harvest_config(emulator.url, tmp_path))
    assert info.value.exit_code == 75
    assert emulator.stats_snapshot()["by_endpoint"]["usernamepassword_login"] == 1  # no retry


async def test_password_grant_refused_for_the_client_says_use_login(
        make_emulator: MakeEmulator, tmp_path: Path) -> None:
    """unauthorized_client from the password grant points to auth.method = "login"."""
    emulator = await make_emulator(workouts=1)
    config = harvest_config(emulator.url, tmp_path, auth__method="password",
                            auth__client_id="WVoJxVDdPoFx4RNewvvg6ch2mZ7bwnsM")
    with pytest.raises(AuthError, match=r'unauthorized_client.*auth\.method = "login"'):
        await sign_in(config)


async def test_a_server_that_is_not_auth0_is_a_config_error(tmp_path: Path) -> None:
    """An HTML page without a transaction at /authorize: exit 2 naming api.auth_url."""
    async with serve() as srv:
        srv.routes["/authorize"] = lambda _r: page("<html>hi</html>")
        config = harvest_config(srv.url, tmp_path)
        with pytest.raises(UnexpectedResponseError, match=r"api\.auth_url") as info:
            await sign_in(config)
    assert info.value.exit_code == 2


async def page(text: str) -> web.StreamResponse:
    return web.Response(text=text, content_type="text/html")


async def moved(location: str) -> web.StreamResponse:
    return web.Response(status=302, headers={"Location": location})


async def loop_forever(request: web.Request) -> web.StreamResponse:
    return await moved("/again")


@pytest.mark.parametrize(("routes", "words"), [
    ({"/login/callback": loop_forever, "/again": loop_forever}, "more than 20 redirects"),
    ({"/login/callback": lambda _r: page("done")}, "stopped at"),
    ({"/login/callback": lambda _r: moved("http://example.com/x")}, "refused"),
])
async def test_a_chain_that_never_reaches_the_callback_fails_clearly(
        tmp_path: Path, routes: dict[str, object], words: str) -> None:
    """Endless redirects, a page instead of a redirect, plain http off loopback: AuthError."""
    async with serve() as srv, client() as rig, universal.open_browser() as session:
        srv.routes.update(routes)  # type: ignore[arg-type]
        tenant = universal.Tenant(srv.url, "WVoJxVDdPoFx4RNewvvg6ch2mZ7bwnsM")
        form = universal.HiddenForm(f"{srv.url}/login/callback", {"wa": "wsignin1.0"})
        with pytest.raises(AuthError, match=words):
            await universal.post_form(universal.Browser(rig.http, session), tenant, form)
    assert len(srv.seen) <= universal.DEFAULT_MAX_HOPS + 1


def test_callback_state_is_checked_and_secrets_stay_out_of_messages() -> None:
    """Another sign-in's state, an error answer or no code: AuthError without code or state."""
    tenant = universal.Tenant("https://auth.example", "c")
    pkce = universal.new_pkce()
    base = universal.REDIRECT_URI
    assert universal.code_from_callback(f"{base}?code=C0DE&state={pkce.state}", tenant, pkce) == "C0DE"
    for url, words in [(f"{base}?code=S3CRETC0DE&state=other", "does not match"),
                       (f"{base}?error=access_denied&state={pkce.state}", "access_denied"),
                       (f"{base}?state={pkce.state}", "no code"),
                       ("https://elsewhere.example/cb?code=S3CRETC0DE", "not the sign-in callback")]:
        with pytest.raises(AuthError, match=words) as info:
            universal.code_from_callback(url, tenant, pkce)
        assert "S3CRETC0DE" not in str(info.value) and pkce.state not in str(info.value)


def test_form_parser_decodes_entities_and_config_reader_tolerates_garbage() -> None:
    """Hidden inputs come back entity-decoded; a page without injectedConfig gives {}."""
    page = (b'<form method="post" action="https://a.example/login/callback">'
            b'<input type="hidden" name="wctx" value="{&#34;state&#34;:&#34;T&amp;1&#34;}">'
            b'<input type="hidden" name="wa" value="wsignin1.0"/></form>')
    form = universal.parse_form(page)
    assert form is not None and form.fields == {"wctx": '{"state":"T&1"}', "wa": "wsignin1.0"}
    assert universal.injected_config(b"<html>no config</html>") == {}
    assert universal.injected_config(b"window.injectedConfig = atob('!!!notbase64!!!!!!!')") == {}


async def test_code_exchange_failure_is_an_auth_error(make_emulator: MakeEmulator) -> None:
    """A code the server does not know: 'refused the authorization code', no code shown."""
    emulator = await make_emulator(workouts=1)
    tenant = universal.Tenant(emulator.url, "WVoJxVDdPoFx4RNewvvg6ch2mZ7bwnsM")
    async with client() as rig:
        with pytest.raises(AuthError, match="refused the authorization code") as info:
            await universal.exchange_code(rig.http, tenant, "N0T-A-C0DE", universal.new_pkce())
    assert "N0T-A-C0DE" not in str(info.value)


# --- rotation, expiry, the store -----------------------------------------------------------

async def test_host_clock_days_ahead_costs_no_refresh(make_emulator: MakeEmulator, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Wall clock 2 days ahead: a 300-workout backfill and a second run refresh zero times."""
    skewed = Clocks(wall=lambda: time.time() + TWO_DAYS)
    monkeypatch.setattr(tokens, "DEFAULT_CLOCKS", skewed)
    emulator = await make_emulator(workouts=300)
    config = harvest_config(emulator.url, tmp_path, harvest__concurrency=32)
    assert (await run_harvest(config, "backfill")).exit_code == 0
    assert (await run_harvest(config, "refresh")).exit_code == 0
    grants = emulator.stats_snapshot()["token_grants"]
    assert grants == {"password": 0, "refresh_token": 0, "authorization_code": 1}


async def test_expiry_is_judged_on_the_monotonic_clock(make_emulator: MakeEmulator,
                                                       tmp_path: Path) -> None:
    """Past expires_in on the monotonic clock: one refresh; the wall clock alone moves nothing."""
    emulator = await make_emulator(workouts=1, token_ttl=100.0)
    mono, wall = [time.monotonic()], [time.time()]
    clocks = Clocks(monotonic=lambda: mono[0], wall=lambda: wall[0])
    config = harvest_config(emulator.url, tmp_path)
    async with open_api(config, RequestStats()) as api:
        auth = make_authenticator(config, api._http, clocks=clocks)
        first = await auth.headers()
        wall[0] += TWO_DAYS
        assert await auth.headers() == first
        mono[0] += 95  # inside the 10 % margin of a 100 s token
        assert await auth.headers() != first
    assert emulator.stats_snapshot()["token_grants"]["refresh_token"] == 1


async def test_refused_refresh_signs_in_again_when_credentials_are_set(
        make_emulator: MakeEmulator, tmp_path: Path) -> None:
    """The session revoked (invalid_grant): with the password in the environment, a full login."""
    emulator = await make_emulator(workouts=5, token_ttl=3600.0)
    config = harvest_config(emulator.url, tmp_path)
    await sign_in(config)
    emulator.state.tokens.revoke_all()
    emulator.advance_clock(7200)
    assert (await run_harvest(config, "backfill")).exit_code == 0
    grants = emulator.stats_snapshot()["token_grants"]
    assert grants == {"password": 0, "refresh_token": 0, "authorization_code": 2}


async def test_refused_refresh_without_credentials_says_run_login(
        make_emulator: MakeEmulator, tmp_path: Path) -> None:
    """The session revoked and no password: SessionEndedError telling to run `login`."""
    emulator = await make_emulator(workouts=5, token_ttl=3600.0)
    await sign_in(harvest_config(emulator.url, tmp_path))
    emulator.state.tokens.revoke_all()
    emulator.advance_clock(7200)
    config = replace(harvest_config(emulator.url, tmp_path), credentials=Credentials())
    with pytest.raises(BaseException) as info:
        await run_harvest(config, "backfill")
    error = first_harvester_error(info.value)
    assert isinstance(error, SessionEndedError) and error.exit_code == 4
    assert "run `peloton-harvester login`" in str(error)


async def test_two_clients_sharing_a_store_refresh_once(make_emulator: MakeEmulator,
                                                        tmp_path: Path) -> None:
    """Two runs' authenticators on one store see the same expiry: one refresh grant, no reuse."""
    emulator = await make_emulator(workouts=1, token_ttl=30.0)
    config = harvest_config(emulator.url, tmp_path)
    await sign_in(config)
    clocks = Clocks(wall=lambda: time.time() + 28)  # the stored token: 2 s left, margin 3 s
    async with open_api(config, RequestStats()) as a, open_api(config, RequestStats()) as b:
        auths = [make_authenticator(config, api._http, clocks=clocks) for api in (a, b)]
        results: list[dict[str, str]] = []

        async def headers(n: int) -> None:
            results.append(await auths[n % 2].headers())

        async with anyio.create_task_group() as tg:
            for n in range(32):
                tg.start_soon(headers, n)
    assert len({r["Authorization"] for r in results}) == 1
    seen = emulator.stats_snapshot()
    assert seen["token_grants"]["refresh_token"] == 1
    assert (seen["refresh_reused"], seen["families_revoked"]) == (0, 0)


async def test_transaction_state_from_the_injected_config_when_the_url_lacks_it(
        tmp_path: Path) -> None:
    """A login URL without ?state=: T comes from window.injectedConfig; _csrf from its path."""
    config = base64.b64encode(orjson.dumps({"internalOptions": {"state": "T-from-page"}}))

    async def authorize(_r: web.Request) -> web.StreamResponse:
        response = await moved("/login")
        response.set_cookie("_csrf", "c5rf", path="/usernamepassword/login")
        return response

    async with serve() as srv, client() as rig, universal.open_browser() as session:
        srv.routes["/authorize"] = authorize
        srv.routes["/login"] = lambda _r: page(
            f"<script>window.injectedConfig = JSON.parse(decodeURIComponent(escape(window.atob("
            f"'{config.decode()}'))));</script>")
        tenant = universal.Tenant(srv.url, "WVoJxVDdPoFx4RNewvvg6ch2mZ7bwnsM")
        browser = universal.Browser(rig.http, session)
        login = await universal.open_login_page(browser, tenant, universal.new_pkce())
        assert browser.cookie(f"{srv.url}/login", "_csrf") is None  # scoped to its path
    assert (login.transaction, login.csrf) == ("T-from-page", "c5rf")
    assert login.url.endswith("/login")


async def test_an_edge_429_during_the_sign_in_is_waited_out(make_emulator: MakeEmulator,
                                                            tmp_path: Path) -> None:
    """The edge's 429 on sign-in steps is backed off and retried; the sign-in completes."""
    emulator = await make_emulator(workouts=1, rate_limit=20.0, rate_burst=1.0,
                                   rate_limit_style="cloudflare")
    stats = RequestStats()
    config = harvest_config(emulator.url, tmp_path, api__max_attempts=20)
    async with open_api(config, stats, backoff_base=0.01) as api:
        assert await api.user_id() == emulator.account.user_id
    assert stats.throttled > 0 and stats.throttled == emulator.stats.throttled
    assert emulator.stats_snapshot()["token_grants"]["authorization_code"] == 1
