#!/usr/bin/env python3
"""Time a ``refresh`` of an unchanged lake: process wall and CPU, and the scan alone.

    .venv/bin/python scripts/bench_refresh.py --workouts 2000 [--lake DIR] [--repeats 5]

Starts the emulator (its own process), backfills ``DIR`` once if it holds no
lake yet (keep ``DIR`` to compare two versions of the code on one lake), then
runs ``refresh`` from the CLI ``--repeats`` times, each a separate process whose
wall and CPU time (``os.wait4`` rusage) are its own. Then, in this process, times
heal.py's ``scan`` of the account reading every file, and through the scan cache
(loading it included; the cache object is left as it was). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
USERNAME, PASSWORD = "demo@example.com", "peloton-demo"


def _start_emulator(workouts: int) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "harvester.emulator", "--port", "0", "--workouts", str(workouts)],
        stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def _config(folder: Path, url: str) -> Path:
    path = folder / "config.toml"
    path.write_text(
        f'[api]\nbase_url = "{url}"\nauth_url = "{url}"\n'
        f'[auth]\ntoken_cache = "{folder / "tokens.json"}"\n'
        '[harvest]\nrequests_per_second = 2000.0\nconcurrency = 8\n'
        f'[output]\nroot = "{folder / "lake"}"\n', encoding="utf-8")
    return path


def _run(config: Path, command: str) -> dict[str, float]:
    """One CLI run in its own process: wall and CPU seconds (user + system), peak RSS."""
    env = {**os.environ, "PELOTON_USERNAME": USERNAME, "PELOTON_PASSWORD": PASSWORD}
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "harvester", command, "--config", str(config), "--no-progress"],
        env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{command} exited {code}: {proc.stderr.read().decode() if proc.stderr else ''}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "rss_mb": usage.ru_maxrss / 1024}


def _scan_times(lake_dir: Path) -> dict[str, float]:
    """heal.py's scan of the account reading every file, then through the scan cache (if any)."""
    import inspect

    from harvester import heal
    from harvester.lake import Lake
    from harvester.state import StateStore

    lake = Lake(lake_dir)
    (user_id,) = StateStore(lake.storage).accounts()
    times: dict[str, float] = {}
    start = time.perf_counter()
    heal.scan(lake, user_id)
    times["scan_all_s"] = time.perf_counter() - start
    if "cache" not in inspect.signature(heal.scan).parameters:
        return times  # the code under test has no cache
    from harvester.scancache import ScanCache, cache_key

    start = time.perf_counter()
    cache = ScanCache.load(lake.storage, user_id)
    times["cache_load_s"] = time.perf_counter() - start
    heal.scan(lake, user_id, cache=cache)
    times["scan_cached_s"] = time.perf_counter() - start
    times["cache_mb"] = (lake_dir / cache_key(user_id)).stat().st_size / 2**20
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workouts", type=int, default=2000)
    parser.add_argument("--lake", type=Path, help="folder kept between runs (default: a temporary one)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    folder = args.lake or Path(tempfile.mkdtemp(prefix="bench-refresh-"))
    folder.mkdir(parents=True, exist_ok=True)
    emulator, url = _start_emulator(args.workouts)
    try:
        config = _config(folder, url)
        result: dict[str, Any] = {"workouts": args.workouts, "lake": str(folder / "lake")}
        if not (folder / "lake" / "workouts").exists():
            result["backfill"] = _run(config, "backfill")
        _run(config, "refresh")  # the first refresh writes what a refresh writes (and the cache)
        runs = [_run(config, "refresh") for _ in range(args.repeats)]
        for key in ("wall_s", "cpu_s", "rss_mb"):
            values = [r[key] for r in runs]
            result[f"refresh_{key}"] = {"median": round(statistics.median(values), 3),
                                        "min": round(min(values), 3)}
        result.update({k: round(v, 3) for k, v in _scan_times(folder / "lake").items()})
        lake_bytes = sum(p.stat().st_size for p in (folder / "lake").rglob("*.jsonl*")
                         if "_harvester" not in p.parts)
        result["lake_mb"] = round(lake_bytes / 2**20, 1)
        print(json.dumps(result, indent=2))
    finally:
        emulator.terminate()
        emulator.wait()


if __name__ == "__main__":
    main()
