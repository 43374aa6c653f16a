#!/usr/bin/env python3
"""The scale rows of ``scripts/bench`` (issue 15), all at zero latency with no rate limit.

- ``lake_bytes``: bytes the harvester process wrote to files / the final lake's size,
  for a backfill of a dense account (and the bytes it read);
- ``cpu_scale``: CPU per 1,000 workouts of a large backfill / of a small one;
- ``accounts_zero``: many accounts in one harvester process, requests/s against a
  bare aiohttp loop fetching the same URLs with each account's own token.

Imported by scripts/bench.py, which runs them like its other scenarios. Run as a
script only as the hidden measured process ``_bare_accounts`` (the bare loop).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
from collections.abc import Iterator
from itertools import zip_longest
from pathlib import Path
from typing import Any

from bench import (
    NO_LIMIT_RPS,
    PASSWORD,
    PYTHON,
    USERNAME,
    Child,
    Emulator,
    Harvester,
    _median,
    files_floor,
    harvest_urls,
    lake_line,
    measure,
)
from bench_accounts import write_config

CONCURRENCY = 32  # the single-account rows' concurrency (as the cpu and memory rows)
MB = 1_000_000
HISTORY_DAYS = 5 * 365  # the emulator spreads a history over at most this many days


def load() -> float:
    """The 1-minute load average: the machine is shared, so every figure carries it."""
    return round(os.getloadavg()[0], 1) if hasattr(os, "getloadavg") else float("nan")


@contextlib.contextmanager
def load_during(every_s: float = 5.0) -> Iterator[list[float]]:
    """The 1-minute load average at the start, every ``every_s`` and at the end of the block."""
    samples = [load()]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(every_s):
            samples.append(load())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        done.set()
        thread.join()
        samples.append(load())


def _span(samples: list[float]) -> str:
    return f"{min(samples)}-{max(samples)}"


def process_info(pid: int) -> dict[str, Any]:
    """Peak RSS and allowed cores of a running process (the emulator), from /proc."""
    info: dict[str, Any] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name == "VmHWM":
                info["peak_rss_mb"] = round(int(value.split()[0]) / 1024, 1)
            elif name == "Cpus_allowed_list":
                info["cores"] = value.strip()
    return info


@contextlib.contextmanager
def emulator(workouts: int, accounts: int = 1) -> Iterator[tuple[Emulator, dict[str, Any]]]:
    """A zero-latency emulator; the dict gets its peak RSS and cores just before it stops."""
    emu = Emulator(workouts, accounts=accounts)
    info: dict[str, Any] = {}
    try:
        yield emu, info
    finally:
        info.update(process_info(emu.proc.pid))
        emu.stop()


def lake_size(root: Path) -> dict[str, int]:
    """Sum of the sizes of every file under the lake root (state and manifests included)."""
    total = files = state = 0
    for folder, _, names in os.walk(root):
        for name in names:
            size = os.lstat(os.path.join(folder, name)).st_size
            total += size
            files += 1
            if "_harvester" in Path(folder).relative_to(root).parts:
                state += size
    return {"bytes": total, "files": files, "harvester_state_bytes": state}


def io_figures(child: Child, root: Path, fixed_read: int = 0) -> dict[str, Any]:
    """What the process wrote and read (its /proc/<pid>/io at exit) against the lake's size."""
    size = lake_size(root)
    io = child.io
    if "wchar" not in io:
        raise RuntimeError("no /proc/<pid>/io for the harvester process (Linux only)")
    read = io["rchar"] - fixed_read
    return {
        "written_bytes": io["wchar"], "write_calls": io["syscw"],
        "read_bytes": io["rchar"], "read_calls": io["syscr"], "fixed_read_bytes": fixed_read,
        "block_layer_write_bytes": io["write_bytes"], "cancelled_write_bytes": io["cancelled_write_bytes"],
        "lake_bytes": size["bytes"], "lake_files": size["files"],
        "lake_state_bytes": size["harvester_state_bytes"],
        "write_ratio": round(io["wchar"] / size["bytes"], 3),
        "read_ratio": round(read / size["bytes"], 3),
    }


def _backfill(tmp: Path, emu: Emulator, name: str) -> Child:
    return Harvester(tmp / name, emu.url, concurrency=CONCURRENCY, rps=NO_LIMIT_RPS).run()


def scenario_lake_bytes(tmp: Path, n: int, *, fixed_run: bool = True) -> dict[str, Any]:
    """Bytes written / lake size, for a backfill of a dense account; bytes read beside it.

    ``fixed_run``: first measure what a 1-workout backfill reads (imports, config), to
    leave it out of the bytes read (``--quick`` skips it: one emulator and process fewer)."""
    fixed: Child | None = None
    if fixed_run:
        with emulator(1) as (emu, _):
            fixed = _backfill(tmp, emu, "fixed")
    with emulator(n) as (emu, emu_info), load_during() as loads:
        child = _backfill(tmp, emu, "dense")
        requests = emu.stats()["requests"]
    lake = tmp / "dense" / "lake"
    io = io_figures(child, lake, fixed.io.get("rchar", 0) if fixed else 0)
    days = sum(1 for _ in (lake / "workouts").iterdir())
    ratio = io["write_ratio"]
    read_mb = (io["read_bytes"] - io["fixed_read_bytes"]) / MB
    fixed_text = (f"the fixed {io['fixed_read_bytes'] / MB:.0f} MB left out" if fixed
                  else "imports and config included")
    return {
        "setup": f"backfill of a {n:,}-workout account ({n / days:.1f} workouts a day over "
                 f"{days:,} days), zero latency, no limit, concurrency {CONCURRENCY}. Bytes from the "
                 "harvester process's /proc/<pid>/io, read after it exits and before it is reaped "
                 "(every thread counted); lake size: the sizes of all files under the root",
        "figure": "bytes written (wchar: write(2)-family calls to files, temporary files and "
                  "rewrites included; socket sends are not counted) / final lake size; bytes read "
                  "(rchar less what a 1-workout backfill reads: imports, config) / lake size",
        "value": ratio, "target": "<= 1.3", "holds": ratio <= 1.3,
        "shown": (f"{ratio:.2f} ({io['written_bytes'] / MB:,.0f} MB written in {io['write_calls']:,} "
                  f"calls for a {io['lake_bytes'] / MB:,.0f} MB lake of {io['lake_files']:,} files); "
                  f"read {io['read_ratio']:.2f} x the lake ({read_mb:,.0f} MB; {fixed_text}); "
                  f"{child.wall_s:.0f} s wall, {child.cpu_s:.0f} s CPU; load {_span(loads)})"),
        "io": io, "requests": requests, "workout_days": days, "load_average": loads,
        "process": child.figures(),
        "fixed_run": {"io": fixed.io, "process": fixed.figures()} if fixed else None,
        "emulator": emu_info,
    }


def _per_k(child: Child, n: int) -> float:
    return child.cpu_s / n * 1000


def scenario_cpu_scale(tmp: Path, small: int, large: int, repeats: int) -> dict[str, Any]:
    """CPU per 1,000 workouts of a ``large`` backfill / of a ``small`` one: linear is 1.0.

    The large backfill runs once (minutes at full size); the small one ``repeats`` times,
    once before the large run and the rest after it, and its median counts."""
    smalls: list[dict[str, Any]] = []
    with emulator(small) as (small_emu, small_info):
        def run_small(i: int) -> None:
            with load_during() as loads:
                child = _backfill(tmp, small_emu, f"small-{i}")
            smalls.append({"cpu_s_per_1000": round(_per_k(child, small), 3),
                           "load_average": loads, "process": child.figures()})

        run_small(0)
        with emulator(large) as (emu, large_info), load_during() as big_loads:
            big = _backfill(tmp, emu, "large")
            requests = emu.stats()["requests"]
        for i in range(1, repeats):
            run_small(i)
    big_io = io_figures(big, tmp / "large" / "lake")
    per_small = [run["cpu_s_per_1000"] for run in smalls]
    base = _median(per_small)
    ratio = _per_k(big, large) / base
    small_loads = [x for run in smalls for x in run["load_average"]]
    return {
        "setup": f"backfill of {large:,} workouts (one run) and of {small:,} (median of {repeats}: one "
                 f"run before the large one, {repeats - 1} after), zero latency, no limit, concurrency "
                 f"{CONCURRENCY}; CPU is the harvester process's user + sys (rusage)",
        "figure": f"CPU s per 1,000 workouts at {large:,} / at {small:,}",
        "value": round(ratio, 3), "target": "<= 1.1 (linear)", "holds": ratio <= 1.1,
        "shown": (f"{ratio:.2f} ({_per_k(big, large):.2f} s vs {base:.2f} s per 1,000; small runs "
                  f"{min(per_small):.2f}-{max(per_small):.2f}, load {_span(small_loads)}; "
                  f"large run {big.cpu_s:.0f} s CPU, {big.wall_s:.0f} s wall, {big.maxrss_mb:.0f} MB, "
                  f"load {_span(big_loads)}; it wrote {big_io['write_ratio']:.2f} x and read "
                  f"{big_io['read_ratio']:.2f} x its {big_io['lake_bytes'] / MB:,.0f} MB lake; emulator "
                  f"{large_info.get('peak_rss_mb', 0):.0f} MB peak on core {large_info.get('cores')})"),
        "large": {"workouts": large, "requests": requests, "cpu_s_per_1000": round(_per_k(big, large), 3),
                  "load_average": big_loads, "process": big.figures(), "io": big_io,
                  "emulator": large_info},
        "small": {"workouts": small, "cpu_s_per_1000_median": base, "runs": smalls,
                  "emulator": small_info},
    }


ACCOUNT_CONCURRENCY = 8  # harvest.concurrency's default: what a user with many accounts keeps
BARE_REFERENCE_IN_FLIGHT = 32


def _logins(accounts: int) -> list[tuple[str, str]]:
    """The emulator's members (``--accounts``): the demo login, then userK@example.com / passK."""
    return [(USERNAME, PASSWORD)] + [(f"user{k}@example.com", f"pass{k}") for k in range(2, accounts + 1)]


def _bare_spec(tmp: Path, emu: Emulator, accounts: int) -> tuple[Path, int]:
    """Every account's backfill URLs, interleaved account by account, and the logins: a JSON
    file; and how many distinct classes the accounts took. A class is asked for once, by the
    first account naming it, as the accounts of one harvester run do."""
    logins = _logins(accounts)
    per_account: list[list[tuple[int, str]]] = []
    for k, (username, password) in enumerate(logins):
        uid, items = emu.listing(emu.token(username, password))
        per_account.append([(k, url) for url in harvest_urls(emu.url, uid, items)])
    urls: list[tuple[int, str]] = []
    classes: set[str] = set()
    for pair in (pair for row in zip_longest(*per_account) for pair in row if pair is not None):
        if "/api/ride/" in pair[1] and pair[1].endswith("/details"):
            if pair[1] in classes:
                continue
            classes.add(pair[1])
        urls.append(pair)
    spec = tmp / "bare-accounts.json"
    spec.write_text(json.dumps({"logins": logins, "urls": urls}), encoding="utf-8")
    return spec, len(classes)


def _bare(emu: Emulator, spec: Path, in_flight: int, *, rows: bool = False) -> tuple[Child, dict[str, Any]]:
    emu.reset()
    child = measure([PYTHON, str(Path(__file__).resolve()), "_bare_accounts", emu.url, str(spec),
                     str(in_flight), *(["rows"] if rows else [])])
    if child.returncode != 0:
        raise RuntimeError(f"bare loop failed: {child.stderr[-2000:]}")
    return child, emu.stats(arrivals=True)


def _rates(child: Child, stats: dict[str, Any]) -> dict[str, Any]:
    arrivals = stats["arrivals"]
    window = arrivals[-1] - arrivals[0] if len(arrivals) > 1 else float("nan")
    return {"requests": stats["requests"], "requests_per_s": round(stats["requests"] / child.wall_s, 1),
            "requests_per_s_over_window": round(stats["requests"] / window, 1),
            "status": stats["status"],
            "by_endpoint": stats["by_endpoint"],
            "process": child.figures()}


def scenario_accounts_zero(tmp: Path, accounts: int, workouts: int, repeats: int = 3, *,
                           extras: bool = True) -> dict[str, Any]:
    """``accounts`` x ``workouts`` in one harvester process vs a bare aiohttp loop fetching
    the same URLs, each account with its own token, at the same total in flight:
    ``repeats`` pairs, each harvester run (its own fresh lake) followed by a bare run, and
    the median pair's ratio with the range of all of them.

    ``extras``: warm the emulator's cache with a bare run first, and run the bare loop
    at 32 in flight too, for reference (``--quick`` skips both)."""
    tmp.mkdir(parents=True, exist_ok=True)
    in_flight = ACCOUNT_CONCURRENCY * accounts
    pairs: list[dict[str, Any]] = []
    with emulator(workouts, accounts) as (emu, emu_info):
        spec, classes = _bare_spec(tmp, emu, accounts)
        if extras:
            _bare(emu, spec, in_flight)  # warms the emulator's response cache for both parties
        for index in range(repeats):
            # Each run its own lake and token caches; no lake is deleted before the last run
            # (deleting many files makes creating files dearer for minutes on some disks).
            run_dir = tmp / f"pair{index + 1}"
            run_dir.mkdir()
            emu.reset()
            config, env = write_config(run_dir, emu.url, accounts, NO_LIMIT_RPS,
                                       ACCOUNT_CONCURRENCY, method="password")  # the bare loop's grant
            with load_during() as our_loads:
                ours = measure([PYTHON, "-m", "harvester", "backfill", "--config", str(config),
                                "--no-progress"], env)
            if ours.returncode != 0:
                raise RuntimeError(f"harvester exited {ours.returncode}: {ours.stderr[-2000:]}")
            harvester = _rates(ours, emu.stats(arrivals=True))
            with load_during() as bare_loads:
                bare = _rates(*_bare(emu, spec, in_flight))
            # The floor: both sides are CPU-bound on one core here, so the best any harvester
            # writing this lake could reach is the bare loop's wall plus the CPU of writing
            # the same files the lake's way and decoding their JSON once.
            files = files_floor(run_dir / "lake", run_dir / "floor")
            bare_wall = bare["process"]["wall_s"]
            # The same with the decoding and the lines' encoding inside the fetching loop.
            coder, _ = _bare(emu, spec, in_flight, rows=True)
            pairs.append({
                "ratio": harvester["requests_per_s"] / bare["requests_per_s"],
                "floor": bare_wall / (bare_wall + files["write_cpu_s"] + files["decode_cpu_s"]),
                "row_floor": bare_wall / (coder.wall_s + files["write_cpu_s"]),
                "bare_loop_with_rows": coder.figures(),
                "harvester": harvester, "bare_loop": bare, "lake_files_alone": files,
                "load_average": {"harvester": our_loads, "bare_loop": bare_loads}})
        reference = _rates(*_bare(emu, spec, BARE_REFERENCE_IN_FLIGHT)) if extras else None
    ratios = [pair["ratio"] for pair in pairs]
    floors = [pair["floor"] for pair in pairs]
    row_floors = [pair["row_floor"] for pair in pairs]
    ratio = _median(ratios)
    middle = sorted(pairs, key=lambda pair: pair["ratio"])[len(pairs) // 2]
    harvester, bare = middle["harvester"], middle["bare_loop"]
    ours, loads = harvester["process"], middle["load_average"]
    also = (f"the bare loop at {BARE_REFERENCE_IN_FLIGHT} in flight: {reference['requests_per_s']:,.0f} "
            "req/s; " if reference else "")
    spread = f"median of {len(pairs)}, {min(ratios):.2f}-{max(ratios):.2f}; " if len(pairs) > 1 else ""
    floor_spread = f" ({min(floors):.2f}-{max(floors):.2f})" if len(pairs) > 1 else ""
    return {
        "setup": f"{accounts} accounts x {workouts} workouts (emulator --accounts {accounts}), one "
                 f"backfill of {accounts} [[accounts]] (password grant, each its own token cache), "
                 f"zero latency, no limit, concurrency {ACCOUNT_CONCURRENCY} per account (the default): "
                 f"{in_flight} in flight at most, the pool's size; the bare loop: the same URLs and "
                 f"sign-ins, {in_flight} workers over one pool of {in_flight}; "
                 + (f"{len(pairs)} pairs, each harvester run followed by a bare run" if len(pairs) > 1
                    else "one harvester run, then a bare run")
                 + (" (the emulator's cache warmed by one bare run first)" if extras else ""),
        "figure": "requests/s (emulator's count / process wall, start included): harvester / bare loop",
        "value": round(ratio, 3), "target": ">= 0.6", "holds": ratio >= 0.6,
        "shown": (f"{ratio:.2f} ({spread}the median pair: {harvester['requests_per_s']:,.0f} vs "
                  f"{bare['requests_per_s']:,.0f} req/s, {harvester['requests']:,} vs "
                  f"{bare['requests']:,} requests; CPU {ours['cpu_s']:.1f} s vs "
                  f"{bare['process']['cpu_s']:.1f} s, wall {ours['wall_s']:.1f} s vs "
                  f"{bare['process']['wall_s']:.1f} s; harvester peak RSS {ours['maxrss_mb']:.0f} MB; "
                  f"{also}load {_span(loads['harvester'])} during ours, {_span(loads['bare_loop'])} "
                  f"during the bare loop; the floor, the bare loop's wall + writing the same lake's "
                  f"files + one decode: {_median(floors):.2f}{floor_spread}; with the decoding and "
                  f"the lines' encoding inside the loop: {_median(row_floors):.2f}"
                  + (f" ({min(row_floors):.2f}-{max(row_floors):.2f})" if len(pairs) > 1 else "")
                  + ")"),
        "ratios": [round(r, 3) for r in ratios], "floor_ratio": round(_median(floors), 3),
        "floor_ratios": [round(f, 3) for f in floors],
        "row_floor_ratios": [round(f, 3) for f in row_floors], "distinct_classes": classes,
        "pairs": [{**pair, "ratio": round(pair["ratio"], 3), "floor": round(pair["floor"], 3),
                   "row_floor": round(pair["row_floor"], 3)} for pair in pairs],
        f"bare_loop_{BARE_REFERENCE_IN_FLIGHT}": reference, "in_flight": in_flight,
        "emulator": emu_info,
    }


# -- the bare loop over many accounts (hidden mode) -------------------------------------


def bare_accounts_main(base: str, spec_file: str, in_flight: int, rows: bool = False) -> int:
    """Sign every account in (password grant), then fetch every URL with its account's token,
    ``in_flight`` at a time over one pool, discarding the bodies; ``rows``: also make each
    body's lake line (bench.lake_line)."""
    import asyncio

    import aiohttp

    spec = json.loads(Path(spec_file).read_text(encoding="utf-8"))
    client_id = "mgsmWCD0A8Qn6uz6mmqI6qeBNHH9IPwS"

    async def run() -> int:
        connector = aiohttp.TCPConnector(limit=in_flight)
        async with aiohttp.ClientSession(connector=connector) as http:
            async def sign_in(username: str, password: str) -> dict[str, str]:
                body = {"grant_type": "password", "client_id": client_id,
                        "username": username, "password": password}
                async with http.post(f"{base}/oauth/token", json=body) as resp:
                    token = (await resp.json())["access_token"]
                return {"Authorization": f"Bearer {token}", "Peloton-Platform": "web"}

            headers = await asyncio.gather(*(sign_in(u, p) for u, p in spec["logins"]))
            queue = iter(spec["urls"])
            errors = 0

            async def worker() -> None:
                nonlocal errors
                for account, url in queue:
                    async with http.get(url, headers=headers[account]) as resp:
                        body = await resp.read()
                        errors += resp.status >= 500  # a few ride ids 404, for the harvester too
                    if rows and resp.status == 200:
                        lake_line(body)

            await asyncio.gather(*(worker() for _ in range(in_flight)))
            return errors

    return 1 if asyncio.run(run()) else 0


if __name__ == "__main__":
    if sys.argv[1:2] != ["_bare_accounts"]:
        sys.exit("bench_scale.py is run by scripts/bench (see --only lake_bytes, cpu_scale, accounts_zero)")
    sys.exit(bare_accounts_main(sys.argv[2], sys.argv[3], int(sys.argv[4]),
                                rows=sys.argv[5:6] == ["rows"]))
