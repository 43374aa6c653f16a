#!/usr/bin/env python3
"""CPU our HTTP stack adds per request over a bare aiohttp loop: no lake, no pipeline.

    .venv/bin/python scripts/bench_client.py [--workouts 2000] [--concurrency 32] [--repeats 3]
        [--modes bare decode api] [--before DIR]
    .venv/bin/python scripts/bench_client.py _child {bare,decode,api,before} URL TASKS CONCURRENCY

The emulator (zero latency, its own process pinned to core 0) serves an account;
the parent lists it and writes the harvest's item requests (each workout's detail
and performance graph ``every_n=5``, each distinct class's ride details) to a file.
Each measured child (pinned to core 1) signs in, then runs CONCURRENCY workers over
one iterator of those requests:

- ``bare``: ``session.get(url, headers=...)`` and ``await resp.read()``, as
  scripts/bench.py's ``bare_main`` does (the floor);
- ``decode``: the same plus ``orjson.loads`` of each body (what any client must add);
- ``api``: ``PelotonApi.workout / performance_graph / ride_details`` from ``open_api``
  (limiter at the config maximum, retries, auth headers, body cap, decoding);
- ``before`` (with ``--before DIR``): ``api`` with the ``harvester`` package from DIR,
  e.g. an older commit's (``git archive COMMIT harvester | tar -x -C DIR``), so
  both versions run in turn against the same emulator.

A child reports the CPU (``resource.getrusage``: user + sys, all threads) of the
fetch phase only: imports, sign-in and the session's first connection are outside
it. The modes run in turn, ``--repeats`` times; the median (and the minimum, the
figure least disturbed by other load on a shared machine) per mode is printed, with
the ratios of the medians and the microseconds per request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

from bench import CLIENT_CORES, CLIENT_ID, NULL_RIDE, PASSWORD, PYTHON, USERNAME, Emulator, _pin  # noqa: E402

MODES = ("bare", "decode", "api", "before")
Task = tuple[str, str]  # (kind, id): kind is "workout", "graph" or "ride"


def tasks_of(items: list[dict[str, Any]]) -> list[Task]:
    """The item requests of a backfill, in harvest order."""
    tasks: list[Task] = []
    rides: set[str] = set()
    for item in items:
        tasks += [("workout", item["id"]), ("graph", item["id"])]
        ride = (item.get("ride") or {}).get("id")
        if ride and ride != NULL_RIDE and ride not in rides:
            rides.add(ride)
            tasks.append(("ride", ride))
    return tasks


def url_of(base: str, kind: str, ident: str) -> str:
    if kind == "workout":
        return f"{base}/api/workout/{ident}"
    if kind == "graph":
        return f"{base}/api/workout/{ident}/performance_graph?every_n=5"
    return f"{base}/api/ride/{ident}/details"


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _workers(tasks: list[Task], concurrency: int,
                   fetch: Callable[[str, str], Awaitable[object]]) -> dict[str, float]:
    queue = iter(tasks)

    async def worker() -> None:
        for kind, ident in queue:
            await fetch(kind, ident)

    cpu0, wall0 = cpu_s(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"cpu_s": cpu_s() - cpu0, "wall_s": time.perf_counter() - wall0}


async def run_bare(base: str, tasks: list[Task], concurrency: int, decode: bool) -> dict[str, float]:
    import aiohttp
    import orjson

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as http:
        body = {"grant_type": "password", "client_id": CLIENT_ID,
                "username": USERNAME, "password": PASSWORD}
        async with http.post(f"{base}/oauth/token", json=body) as resp:
            token = (await resp.json())["access_token"]
        headers = {"Authorization": f"Bearer {token}", "Peloton-Platform": "web"}

        async def fetch(kind: str, ident: str) -> object:
            async with http.get(url_of(base, kind, ident), headers=headers) as resp:
                data = await resp.read()
                if resp.status not in (200, 404):  # the emulator has no details for some rides
                    raise RuntimeError(f"HTTP {resp.status} for {kind} {ident}")
            return orjson.loads(data) if decode else data

        return await _workers(tasks, concurrency, fetch)


async def run_api(base: str, tasks: list[Task], concurrency: int, tmp: Path) -> dict[str, float]:
    from harvester.api import open_api
    from harvester.client import RequestStats
    from harvester.config import ApiConfig, AuthConfig, Config, Credentials, HarvestConfig
    from harvester.errors import NotFoundError

    config = Config(api=ApiConfig(base_url=base, auth_url=base),
                    auth=AuthConfig(method="password", token_cache=str(tmp / "tokens.json")),
                    harvest=HarvestConfig(concurrency=concurrency, requests_per_second=10000.0),
                    credentials=Credentials(username=USERNAME, password=PASSWORD))
    stats = RequestStats()
    async with open_api(config, stats) as api:
        await api.user_id()  # signs in
        before = stats.requests
        calls = {"workout": api.workout, "ride": api.ride_details,
                 "graph": lambda ident: api.performance_graph(ident, 5)}

        async def fetch(kind: str, ident: str) -> object:
            try:
                return await calls[kind](ident)
            except NotFoundError:  # as the bare loop: the emulator has no details for some rides
                return None

        figures = await _workers(tasks, concurrency, fetch)
    if stats.retries or stats.requests - before != len(tasks):
        raise RuntimeError(f"retries {stats.retries}, requests {stats.requests}")
    return figures


def child_main(mode: str, base: str, task_file: str, concurrency: int) -> int:
    tasks = [tuple(t) for t in json.loads(Path(task_file).read_text(encoding="utf-8"))]
    if mode == "before":
        sys.path.insert(0, os.environ["BENCH_BEFORE_TREE"])  # its harvester package, not ours
    if mode in ("api", "before"):
        with tempfile.TemporaryDirectory() as tmp:
            figures = asyncio.run(run_api(base, tasks, concurrency, Path(tmp)))  # type: ignore[arg-type]
    else:
        figures = asyncio.run(run_bare(base, tasks, concurrency, mode == "decode"))  # type: ignore[arg-type]
    print(json.dumps({**figures, "requests": len(tasks)}))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workouts", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=["bare", "decode", "api"])
    parser.add_argument("--before", type=Path, help="a tree whose harvester package mode "
                        "'before' runs (added to the modes)")
    args = parser.parse_args()
    env = dict(os.environ)
    if args.before is not None:
        env["BENCH_BEFORE_TREE"] = str(args.before.resolve())
        args.modes = [*dict.fromkeys([*args.modes, "before"])]
    emu = Emulator(args.workouts)
    try:
        _, items = emu.listing(emu.token())
        with tempfile.TemporaryDirectory() as tmp:
            task_file = Path(tmp) / "tasks.json"
            tasks = tasks_of(items)
            task_file.write_text(json.dumps(tasks), encoding="utf-8")
            runs: dict[str, list[dict[str, float]]] = {m: [] for m in args.modes}
            for _ in range(args.repeats):
                for mode in args.modes:
                    out = subprocess.run(
                        [PYTHON, __file__, "_child", mode, emu.url, str(task_file),
                         str(args.concurrency)], stdout=subprocess.PIPE, text=True, check=True,
                        cwd=ROOT, env=env, preexec_fn=_pin(CLIENT_CORES)).stdout
                    runs[mode].append(json.loads(out.splitlines()[-1]))
    finally:
        emu.stop()
    median = {m: statistics.median(r["cpu_s"] for r in rs) for m, rs in runs.items()}
    print(f"{len(tasks)} requests, {args.concurrency} workers, median of {args.repeats}")
    for mode, rs in runs.items():
        cpus = sorted(r["cpu_s"] for r in rs)
        walls = statistics.median(r["wall_s"] for r in rs)
        print(f"  {mode:7} CPU {median[mode]:.3f} s (range {cpus[0]:.3f}-{cpus[-1]:.3f}), "
              f"{median[mode] / len(tasks) * 1e6:.0f} us/request (min {cpus[0] / len(tasks) * 1e6:.0f}), "
              f"wall {walls:.3f} s")
    if "before" in runs and "api" in runs:  # paired: the two ran back to back each round
        diffs = sorted((b["cpu_s"] - a["cpu_s"]) / len(tasks) * 1e6
                       for a, b in zip(runs["api"], runs["before"], strict=True))
        print(f"  before - api, paired per round: median {statistics.median(diffs):.1f} us/request "
              f"(range {diffs[0]:.1f} to {diffs[-1]:.1f})")
    for ours in ("api", "before"):
        for base in ("bare", "decode"):
            if ours in median and base in median:
                print(f"  {ours} / {base}: {median[ours] / median[base]:.2f}  "
                      f"(+{(median[ours] - median[base]) / len(tasks) * 1e6:.0f} us/request)")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        sys.exit(child_main(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])))
    sys.exit(main())
