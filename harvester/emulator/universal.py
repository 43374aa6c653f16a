"""Auth0 Universal Login on the auth host, as PELOTON_API.md 1a describes it.

    GET  /authorize            302 /login?state=T; cookies auth0, did, _csrf (path /usernamepassword/login)
    GET  /login                the page, with window.injectedConfig (base64 JSON)
    POST /usernamepassword/login  checks cookie, _csrf, T, connection, password ->
                               the entity-encoded auto-post form (or 401, 403, 429, a verification page)
    POST /login/callback       the form back -> 302 /authorize/resume
    GET  /authorize/resume     first to auth-orca (orca.py, a second listener), then
                               302 redirect_uri?code=C&state=<client state>
"""

from __future__ import annotations

import base64
import html
import secrets
from typing import Any
from urllib.parse import urlencode

import orjson
from aiohttp import web

from harvester.emulator.logins import Transaction
from harvester.emulator.oauth import json_response, scope_of
from harvester.emulator.settings import WEB_CLIENT_ID
from harvester.emulator.state import STATE, EmulatorState

REDIRECT_URIS = frozenset({"https://members.onepeloton.com/callback"})
CONNECTION = "pelo-user-password"
TENANT = "peloton-prod"
CSRF_PATH = "/usernamepassword/login"
INVALID_STATE = {"name": "AnomalyDetected", "code": "access_denied",
                 "description": "Invalid state", "statusCode": 403}
WRONG_PASSWORD = {"name": "ValidationError", "code": "invalid_user_password",
                  "description": "Wrong email or password.", "statusCode": 401}
TOO_MANY = {"name": "AnomalyDetected", "code": "too_many_attempts",
            "description": "Your account has been blocked after multiple consecutive login "
            "attempts. We've sent you an email with instructions on how to unblock it.",
            "statusCode": 429}
BAD_CONNECTION = {"name": "BadRequestError", "code": "invalid_connection",
                  "description": "Connection does not exist or is disabled", "statusCode": 400}
LOGIN_PAGE = """<!DOCTYPE html><html><head><title>Sign In | Peloton</title></head><body>
<div id="app"></div>
<script>window.injectedConfig = JSON.parse(decodeURIComponent(escape(window.atob('{config}'))));</script>
<script src="https://cdn.auth0.com/js/auth0/9.14.3/auth0.min.js"></script></body></html>"""
FORM_PAGE = """<form method="post" name="hiddenform" action="{action}">
    <input type="hidden" name="wa" value="wsignin1.0">
    <input type="hidden" name="wresult" value="{wresult}">
    <input type="hidden" name="wctx" value="{wctx}">
    <noscript><p>Script is disabled. Click Submit to continue.</p>
    <input type="submit" value="Submit"></noscript>
</form><script>window.setTimeout(function(){{document.forms[0].submit();}}, 0);</script>"""
VERIFY_PAGE = """<!DOCTYPE html><html><head><title>Verify Your Identity</title></head><body>
<h1>Verify Your Identity</h1><p>We've sent an email with your code to your address.</p>
<input type="text" name="code" autocomplete="one-time-code"><button>Continue</button></body></html>"""


def error_page(status: int, message: str) -> web.Response:
    text = f"<html><body><h1>Oops!, something went wrong</h1><p>{html.escape(message)}</p></body></html>"
    return web.Response(status=status, text=text, content_type="text/html")


def entity_encode(text: str) -> str:
    """How Auth0 writes the form's values: every quote as &#34;."""
    return html.escape(text, quote=True).replace("&quot;", "&#34;").replace("&#x27;", "&#39;")


def redirect(location: str) -> web.Response:
    return web.Response(status=302, headers={"Location": location})


async def authorize(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    q = request.query
    if q.get("client_id") != WEB_CLIENT_ID:
        return error_page(400, "Unknown client")
    if q.get("redirect_uri") not in REDIRECT_URIS:
        return error_page(400, "Callback URL mismatch")
    if q.get("response_type") != "code" or q.get("code_challenge_method") != "S256" \
            or not q.get("code_challenge"):
        return error_page(400, "PKCE with S256 is required for this client")
    txn = state.login.begin(Transaction(
        client_id=q["client_id"], redirect_uri=q["redirect_uri"],
        client_state=q.get("state", ""), nonce=q.get("nonce", ""),
        challenge=q["code_challenge"], scope=q.get("scope") or scope_of(q["client_id"]),
        auth_origin=f"{request.scheme}://{request.host}",
    ))
    query = {"state": txn.id, "client": txn.client_id, "protocol": "oauth2",
             "response_type": "code", "redirect_uri": txn.redirect_uri, "scope": txn.scope}
    response = redirect(f"/login?{urlencode(query)}")
    response.set_cookie("auth0", txn.session, path="/", httponly=True, samesite="None")
    response.set_cookie("did", txn.did, path="/", httponly=True)
    if state.login.csrf_dropped < state.settings.missing_csrf:
        state.login.csrf_dropped += 1  # "Missing CSRF token": the cookie never arrives
    else:
        response.set_cookie("_csrf", txn.csrf, path=CSRF_PATH, httponly=True)
    return response


async def login_page(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    txn = state.login.transactions.get(request.query.get("state", ""))
    if txn is None:
        return error_page(400, "Invalid state")
    config = {"auth0Domain": request.host, "auth0Tenant": TENANT, "clientID": txn.client_id,
              "callbackURL": txn.redirect_uri,
              "internalOptions": {"state": txn.id, "_csrf": txn.csrf, "response_type": "code",
                                  "scope": txn.scope, "nonce": txn.nonce, "protocol": "oauth2",
                                  "code_challenge": txn.challenge,
                                  "code_challenge_method": "S256"}}
    encoded = base64.b64encode(orjson.dumps(config)).decode()
    return web.Response(text=LOGIN_PAGE.format(config=encoded), content_type="text/html")


async def usernamepassword_login(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        return json_response({"name": "BadRequestError", "statusCode": 400}, 400)
    if state.login.anomalies_served < state.settings.anomalies:
        state.login.anomalies_served += 1
        return json_response(INVALID_STATE, 403)
    txn = checked_transaction(request, state, body)
    if txn is None:
        return json_response(INVALID_STATE, 403)
    if body.get("connection") != CONNECTION:
        return json_response(BAD_CONNECTION, 400)
    return password_outcome(request, state, txn, body)


def checked_transaction(request: web.Request, state: EmulatorState,
                        body: dict[str, Any]) -> Transaction | None:
    """The transaction named by T, if the cookies and _csrf that came with it are its own."""
    txn = state.login.transactions.get(str(body.get("state", "")))
    if txn is None or request.cookies.get("auth0") != txn.session:
        return None
    csrf = request.cookies.get("_csrf")
    if csrf is None or csrf != txn.csrf or body.get("_csrf") != csrf:
        return None
    return txn if body.get("client_id") == txn.client_id else None


def password_outcome(request: web.Request, state: EmulatorState, txn: Transaction,
                     body: dict[str, Any]) -> web.Response:
    login, settings = state.login, state.settings
    if login.failures >= settings.lockout_after:
        return json_response(TOO_MANY, 429)
    index = state.account_index(body.get("username"), body.get("password"))
    if index is None:
        login.failures += 1
        return json_response(WRONG_PASSWORD, 401)
    login.failures = 0
    if settings.verification:
        return web.Response(text=VERIFY_PAGE, content_type="text/html")
    state.stats.universal_logins += 1
    txn.account = index
    txn.wresult = state.tokens.sign({"sub": state.accounts[index].user_id, "tx": txn.id,
                                     "jti": secrets.token_hex(8), "iat": int(state.now())})
    wctx = orjson.dumps({"strategy": "auth0", "auth0Client": "", "tenant": TENANT,
                         "connection": CONNECTION, "client_id": txn.client_id,
                         "response_type": "code", "scope": txn.scope,
                         "redirect_uri": txn.redirect_uri, "state": txn.id, "nonce": txn.nonce,
                         "realm": CONNECTION}).decode()
    page = FORM_PAGE.format(action=entity_encode(f"{txn.auth_origin}/login/callback"),
                            wresult=entity_encode(txn.wresult), wctx=entity_encode(wctx))
    return web.Response(text=page, content_type="text/html")


async def login_callback(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    form = await request.post()
    try:
        wctx = orjson.loads(str(form.get("wctx", "")))
    except orjson.JSONDecodeError:
        return error_page(400, "Invalid wctx")  # e.g. values re-posted still entity-encoded
    txn = state.login.transactions.get(str(wctx.get("state", ""))) if isinstance(wctx, dict) else None
    if txn is None or form.get("wa") != "wsignin1.0" or txn.wresult is None \
            or form.get("wresult") != txn.wresult or request.cookies.get("auth0") != txn.session:
        return error_page(400, "Invalid state")
    txn.wresult, txn.authenticated = None, True  # the form is single-use
    return redirect(f"/authorize/resume?state={txn.id}")


async def authorize_resume(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    txn = state.login.transactions.get(request.query.get("state", ""))
    cookies = request.cookies
    if txn is None or not txn.authenticated or cookies.get("auth0") != txn.session \
            or cookies.get("did") != txn.did:
        return error_page(400, "Invalid state")  # also: another host's cookies sent here
    if state.orca_url and not txn.orca_done:
        return redirect(f"{state.orca_url}/sso/login_site?{urlencode({'state': txn.id})}")
    code = state.login.issue_code(txn, state.now())
    return redirect(f"{txn.redirect_uri}?{urlencode({'code': code, 'state': txn.client_state})}")


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/authorize", authorize, name="authorize")
    r.add_get("/login", login_page, name="login_page")
    r.add_post("/usernamepassword/login", usernamepassword_login, name="usernamepassword_login")
    r.add_post("/login/callback", login_callback, name="login_callback")
    r.add_get("/authorize/resume", authorize_resume, name="authorize_resume")
