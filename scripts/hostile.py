#!/usr/bin/env python3
"""Hostile servers: the real CLI against each hostile emulator mode, with the figures printed.

For every mode: exit code, wall time, the CLI process's peak RSS, list requests
and all requests the emulator saw, and the failure the run recorded. Defaults
are the product's own (api.timeout_s 30, api.max_attempts 6); tests/test_hostile.py
runs the same scenarios with small deadlines and asserts on them.

    scripts/hostile [--timeout-s S] [--max-attempts N] [--workouts N] [--only MODE ...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harvester.emulator import Emulator, EmulatorSettings
from harvester.state import StateStore
from tests.harness import cli_env, write_config

RSS_WRAPPER = (
    "import resource, subprocess, sys\n"
    "code = subprocess.call([sys.executable, '-m', 'harvester', *sys.argv[2:]])\n"
    "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))\n"
    "sys.exit(code)\n"
)
# mode -> routes its body modes hit (listing modes always hit the workout list)
SCENARIOS: dict[str, frozenset[str]] = {
    "none": frozenset(),
    "repeat_page": frozenset(),
    "ignore_page": frozenset(),
    "lying_total": frozenset(),
    "lying_page_count": frozenset(),
    "endless_body": frozenset({"workouts"}),
    "drip": frozenset({"workouts"}),
    "drip/graphs": frozenset({"performance_graph"}),
    "gzip_bomb": frozenset({"workouts"}),
    "gzip_bomb/graphs": frozenset({"performance_graph"}),
}


async def scenario(name: str, args: argparse.Namespace, tmp: Path) -> str:
    mode = name.split("/")[0]
    settings = EmulatorSettings(workouts=args.workouts, hostile=mode, hostile_routes=SCENARIOS[name])
    async with Emulator(settings) as emulator:
        config = write_config(tmp, emulator.url,
                              api={"timeout_s": args.timeout_s, "max_attempts": args.max_attempts},
                              harvest={"page_size": args.page_size})
        started = time.monotonic()
        done = await anyio.run_process(
            [sys.executable, "-c", RSS_WRAPPER, str(tmp / "rss"), "backfill", "--config",
             str(config), "--no-progress"], env=cli_env(tmp), check=False)
        elapsed = time.monotonic() - started
        seen = emulator.stats_snapshot()
    manifest = StateStore(tmp / "lake").latest_manifest(emulator.account.user_id) or {}
    failures = manifest.get("failures") or []
    first = failures[0]["error"] if isinstance(failures, list) and failures else ""
    errors = [line for line in done.stderr.decode().splitlines() if "error:" in line]
    first = errors[-1] if errors else first
    rss_mb = int((tmp / "rss").read_text()) / 1024
    return (f"{name:18} exit {done.returncode:3}  {elapsed:6.1f} s  peak RSS {rss_mb:6.1f} MB  "
            f"list requests {seen['by_endpoint'].get('workouts', 0):3}  "
            f"requests {seen['requests']:4}  failures {len(failures):3}  {first[:110]}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout-s", type=float, default=30.0)
    parser.add_argument("--max-attempts", type=int, default=6)
    parser.add_argument("--workouts", type=int, default=300)
    parser.add_argument("--page-size", type=int, default=100)
    parser.add_argument("--only", nargs="*", choices=sorted(SCENARIOS), default=sorted(SCENARIOS))
    args = parser.parse_args()
    print(f"{args.workouts} workouts, page_size {args.page_size}, api.timeout_s {args.timeout_s:g}, "
          f"api.max_attempts {args.max_attempts}")
    for name in [n for n in SCENARIOS if n in args.only]:
        with tempfile.TemporaryDirectory(prefix="hostile-") as tmp:
            print(await scenario(name, args, Path(tmp)), flush=True)


if __name__ == "__main__":
    anyio.run(main)
