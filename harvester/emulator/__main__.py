"""`python -m harvester.emulator`: run the emulator in the foreground."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys

from harvester.emulator.server import serve
from harvester.emulator.settings import SettingsError, add_arguments, settings_from_args


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harvester.emulator",
        description="Serve a synthetic Peloton account on loopback; prints the base URL first.",
    )
    add_arguments(parser)
    ns = parser.parse_args(argv)
    try:
        settings, host, port = settings_from_args(ns)
    except SettingsError as exc:
        parser.error(str(exc))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(settings, host, port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
