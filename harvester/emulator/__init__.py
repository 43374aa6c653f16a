"""A faithful emulator of the Peloton API (PELOTON_API.md), for tests, demos and benchmarks.

It imports nothing from the rest of the harvester: it models the remote API
independently, so the client cannot shape the server it is tested against.

Default login: demo@example.com / peloton-demo, through Auth0 Universal Login
(universal.py, with auth-orca on a second listener: orca.py), the OAuth token
endpoint (oauth.py) or the legacy /auth/login. Sessions from /auth/login never
expire; bearer tokens expire after `token_ttl`; refresh tokens rotate.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from harvester.emulator.settings import (
    EmulatorSettings,
    SettingsError,
    add_arguments,
    settings_from_args,
)

if TYPE_CHECKING:
    from harvester.emulator.app import make_app
    from harvester.emulator.server import Emulator, serve


def __getattr__(name: str) -> object:
    # The server pulls in aiohttp.web; the harvester's CLI only needs the settings
    # (its --help), so the rest loads on first use.
    if name in ("Emulator", "serve"):
        from harvester.emulator import server

        return getattr(server, name)
    if name == "make_app":
        from harvester.emulator.app import make_app

        return make_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "Emulator",
    "EmulatorSettings",
    "SettingsError",
    "add_arguments",
    "make_app",
    "serve",
    "settings_from_args",
]
