"""Authentication: the three strategies, the shared refresh, the token cache, no leaked secrets."""

from __future__ import annotations

import base64
import itertools
import stat
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import orjson
import pytest
from aiohttp import web

from harvester.auth import (
    USER_ID_CLAIM,
    Authenticator,
    Clocks,
    PasswordAuth,
    SessionAuth,
    TokenAuth,
    Tokens,
    TokenStore,
    cache_key,
    jwt_expiry,
    make_authenticator,
)
from harvester.client import HttpClient
from harvester.config import ApiConfig, AuthConfig, Config, Credentials
from harvester.errors import AuthError, LegacyLoginGoneError
from tests.test_client import Loopback, client, serve

USERNAME = "rider@example.com"
PASSWORD = "hunter2-Pa55w0rd"
USER_ID = "ac6b497fc71d48fbb844366ccfa5921f"
SESSION_ID = "0123456789abcdef0123456789abcdef"
CLIENT_ID = "mgsmWCD0A8Qn6uz6mmqI6qeBNHH9IPwS"
WEB_CLIENT_ID = "WVoJxVDdPoFx4RNewvvg6ch2mZ7bwnsM"  # pasted tokens refresh as the web app


def make_jwt(exp: float, n: int = 0, **claims: object) -> str:
    def part(obj: object) -> str:
        return base64.urlsafe_b64encode(orjson.dumps(obj)).rstrip(b"=").decode()

    payload = {"exp": int(exp), "jti": n, **claims}
    return f"{part({'alg': 'RS256'})}.{part(payload)}.c2lnbmF0dXJl"


@dataclass
class FakePeloton:
    """The auth surface of Peloton on a Loopback: token endpoint, legacy login, /api/me."""

    srv: Loopback
    ttl: float = 3600.0
    legacy: str = "ok"
    return_refresh_on_refresh: bool = True
    access: set[str] = field(default_factory=set)  # currently valid access tokens
    refresh: set[str] = field(default_factory=set)
    sessions: set[str] = field(default_factory=set)
    grants: dict[str, int] = field(default_factory=lambda: {"password": 0, "refresh_token": 0})
    bodies: list[dict[str, object]] = field(default_factory=list)
    counter: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    user_claim: object = None  # the access tokens' USER_ID_CLAIM; None leaves it out

    def install(self) -> None:
        self.srv.routes["/oauth/token"] = self.token
        self.srv.routes["/auth/login"] = self.login
        self.srv.routes["/api/me"] = self.me

    def issue(self, refresh: bool = True) -> dict[str, object]:
        n = next(self.counter)
        extra = {} if self.user_claim is None else {USER_ID_CLAIM: self.user_claim}
        access = make_jwt(time.time() + self.ttl, n, **extra)
        self.access.add(access)
        reply: dict[str, object] = {"access_token": access, "token_type": "Bearer",
                                    "expires_in": int(self.ttl)}
        if refresh:
            token = f"v1.refresh-{n}"
            self.refresh.add(token)
            reply["refresh_token"] = token
        return reply

    async def token(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        self.bodies.append(body)
        grant = body.get("grant_type")
        expected = CLIENT_ID if grant == "password" else WEB_CLIENT_ID
        if body.get("client_id") not in (expected, CLIENT_ID) or grant not in self.grants:
            return web.json_response({"error": "invalid_request"}, status=400)
        self.grants[grant] += 1
        if grant == "password" and (body.get("username"), body.get("password")) == (
                USERNAME, PASSWORD):
            return web.json_response(self.issue())
        if grant == "refresh_token" and body.get("refresh_token") in self.refresh:
            return web.json_response(self.issue(refresh=self.return_refresh_on_refresh))
        return web.json_response(
            {"error": "invalid_grant", "error_description": "Wrong email or password."},
            status=403)

    async def login(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        if self.legacy == "gone":
            return web.json_response({"status": 403, "message": "Access forbidden. Endpoint "
                                      "no longer accepting requests."}, status=403)
        if (body.get("username_or_email"), body.get("password")) != (USERNAME, PASSWORD):
            return web.json_response({"status": 401, "error_code": 3010, "subcode": None,
                                      "message": "Login failed", "details": None}, status=401)
        self.sessions.add(SESSION_ID)
        return web.json_response({"session_id": SESSION_ID, "user_id": USER_ID,
                                  "pubsub_session": {}})

    async def me(self, request: web.Request) -> web.StreamResponse:
        bearer = request.headers.get("Authorization", "").removeprefix("Bearer ")
        cookie = request.cookies.get("peloton_session_id")
        if bearer in self.access or cookie in self.sessions:
            return web.json_response({"id": USER_ID, "username": "rider"})
        return web.json_response({"status": 401, "error_code": 3020, "message": "Not logged in"},
                                 status=401)


def config_for(url: str, tmp_path: Path, method: str = "password", **creds: str) -> Config:
    credentials = Credentials(**(creds or {"username": USERNAME, "password": PASSWORD}))
    return Config(api=ApiConfig(base_url=url, auth_url=url, max_attempts=3),
                  auth=AuthConfig(method=method, token_cache=str(tmp_path / "c" / "tokens.json")),
                  credentials=credentials)


@asynccontextmanager
async def peloton(**knobs: object) -> AsyncIterator[tuple[FakePeloton, HttpClient]]:
    async with serve() as srv, client() as rig:
        fake = FakePeloton(srv, **knobs)  # type: ignore[arg-type]
        fake.install()
        yield fake, rig.http


def secrets_in(text: str) -> list[str]:
    return [s for s in (PASSWORD, SESSION_ID, "v1.refresh-", "eyJ") if s in text]


# --- OAuth password grant -------------------------------------------------------------------

async def test_password_grant_logs_in_lazily_with_the_documented_body(tmp_path: Path) -> None:
    """The first headers() call does one password grant; the token becomes a Bearer header."""
    async with peloton() as (fake, http):
        auth = make_authenticator(config_for(fake.srv.url, tmp_path), http)
        assert fake.grants["password"] == 0
        headers = await auth.headers()
        again = await auth.headers()
    assert headers == again and headers["Authorization"].startswith("Bearer ey")
    assert fake.grants == {"password": 1, "refresh_token": 0}
    assert fake.bodies[0] == {"grant_type": "password", "client_id": CLIENT_ID,
                              "scope": "offline_access openid", "username": USERNAME,
                              "password": PASSWORD}
    assert http.stats.by_endpoint == {"token": 1}
    assert auth.user_id is None


async def test_wrong_password_is_an_auth_error_naming_the_variables(tmp_path: Path) -> None:
    """invalid_grant on the password grant says what to check, without the password."""
    async with peloton() as (fake, http):
        config = config_for(fake.srv.url, tmp_path, username=USERNAME, password="wrong-" + PASSWORD)
        auth = make_authenticator(config, http)
        with pytest.raises(AuthError) as info:
            await auth.headers()
    message = str(info.value)
    assert "invalid_grant" in message and "PELOTON_USERNAME and PELOTON_PASSWORD" in message
    assert secrets_in(message) == [] and "wrong-" not in message
    assert fake.grants["password"] == 1  # a 403 is not retried


async def test_token_near_expiry_is_refreshed_before_use(tmp_path: Path) -> None:
    """Within 60 s of the JWT exp, headers() refreshes with the refresh grant first."""
    offset = 0.0
    async with peloton() as (fake, http):
        auth = PasswordAuth(http, f"{fake.srv.url}/oauth/token", CLIENT_ID, USERNAME, PASSWORD,
                            None, Clocks(monotonic=lambda: time.monotonic() + offset))
        first = await auth.headers()
        offset = 3600 - 30
        second = await auth.headers()
    assert first != second
    assert fake.grants == {"password": 1, "refresh_token": 1}
    assert fake.bodies[1]["refresh_token"] == "v1.refresh-1"
    assert http.stats.reauths == 1


async def test_refused_refresh_falls_back_to_the_password_grant(tmp_path: Path) -> None:
    """A refresh token refused with invalid_grant leads to a fresh password grant."""
    async with peloton() as (fake, http):
        auth = make_authenticator(config_for(fake.srv.url, tmp_path), http)
        sent = await auth.headers()
        fake.access.clear()
        fake.refresh.clear()
        await auth.handle_unauthorized(sent)
        renewed = await auth.headers()
    assert renewed != sent
    assert fake.grants == {"password": 2, "refresh_token": 1}


async def test_32_concurrent_401s_share_one_refresh(tmp_path: Path) -> None:
    """However many workers report the same rejected token, exactly one refresh happens."""
    async with peloton() as (fake, http):
        auth = make_authenticator(config_for(fake.srv.url, tmp_path), http)
        sent = await auth.headers()
        async with anyio.create_task_group() as tg:
            for _ in range(32):
                tg.start_soon(auth.handle_unauthorized, sent)
        after = await auth.headers()
    assert fake.grants == {"password": 1, "refresh_token": 1}
    assert after != sent and http.stats.reauths == 1


async def test_stale_401_after_a_refresh_does_not_refresh_again(tmp_path: Path) -> None:
    """A 401 for credentials that were already replaced returns without a token request."""
    async with peloton() as (fake, http):
        auth = make_authenticator(config_for(fake.srv.url, tmp_path), http)
        old = await auth.headers()
        await auth.handle_unauthorized(old)
        await auth.handle_unauthorized(old)
    assert fake.grants["refresh_token"] == 1


# --- pasted tokens --------------------------------------------------------------------------

async def test_pasted_fresh_access_token_needs_no_token_request(tmp_path: Path) -> None:
    """A pasted, unexpired access token is used as is."""
    token = make_jwt(time.time() + 3600)
    async with peloton() as (fake, http):
        config = config_for(fake.srv.url, tmp_path, "token", access_token=token)
        auth = make_authenticator(config, http)
        assert await auth.headers() == {"Authorization": f"Bearer {token}"}
    assert fake.grants == {"password": 0, "refresh_token": 0}


async def test_pasted_expired_token_is_refreshed_and_old_refresh_kept(tmp_path: Path) -> None:
    """An expired pasted token is refreshed; a refresh answer without refresh_token keeps ours."""
    async with peloton(return_refresh_on_refresh=False) as (fake, http):
        fake.refresh.add("v1.pasted")
        config = config_for(fake.srv.url, tmp_path, "token",
                            access_token=make_jwt(time.time() - 10), refresh_token="v1.pasted")
        auth = make_authenticator(config, http)
        sent = await auth.headers()
        fake.access.clear()
        await auth.handle_unauthorized(sent)
        await auth.headers()
    assert fake.grants == {"password": 0, "refresh_token": 2}
    assert [b["refresh_token"] for b in fake.bodies] == ["v1.pasted", "v1.pasted"]


async def test_expired_token_without_refresh_token_asks_for_fresh_tokens(tmp_path: Path) -> None:
    """No refresh token and an expired access token: AuthError telling the user to paste anew."""
    async with peloton() as (fake, http):
        config = config_for(fake.srv.url, tmp_path, "token",
                            access_token=make_jwt(time.time() - 10))
        with pytest.raises(AuthError, match="paste fresh tokens") as info:
            await make_authenticator(config, http).headers()
    assert "eyJ" not in str(info.value) and fake.grants["refresh_token"] == 0


async def test_refused_refresh_token_is_an_auth_error(tmp_path: Path) -> None:
    """A pasted refresh token that Peloton refuses ends in AuthError, not a retry loop."""
    async with peloton() as (fake, http):
        config = config_for(fake.srv.url, tmp_path, "token", refresh_token="v1.revoked-secret")
        with pytest.raises(AuthError, match="refused the refresh token") as info:
            await make_authenticator(config, http).headers()
    assert "v1.revoked-secret" not in str(info.value)
    assert fake.grants == {"password": 0, "refresh_token": 1}


# --- legacy session -------------------------------------------------------------------------

async def test_session_login_sends_cookie_and_learns_user_id(tmp_path: Path) -> None:
    """Legacy login gives a peloton_session_id cookie header and the account's user id."""
    async with peloton() as (fake, http):
        auth = make_authenticator(config_for(fake.srv.url, tmp_path, "session"), http)
        headers = await auth.headers()
    assert headers == {"Cookie": f"peloton_session_id={SESSION_ID}"}
    assert auth.user_id == USER_ID
    assert fake.srv.seen[0].path == "/auth/login"
    assert http.stats.by_endpoint == {"login": 1}


async def test_session_login_failed_is_a_clear_auth_error(tmp_path: Path) -> None:
    """401 Login failed becomes 'wrong username or password', without the password."""
    async with peloton() as (fake, http):
        config = config_for(fake.srv.url, tmp_path, "session", username=USERNAME,
                            password="nope-" + PASSWORD)
        with pytest.raises(AuthError, match="login failed: wrong username or password") as info:
            await make_authenticator(config, http).headers()
    assert type(info.value) is AuthError and secrets_in(str(info.value)) == []


async def test_legacy_login_switched_off_says_how_to_switch(tmp_path: Path) -> None:
    """403 'no longer accepting requests' is LegacyLoginGoneError pointing to auth.method."""
    async with peloton(legacy="gone") as (fake, http):
        auth = make_authenticator(config_for(fake.srv.url, tmp_path, "session"), http)
        with pytest.raises(LegacyLoginGoneError) as info:
            await auth.headers()
    assert 'auth.method = "login"' in str(info.value)
    assert fake.srv.count("/auth/login") == 1


async def test_session_relogin_is_shared_by_concurrent_401s(tmp_path: Path) -> None:
    """32 workers reporting the same rejected cookie cause one new login."""
    async with peloton() as (fake, http):
        auth = make_authenticator(config_for(fake.srv.url, tmp_path, "session"), http)
        sent = await auth.headers()
        async with anyio.create_task_group() as tg:
            for _ in range(32):
                tg.start_soon(auth.handle_unauthorized, sent)
    # the first login plus ONE shared re-login, though the server reissued the same id
    assert fake.srv.count("/auth/login") == 2
    assert http.stats.reauths == 1


# --- token cache ----------------------------------------------------------------------------

async def test_token_cache_is_private_and_reused_by_the_next_run(tmp_path: Path) -> None:
    """Tokens are cached 0600 in a 0700 dir; a second run with a fresh token sends no grant."""
    async with peloton() as (fake, http):
        config = config_for(fake.srv.url, tmp_path)
        first = await make_authenticator(config, http).headers()
        second = await make_authenticator(config, http).headers()
    path = config.auth.token_cache_path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert first == second and fake.grants["password"] == 1
    assert PASSWORD.encode() not in path.read_bytes()
    # no temp left; the lock file beside it serialises refreshes across processes
    assert sorted(p.name for p in path.parent.iterdir()) == ["tokens.json", "tokens.json.lock"]


@pytest.mark.parametrize("other", ["username", "base_url"])
async def test_token_cache_of_another_account_or_server_is_ignored(tmp_path: Path,
                                                                   other: str) -> None:
    """A cache written for a different username or base_url is not used."""
    async with peloton() as (fake, http):
        config = config_for(fake.srv.url, tmp_path)
        await make_authenticator(config, http).headers()
        key = cache_key("password", "https://elsewhere.example", fake.srv.url, USERNAME) \
            if other == "base_url" else cache_key("password", fake.srv.url, fake.srv.url, "x")
        store = TokenStore(config.auth.token_cache_path, key)
        assert await store.load() is None
    assert fake.grants["password"] == 1


async def test_corrupt_cache_is_ignored(tmp_path: Path) -> None:
    """A garbled cache file means a normal login, not a crash."""
    async with peloton() as (fake, http):
        config = config_for(fake.srv.url, tmp_path)
        config.auth.token_cache_path.parent.mkdir(parents=True)
        config.auth.token_cache_path.write_bytes(b"{not json")
        await make_authenticator(config, http).headers()
    assert fake.grants["password"] == 1


async def test_cache_write_failure_does_not_stop_the_run(tmp_path: Path) -> None:
    """An unwritable cache location logs a warning and the login still works."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    async with peloton() as (fake, http):
        config = config_for(fake.srv.url, tmp_path)
        auth = make_authenticator(config, http, cache_path=blocker / "tokens.json")
        assert (await auth.headers())["Authorization"].startswith("Bearer ")


# --- no secrets ---------------------------------------------------------------------------

async def test_reprs_never_show_secrets(tmp_path: Path) -> None:
    """Authenticators, tokens and credentials print without any secret."""
    async with peloton() as (fake, http):
        strategies: list[Authenticator] = [
            make_authenticator(config_for(fake.srv.url, tmp_path, m), http)
            for m in ("password", "session")]
        for auth in strategies:
            await auth.headers()
        strategies.append(TokenAuth(http, "u", CLIENT_ID, "eyJsecret", "v1.refresh-x", None,
                                    Clocks()))
        texts = [repr(a) for a in strategies] + [
            repr(Tokens("eyJsecret", "v1.refresh-x", 1.0, 2.0)), repr(config_for("u", tmp_path))]
    for text in texts:
        assert secrets_in(text) == [], text


def test_jwt_expiry_reads_exp_without_verifying() -> None:
    """exp comes from the base64url payload; malformed tokens give None."""
    assert jwt_expiry(make_jwt(1_700_000_123)) == 1_700_000_123.0
    assert jwt_expiry("not-a-jwt") is None
    assert jwt_expiry("a.!!!.c") is None
    assert jwt_expiry("a.e30.c") is None  # {} has no exp


def test_session_auth_repr_hides_cookie() -> None:
    """Even the private cookie attribute never reaches repr()."""
    auth = SessionAuth.__new__(SessionAuth)
    auth._cookie = f"peloton_session_id={SESSION_ID}"
    assert SESSION_ID not in repr(auth)


async def test_expired_cached_token_is_refreshed_with_its_refresh_token(tmp_path: Path) -> None:
    """A cron run with an expired cached token does a refresh grant, not a password grant."""
    async with peloton() as (fake, http):
        config = config_for(fake.srv.url, tmp_path)
        key = cache_key("password", fake.srv.url, fake.srv.url, USERNAME)
        fake.refresh.add("v1.cached")
        await TokenStore(config.auth.token_cache_path, key).save(
            Tokens(make_jwt(time.time() - 5), "v1.cached", time.monotonic() - 5, 3600.0))
        await make_authenticator(config, http).headers()
    assert fake.grants == {"password": 0, "refresh_token": 1}



async def test_short_lived_tokens_are_not_refreshed_on_every_request(tmp_path: Path) -> None:
    """A 20 s token is refreshed near its end, not on every call: the margin is 10 % of its life."""
    offset = 0.0
    async with peloton(ttl=20.0) as (fake, http):
        auth = PasswordAuth(http, f"{fake.srv.url}/oauth/token", CLIENT_ID, USERNAME, PASSWORD,
                            None, Clocks(monotonic=lambda: time.monotonic() + offset))
        for _ in range(5):
            await auth.headers()
        assert fake.grants == {"password": 1, "refresh_token": 0}
        offset = 15.0
        await auth.headers()
        assert fake.grants == {"password": 1, "refresh_token": 0}
        offset = 19.5
        await auth.headers()
    assert fake.grants == {"password": 1, "refresh_token": 1}
