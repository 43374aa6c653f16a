"""Authentication strategies, each with one shared re-authentication.

    PasswordAuth  OAuth password grant; refresh grant later, password again if refresh is refused
    TokenAuth     pasted PELOTON_ACCESS_TOKEN / PELOTON_REFRESH_TOKEN; refresh grant only
    SessionAuth   legacy POST /auth/login -> Cookie: peloton_session_id

However many workers see a 401 at once, only one re-authenticates: the rest find,
under the lock, that the credentials they sent are no longer current and return.
Token requests go through the HttpClient, so they pass the shared limiter and count
in the run's stats. No secret ever reaches a log line, a message or a repr.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.to_thread
import orjson

from harvester.client import HttpClient, JsonObject, RejectedError, UnauthorizedError
from harvester.config import Config, require_credentials, require_token_text
from harvester.errors import AuthError, LegacyLoginGoneError
from harvester.files import atomic_write

log = logging.getLogger(__name__)

DEFAULT_REFRESH_MARGIN_S = 60.0  # refresh when the access token expires sooner than this
SHORT_TOKEN_MARGIN_FRACTION = 0.1  # ...or, for short-lived tokens, within this part of their life
OAUTH_SCOPE = "offline_access openid"
SESSION_COOKIE = "peloton_session_id"
_HEADER_SAFE = re.compile(r"[A-Za-z0-9._~+/=-]+")  # what may go into a header unescaped
_CACHE_VERSION = 1
# Peloton's access tokens name the account in this claim; public clients read the
# user id from it instead of asking /api/me (the emulator's tokens carry it too).
USER_ID_CLAIM = "http://onepeloton.com/user_id"

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Tokens:
    """An OAuth token pair; ``expires_at`` is epoch seconds, None when unknown."""

    access_token: str | None = field(repr=False)
    refresh_token: str | None = field(repr=False)
    expires_at: float | None = None
    # Refresh this long before expiry; shorter for short-lived tokens, or every
    # request would refresh a token that lives less than a minute.
    margin: float = DEFAULT_REFRESH_MARGIN_S

    def expiring(self, now: float) -> bool:
        if self.access_token is None:
            return True
        return self.expires_at is not None and self.expires_at - now <= self.margin


def jwt_claims(token: str) -> dict[str, object]:
    """A JWT's claims, read without verifying the signature; empty if it is not one."""
    parts = token.split(".")
    if len(parts) != 3:
        return {}
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = orjson.loads(base64.urlsafe_b64decode(payload))
    except (ValueError, orjson.JSONDecodeError):
        return {}
    return claims if isinstance(claims, dict) else {}


def jwt_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT, read without verifying the signature; None if absent."""
    exp = jwt_claims(token).get("exp")
    if isinstance(exp, int | float) and not isinstance(exp, bool):
        return float(exp)
    return None


def jwt_user_id(token: str | None) -> str | None:
    """The account id Peloton puts in its access tokens (``USER_ID_CLAIM``), if there."""
    found = jwt_claims(token).get(USER_ID_CLAIM) if token else None
    return found if isinstance(found, str) and found else None


class Authenticator(ABC):
    """Supplies auth headers and performs the one shared re-authentication after a 401."""

    # The account's id when authenticating told it: a session login's answer, or
    # the access token's USER_ID_CLAIM. None until then, or if it did not say.
    user_id: str | None = None

    @abstractmethod
    async def headers(self) -> dict[str, str]:
        """Headers to send now; logs in lazily and refreshes ahead of expiry."""

    @abstractmethod
    async def handle_unauthorized(self, sent: Mapping[str, str]) -> None:
        """A request sent with ``sent`` got 401: re-authenticate unless someone already did."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"


class TokenCache:
    """Tokens on disk (mode 0600), keyed so another account's or server's cache is ignored."""

    def __init__(self, path: Path, key: str, clock: Clock = time.time) -> None:
        self.path = path
        self._key = key
        self._clock = clock

    async def load(self) -> Tokens | None:
        return await anyio.to_thread.run_sync(self._load)

    async def save(self, tokens: Tokens) -> None:
        await anyio.to_thread.run_sync(self._save, tokens)

    def _load(self) -> Tokens | None:
        try:
            raw = orjson.loads(self.path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return None
        if not isinstance(raw, dict) or raw.get("key") != self._key:
            return None
        access, refresh, expires = (raw.get(k) for k in ("access_token", "refresh_token",
                                                         "expires_at"))
        if not isinstance(access, str) or not isinstance(refresh, str | None):
            return None
        for token in (access, refresh):  # a damaged cache: say which file, don't send it
            require_token_text(token, f"the token cache {self.path}")
        expires_at = float(expires) if isinstance(expires, int | float) else None
        return Tokens(access, refresh, expires_at)

    def _save(self, tokens: Tokens) -> None:
        record = {"version": _CACHE_VERSION, "key": self._key, "access_token": tokens.access_token,
                  "refresh_token": tokens.refresh_token, "expires_at": tokens.expires_at,
                  "saved_at": self._clock()}
        try:
            write_private(self.path, orjson.dumps(record))
        except OSError as exc:
            log.warning("cannot write token cache %s: %s", self.path, exc.strerror or exc)


def write_private(path: Path, payload: bytes) -> None:
    """Atomically replace ``path`` with ``payload``, mode 0600, in a 0700 directory if new."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    atomic_write(path, payload, 0o600)


def cache_key(*parts: str) -> str:
    """An opaque key for the cache: which server and identity the tokens belong to."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


class _OAuth(Authenticator):
    """Bearer tokens with a double-checked, lock-guarded renewal."""

    def __init__(self, http: HttpClient, token_url: str, client_id: str,
                 cache: TokenCache | None, clock: Clock) -> None:
        self._http = http
        self._token_url = token_url
        self._client_id = client_id
        self._cache = cache
        self._clock = clock
        self._lock = anyio.Lock()
        self._tokens: Tokens | None = None  # what headers() hands out; None until first use
        self._generation = 0  # bumped by every renewal, so lock waiters can tell one happened

    async def headers(self) -> dict[str, str]:
        tokens = self._tokens
        if tokens is None or tokens.expiring(self._clock()):
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
            await self._store(await self._renew(current, rejected=True))

    async def _current_or_renewed(self) -> Tokens:
        tokens = self._tokens
        if tokens is None:
            tokens = await self._initial()
            self._tokens = tokens if not tokens.expiring(self._clock()) else None
            self.user_id = jwt_user_id(tokens.access_token)
        if tokens.expiring(self._clock()):
            tokens = await self._renew(tokens, rejected=False)
            await self._store(tokens)
        return tokens

    async def _store(self, tokens: Tokens) -> None:
        if self._tokens is not None:
            self._http.stats.reauths += 1
        life = "" if tokens.expires_at is None else f", valid {tokens.expires_at - self._clock():.0f} s"
        log.info("%s an access token%s", "renewed" if self._tokens else "obtained", life)
        self._tokens = tokens
        self.user_id = jwt_user_id(tokens.access_token)
        self._generation += 1
        if self._cache is not None:
            await self._cache.save(tokens)

    @abstractmethod
    async def _initial(self) -> Tokens:
        """Tokens to start from (cache or pasted), possibly expired."""

    @abstractmethod
    async def _renew(self, current: Tokens, *, rejected: bool) -> Tokens:
        """New tokens; raises AuthError when no way of getting them is left."""

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
        now = self._clock()
        expires_at = jwt_expiry(access)
        expires_in = reply.get("expires_in")
        lifetime = float(expires_in) if isinstance(expires_in, int | float) else None
        if expires_at is None and lifetime is not None:
            expires_at = now + lifetime
        if lifetime is None and expires_at is not None:
            lifetime = expires_at - now
        margin = DEFAULT_REFRESH_MARGIN_S
        if lifetime is not None and lifetime > 0:
            margin = min(margin, lifetime * SHORT_TOKEN_MARGIN_FRACTION)
        # A refresh grant may not return a new refresh token: keep the old one.
        keep = refresh if isinstance(refresh, str) else keep_refresh
        return Tokens(access, keep, expires_at, margin)

    async def _refresh(self, refresh_token: str) -> Tokens:
        body = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        return await self._grant(body, keep_refresh=refresh_token)


class PasswordAuth(_OAuth):
    """OAuth password grant; refresh grant afterwards, falling back to the password."""

    def __init__(self, http: HttpClient, token_url: str, client_id: str, username: str,
                 password: str, cache: TokenCache | None, clock: Clock = time.time) -> None:
        super().__init__(http, token_url, client_id, cache, clock)
        self._username = username
        self._password = password

    async def _initial(self) -> Tokens:
        cached = await self._cache.load() if self._cache is not None else None
        return cached or Tokens(None, None)

    async def _renew(self, current: Tokens, *, rejected: bool) -> Tokens:
        if current.refresh_token:
            try:
                return await self._refresh(current.refresh_token)
            except RejectedError as exc:
                if exc.reason != "invalid_grant":
                    raise _token_refused(exc) from exc
                log.info("refresh token refused; logging in again with the password")
        return await self._password_grant()

    async def _password_grant(self) -> Tokens:
        body = {"grant_type": "password", "scope": OAUTH_SCOPE,
                "username": self._username, "password": self._password}
        try:
            return await self._grant(body, keep_refresh=None)
        except RejectedError as exc:
            if exc.reason == "invalid_grant":
                raise AuthError(
                    "Peloton rejected the username or password (invalid_grant); "
                    "check PELOTON_USERNAME and PELOTON_PASSWORD") from exc
            raise _token_refused(exc) from exc


class TokenAuth(_OAuth):
    """Pasted tokens; refreshed with the refresh grant only (there is no password)."""

    def __init__(self, http: HttpClient, token_url: str, client_id: str,
                 access_token: str | None, refresh_token: str | None,
                 cache: TokenCache | None, clock: Clock = time.time) -> None:
        super().__init__(http, token_url, client_id, cache, clock)
        expires = jwt_expiry(access_token) if access_token else None
        self._pasted = Tokens(access_token, refresh_token, expires)

    async def _initial(self) -> Tokens:
        cached = await self._cache.load() if self._cache is not None else None
        return cached or self._pasted

    async def _renew(self, current: Tokens, *, rejected: bool) -> Tokens:
        if not current.refresh_token:
            state = "was rejected" if rejected else "has expired"
            raise AuthError(
                f"the Peloton access token {state} and no refresh token is set; paste fresh "
                "tokens into PELOTON_ACCESS_TOKEN and PELOTON_REFRESH_TOKEN")
        try:
            return await self._refresh(current.refresh_token)
        except RejectedError as exc:
            raise AuthError(
                f"Peloton refused the refresh token ({exc.reason or exc.status}); paste fresh "
                "tokens into PELOTON_ACCESS_TOKEN and PELOTON_REFRESH_TOKEN") from exc


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
            '"password" (OAuth) or "token" in your config')
    if isinstance(exc, UnauthorizedError):
        return AuthError(
            f"login failed: wrong username or password ({exc.reason or 'HTTP 401'}); "
            "check PELOTON_USERNAME and PELOTON_PASSWORD")
    return AuthError(f"the Peloton login was refused (HTTP {exc.status} {exc.reason})")


def make_authenticator(config: Config, http: HttpClient, *,
                       cache_path: Path | None = None) -> Authenticator:
    """The strategy named by ``auth.method``; ``cache_path`` overrides ``auth.token_cache``."""
    require_credentials(config)
    creds, api, auth = config.credentials, config.api, config.auth
    token_url = f"{api.auth_url.rstrip('/')}/oauth/token"
    path = cache_path or auth.token_cache_path
    if auth.method == "session":
        assert creds.username is not None and creds.password is not None
        return SessionAuth(http, api.base_url, creds.username, creds.password)
    if auth.method == "token":
        identity = creds.refresh_token or creds.access_token or ""
        cache = TokenCache(path, cache_key("token", api.base_url, api.auth_url, identity))
        return TokenAuth(http, token_url, auth.client_id, creds.access_token,
                         creds.refresh_token, cache)
    assert creds.username is not None and creds.password is not None
    cache = TokenCache(path, cache_key("password", api.base_url, api.auth_url, creds.username))
    return PasswordAuth(http, token_url, auth.client_id, creds.username, creds.password, cache)
