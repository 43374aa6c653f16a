"""How the harvester signs in: four strategies behind one interface.

    LoginAuth     Auth0 Universal Login with PKCE (headless, or a pasted browser callback),
                  then rotating refresh tokens; the default ("login")
    TokenAuth     pasted PELOTON_ACCESS_TOKEN / PELOTON_REFRESH_TOKEN; refresh grant only
    PasswordAuth  the older client's OAuth password grant (unreliable; never the default)
    SessionAuth   legacy POST /auth/login -> Cookie: peloton_session_id (switched off)

However many workers see a 401 at once, only one re-authenticates: the rest find,
under the lock, that the credentials they sent are no longer current and return.
Across processes the token store's lock does the same (see tokens.py). Token
requests go through the HttpClient, so they pass the shared limiter and count in
the run's stats. No secret ever reaches a log line, a message or a repr.
"""

from __future__ import annotations

import logging
import re
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager

import anyio

from harvester.auth import universal
from harvester.auth.tokens import Clocks, Tokens, TokenStore, jwt_expiry, jwt_user_id
from harvester.client import HttpClient, JsonObject, RejectedError, UnauthorizedError
from harvester.errors import (
    AuthError,
    ConfigError,
    LegacyLoginGoneError,
    LoginAnomalyError,
    SessionEndedError,
)

log = logging.getLogger(__name__)

OAUTH_SCOPE = "offline_access openid"  # what the older client's password grant asks for
SESSION_COOKIE = "peloton_session_id"
_HEADER_SAFE = re.compile(r"[A-Za-z0-9._~+/=-]+")  # what may go into a header unescaped
LOGIN_HINT = "run `peloton-harvester login`"

# Given the sign-in URL, returns the callback URL the person pasted back.
Paste = Callable[[str], Awaitable[str]]


class Authenticator(ABC):
    """Supplies auth headers and performs the one shared re-authentication after a 401."""

    # The account's id when authenticating told it: a session login's answer, or
    # the access token's USER_ID_CLAIM. None until then, or if it did not say.
    user_id: str | None = None

    @abstractmethod
    async def headers(self) -> dict[str, str]:
        """Headers to send now; signs in lazily and refreshes ahead of expiry."""

    @abstractmethod
    async def handle_unauthorized(self, sent: Mapping[str, str]) -> None:
        """A request sent with ``sent`` got 401: re-authenticate unless someone already did."""

    async def sign_in(self, paste: Paste | None = None) -> None:
        """`peloton-harvester login`: sign in now and store what later runs need."""
        if paste is not None:
            raise ConfigError('`login --browser` needs auth.method = "login"')
        await self.headers()

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"


class _OAuth(Authenticator):
    """Bearer tokens with a double-checked, lock-guarded, rotation-safe renewal."""

    def __init__(self, http: HttpClient, token_url: str, client_id: str,
                 store: TokenStore | None, clocks: Clocks) -> None:
        self._http = http
        self._token_url = token_url
        self._client_id = client_id
        self._store = store
        self._clocks = clocks
        self._lock = anyio.Lock()
        self._tokens: Tokens | None = None  # what headers() hands out; None until first use
        self._generation = 0  # bumped by every renewal, so lock waiters can tell one happened
        self._refused = ""  # why the last refresh grant was refused, for the message

    async def headers(self) -> dict[str, str]:
        tokens = self._tokens
        if tokens is None or tokens.expiring(self._clocks.monotonic()):
            async with self._lock:
                tokens = await self._current_or_renewed()
        return _bearer(tokens)

    async def handle_unauthorized(self, sent: Mapping[str, str]) -> None:
        generation = self._generation
        async with self._lock:
            current = self._tokens
            if generation != self._generation or current is None:
                return  # renewed while we waited for the lock
            if sent.get("Authorization") != _bearer(current)["Authorization"]:
                return  # `sent` predates an earlier renewal
            self._adopt(await self._renew(current, rejected=True), renewed=True)

    async def sign_in(self, paste: Paste | None = None) -> None:
        await super().sign_in(paste)
        async with self._lock, self._exclusive():
            if self._tokens is not None:
                await self._save(self._tokens)  # pasted tokens too: later runs start from them

    async def _current_or_renewed(self) -> Tokens:
        tokens = self._tokens or await self._initial()
        if tokens is not None and not tokens.expiring(self._clocks.monotonic()):
            if tokens is not self._tokens:
                self._adopt(tokens, renewed=False)
            return tokens
        fresh = await self._renew(tokens, rejected=False)
        self._adopt(fresh, renewed=self._tokens is not None)
        return fresh

    async def _renew(self, current: Tokens | None, *, rejected: bool) -> Tokens:
        """New tokens, refreshing at most once per expiry across every process sharing the store."""
        async with self._exclusive():
            latest = await self._store.load() if self._store is not None else None
            held = current.access_token if current is not None else None
            if latest is not None and latest.access_token != held \
                    and not latest.expiring(self._clocks.monotonic()):
                log.info("using the access token another run renewed")
                return latest
            source = latest or current  # the store's refresh token is the current one
            fresh = None
            if source is not None and source.refresh_token:
                fresh = await self._refresh(source.refresh_token)
            if fresh is None:
                fresh = await self._sign_in_again(source, rejected=rejected)
            await self._save(fresh)  # durable before anyone uses the new access token
            return fresh

    def _adopt(self, tokens: Tokens, *, renewed: bool) -> None:
        if renewed:
            self._http.stats.reauths += 1
        life = "" if tokens.lifetime is None else f", valid {tokens.lifetime:.0f} s"
        log.info("%s an access token%s", "renewed" if renewed else "using", life)
        self._tokens = tokens
        self.user_id = jwt_user_id(tokens.access_token)
        self._generation += 1

    @asynccontextmanager
    async def _exclusive(self) -> AsyncIterator[None]:
        if self._store is None:
            yield
            return
        async with self._store.exclusive():
            yield

    async def _save(self, tokens: Tokens) -> None:
        if self._store is not None:
            await self._store.save(tokens)

    @abstractmethod
    async def _initial(self) -> Tokens | None:
        """Tokens to start from (the store, or pasted), possibly expired."""

    @abstractmethod
    async def _sign_in_again(self, source: Tokens | None, *, rejected: bool) -> Tokens:
        """Tokens when there is no refresh token or it was refused; AuthError when no way is left."""

    async def _grant(self, body: Mapping[str, str], keep_refresh: str | None) -> Tokens:
        """POST the token endpoint; RejectedError (4xx) propagates for the caller to word."""
        reply = await self._http.request_json(
            "POST", self._token_url, endpoint="token",
            json={"client_id": self._client_id, **body},
        )
        return self._tokens_from(reply, keep_refresh)

    def _tokens_from(self, reply: JsonObject, keep_refresh: str | None) -> Tokens:
        access, refresh = reply.get("access_token"), reply.get("refresh_token")
        if not isinstance(access, str) or not _HEADER_SAFE.fullmatch(access):
            raise AuthError("the Peloton token endpoint answered without a usable access_token")
        expires_in = reply.get("expires_in")
        lifetime = float(expires_in) if isinstance(expires_in, int | float) else None
        if lifetime is None:  # only then the JWT's exp, which is on the server's clock
            exp = jwt_expiry(access)
            lifetime = None if exp is None else exp - self._clocks.wall()
        deadline = None if lifetime is None else self._clocks.monotonic() + lifetime
        # A refresh grant may not return a new refresh token: keep the old one.
        keep = refresh if isinstance(refresh, str) else keep_refresh
        return Tokens(access, keep, deadline, lifetime)

    async def _refresh(self, refresh_token: str) -> Tokens | None:
        """The refresh grant; None when the refresh token is refused (the session is gone)."""
        body = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        try:
            return await self._grant(body, keep_refresh=refresh_token)
        except RejectedError as exc:
            if exc.reason != "invalid_grant":
                raise _token_refused(exc) from exc
            self._refused = exc.reason
            log.info("Peloton refused the refresh token (invalid_grant)")
            return None


class LoginAuth(_OAuth):
    """Universal Login (headless or browser), then the stored, rotating refresh token."""

    def __init__(self, http: HttpClient, tenant: universal.Tenant, store: TokenStore | None,
                 clocks: Clocks, username: str | None, password: str | None) -> None:
        super().__init__(http, tenant.url("/oauth/token"), tenant.client_id, store, clocks)
        self._tenant = tenant
        self._username = username
        self._password = password

    async def sign_in(self, paste: Paste | None = None) -> None:
        async with self._lock, self._exclusive():
            tokens = await (self._browser(paste) if paste is not None else self._headless())
            await self._save(tokens)
            self._adopt(tokens, renewed=False)

    async def _initial(self) -> Tokens | None:
        return await self._store.load() if self._store is not None else None

    async def _sign_in_again(self, source: Tokens | None, *, rejected: bool) -> Tokens:
        if self._username and self._password:
            return await self._headless()
        if source is not None and source.refresh_token:
            raise SessionEndedError(
                f"the stored Peloton sign-in has ended (refresh token refused: "
                f"{self._refused or 'invalid_grant'}); {LOGIN_HINT}")
        raise SessionEndedError(f"not signed in to Peloton (no stored sign-in and no "
                                f"PELOTON_USERNAME/PELOTON_PASSWORD); {LOGIN_HINT}")

    async def _headless(self) -> Tokens:
        if not (self._username and self._password):
            raise ConfigError("signing in needs PELOTON_USERNAME and PELOTON_PASSWORD "
                              "(or `peloton-harvester login --browser`)")
        try:
            reply = await universal.sign_in(self._http, self._tenant, self._username,
                                            self._password)
        except LoginAnomalyError as exc:
            log.warning("%s; trying once more", exc)
            reply = await universal.sign_in(self._http, self._tenant, self._username,
                                            self._password)
        log.info("signed in with Universal Login")
        return self._tokens_from(reply, None)

    async def _browser(self, paste: Paste) -> Tokens:
        pkce = universal.new_pkce()
        pasted = await paste(universal.authorize_url(self._tenant, pkce))
        code = universal.code_from_callback(pasted, self._tenant, pkce)
        reply = await universal.exchange_code(self._http, self._tenant, code, pkce)
        return self._tokens_from(reply, None)


class PasswordAuth(_OAuth):
    """The older client's OAuth password grant; refresh grant afterwards, then the password."""

    def __init__(self, http: HttpClient, token_url: str, client_id: str, username: str,
                 password: str, store: TokenStore | None, clocks: Clocks) -> None:
        super().__init__(http, token_url, client_id, store, clocks)
        self._username = username
        self._password = password

    async def _initial(self) -> Tokens | None:
        return await self._store.load() if self._store is not None else None

    async def _sign_in_again(self, source: Tokens | None, *, rejected: bool) -> Tokens:
        body = {"grant_type": "password", "scope": OAUTH_SCOPE,
                "username": self._username, "password": self._password}
        try:
            return await self._grant(body, keep_refresh=None)
        except RejectedError as exc:
            if exc.reason == "invalid_grant":
                raise AuthError(
                    "Peloton rejected the username or password (invalid_grant); "
                    "check PELOTON_USERNAME and PELOTON_PASSWORD") from exc
            if exc.reason == "unauthorized_client":
                raise AuthError(
                    "Peloton does not allow the password grant for this client "
                    '(unauthorized_client); use auth.method = "login"') from exc
            raise _token_refused(exc) from exc


class TokenAuth(_OAuth):
    """Pasted tokens; refreshed with the refresh grant only (there is no password)."""

    def __init__(self, http: HttpClient, token_url: str, client_id: str,
                 access_token: str | None, refresh_token: str | None,
                 store: TokenStore | None, clocks: Clocks) -> None:
        super().__init__(http, token_url, client_id, store, clocks)
        self._pasted = Tokens(access_token, refresh_token, self._jwt_deadline(access_token))

    def _jwt_deadline(self, access_token: str | None) -> float | None:
        """A pasted token's only expiry is its JWT ``exp``, on the server's clock."""
        exp = jwt_expiry(access_token) if access_token else None
        return None if exp is None else self._clocks.monotonic() + exp - self._clocks.wall()

    async def _initial(self) -> Tokens | None:
        stored = await self._store.load() if self._store is not None else None
        return stored or self._pasted

    async def _sign_in_again(self, source: Tokens | None, *, rejected: bool) -> Tokens:
        if self._refused:
            raise AuthError(
                f"Peloton refused the refresh token ({self._refused}); paste fresh "
                "tokens into PELOTON_ACCESS_TOKEN and PELOTON_REFRESH_TOKEN")
        state = "was rejected" if rejected else "has expired"
        raise AuthError(
            f"the Peloton access token {state} and no refresh token is set; paste fresh "
            "tokens into PELOTON_ACCESS_TOKEN and PELOTON_REFRESH_TOKEN")


class SessionAuth(Authenticator):
    """Legacy POST /auth/login; the session id travels as a cookie header."""

    def __init__(self, http: HttpClient, base_url: str, username: str, password: str) -> None:
        self._http = http
        self._login_url = f"{base_url.rstrip('/')}/auth/login"
        self._username = username
        self._password = password
        self._lock = anyio.Lock()
        self._cookie: str | None = None  # the Cookie header value in use
        self._generation = 0  # bumped by every login, so lock waiters can tell one happened

    async def headers(self) -> dict[str, str]:
        if self._cookie is None:
            async with self._lock:
                if self._cookie is None:
                    await self._login()
        assert self._cookie is not None
        return {"Cookie": self._cookie}

    async def handle_unauthorized(self, sent: Mapping[str, str]) -> None:
        generation = self._generation
        async with self._lock:
            if generation != self._generation:
                return  # logged in again while we waited (the id may even be unchanged)
            if self._cookie is not None and sent.get("Cookie") != self._cookie:
                return
            await self._login()
            self._http.stats.reauths += 1

    async def _login(self) -> None:
        body = {"username_or_email": self._username, "password": self._password}
        try:
            reply = await self._http.request_json(
                "POST", self._login_url, endpoint="login", json=body)
        except RejectedError as exc:
            raise _login_refused(exc) from exc
        session_id, user_id = reply.get("session_id"), reply.get("user_id")
        if not isinstance(session_id, str) or not _HEADER_SAFE.fullmatch(session_id):
            raise AuthError("the Peloton login response has no usable session_id")
        self._cookie = f"{SESSION_COOKIE}={session_id}"
        self._generation += 1
        log.info("signed in with the legacy session login")
        self.user_id = user_id if isinstance(user_id, str) else None


def _bearer(tokens: Tokens) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens.access_token}"}


def _token_refused(exc: RejectedError) -> AuthError:
    return AuthError(
        f"the Peloton token endpoint refused the request (HTTP {exc.status} "
        f"{exc.reason or 'no reason given'}); check auth.client_id and api.auth_url")


def _login_refused(exc: RejectedError) -> AuthError:
    if exc.status == 403 and "no longer accepting" in exc.reason.lower():
        return LegacyLoginGoneError(
            "Peloton switched off the legacy /auth/login endpoint; set auth.method = "
            '"login" in your config (or "token" with pasted tokens)')
    if isinstance(exc, UnauthorizedError):
        return AuthError(
            f"login failed: wrong username or password ({exc.reason or 'HTTP 401'}); "
            "check PELOTON_USERNAME and PELOTON_PASSWORD")
    return AuthError(f"the Peloton login was refused (HTTP {exc.status} {exc.reason})")
