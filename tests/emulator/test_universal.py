"""The emulator's Universal Login: each step, each failure body, codes, PKCE, rotation."""

from __future__ import annotations

import base64
import hashlib
import secrets
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import pytest

from harvester.emulator import Emulator
from harvester.emulator.settings import (
    DEFAULT_PASSWORD,
    DEFAULT_USERNAME,
    LEGACY_CLIENT_ID,
    WEB_CLIENT_ID,
)
from tests.browser import CALLBACK, Person, browser_session
from tests.conftest import MakeEmulator

VERIFIER = secrets.token_urlsafe(48)
CHALLENGE = base64.urlsafe_b64encode(hashlib.sha256(VERIFIER.encode()).digest()).rstrip(b"=").decode()
SCOPE = "offline_access openid peloton-api.members:default"


def authorize_url(base: str, **changes: str) -> str:
    query = {"client_id": WEB_CLIENT_ID, "audience": "https://api.onepeloton.com/",
             "scope": SCOPE, "response_type": "code", "response_mode": "query",
             "redirect_uri": CALLBACK, "state": "client-state-1", "nonce": "n-1",
             "code_challenge": CHALLENGE, "code_challenge_method": "S256", **changes}
    return f"{base}/authorize?{urlencode(query)}"


async def token(emulator: Emulator, body: dict[str, str]) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.post(f"{emulator.url}/oauth/token",
                                                          json=body) as resp:
        return resp.status, await resp.json()


async def code_for(emulator: Emulator) -> str:
    async with browser_session() as session:
        callback = await Person(session).sign_in(authorize_url(emulator.url), DEFAULT_USERNAME,
                                                 DEFAULT_PASSWORD)
    query = parse_qs(urlsplit(callback).query)
    assert callback.startswith(CALLBACK) and query["state"] == ["client-state-1"], callback
    return query["code"][0]


def exchange(code: str, verifier: str = VERIFIER) -> dict[str, str]:
    return {"grant_type": "authorization_code", "client_id": WEB_CLIENT_ID,
            "code_verifier": verifier, "code": code, "redirect_uri": CALLBACK}


async def test_full_sign_in_crosses_both_hosts_and_ends_in_a_code(emulator: Emulator) -> None:
    """authorize -> login page -> password -> form -> orca (2nd listener) -> resume -> code."""
    code = await code_for(emulator)
    status, body = await token(emulator, exchange(code))
    assert status == 200 and body["scope"] == SCOPE and body["refresh_token"].startswith("v1.")
    seen = emulator.stats_snapshot()["by_endpoint"]
    assert {k: seen[k] for k in ("authorize", "login_page", "usernamepassword_login",
                                 "login_callback", "authorize_resume", "orca_login_site",
                                 "orca_login_domain", "orca_continue")} == {
        "authorize": 1, "login_page": 1, "usernamepassword_login": 1, "login_callback": 1,
        "authorize_resume": 2, "orca_login_site": 1, "orca_login_domain": 1, "orca_continue": 1}
    assert urlsplit(emulator.state.orca_url).hostname == "localhost"


async def test_authorize_sets_csrf_on_its_path_and_names_auth0s_own_state(
        emulator: Emulator) -> None:
    """The 302 goes to /login?state=T (not ours); _csrf is scoped to /usernamepassword/login."""
    async with aiohttp.ClientSession() as http, http.get(authorize_url(emulator.url),
                                                         allow_redirects=False) as resp:
        assert resp.status == 302
        location = resp.headers["Location"]
        csrf = resp.cookies["_csrf"]
    transaction = parse_qs(urlsplit(location).query)["state"][0]
    assert location.startswith("/login?") and len(transaction) >= 150
    assert transaction != "client-state-1" and csrf["path"] == "/usernamepassword/login"


@pytest.mark.parametrize(("change", "message"), [
    ({"client_id": LEGACY_CLIENT_ID}, "Unknown client"),
    ({"redirect_uri": "http://localhost/cb"}, "Callback URL mismatch"),
    ({"code_challenge_method": "plain"}, "PKCE"),
])
async def test_authorize_refuses_other_clients_callbacks_and_no_pkce(
        emulator: Emulator, change: dict[str, str], message: str) -> None:
    """Only the web client, its one callback and S256 PKCE start a sign-in."""
    async with aiohttp.ClientSession() as http, http.get(authorize_url(emulator.url, **change),
                                                         allow_redirects=False) as resp:
        assert resp.status == 400 and message in await resp.text()


async def test_login_page_injects_config_with_the_transaction(emulator: Emulator) -> None:
    """window.injectedConfig holds T and _csrf in internalOptions, base64 JSON."""
    async with browser_session() as session:
        person = Person(session)
        assert await person.open(authorize_url(emulator.url)) == 200
        assert person.config["auth0Tenant"] == "peloton-prod"
        assert person.config["internalOptions"]["_csrf"] == person.cookie("_csrf")
        assert person.transaction in person.page_url


@pytest.mark.parametrize(("changes", "status", "code"), [
    ({"password": "wrong"}, 401, "invalid_user_password"),
    ({"state": "client-state-1"}, 403, "access_denied"),  # our state instead of Auth0's
    ({"_csrf": "forged"}, 403, "access_denied"),
    ({"connection": "Username-Password-Authentication"}, 400, "invalid_connection"),
])
async def test_credential_post_failures_answer_auth0s_bodies(
        emulator: Emulator, changes: dict[str, str], status: int, code: str) -> None:
    """Wrong password 401 ValidationError; client state or bad _csrf 403 AnomalyDetected."""
    async with browser_session() as session:
        person = Person(session)
        await person.open(authorize_url(emulator.url))
        got, body = await person.submit(DEFAULT_USERNAME, DEFAULT_PASSWORD, **changes)
    assert got == status and f'"code":"{code}"' in body
    if status == 403:
        assert '"name":"AnomalyDetected"' in body and '"description":"Invalid state"' in body


async def test_knobs_inject_anomaly_missing_csrf_verification_and_lockout(
        make_emulator: MakeEmulator) -> None:
    """anomalies, missing_csrf, verification and lockout_after each change the answer."""
    emulator = await make_emulator(workouts=1, anomalies=1, missing_csrf=1, lockout_after=2)
    async with browser_session() as session:
        person = Person(session)
        await person.open(authorize_url(emulator.url))
        assert person.cookie("_csrf") is None  # this time the cookie never arrives
        await person.open(authorize_url(emulator.url))
        assert (await person.submit(DEFAULT_USERNAME, DEFAULT_PASSWORD))[0] == 403  # anomaly
        for _ in range(2):
            assert (await person.submit(DEFAULT_USERNAME, "wrong"))[0] == 401
        status, body = await person.submit(DEFAULT_USERNAME, DEFAULT_PASSWORD)
        assert status == 429 and "too_many_attempts" in body
    emulator.update_settings(lockout_after=10, verification=True)
    emulator.state.login.failures = 0
    async with browser_session() as session:
        person = Person(session)
        await person.open(authorize_url(emulator.url))
        status, page = await person.submit(DEFAULT_USERNAME, DEFAULT_PASSWORD)
    assert status == 200 and "Verify Your Identity" in page and "wresult" not in page


async def test_form_values_are_entity_encoded_and_must_be_decoded(emulator: Emulator) -> None:
    """wctx arrives as &#34;-encoded JSON; re-posting it undecoded is refused."""
    async with browser_session() as session:
        person = Person(session)
        await person.open(authorize_url(emulator.url))
        status, page = await person.submit(DEFAULT_USERNAME, DEFAULT_PASSWORD)
        assert status == 200 and "&#34;state&#34;" in page
        assert (await person.post_form(page, decode=False)).startswith("stopped:400")


async def test_codes_are_single_use_short_lived_and_need_the_verifier(
        emulator: Emulator) -> None:
    """A wrong verifier, a reused code and an expired one all get 403 invalid_grant."""
    refused = {"error": "invalid_grant", "error_description": "Invalid authorization code"}
    assert await token(emulator, exchange(await code_for(emulator), "x" * 50)) == (403, refused)
    code = await code_for(emulator)
    assert (await token(emulator, exchange(code)))[0] == 200
    assert await token(emulator, exchange(code)) == (403, refused)
    code = await code_for(emulator)
    emulator.advance_clock(61)
    assert await token(emulator, exchange(code)) == (403, refused)


async def test_refresh_tokens_rotate_and_reuse_revokes_the_family(emulator: Emulator) -> None:
    """Each refresh answers a new token; sending a used one revokes the whole family."""
    status, first = await token(emulator, exchange(await code_for(emulator)))
    refresh = {"grant_type": "refresh_token", "client_id": WEB_CLIENT_ID}
    status, second = await token(emulator, {**refresh, "refresh_token": first["refresh_token"]})
    assert status == 200 and second["refresh_token"] != first["refresh_token"]
    status, _ = await token(emulator, {**refresh, "refresh_token": first["refresh_token"]})
    assert status == 403  # reuse
    status, _ = await token(emulator, {**refresh, "refresh_token": second["refresh_token"]})
    assert status == 403  # the family is gone
    stats = emulator.stats_snapshot()
    assert (stats["refresh_reused"], stats["families_revoked"]) == (1, 1)
    assert stats["early_refreshes"] == 1  # the first refresh came with 48 h left


async def test_web_clients_password_grant_is_refused_unless_allowed(
        make_emulator: MakeEmulator) -> None:
    """unauthorized_client for the web client, as today; password_clients can allow it."""
    emulator = await make_emulator(workouts=1)
    body = {"grant_type": "password", "client_id": WEB_CLIENT_ID, "username": DEFAULT_USERNAME,
            "password": DEFAULT_PASSWORD}
    assert await token(emulator, body) == (403, {
        "error": "unauthorized_client",
        "error_description": "Grant type 'password' not allowed for the client."})
    emulator.update_settings(password_clients=(WEB_CLIENT_ID, LEGACY_CLIENT_ID))
    assert (await token(emulator, body))[0] == 200
