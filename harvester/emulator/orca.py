"""The second host of the sign-in's redirect chain (Peloton's auth-orca), on its own listener.

    GET /sso/login_site    sets this host's cookies (its own `did`, `orca_sid`) -> /sso/login_domain
    GET /sso/login_domain  checks them -> /continue
    GET /continue          checks them, marks the transaction -> back to the auth host's /authorize/resume

Cookies are per host: a client that sends the auth host's cookies here, or loses
these on the way, is refused, as a jar that ignores hosts would be.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlencode

from aiohttp import web

from harvester.emulator.logins import Transaction
from harvester.emulator.state import STATE, EmulatorState


def _refused() -> web.Response:
    return web.Response(status=400, text="<html><body>Bad request</body></html>",
                        content_type="text/html")


def _transaction(request: web.Request, state: EmulatorState, *, cookies: bool) -> Transaction | None:
    txn = state.login.transactions.get(request.query.get("state", ""))
    if txn is None or not txn.authenticated:
        return None
    if cookies and (request.cookies.get("orca_sid") != txn.orca_sid
                    or request.cookies.get("did") != txn.orca_did):
        return None
    return txn


def _next(txn: Transaction, path: str) -> web.Response:
    return web.Response(status=302, headers={"Location": f"{path}?{urlencode({'state': txn.id})}"})


async def login_site(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    txn = _transaction(request, state, cookies=False)
    if txn is None:
        return _refused()
    response = _next(txn, "/sso/login_domain")
    response.set_cookie("orca_sid", txn.orca_sid, path="/", httponly=True)
    response.set_cookie("did", txn.orca_did, path="/", httponly=True)
    return response


async def login_domain(request: web.Request) -> web.StreamResponse:
    txn = _transaction(request, request.app[STATE], cookies=True)
    return _refused() if txn is None else _next(txn, "/continue")


async def resume(request: web.Request) -> web.StreamResponse:
    txn = _transaction(request, request.app[STATE], cookies=True)
    if txn is None:
        return _refused()
    txn.orca_done = True
    return _next(txn, f"{txn.auth_origin}/authorize/resume")


@web.middleware
async def counted(request: web.Request,
                  handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                  ) -> web.StreamResponse:
    """Counted in the same stats as the auth host's requests: one server, two names."""
    stats = request.app[STATE].stats
    stats.begin(request.match_info.route.name or "unknown", None, time.monotonic())
    status = 0
    try:
        response = await handler(request)
        status = response.status
        return response
    finally:
        stats.end(status)


def make_orca_app(state: EmulatorState) -> web.Application:
    """auth-orca's routes over the same emulator state."""
    app = web.Application(middlewares=[counted])
    app[STATE] = state
    r = app.router
    r.add_get("/sso/login_site", login_site, name="orca_login_site")
    r.add_get("/sso/login_domain", login_domain, name="orca_login_domain")
    r.add_get("/continue", resume, name="orca_continue")
    return app
