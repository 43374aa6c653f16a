#!/usr/bin/env python3
"""Fault soak: whole backfills against a misbehaving emulator, with the figures printed.

    flaky     N workouts under the flaky profile: exit 0, lake == a fault-free lake
    hostile   N workouts under hostile, 3 attempts per request: exit 0 or 3; if 3, the failures are listed in
              the manifest and _harvester/failures, and a second (fault-free) run
              fetches them; then lake == the fault-free lake
    throttle  configured at 2x the edge's limit (Cloudflare 1015, no Retry-After):
              share of requests throttled (must be <= 10%)
    expiry    32 workers, tokens expired server-side 5 times mid-run: refreshes per expiry

Exits 1 if any check fails. tests/test_reliability.py runs the same scenarios, smaller.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harvester.emulator import Emulator, EmulatorSettings
from harvester.run import run_harvest
from tests.harness import comparable, harvest_config

BACKOFF = 0.05  # s: the retry envelope's base, smaller than production's 0.5 to keep it brisk


def check(ok: bool, what: str, failed: list[str]) -> None:
    print(f"  {'ok  ' if ok else 'FAIL'} {what}")
    if not ok:
        failed.append(what)


async def reference(workouts: int, tmp: Path) -> dict[str, Any]:
    async with Emulator(EmulatorSettings(workouts=workouts)) as emulator:
        report = await run_harvest(harvest_config(emulator.url, tmp / "clean"), "backfill")
        assert report.exit_code == 0, report.manifest
    return comparable(tmp / "clean" / "lake")


async def flaky(workouts: int, tmp: Path, failed: list[str]) -> None:
    expected = await reference(workouts, tmp)
    async with Emulator(EmulatorSettings(workouts=workouts, faults="flaky")) as emulator:
        config = harvest_config(emulator.url, tmp / "flaky", harvest__concurrency=16)
        report = await run_harvest(config, "backfill", backoff_base=BACKOFF)
        faults = dict(emulator.stats.faults)
    print(f"flaky: {workouts} workouts, exit {report.exit_code}, {report.stats.requests} requests, "
          f"{report.stats.retries} retries, faults injected {sum(faults.values())} {faults}, "
          f"{report.elapsed_s:.1f} s")
    check(report.exit_code == 0, "flaky backfill exits 0", failed)
    check(comparable(tmp / "flaky" / "lake") == expected, "lake equals the fault-free lake", failed)


async def hostile(workouts: int, tmp: Path, failed: list[str], attempts: int = 3) -> None:
    expected = await reference(workouts, tmp)
    settings = EmulatorSettings(workouts=workouts, faults="hostile", slow_s=2.0)
    async with Emulator(settings) as emulator:
        # Few attempts, so some items do fail and the exit-3 path is exercised.
        config = harvest_config(emulator.url, tmp / "hostile", api__timeout_s=1.0,
                                api__max_attempts=attempts, harvest__concurrency=16)
        first = await run_harvest(config, "backfill", backoff_base=BACKOFF)
        faults = dict(emulator.stats.faults)
        print(f"hostile: {workouts} workouts, api.max_attempts {attempts}, exit {first.exit_code}, "
              f"{first.stats.requests} requests, {first.stats.retries} retries, "
              f"{len(first.outcome.failures)} failed, "
              f"faults injected {sum(faults.values())} {faults}, {first.elapsed_s:.1f} s")
        check(first.exit_code in (0, 3), "hostile backfill exits 0 or 3", failed)
        if first.exit_code == 3:
            failures = {(f.kind, f.id) for f in first.outcome.failures}
            listed = orjson.loads((tmp / "hostile" / "lake" / "_harvester" / "failures"
                                   / f"{first.user_id}.json").read_bytes())["failures"]
            check({(f["kind"], f["id"]) for f in listed} == failures,
                  "failures listed under _harvester/failures", failed)
            manifest = first.manifest["failures"]
            assert isinstance(manifest, list)
            check({(f["kind"], f["id"]) for f in manifest} == failures,
                  "failures listed in the manifest", failed)
            emulator.update_settings(faults="none")
            second = await run_harvest(config, "backfill", backoff_base=BACKOFF)
            print(f"  next run: exit {second.exit_code}, {second.stats.requests} requests")
            check(second.exit_code == 0, "next run exits 0", failed)
    check(comparable(tmp / "hostile" / "lake") == expected, "lake equals the fault-free lake",
          failed)


async def throttle(workouts: int, tmp: Path, failed: list[str]) -> None:
    limit = 50.0
    settings = EmulatorSettings(workouts=workouts, rate_limit=limit, rate_limit_style="cloudflare")
    async with Emulator(settings) as emulator:
        config = harvest_config(emulator.url, tmp / "throttle",
                                harvest__requests_per_second=2 * limit, api__max_attempts=10)
        report = await run_harvest(config, "backfill", backoff_base=0.5)
    share = report.stats.throttled / report.stats.requests
    print(f"throttle: edge limit {limit:g}/s, configured {2 * limit:g}/s, {workouts} workouts: "
          f"{report.stats.throttled} of {report.stats.requests} requests throttled = {share:.1%}, "
          f"achieved {report.stats.requests / report.elapsed_s:.1f}/s, exit {report.exit_code}")
    check(report.exit_code == 0 and share <= 0.10, "at most 10% throttled, exit 0", failed)


async def expiry(workouts: int, tmp: Path, failed: list[str]) -> None:
    jumps = 5
    settings = EmulatorSettings(workouts=workouts, token_ttl=3600.0, latency_ms=3.0)
    async with Emulator(settings) as emulator:
        config = harvest_config(emulator.url, tmp / "expiry", harvest__concurrency=32)
        expected_requests = 3 * workouts  # roughly: detail, graph, most rides
        every = expected_requests // (jumps + 1)
        done: list[int] = []

        async def jump() -> None:
            for n in range(1, jumps + 1):
                while emulator.stats.requests < n * every:  # noqa: ASYNC110
                    await anyio.sleep(0.005)
                emulator.advance_clock(7200.0)
                done.append(n)

        async with anyio.create_task_group() as tg:
            tg.start_soon(jump)
            report = await run_harvest(config, "backfill")
            tg.cancel_scope.cancel()
        grants = emulator.stats_snapshot()["token_grants"]
    print(f"expiry: 32 workers, {len(done)} server-side expiries, token grants {grants}, "
          f"{report.stats.reauths} re-authentications, {len(report.outcome.failures)} failures, "
          f"exit {report.exit_code}")
    check(grants["refresh_token"] == len(done) == jumps, "one refresh per expiry", failed)
    check(report.exit_code == 0 and not report.outcome.failures, "no request failed", failed)


SCENARIOS = {"flaky": flaky, "hostile": hostile, "throttle": throttle, "expiry": expiry}


async def main(args: argparse.Namespace) -> int:
    failed: list[str] = []
    sizes = {"flaky": args.workouts, "hostile": args.workouts, "throttle": args.workouts // 4,
             "expiry": args.workouts // 2}
    for name, scenario in SCENARIOS.items():
        if args.only and name != args.only:
            continue
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=f"soak-{name}-") as tmp:
            await scenario(sizes[name], Path(tmp), failed)
        print(f"  ({time.monotonic() - started:.1f} s)\n", flush=True)
    print("soak: " + ("all checks passed" if not failed else f"FAILED: {'; '.join(failed)}"))
    return 1 if failed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workouts", type=int, default=2000, help="flaky/hostile size (default 2000)")
    parser.add_argument("--only", choices=sorted(SCENARIOS), help="run one scenario")
    logging.basicConfig(level=logging.ERROR)  # per-item warnings would bury the figures
    sys.exit(anyio.run(main, parser.parse_args()))
