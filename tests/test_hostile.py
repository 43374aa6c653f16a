"""No server can hang a run or exhaust its memory: the real CLI against hostile emulator modes.

Each test starts the CLI as a child process (through a wrapper that reports the
child's peak RSS) against an in-process emulator switched into one hostile mode,
and checks the run ends with the right exit code and a recorded failure, after a
bounded number of requests, in bounded memory.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

from harvester.state import StateStore
from tests.harness import cli_env, write_config

PAGE_SIZE = 10  # 60 workouts: six pages, so a listing has pages to repeat or skip
TIMEOUT_S = 1.5  # the per-attempt deadline these runs are configured with
MAX_ATTEMPTS = 2
MAX_RSS_MB = 400
WAIT_S = 60.0  # a hang guard: every run here ends long before

# Runs `python -m harvester ARGS` as its only child and writes that child's peak RSS (KiB).
RSS_WRAPPER = (
    "import resource, subprocess, sys\n"
    "code = subprocess.call([sys.executable, '-m', 'harvester', *sys.argv[2:]])\n"
    "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
    "open(sys.argv[1], 'w').write(str(peak))\n"
    "sys.exit(code)\n"
)


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str
    peak_rss_mb: float
    requests: dict[str, int]
    manifest: dict[str, Any]


async def harvest(emulator: Any, tmp_path: Path, **harvest: object) -> Outcome:
    """One `backfill` against ``emulator``; its exit code, output, peak RSS and requests."""
    config = write_config(
        tmp_path, emulator.url,
        api={"timeout_s": TIMEOUT_S, "max_attempts": MAX_ATTEMPTS},
        harvest={"page_size": PAGE_SIZE, **harvest},
    )
    rss = tmp_path / "rss"
    out, err = tmp_path / "out", tmp_path / "err"
    emulator.reset_stats()
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = await anyio.open_process(
            [sys.executable, "-c", RSS_WRAPPER, str(rss), "backfill", "--config", str(config),
             "--no-progress"],
            env=cli_env(tmp_path), stdout=stdout, stderr=stderr)
    with anyio.fail_after(WAIT_S):
        code = await process.wait()
    manifest = StateStore(tmp_path / "lake").latest_manifest(emulator.account.user_id) or {}
    return Outcome(
        code=code, stdout=out.read_text(), stderr=err.read_text(),
        peak_rss_mb=int(rss.read_text()) / 1024,
        requests=dict(emulator.stats_snapshot()["by_endpoint"]), manifest=manifest,
    )


def error_line(stderr: str) -> str:
    """The one error line (item failures before it are logged as warnings), no traceback."""
    errors = [line for line in stderr.splitlines() if line.startswith("peloton-harvester: error:")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    return errors[0]


def listing_failure(outcome: Outcome) -> str:
    """The one recorded failure of the listing, as its error text."""
    failures = [f for f in outcome.manifest["failures"] if f["kind"] == "list"]
    assert len(failures) == 1, outcome.manifest["failures"]
    return str(failures[0]["error"])


def assert_listing_not_complete(tmp_path: Path, emulator: Any) -> None:
    state = StateStore(tmp_path / "lake").load(emulator.account.user_id)
    assert not state.backfill_complete
    assert state.watermark is None


async def test_repeated_page_stops_the_listing_with_exit_3(
    make_emulator: Any, tmp_path: Path
) -> None:
    """A server repeating page 1 forever is listed three times, not forever: exit 3, recorded."""
    emulator = await make_emulator(hostile="repeat_page")
    outcome = await harvest(emulator, tmp_path)
    assert outcome.code == 3, outcome.stderr
    assert "brought no workout not already listed" in listing_failure(outcome)
    assert outcome.requests["workouts"] == 3  # page 0, page 1, page 1 again: stop
    assert "1 FAILED" in outcome.stdout
    assert_listing_not_complete(tmp_path, emulator)


async def test_a_proxy_dropping_page_stops_the_listing_with_exit_3(
    make_emulator: Any, tmp_path: Path
) -> None:
    """Every request answered with page 0 (?page= dropped): two list requests, then exit 3."""
    emulator = await make_emulator(hostile="ignore_page")
    outcome = await harvest(emulator, tmp_path)
    assert outcome.code == 3, outcome.stderr
    assert "a proxy drops the ?page= parameter" in listing_failure(outcome)
    assert outcome.requests["workouts"] == 2
    assert outcome.manifest["workouts_listed"] == PAGE_SIZE  # what page 0 held is still fetched
    assert_listing_not_complete(tmp_path, emulator)


async def test_a_listing_past_its_stated_total_stops_with_exit_3(
    make_emulator: Any, tmp_path: Path
) -> None:
    """A `total` of 15 for 60 workouts: the listing stops past 15 plus the margin, exit 3."""
    emulator = await make_emulator(hostile="lying_total")
    outcome = await harvest(emulator, tmp_path)
    assert outcome.code == 3, outcome.stderr
    assert "ran past its stated total of 15" in listing_failure(outcome)
    assert outcome.requests["workouts"] == 3  # 30 listed > 15 + 10
    assert_listing_not_complete(tmp_path, emulator)


async def test_a_lying_page_count_is_an_incomplete_listing_not_a_complete_one(
    make_emulator: Any, tmp_path: Path
) -> None:
    """page_count 1 with a total of 60: the 10 listed are harvested, the listing fails, exit 3."""
    emulator = await make_emulator(hostile="lying_page_count")
    outcome = await harvest(emulator, tmp_path)
    assert outcome.code == 3, outcome.stderr
    assert "with 10 of its stated 60 workouts" in listing_failure(outcome)
    assert outcome.manifest["rows"]["workouts"] == PAGE_SIZE
    assert_listing_not_complete(tmp_path, emulator)


async def test_an_endless_body_is_cut_at_the_cap_in_bounded_memory(
    make_emulator: Any, tmp_path: Path
) -> None:
    """A list answer that never ends is read to 32 MB, refused once (not retried), RSS < 400 MB."""
    emulator = await make_emulator(hostile="endless_body", hostile_routes=frozenset({"workouts"}))
    outcome = await harvest(emulator, tmp_path)
    assert outcome.code == 3, outcome.stderr
    assert "answer larger than 32 MB (decompressed)" in listing_failure(outcome)
    assert outcome.requests["workouts"] == 1
    assert outcome.peak_rss_mb < MAX_RSS_MB


async def test_gzip_bombs_are_cut_at_the_cap_and_stop_the_run_in_bounded_memory(
    make_emulator: Any, tmp_path: Path
) -> None:
    """Every graph a 1 GiB gzip bomb, eight at a time: each cut at 32 MB, RSS < 400 MB, and
    after the fourth the run stops (exit 2, one line) instead of inflating one per workout."""
    emulator = await make_emulator(hostile="gzip_bomb", hostile_routes=frozenset({"performance_graph"}))
    outcome = await harvest(emulator, tmp_path, concurrency=8)
    assert outcome.code == 2, outcome.stderr
    line = error_line(outcome.stderr)
    # the fourth stops it; answers already in flight may count before the stop lands
    assert re.search(r"sent (\d+) answers larger than 32 MB", line), line
    assert 4 <= int(re.findall(r"sent (\d+)", line)[0]) <= 4 + 8 and "check api.base_url" in line
    assert outcome.requests["performance_graph"] <= 4 + 8  # the fourth, and those in flight
    assert outcome.peak_rss_mb < MAX_RSS_MB


async def test_dripping_graphs_stop_the_run_after_a_few_deadlines(
    make_emulator: Any, tmp_path: Path
) -> None:
    """Every graph drips: not one deadline per workout, but a stop (exit 75) after the fourth."""
    emulator = await make_emulator(hostile="drip", hostile_routes=frozenset({"performance_graph"}))
    outcome = await harvest(emulator, tmp_path, concurrency=8)
    assert outcome.code == 75, outcome.stderr
    line = error_line(outcome.stderr)
    assert re.search(r"sent (\d+) answers still incomplete when the deadline passed", line), line
    assert 4 <= int(re.findall(r"sent (\d+)", line)[0]) <= 4 + 8
    assert "try again later" in line
    assert outcome.requests["performance_graph"] <= 4 + 8


async def test_a_dripping_body_ends_at_the_total_deadline(
    make_emulator: Any, tmp_path: Path
) -> None:
    """One byte a second never completes an answer: the attempt ends at its deadline, exit 3.

    Not retried: another attempt would cost another whole deadline, so a run
    against a dripping server ends within about one deadline, not max_attempts of them.
    """
    emulator = await make_emulator(hostile="drip", hostile_routes=frozenset({"workouts"}))
    outcome = await harvest(emulator, tmp_path)
    assert outcome.code == 3, outcome.stderr
    assert f"answer still incomplete after {TIMEOUT_S:g} s" in listing_failure(outcome)
    assert outcome.requests["workouts"] == 1


@pytest.mark.parametrize("mode", ["endless_body", "gzip_bomb"])
async def test_an_oversized_answer_stops_plan_with_one_line_and_exit_2(
    make_emulator: Any, tmp_path: Path, mode: str
) -> None:
    """`plan` meeting a body past the cap: one line on stderr naming it, no traceback, exit 2."""
    emulator = await make_emulator(hostile=mode, hostile_routes=frozenset({"workouts"}))
    config = write_config(tmp_path, emulator.url, api={"timeout_s": TIMEOUT_S})
    args = [sys.executable, "-m", "harvester", "plan", "--config", str(config)]
    with anyio.fail_after(WAIT_S):
        done = await anyio.run_process(args, env=cli_env(tmp_path), check=False)
    stderr = done.stderr.decode()
    assert done.returncode == 2, stderr
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr, stderr
    assert "answer larger than 32 MB (decompressed)" in stderr


async def test_a_dripping_answer_stops_plan_with_one_line_and_exit_75(
    make_emulator: Any, tmp_path: Path
) -> None:
    """`plan` meeting a body that drips: one line, exit 75 (temporary: try again later)."""
    emulator = await make_emulator(hostile="drip", hostile_routes=frozenset({"workouts"}))
    config = write_config(tmp_path, emulator.url, api={"timeout_s": TIMEOUT_S})
    args = [sys.executable, "-m", "harvester", "plan", "--config", str(config)]
    with anyio.fail_after(WAIT_S):
        done = await anyio.run_process(args, env=cli_env(tmp_path), check=False)
    stderr = done.stderr.decode()
    assert done.returncode == 75, stderr
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr, stderr
    assert f"answer still incomplete after {TIMEOUT_S:g} s" in stderr


async def test_plan_stops_on_a_repeated_page_with_exit_3(
    make_emulator: Any, tmp_path: Path
) -> None:
    """`plan` pages the list too: a repeated page stops it after three requests, exit 3."""
    emulator = await make_emulator(hostile="repeat_page")
    config = write_config(tmp_path, emulator.url, harvest={"page_size": PAGE_SIZE})
    args = [sys.executable, "-m", "harvester", "plan", "--config", str(config)]
    with anyio.fail_after(WAIT_S):
        done = await anyio.run_process(args, env=cli_env(tmp_path), check=False)
    stderr = done.stderr.decode()
    assert done.returncode == 3, stderr
    assert "brought no workout not already listed" in stderr
    assert emulator.stats_snapshot()["by_endpoint"]["workouts"] == 3


def test_rss_wrapper_measures_the_child() -> None:
    """The RSS wrapper reports a child's peak, so the memory bounds above can fail."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        rss = Path(tmp) / "rss"
        code = "import sys; b = bytearray(300 * 1024 * 1024); sys.exit(0)"
        wrapper = RSS_WRAPPER.replace("[sys.executable, '-m', 'harvester', *sys.argv[2:]]",
                                      "[sys.executable, '-c', sys.argv[2]]")
        subprocess.run([sys.executable, "-c", wrapper, str(rss), code], check=True)
        assert int(rss.read_text()) / 1024 > 300


async def test_answers_with_a_key_twice_are_written_with_it_once(
    make_emulator: Any, tmp_path: Path
) -> None:
    """Details, graphs and classes that hold a key twice: every lake line holds it once (the
    last value, as the harvester decoded it), so DuckDB, which refuses a line with a
    duplicate key, reads the whole lake."""
    import duckdb

    emulator = await make_emulator(
        workouts=12, hostile="duplicate_keys",
        hostile_routes=frozenset({"workout", "performance_graph", "ride_details"}))
    outcome = await harvest(emulator, tmp_path)
    assert outcome.code == 0, outcome.stderr
    for dataset in ("workouts", "performance_graphs", "rides"):
        lines = [line for path in (tmp_path / "lake" / dataset).glob("date=*/*.jsonl")
                 for line in path.read_bytes().splitlines()]
        assert lines and all(line.count(b'"duplicated"') == 1 for line in lines), dataset
        glob = str(tmp_path / "lake" / dataset / "**" / "*.jsonl")
        seen = duckdb.sql("SELECT count(*), min(duplicated), max(duplicated) FROM "
                          "read_json($glob, union_by_name = true)", params={"glob": glob}).fetchall()
        assert seen == [(len(lines), 2, 2)], (dataset, seen)
