"""``demo``: the whole product against the bundled emulator, with no account and no network.

1. start the emulator on loopback with a synthetic account (one workout in progress);
2. backfill it into ``./demo-lake`` (or ``--out``);
3. the workout in progress finishes at the "source", and a refresh picks it up,
   as a cron job's next refresh would;
4. print a DuckDB query (the Python package, run with this interpreter) that works as printed.
"""

from __future__ import annotations

import json
import shlex
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from harvester.config import Config, Credentials
from harvester.console import Console
from harvester.errors import ConfigError
from harvester.run import ProgressFactory, RunReport, run_harvest

DEFAULT_ROOT = "./demo-lake"
DEFAULT_RPS = 200.0
DEFAULT_CONCURRENCY = 16
DEFAULT_LATENCY_MS = 15.0

# Workouts per month and discipline by the rider's local date (date= is the UTC day).
# One line, no single quotes: it survives shell quoting and copy-paste as printed.
QUERY = (
    "import duckdb; duckdb.sql("
    '"SELECT year(day) AS year, month(day) AS month, fitness_discipline, count(*) AS workouts '
    "FROM (SELECT *, CAST(timezone(timezone, to_timestamp(created_at)) AS DATE) AS day "
    "FROM read_json($glob, hive_partitioning = true, union_by_name = true)) "
    'GROUP BY ALL ORDER BY year DESC, month DESC, workouts DESC LIMIT 12", '
    'params={"glob": GLOB}).show()'
)


def demo_overrides(overrides: Mapping[str, object]) -> dict[str, object]:
    """The command line's overrides over the demo's own defaults."""
    return {"output.root": DEFAULT_ROOT, "harvest.requests_per_second": DEFAULT_RPS,
            "harvest.concurrency": DEFAULT_CONCURRENCY, **overrides}


def query_command(root: Path) -> str:
    """A shell command running the demo query on the lake at ``root`` with this interpreter."""
    glob = str(root / "workouts" / "**" / "*.jsonl*")
    code = QUERY.replace("GLOB", json.dumps(glob))
    return f"{shlex.quote(sys.executable)} -c {shlex.quote(code)}"


async def run_demo(
    config: Config, console: Console, *, workouts: int, seed: int,
    progress: ProgressFactory | None = None,
) -> int:
    from harvester.emulator import Emulator, EmulatorSettings

    if workouts < 2:
        raise ConfigError("--workouts must be at least 2")
    settings = EmulatorSettings(workouts=workouts, seed=seed, latency_ms=DEFAULT_LATENCY_MS,
                                jitter_ms=DEFAULT_LATENCY_MS, in_progress=True)
    emulator = Emulator(settings)
    url = await emulator.start()
    console.result(f"emulator: synthetic account with {workouts} workouts at {url}")
    try:
        with tempfile.TemporaryDirectory(prefix="peloton-demo-") as tmp:
            demo_config = replace(
                config,
                api=replace(config.api, base_url=url, auth_url=url),
                auth=replace(config.auth, method="login", client_id="",
                             token_cache=f"{tmp}/tokens.json"),
                credentials=Credentials(username=settings.username, password=settings.password),
            )
            report = await run_harvest(demo_config, "backfill", progress=progress)
            _print(console, report)
            if report.exit_code != 0 or not report.outcome.in_progress:
                return report.exit_code
            emulator.state.account.complete(emulator.state.now())
            console.result(f"{len(report.outcome.in_progress)} workout was still in progress, so "
                           "the backfill left it out; it has finished now, and a refresh "
                           "(what cron would run) fetches it:")
            report = await run_harvest(demo_config, "refresh", progress=progress)
            _print(console, report)
    finally:
        await emulator.stop()
    if report.exit_code == 0:
        root = demo_config.output.root_path.resolve()
        console.result("Try it with DuckDB (the Python package; the first line installs it):")
        console.result(f"  {shlex.quote(sys.executable)} -m pip install duckdb")
        console.result(f"  {query_command(root)}")
    return report.exit_code


def _print(console: Console, report: RunReport) -> None:
    console.result(report.summary(), ok=report.exit_code == 0,
                   fields={"event": "summary", **report.fields()})
