"""Signing in to Peloton.

    strategies.py  login, token, password, session: one interface (Authenticator)
    universal.py   the Auth0 Universal Login steps: the only file that knows Auth0's URLs and forms
    tokens.py      the token store: atomic, locked, rotation-safe

``make_authenticator`` picks the strategy ``auth.method`` names.
"""

from __future__ import annotations

from pathlib import Path

from harvester.auth import tokens
from harvester.auth.strategies import (
    Authenticator,
    LoginAuth,
    PasswordAuth,
    Paste,
    SessionAuth,
    TokenAuth,
)
from harvester.auth.tokens import (
    USER_ID_CLAIM,
    Clocks,
    Tokens,
    TokenStore,
    cache_key,
    jwt_expiry,
    jwt_user_id,
)
from harvester.auth.universal import Tenant
from harvester.client import HttpClient
from harvester.config import Config, require_credentials

__all__ = [
    "USER_ID_CLAIM",
    "Authenticator",
    "Clocks",
    "LoginAuth",
    "PasswordAuth",
    "Paste",
    "SessionAuth",
    "TokenAuth",
    "TokenStore",
    "Tokens",
    "cache_key",
    "jwt_expiry",
    "jwt_user_id",
    "make_authenticator",
]


def make_authenticator(config: Config, http: HttpClient, *, cache_path: Path | None = None,
                       clocks: Clocks | None = None) -> Authenticator:
    """The strategy named by ``auth.method``; ``cache_path`` overrides ``auth.token_cache``."""
    require_credentials(config)
    creds, api, auth = config.credentials, config.api, config.auth
    clocks = clocks or tokens.DEFAULT_CLOCKS
    client_id = auth.oauth_client_id
    token_url = f"{api.auth_url.rstrip('/')}/oauth/token"
    path = cache_path or auth.token_cache_path
    if auth.method == "session":
        assert creds.username is not None and creds.password is not None
        return SessionAuth(http, api.base_url, creds.username, creds.password)
    if auth.method == "login":
        store = TokenStore(path, cache_key("login", api.base_url, api.auth_url, client_id), clocks,
                           account=creds.username)
        return LoginAuth(http, Tenant(api.auth_url, client_id), store, clocks, creds.username,
                         creds.password)
    if auth.method == "token":
        identity = creds.refresh_token or creds.access_token or ""
        store = TokenStore(path, cache_key("token", api.base_url, api.auth_url, identity), clocks)
        return TokenAuth(http, token_url, client_id, creds.access_token, creds.refresh_token,
                         store, clocks)
    assert creds.username is not None and creds.password is not None
    store = TokenStore(path, cache_key("password", api.base_url, api.auth_url, creds.username),
                       clocks)
    return PasswordAuth(http, token_url, client_id, creds.username, creds.password, store, clocks)
