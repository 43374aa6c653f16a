"""The token store: tokens on disk, atomic, locked, safe with rotating refresh tokens.

Peloton's refresh tokens rotate: every refresh answers a new one and the old one
dies (Auth0's reuse detection may revoke the whole family if it is sent again).
So the store is the one truth about which refresh token is current:

    1. take the exclusive lock (``fcntl.flock`` on a sidecar ``<name>.lock``),
    2. re-read the store: another process may have rotated already,
    3. refresh with the refresh token read there (never one held in memory),
    4. write the answer (atomically, 0600) before the new access token is used,
    5. release the lock.

Expiry is judged from ``expires_in`` at receipt on the monotonic clock, never
from the JWT's ``exp`` against the host clock (a host clock two days ahead used
to mean a refresh per request). The file also keeps a wall-clock expiry for the
next process; a reader trusts it for no longer than the token's lifetime.
The JWT readers at the end take the account id (and, for pasted tokens only,
the expiry) from an access token without verifying it.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.to_thread
import orjson

from harvester.config import require_token_text
from harvester.files import atomic_write

log = logging.getLogger(__name__)

DEFAULT_REFRESH_MARGIN_S = 60.0  # refresh when the access token expires sooner than this
SHORT_TOKEN_MARGIN_FRACTION = 0.1  # ...or, for short-lived tokens, within this part of their life
DEFAULT_LOCK_POLL_S = 0.01  # how often a waiter retries the store's lock
_STORE_VERSION = 2

# Peloton's access tokens name the account in this claim; public clients read the
# user id from it instead of asking /api/me (the emulator's tokens carry it too).
USER_ID_CLAIM = "http://onepeloton.com/user_id"

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Clocks:
    """Monotonic time judges expiry; wall time only carries it across processes."""

    monotonic: Clock = time.monotonic
    wall: Clock = time.time


# Read by make_authenticator at call time, so a test can skew the host's wall clock.
DEFAULT_CLOCKS = Clocks()


@dataclass(frozen=True, slots=True)
class Tokens:
    """An OAuth token pair; ``deadline`` is when the access token expires, on the monotonic clock."""

    access_token: str | None = field(repr=False)
    refresh_token: str | None = field(repr=False)
    deadline: float | None = None  # None: unknown, used until a 401 says otherwise
    lifetime: float | None = None  # expires_in as received

    @property
    def margin(self) -> float:
        # Shorter for short-lived tokens, or a 20 s token would be refreshed on every request.
        if self.lifetime is not None and self.lifetime > 0:
            return min(DEFAULT_REFRESH_MARGIN_S, self.lifetime * SHORT_TOKEN_MARGIN_FRACTION)
        return DEFAULT_REFRESH_MARGIN_S

    def expiring(self, now: float) -> bool:
        """True when the access token is missing or expires within the margin of ``now``."""
        if self.access_token is None:
            return True
        return self.deadline is not None and self.deadline - now <= self.margin


def cache_key(*parts: str) -> str:
    """An opaque key for the store: which server and identity the tokens belong to."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


class TokenStore:
    """One token file (mode 0600) and its lock; another server's or account's file is ignored."""

    def __init__(self, path: Path, key: str, clocks: Clocks = DEFAULT_CLOCKS,
                 account: str | None = None) -> None:
        self.path = path
        self._key = key
        self._clocks = clocks
        # Hash of the username when known: a store signed in as someone else is ignored.
        self._account = cache_key("account", account.lower()) if account else None

    def __repr__(self) -> str:
        return f"<TokenStore {self.path}>"

    async def load(self) -> Tokens | None:
        return await anyio.to_thread.run_sync(self._load)

    async def save(self, tokens: Tokens) -> None:
        await anyio.to_thread.run_sync(self._save, tokens)

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """Hold the store's lock (across processes); polled, so cancelling a waiter works."""
        try:
            fd = await anyio.to_thread.run_sync(self._open_lock)
        except OSError as exc:
            log.warning("cannot lock token store %s: %s; going on unlocked", self.path,
                        exc.strerror or exc)
            yield
            return
        try:
            # Another process holds it: there is no event to await, so poll.
            while not _try_flock(fd):  # noqa: ASYNC110
                await anyio.sleep(DEFAULT_LOCK_POLL_S)
            yield
        finally:
            os.close(fd)  # releases the lock; a killed holder's lock goes with its process

    def _open_lock(self) -> int:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        return os.open(self.path.with_name(self.path.name + ".lock"),
                       os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def _load(self) -> Tokens | None:
        try:
            raw = orjson.loads(self.path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return None
        if not isinstance(raw, dict) or raw.get("key") != self._key:
            return None
        stored_account = raw.get("account")
        if self._account and stored_account and stored_account != self._account:
            return None
        access, refresh = raw.get("access_token"), raw.get("refresh_token")
        if not isinstance(access, str | None) or not isinstance(refresh, str | None):
            return None
        if access is None and refresh is None:
            return None
        for token in (access, refresh):  # a damaged cache: say which file, don't send it
            require_token_text(token, f"the token cache {self.path}")
        return Tokens(access, refresh, *self._deadline(raw.get("expires_at"), raw.get("expires_in")))

    def _deadline(self, expires_at: object, expires_in: object) -> tuple[float | None, float | None]:
        """The stored wall-clock expiry as a monotonic deadline, trusted for one lifetime at most."""
        lifetime = float(expires_in) if isinstance(expires_in, int | float) else None
        if not isinstance(expires_at, int | float):
            return None, lifetime
        remaining = float(expires_at) - self._clocks.wall()
        if lifetime is not None:
            remaining = min(remaining, lifetime)  # the host clock went back: don't trust it longer
        return self._clocks.monotonic() + remaining, lifetime

    def _save(self, tokens: Tokens) -> None:
        expires_at = None
        if tokens.deadline is not None:
            expires_at = self._clocks.wall() + (tokens.deadline - self._clocks.monotonic())
        record = {"version": _STORE_VERSION, "key": self._key, "account": self._account,
                  "access_token": tokens.access_token, "refresh_token": tokens.refresh_token,
                  "expires_at": expires_at, "expires_in": tokens.lifetime,
                  "saved_at": self._clocks.wall()}
        try:
            write_private(self.path, orjson.dumps(record))
        except OSError as exc:
            log.warning("cannot write token store %s: %s; the next run must sign in again",
                        self.path, exc.strerror or exc)


def write_private(path: Path, payload: bytes) -> None:
    """Atomically replace ``path`` with ``payload``, mode 0600, in a 0700 directory if new."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    atomic_write(path, payload, 0o600)


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


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
