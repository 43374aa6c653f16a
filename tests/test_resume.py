"""Resume: a backfill SIGKILLed at seeded points and restarted ends with the lake of an uninterrupted run."""

from __future__ import annotations

import random
import signal
from pathlib import Path
from typing import Any

import anyio

from harvester.pipeline import DEFAULT_BATCH_SIZE
from tests.harness import cli_env, comparable, lake_rows, run_cli_async, write_config
from tests.procs import start_cli, wait_until, whole_files

SEED = 20261123
KILLS = 6
WORKOUTS = 200
CONCURRENCY = 4
# What one SIGKILL can throw away, counted in workouts whose detail was already asked for:
# each worker holds one (mid-fetch, or blocked handing it over), the results stream buffers
# 2 x concurrency (pipeline.run), and the writer holds what it has not yet committed: one
# look's results committing in a thread (it looks every DEFAULT_BATCH_SIZE results or flush
# interval), and the results of days not yet complete (frontier.py), which are the days of
# workouts still in flight: with this account's one or two workouts a day, within the rest.
IN_FLIGHT_BOUND = CONCURRENCY + 2 * CONCURRENCY + 2 * DEFAULT_BATCH_SIZE


def workout_ids(root: Path) -> set[str]:
    return {row["id"] for row in lake_rows(root, "workouts")}


def detail_counts(emulator: Any) -> dict[str, int]:
    counts: dict[str, int] = emulator.stats_snapshot()["by_id"].get("workout", {})
    return dict(counts)


async def test_backfill_killed_at_seeded_points_ends_identical_to_an_uninterrupted_run(
    make_emulator: Any, tmp_path: Path
) -> None:
    """Six seeded SIGKILLs then a finishing run: same lake, whole files, refetches only in-flight work."""
    emulator = await make_emulator(workouts=WORKOUTS, latency_ms=3.0, jitter_ms=3.0)
    env = cli_env(tmp_path)
    harvest = {"concurrency": CONCURRENCY, "page_size": 50}
    (tmp_path / "ref").mkdir()
    (tmp_path / "run").mkdir()
    reference = write_config(tmp_path / "ref", emulator.url, harvest=harvest)
    config = write_config(tmp_path / "run", emulator.url, harvest=harvest)
    args = ["backfill", "--config", str(config), "--no-progress"]
    root = tmp_path / "run" / "lake"

    done = await run_cli_async(["backfill", "--config", str(reference), "--no-progress"], env)
    assert done.returncode == 0, done.stderr
    complete = {w.id for w in emulator.account.workouts if w.status == "COMPLETE"}
    assert workout_ids(tmp_path / "ref" / "lake") == complete
    emulator.reset_stats()

    rng = random.Random(SEED)
    lost: list[int] = []
    for attempt in range(KILLS):
        before, held = detail_counts(emulator), workout_ids(root)
        # At most half of what is left, so the kill lands before the run can finish;
        # 0 kills it while it starts (imports, lock, authentication).
        target = rng.randint(0, (len(complete) - len(held)) // 2)
        extra_s = rng.uniform(0.0, 0.02)  # land anywhere between two requests, or mid-commit
        cli = await start_cli(args, env, tmp_path / "logs", f"attempt{attempt}")
        base = sum(before.values())
        await wait_until(lambda base=base, target=target: (
            sum(detail_counts(emulator).values()) - base >= target))
        await anyio.sleep(extra_s)
        cli.process.send_signal(signal.SIGKILL)
        assert await cli.wait() == -signal.SIGKILL, (target, cli.stderr())
        await anyio.sleep(0.05)  # let the emulator finish reading what the dead process sent

        whole_files(root)  # no visible file is partial at the moment of the kill
        committed = workout_ids(root)
        graphs = {row["workout_id"] for row in lake_rows(root, "performance_graphs")}
        assert committed <= graphs, "a committed workout implies its graph"
        comparable(root)  # no key twice
        after = detail_counts(emulator)
        asked = {i for i, n in after.items() if n > before.get(i, 0)}
        assert not asked & held, "a run asked again for a workout the lake already held"
        lost.append(len(asked - committed))
        assert lost[-1] <= IN_FLIGHT_BOUND, (attempt, target, lost)

    done = await run_cli_async(args, env)
    assert done.returncode == 0, done.stderr
    assert whole_files(root) == [], "the finishing run cleans up what the kills left"
    assert comparable(root) == comparable(tmp_path / "ref" / "lake")
    total = sum(detail_counts(emulator).values())
    # Every workout once, plus exactly what each kill threw away before committing it.
    assert total == len(complete) + sum(lost), (total, lost)
    assert sum(lost) <= KILLS * IN_FLIGHT_BOUND
