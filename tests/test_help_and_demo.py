"""Help that helps, plan's estimate, the demo and the emulator's first lines."""

from __future__ import annotations

import re
import shlex
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from harvester.plan import plan_harvest
from harvester.run import run_harvest
from harvester.state import StateStore
from tests.harness import cli_env, harvest_config, run_cli, run_cli_async


@pytest.mark.parametrize(
    ("command", "present", "absent"),
    [("backfill", ["--quiet", "--concurrency", "(default: harvest.concurrency, 8)",
                   "(default: harvest.requests_per_second, 5)", "(default: output.root, ./peloton-lake)",
                   "Make the lake complete"], ["--json", "--workouts"]),
     ("refresh", ["--quiet", "harvest.lookback_days", "exit 75"], ["--json"]),
     ("plan", ["--rps", "estimate", "on a complete lake a refresh", "--no-progress", "--quiet"],
      ["--concurrency", "--json"]),
     ("tables", ["--quiet", "only partitions whose raw files changed"],
      ["--concurrency", "--rps", "--no-progress", "--json"]),
     ("status", ["--json", "last attempt", "Exit 2 if the lake does not exist"],
      ["--concurrency", "--rps", "--no-progress", "--quiet"]),
     ("demo", ["--workouts", "(default: 500)", "--seed"], ["--config", "--quiet", "--json"])],
)
def test_each_command_has_its_own_help_with_defaults(command: str, present: list[str],
                                                     absent: list[str]) -> None:
    """COMMAND --help: a description of its own, only the options it takes, defaults shown."""
    done = run_cli([command, "--help"], {})
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())  # argparse wraps lines
    for fragment in present:
        assert fragment in text, (fragment, text)
    for option in absent:
        assert option not in text, (option, text)


def test_top_level_help_lists_commands_and_exit_codes() -> None:
    """--help lists every command with a one-line help and the exit codes, 75 included."""
    done = run_cli(["--help"], {})
    text = " ".join(done.stdout.split())
    for command in ("backfill", "refresh", "plan", "status", "demo", "emulator"):
        assert command in text
    assert "75 temporary failure" in text and "never from the command line" in text


class Hook:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    @contextmanager
    def __call__(self, stats: object) -> Iterator[Any]:
        yield lambda done, total: self.calls.append((done, total))


async def test_plan_reports_progress_and_prices_a_refresh_on_a_complete_lake(
        make_emulator: Any, tmp_path: Path) -> None:
    """plan shows progress while listing, names the rate; after a backfill it prices a refresh."""
    emulator = await make_emulator(workouts=250)
    config = harvest_config(emulator.url, tmp_path, harvest__page_size=50, harvest__lookback_days=0)
    hook = Hook()
    before = await plan_harvest(config, progress=hook)
    assert before.command == "backfill" and before.to_fetch == before.workouts >= 248
    assert len(hook.calls) == before.list_requests >= 5
    assert [done for done, _ in hook.calls] == sorted(done for done, _ in hook.calls)
    assert hook.calls[-1][0] == before.workouts
    assert "2000 requests/s" in before.describe() and "a backfill would fetch" in before.describe()
    assert not (tmp_path / "lake").exists()

    assert (await run_harvest(config, "backfill")).exit_code == 0
    emulator.add_workouts(3)
    after = await plan_harvest(config)
    assert after.command == "refresh"
    assert after.to_fetch - after.rechecked == 3  # the three new ones (+ the workout at the watermark)
    assert after.list_requests == 1 and after.requests < 20
    assert "the next run is a refresh: 3 new workouts" in after.describe()


def test_demo_settles_its_workout_in_progress_and_its_query_runs_as_printed(tmp_path: Path) -> None:
    """demo backfills, then a refresh fetches the workout that was in progress, and the
    printed DuckDB command runs as printed."""
    lake = tmp_path / "demo"
    done = run_cli(["demo", "--workouts", "40", "--out", str(lake), "--no-progress"],
                   cli_env(tmp_path), timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[1].startswith("backfill: 39 new workouts") and "1 in progress (next run)" in lines[1]
    assert any(line.startswith("refresh: 1 new workout,") for line in lines)
    [account] = StateStore(lake).accounts()
    assert StateStore(lake).load(account).in_progress == []
    query = lines[-1].strip()
    assert query.startswith(shlex.quote(sys.executable) + " -c ")
    ran = run_cli_shell(query, tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert "fitness_discipline" in ran.stdout
    counts = [int(m) for m in re.findall(r"│\s+\d+\s+│\s+\d+\s+│ \w+\s+│\s+(\d+) │", ran.stdout)]
    assert counts and sum(counts) <= 40


def run_cli_shell(command: str, tmp_path: Path) -> Any:
    import subprocess

    return subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, check=False)


async def test_emulator_first_lines_say_how_to_point_a_config_at_it(tmp_path: Path) -> None:
    """The emulator prints its URL first, then the two config keys and the login to use:
    a config and environment built from those lines alone can harvest from it."""
    process = await anyio.open_process(
        [sys.executable, "-m", "harvester", "emulator", "--port", "0", "--workouts", "7"])
    try:
        assert process.stdout is not None
        text = ""
        with anyio.fail_after(30):
            async for chunk in process.stdout:
                text += chunk.decode()
                if "Ctrl-C" in text:
                    break
        lines = text.splitlines()
        url = lines[0]
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url)
        toml = "\n".join(line[4:] for line in lines if line == "#   [api]"
                         or (line.startswith("#   ") and "=" in line and "export" not in line))
        assert f'base_url = "{url}"' in toml and f'auth_url = "{url}"' in toml
        [export] = [line[4:] for line in lines if line.startswith("#   export ")]
        env = cli_env(tmp_path)
        for name, value in re.findall(r"(PELOTON_\w+)='([^']*)'", export):
            env[name] = value
        config = tmp_path / "c.toml"
        config.write_text(toml + f'\n[auth]\ntoken_cache = "{tmp_path / "t.json"}"\n'
                          '[harvest]\nrequests_per_second = 500.0\n', encoding="utf-8")
        plan = await run_cli_async(["plan", "--config", str(config)], env)
        assert plan.returncode == 0, plan.stderr
        assert "7 workouts listed" in plan.stdout or "6 workouts listed" in plan.stdout
    finally:
        process.send_signal(signal.SIGINT)
        with anyio.fail_after(30):
            await process.wait()
        await process.aclose()


def test_emulator_help_names_every_source_side_route() -> None:
    """`emulator --help` documents the runtime routes that change the source (deletes, date changes, pages)."""
    from aiohttp import web

    from harvester.emulator.admin import add_routes

    app = web.Application()
    add_routes(app)
    routes = {r.resource.canonical for r in app.router.routes() if r.resource is not None}
    done = run_cli(["emulator", "--help"], {})
    text = "".join(done.stdout.split())  # argparse wraps lines
    for route in routes - {"/_emulator/reset", "/_emulator/settings", "/_emulator/clock"}:
        assert route in text, route
    for knob in ("oldest=N", "created_at=EPOCH", "shift=SECONDS", "kind=duplicate|damaged"):
        assert knob in text, knob
