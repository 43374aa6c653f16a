#!/usr/bin/env python3
"""How close a many-account run in one process gets to the rate its per-account limiters allow.

    .venv/bin/python scripts/bench_accounts.py [--accounts 50] [--workouts 40] [--rps 5]

The emulator (``--accounts N``, its own process, pinned to core 0) serves N
members; one ``backfill`` of N ``[[accounts]]`` entries (pinned to core 1)
harvests them all at once, each behind its own limiter at ``--rps``. The
allowance is N x rps requests per second; utilisation is the requests the
emulator saw divided by (allowance x time), over the CLI's wall time (process
start included) and over the window from first to last request; and per
account, from its run manifest, its requests / its duration / rps.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from bench import EMULATOR_CORES, PYTHON, _pin, measure  # noqa: E402

USERNAME, PASSWORD = "demo@example.com", "peloton-demo"


def start_emulator(accounts: int, workouts: int, latency_ms: float) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [PYTHON, "-m", "harvester", "emulator", "--port", "0", "--workouts", str(workouts),
         "--accounts", str(accounts), "--latency-ms", str(latency_ms)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT,
        preexec_fn=_pin(EMULATOR_CORES),
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not url.startswith("http://"):
        proc.kill()
        raise RuntimeError(f"emulator did not start (said {url!r})")
    return proc, url


def write_config(
    tmp: Path, url: str, accounts: int, rps: float, concurrency: int, method: str = "login",
) -> tuple[Path, dict[str, str]]:
    lines = [f'[api]\nbase_url = "{url}"\nauth_url = "{url}"\n', f'[auth]\nmethod = "{method}"\n',
             f"[harvest]\nconcurrency = {concurrency}\nrequests_per_second = {rps}\n",
             f'[output]\nroot = "{tmp / "lake"}"\n']
    env = {k: v for k, v in os.environ.items() if not k.startswith("PELOTON_")}
    for k in range(1, accounts + 1):
        lines.append(f'[[accounts]]\nname = "m{k}"\nusername_env = "M{k}_USER"\n'
                     f'password_env = "M{k}_PASS"\ntoken_cache = "{tmp / f"m{k}.json"}"\n')
        user, password = (USERNAME, PASSWORD) if k == 1 else (f"user{k}@example.com", f"pass{k}")
        env.update({f"M{k}_USER": user, f"M{k}_PASS": password})
    path = tmp / "config.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path, env


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=50)
    parser.add_argument("--workouts", type=int, default=40)
    parser.add_argument("--rps", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    args = parser.parse_args(argv)
    proc, url = start_emulator(args.accounts, args.workouts, args.latency_ms)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-accounts-") as tmp:
            config, env = write_config(Path(tmp), url, args.accounts, args.rps, args.concurrency)
            child = measure([PYTHON, "-m", "harvester", "backfill", "--config", str(config),
                             "--no-progress"], env)
            with urllib.request.urlopen(f"{url}/_emulator/stats?arrivals=1", timeout=60) as resp:
                stats = json.loads(resp.read())
            runs = (Path(tmp) / "lake" / "_harvester" / "runs").glob("*.json")
            manifests = [json.loads(path.read_bytes()) for path in runs]
            # each account's own run: its requests over its own duration, against its rps
            per_account = sorted(m["requests"] / m["duration_s"] / args.rps for m in manifests)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    if child.returncode != 0:
        print(child.stderr[-2000:], file=sys.stderr)
        return 1
    allowance = args.accounts * args.rps
    arrivals = stats["arrivals"]
    window = arrivals[-1] - arrivals[0]
    result = {
        "accounts": args.accounts, "workouts_each": args.workouts, "rps_each": args.rps,
        "concurrency_each": args.concurrency, "latency_ms": args.latency_ms,
        "requests": stats["requests"], "throttled": stats["throttled"],
        "wall_s": round(child.wall_s, 2), "request_window_s": round(window, 2),
        "allowance_rps": allowance,
        "utilisation_wall": round(stats["requests"] / child.wall_s / allowance, 3),
        "utilisation_window": round((stats["requests"] - 1) / window / allowance, 3),
        "utilisation_per_account_min": round(per_account[0], 3),
        "utilisation_per_account_median": round(per_account[len(per_account) // 2], 3),
        "client_cpu_s": round(child.user_s + child.sys_s, 2), "client_maxrss_mb": round(child.maxrss_mb, 1),
        "summary_lines": len(child.stdout.splitlines()),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
