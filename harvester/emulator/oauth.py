"""POST /oauth/token: the password, refresh and authorization-code grants, as Auth0 answers them."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

from harvester.emulator.settings import CLIENTS, WEB_CLIENT_ID
from harvester.emulator.state import STATE, EmulatorState

STALL_POLL_S = 0.01
WEB_SCOPE = "openid offline_access peloton-api.members:default"
LEGACY_SCOPE = "openid offline_access"
BAD_GRANT = {"error": "invalid_grant", "error_description": "Wrong email or password."}
BAD_REFRESH = {"error": "invalid_grant", "error_description": "Unknown or invalid refresh token."}
BAD_CODE = {"error": "invalid_grant", "error_description": "Invalid authorization code"}
NO_PASSWORD_GRANT = {
    "error": "unauthorized_client",
    "error_description": "Grant type 'password' not allowed for the client.",
}


def json_response(payload: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status, content_type="application/json")


async def read_body(request: web.Request) -> dict[str, Any] | None:
    """JSON or form body as a dict; None when it is neither."""
    if request.content_type == "application/json":
        try:
            data = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return None
        return data if isinstance(data, dict) else None
    form = await request.post()
    return {k: str(v) for k, v in form.items()}


async def token(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    body = await read_body(request)
    if body is None:
        return json_response(
            {"error": "invalid_request", "error_description": "Body must be JSON or a form."}, 400
        )
    client_id = body.get("client_id")
    if client_id not in CLIENTS:
        return json_response({"error": "access_denied", "error_description": "Unauthorized"}, 401)
    grant = body.get("grant_type")
    if grant == "password":
        return password_grant(state, str(client_id), body)
    if grant == "refresh_token":
        return await refresh_grant(request, str(client_id), body)
    if grant == "authorization_code":
        return code_grant(state, str(client_id), body)
    return json_response(
        {
            "error": "unsupported_grant_type",
            "error_description": f"Unsupported grant type: {grant}",
        },
        403,
    )


def password_grant(state: EmulatorState, client_id: str, body: dict[str, Any]) -> web.Response:
    if client_id not in state.settings.password_clients:
        return json_response(NO_PASSWORD_GRANT, 403)
    index = state.account_index(body.get("username"), body.get("password"))
    if index is None:
        return json_response(BAD_GRANT, 403)
    state.stats.token_grants["password"] += 1
    return json_response(
        state.issuers[index].grant(state.now(), state.settings.token_ttl, client_id,
                                   scope_of(client_id))
    )


async def refresh_grant(request: web.Request, client_id: str,
                        body: dict[str, Any]) -> web.Response:
    state = request.app[STATE]
    token = str(body.get("refresh_token", ""))
    outcome = state.refresh_issuer(token).refresh(
        token, client_id, state.now(), state.settings.token_ttl
    )
    if outcome.reused:
        state.stats.refresh_reused += 1
        state.stats.families_revoked += 1
    if outcome.answer is None:
        return json_response(BAD_REFRESH, 403)
    state.stats.token_grants["refresh_token"] += 1
    state.stats.early_refreshes += outcome.early
    if state.settings.refresh_stall_s:  # rotated already: a client killed now keeps the used token
        state.stats.refresh_in_flight += 1
        try:
            await stall(request, state.settings.refresh_stall_s)
        finally:
            state.stats.refresh_in_flight -= 1
    return json_response(outcome.answer)


async def stall(request: web.Request, seconds: float) -> None:
    """Wait ``seconds``, or until the client has gone (so a stopping server need not wait)."""
    loop = asyncio.get_running_loop()
    until = loop.time() + seconds
    while loop.time() < until:
        transport = request.transport
        if transport is None or transport.is_closing():
            return
        await asyncio.sleep(STALL_POLL_S)


def code_grant(state: EmulatorState, client_id: str, body: dict[str, Any]) -> web.Response:
    txn = state.login.redeem(
        str(body.get("code", "")), client_id, str(body.get("redirect_uri", "")),
        str(body.get("code_verifier", "")), state.now(), state.settings.code_ttl,
    )
    if txn is None:
        return json_response(BAD_CODE, 403)
    state.stats.token_grants["authorization_code"] += 1
    return json_response(
        state.issuers[txn.account].grant(state.now(), state.settings.token_ttl, client_id, txn.scope)
    )


def scope_of(client_id: str) -> str:
    return WEB_SCOPE if client_id == WEB_CLIENT_ID else LEGACY_SCOPE
