"""Credentials the emulator hands out: signed JWT access tokens, refresh tokens, sessions.

Access tokens are self-contained (HMAC-signed, with `exp`), so checking one needs
no lookup. Sessions from the legacy login never expire, as far as clients report.
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


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


MAX_VERIFIED = 1024  # remembered good tokens; a run uses a handful


@dataclass
class TokenIssuer:
    """Issues and checks this emulator's tokens; one per emulator."""

    user_id: str
    client_id: str
    key: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    refresh_tokens: set[str] = field(default_factory=set)
    sessions: set[str] = field(default_factory=set)
    refreshes: int = 0  # decides which refreshes rotate the refresh token
    # Access tokens whose signature and subject already checked out -> their expiry.
    # Verifying an HMAC on every request was a tenth of the emulator's CPU.
    verified: dict[str, int] = field(default_factory=dict)

    def _jwt(self, claims: dict[str, object]) -> str:
        header = _b64(orjson.dumps({"alg": "HS256", "typ": "JWT", "kid": "emulator"}))
        payload = _b64(orjson.dumps(claims))
        signature = hmac.new(self.key, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        return f"{header}.{payload}.{_b64(signature)}"

    def grant(self, now: float, ttl: float, rotate: bool = True) -> dict[str, object]:
        """The token endpoint's answer; without `rotate` no new refresh token is sent."""
        iat = int(now)
        access = self._jwt(
            {
                "iss": ISSUER,
                "sub": self.user_id,
                "aud": [AUDIENCE, f"{ISSUER}userinfo"],
                "iat": iat,
                "exp": int(now + ttl),
                "scope": "openid offline_access",
                "azp": self.client_id,
                "http://onepeloton.com/user_id": self.user_id,
            }
        )
        id_token = self._jwt(
            {
                "iss": ISSUER,
                "sub": self.user_id,
                "aud": self.client_id,
                "iat": iat,
                "exp": iat + 36000,
                "http://onepeloton.com/user_id": self.user_id,
            }
        )
        out: dict[str, object] = {
            "access_token": access,
            "id_token": id_token,
            "scope": "openid offline_access",
            "expires_in": int(ttl),
            "token_type": "Bearer",
        }
        if rotate:
            refresh = f"v1.{_b64(secrets.token_bytes(48))}"
            self.refresh_tokens.add(refresh)
            out["refresh_token"] = refresh
        return out

    def refresh(self, token: str, now: float, ttl: float) -> dict[str, object] | None:
        """New tokens for a known refresh token; every other refresh keeps the old one."""
        if token not in self.refresh_tokens:
            return None
        self.refreshes += 1
        return self.grant(now, ttl, rotate=self.refreshes % 2 == 0)

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
