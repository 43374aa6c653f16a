#!/usr/bin/env python3
"""Benchmark the emulator: requests/s for a mixed harvest workload.

The emulator runs in a subprocess pinned to one core; this process drives it
with aiohttp at high concurrency from another core. The workload is what a
harvest does: list pages of 100, then per workout its detail and performance
graph, and each class's ride details once, at zero latency, no faults.

    .venv/bin/python scripts/bench_emulator.py [--seconds 10] [--workouts 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import aiohttp

CLIENT_ID = "mgsmWCD0A8Qn6uz6mmqI6qeBNHH9IPwS"
ZERO_ID = "0" * 32


def start_emulator(workouts: int) -> tuple[subprocess.Popen[str], str]:
    def pin() -> None:  # the emulator gets one core to itself
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {0})

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen(
        [sys.executable, "-m", "harvester.emulator", "--port", "0", "--workouts", str(workouts)],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=pin,
        cwd=root,
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def harvest_requests(base: str, uid: str, workouts: list[tuple[str, str]]) -> Iterator[str]:
    """URLs in harvest order: a list page, then its workouts' detail, graph, new rides."""
    seen_rides: set[str] = set()
    for start in range(0, len(workouts), 100):
        page = start // 100
        yield f"{base}/api/user/{uid}/workouts?joins=ride,ride.instructor&limit=100&page={page}"
        for wid, rid in workouts[start : start + 100]:
            yield f"{base}/api/workout/{wid}"
            yield f"{base}/api/workout/{wid}/performance_graph?every_n=5"
            if len(rid) == 32 and rid != ZERO_ID and rid not in seen_rides:
                seen_rides.add(rid)
                yield f"{base}/api/ride/{rid}/details"


async def drive(base: str, seconds: float, concurrency: int) -> tuple[int, int, float]:
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:
        body = {
            "grant_type": "password",
            "client_id": CLIENT_ID,
            "username": "demo@example.com",
            "password": "peloton-demo",
        }
        async with http.post(f"{base}/oauth/token", json=body) as resp:
            token = (await resp.json())["access_token"]
        headers = {"Authorization": f"Bearer {token}", "Peloton-Platform": "web"}
        async with http.get(f"{base}/api/me", headers=headers) as resp:
            me = await resp.json()
        # The id list comes from the emulator itself, outside the timed window.
        workouts: list[tuple[str, str]] = []
        for page in itertools.count():
            url = f"{base}/api/user/{me['id']}/workouts?joins=ride&limit=100&page={page}"
            async with http.get(url, headers=headers) as resp:
                data = (await resp.json())["data"]
            if not data:
                break
            workouts.extend((w["id"], w["ride"]["id"]) for w in data)
        urls = itertools.cycle(list(harvest_requests(base, me["id"], workouts)))
        done = errors = 0
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal done, errors
            while time.perf_counter() < deadline:
                async with http.get(next(urls), headers=headers) as resp:
                    await resp.read()
                    done += 1
                    errors += resp.status >= 400

        started = time.perf_counter()
        async with asyncio.TaskGroup() as tg:
            for _ in range(concurrency):
                tg.create_task(worker())
        return done, errors, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measuring time (default 10)")
    parser.add_argument("--workouts", type=int, default=20000, help="account size (default 20000)")
    parser.add_argument("--concurrency", type=int, default=64, help="client tasks (default 64)")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})  # the client stays off the emulator's core
    started = time.perf_counter()
    proc, base = start_emulator(args.workouts)
    print(
        f"emulator up at {base} in {time.perf_counter() - started:.2f}s ({args.workouts} workouts)"
    )
    try:
        done, errors, elapsed = asyncio.run(drive(base, args.seconds, args.concurrency))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    print(f"{done} requests in {elapsed:.1f}s, {errors} errors, concurrency {args.concurrency}")
    print(f"{done / elapsed:.0f} requests/s (mixed harvest workload, emulator on one core)")
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
