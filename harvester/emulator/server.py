"""Running the emulator: in-process (`Emulator`) or in the foreground (`serve`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from typing import Any

from aiohttp import web

from harvester.emulator.account import Account
from harvester.emulator.admin import change_settings
from harvester.emulator.app import make_app
from harvester.emulator.orca import make_orca_app
from harvester.emulator.settings import DEFAULT_HOST, EmulatorSettings, SettingsError
from harvester.emulator.state import STATE, EmulatorState
from harvester.emulator.stats import Stats

DEFAULT_SETTINGS = EmulatorSettings()


class Emulator:
    """A started emulator on loopback; `start()` returns its base URL."""

    def __init__(self, settings: EmulatorSettings = DEFAULT_SETTINGS) -> None:
        self.app = make_app(settings)
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._orca: web.AppRunner | None = None

    @property
    def state(self) -> EmulatorState:
        return self.app[STATE]

    @property
    def settings(self) -> EmulatorSettings:
        return self.state.settings

    @property
    def account(self) -> Account:
        return self.state.account

    @property
    def stats(self) -> Stats:
        return self.state.stats

    async def start(self, host: str = DEFAULT_HOST, port: int = 0) -> str:
        # Access logs off: a benchmark would spend its time formatting them.
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        bound = await _listen(self._runner, host, port)
        self.url = f"http://{host}:{bound}"
        # auth-orca, the sign-in's second host: same interface, another name for it
        self._orca = web.AppRunner(make_orca_app(self.state), access_log=None,
                                   handle_signals=False)
        orca_port = await _listen(self._orca, host, 0)
        self.state.orca_url = f"http://{self.settings.orca_host}:{orca_port}"
        return self.url

    async def stop(self) -> None:
        for runner in (self._runner, self._orca):
            if runner is not None:
                await runner.cleanup()
        self._runner = self._orca = None

    async def __aenter__(self) -> Emulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # Same controls as the /_emulator/* routes, for in-process tests.

    def stats_snapshot(self, arrivals: bool = False) -> dict[str, Any]:
        return self.stats.snapshot(arrivals)

    def reset_stats(self) -> None:
        self.stats.reset(time.monotonic())

    def add_workouts(self, count: int = 1) -> list[str]:
        return [w.id for w in self.state.add_workouts(count)]

    def update_settings(self, **changes: Any) -> EmulatorSettings:
        change_settings(self.state, changes)
        return self.settings

    def advance_clock(self, seconds: float) -> None:
        """Move the emulator's clock on (expires tokens without sleeping)."""
        self.state.clock_offset += seconds


def usage_lines(url: str, settings: EmulatorSettings) -> str:
    """How to point a harvester config at the emulator: the two keys and the login."""
    return "\n".join([
        f"# the Peloton API emulator serves {settings.workouts} synthetic workouts at {url}",
        "# point a config at it (both keys, same URL):",
        "#   [api]",
        f'#   base_url = "{url}"',
        f'#   auth_url = "{url}"',
        "# and log in as its synthetic account:",
        f"#   export PELOTON_USERNAME='{settings.username}' PELOTON_PASSWORD='{settings.password}'",
        "# Ctrl-C stops it.",
    ])


async def _listen(runner: web.AppRunner, host: str, port: int) -> int:
    """Start ``runner`` on host:port; the port it got."""
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    sockets = getattr(site._server, "sockets", None) or []
    return int(sockets[0].getsockname()[1]) if sockets else port


async def serve(settings: EmulatorSettings, host: str = DEFAULT_HOST, port: int = 0) -> None:
    """Start, print the base URL as the first stdout line (then how to use it), serve until stopped."""
    emulator = Emulator(settings)
    try:
        url = await emulator.start(host, port)
    except OSError as exc:  # in use, not an address of this machine, unknown host name
        await emulator.stop()
        code = exc.errno or 0  # getaddrinfo's are negative: no strerror for them
        reason = os.strerror(code) if code > 0 else exc.strerror or str(exc)
        raise SettingsError(f"cannot listen on {host}:{port}: {reason}; choose another --port "
                            "(0 picks a free one) or --host") from None
    print(url, flush=True)
    print(usage_lines(url, settings), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        # Not available off the main thread or on Windows: cancellation still works.
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
        await asyncio.shield(emulator.stop())
        print("emulator stopped", file=sys.stderr, flush=True)
