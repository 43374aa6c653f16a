"""Credentials the emulator hands out: signed JWT access tokens, rotating refresh tokens, sessions.

Access tokens are self-contained (HMAC-signed, with `exp`), so checking one needs
no lookup. Refresh tokens rotate as Auth0's do: every refresh answers a new one
in the same family and the old one dies; sending a used one again is reuse,
which revokes the whole family. Sessions from the legacy login never expire.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass, field

import orjson

ISSUER = "https://auth.onepeloton.com/"
AUDIENCE = "https://api.onepeloton.com/"
USER_ID_CLAIM = "http://onepeloton.com/user_id"
ID_TOKEN_TTL = 36000  # about 10 h, as Peloton's


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


MAX_VERIFIED = 1024  # remembered good tokens; a run uses a handful


@dataclass
class Family:
    """One sign-in's line of refresh tokens."""

    client_id: str
    scope: str
    current: str = ""  # the one refresh token of the family still usable
    access_issued: float = 0.0  # when its latest access token was issued...
    access_ttl: float = 0.0  # ...and for how long
    revoked: bool = False


@dataclass
class RefreshOutcome:
    """What a refresh grant did: the answer, or why there is none."""

    answer: dict[str, object] | None
    reused: bool = False  # a used refresh token came again: the family is now revoked
    early: bool = False  # refreshed while the family's access token had over half its life left


@dataclass
class TokenIssuer:
    """Issues and checks this emulator's tokens; one per emulator."""

    user_id: str
    key: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    families: dict[str, Family] = field(default_factory=dict)
    refresh_tokens: dict[str, str] = field(default_factory=dict)  # token -> family id, used ones too
    sessions: set[str] = field(default_factory=set)
    # Access tokens whose signature and subject already checked out -> their expiry.
    # Verifying an HMAC on every request was a tenth of the emulator's CPU.
    verified: dict[str, int] = field(default_factory=dict)

    def sign(self, claims: dict[str, object]) -> str:
        header = b64url(orjson.dumps({"alg": "HS256", "typ": "JWT", "kid": "emulator"}))
        payload = b64url(orjson.dumps(claims))
        signature = hmac.new(self.key, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        return f"{header}.{payload}.{b64url(signature)}"

    def grant(self, now: float, ttl: float, client_id: str, scope: str,
              family_id: str | None = None) -> dict[str, object]:
        """The token endpoint's answer: a new family, or the next link of ``family_id``."""
        iat = int(now)
        claims = {"iss": ISSUER, "sub": self.user_id, "aud": [AUDIENCE, f"{ISSUER}userinfo"],
                  "iat": iat, "exp": int(now + ttl), "scope": scope, "azp": client_id,
                  "jti": secrets.token_hex(8), USER_ID_CLAIM: self.user_id}
        id_claims = {"iss": ISSUER, "sub": self.user_id, "aud": client_id, "iat": iat,
                     "exp": iat + ID_TOKEN_TTL, USER_ID_CLAIM: self.user_id}
        if family_id is None:
            family_id = secrets.token_hex(8)
            self.families[family_id] = Family(client_id, scope)
        family = self.families[family_id]
        refresh = f"v1.{b64url(secrets.token_bytes(48))}"
        self.refresh_tokens[refresh] = family_id
        family.current, family.access_issued, family.access_ttl = refresh, now, ttl
        return {"access_token": self.sign(claims), "refresh_token": refresh,
                "id_token": self.sign(id_claims), "scope": scope, "expires_in": int(ttl),
                "token_type": "Bearer"}

    def refresh(self, token: str, client_id: str, now: float, ttl: float) -> RefreshOutcome:
        """Rotate: a new pair for the family's current token; reuse revokes the family."""
        family_id = self.refresh_tokens.get(token)
        family = self.families.get(family_id) if family_id is not None else None
        if family is None or family.revoked or family.client_id != client_id:
            return RefreshOutcome(None)
        if token != family.current:
            family.revoked = True  # Auth0's reuse detection
            return RefreshOutcome(None, reused=True)
        early = now < family.access_issued + family.access_ttl / 2
        return RefreshOutcome(self.grant(now, ttl, client_id, family.scope, family_id),
                              early=early)

    def revoke_all(self) -> int:
        """End every sign-in (a password change, say); how many families were live."""
        live = [f for f in self.families.values() if not f.revoked]
        for family in live:
            family.revoked = True
        return len(live)

    def check_bearer(self, token: str, now: float) -> bool:
        """True for an unexpired token signed by this emulator."""
        exp = self.verified.get(token)
        if exp is not None:
            return now < exp
        parts = token.split(".")
        if len(parts) != 3:
            return False
        header, payload, signature = parts
        expected = hmac.new(self.key, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        try:
            if not hmac.compare_digest(_unb64(signature), expected):
                return False
            claims = orjson.loads(_unb64(payload))
        except (ValueError, orjson.JSONDecodeError):
            return False
        exp = claims.get("exp") if isinstance(claims, dict) else None
        if not isinstance(exp, int) or claims.get("sub") != self.user_id:
            return False
        if len(self.verified) >= MAX_VERIFIED:
            self.verified.clear()
        self.verified[token] = exp
        return now < exp

    def open_session(self) -> str:
        session = secrets.token_hex(16)
        self.sessions.add(session)
        return session
