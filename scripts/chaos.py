#!/usr/bin/env python3
"""Chaos: the mirror scenarios at full size, each ending checked against the emulator's truth.

    storm       backfills SIGKILLed at random points while the source deletes and re-dates
                workouts; then clean backfills (at most two allowed) must leave a mirror
    moves       a tenth of the workouts re-dated at the source, one backfill
    deletes     5% deleted at the source, one backfill (removed, recorded in deletions)
    graphs      a workouts-only backfill, then graphs enabled: only graphs fetched
    damage      partial line, non-JSON line, key twice, missing newline: one backfill heals
    bad         a millisecond created_at and a damaged page: quarantined alone

Prints each scenario's measured result; exits 1 if any leaves the lake unequal to the
source. tests/test_mirror.py runs the same scenarios, smaller.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harvester.emulator import Emulator, EmulatorSettings
from harvester.run import run_harvest
from tests.chaos import mirror_problems, storm
from tests.harness import harvest_config
from tests.test_mirror import damage

DAY = 86_400


def truth(emulator: Emulator) -> list[dict[str, Any]]:
    return [w.summary() for w in emulator.account.workouts]


async def backfill(emulator: Emulator, work: Path, **overrides: Any) -> Any:
    config = harvest_config(emulator.url, work, **overrides)
    return await run_harvest(config, "backfill", backoff_base=0.0)


async def scenario(name: str, workouts: int, body: Any, failed: list[str]) -> None:
    with tempfile.TemporaryDirectory(prefix=f"chaos-{name}-") as tmp:
        async with Emulator(EmulatorSettings(workouts=workouts, latency_ms=1.0)) as emulator:
            started = time.monotonic()
            result = await body(emulator, Path(tmp))
            problems = result.pop("problems")
            ok = not problems
            print(f"{'ok  ' if ok else 'FAIL'} {name}: {result}, "
                  f"{len(problems)} problems, {time.monotonic() - started:.1f} s")
            for problem in problems[:10]:
                print(f"       {problem}")
            if not ok:
                failed.append(name)


async def moves(emulator: Emulator, work: Path) -> dict[str, Any]:
    await backfill(emulator, work)
    rng = random.Random(1)
    picked = rng.sample(emulator.account.workouts, len(emulator.account.workouts) // 10)
    for w in picked:
        emulator.state.move_workout(w.id, w.created_at + rng.choice((-3, 2)) * DAY)
    report = await backfill(emulator, work)
    return {"moved_at_source": len(picked), "moved": report.outcome.moved,
            "exit": report.exit_code, "problems": mirror_problems(work / "lake", truth(emulator))}


async def deletes(emulator: Emulator, work: Path) -> dict[str, Any]:
    await backfill(emulator, work)
    workouts = emulator.account.workouts
    gone = [w.id for w in random.Random(2).sample(workouts, len(workouts) // 20)]
    emulator.state.delete_workouts(gone)
    report = await backfill(emulator, work)
    return {"deleted_at_source": len(gone), "deleted": len(report.outcome.deleted),
            "exit": report.exit_code,
            "problems": mirror_problems(work / "lake", truth(emulator), deleted=set(gone))}


async def graphs(emulator: Emulator, work: Path) -> dict[str, Any]:
    await backfill(emulator, work, harvest__datasets=["workouts"])
    emulator.reset_stats()
    report = await backfill(emulator, work)
    by_endpoint = emulator.stats_snapshot()["by_endpoint"]
    return {"graph_requests": by_endpoint.get("performance_graph", 0),
            "workout_requests": by_endpoint.get("workout", 0), "exit": report.exit_code,
            "problems": mirror_problems(work / "lake", truth(emulator))}


async def damaged(emulator: Emulator, work: Path) -> dict[str, Any]:
    await backfill(emulator, work)
    damage(work / "lake")
    report = await backfill(emulator, work)
    return {"healed": len(report.outcome.healed), "exit": report.exit_code,
            "problems": mirror_problems(work / "lake", truth(emulator))}


async def bad(emulator: Emulator, work: Path) -> dict[str, Any]:
    w = emulator.account.workouts[7]
    emulator.state.move_workout(w.id, w.created_at * 1000)
    emulator.state.page_faults[1] = ["damaged"]
    report = await backfill(emulator, work)
    again = await backfill(emulator, work)
    return {"quarantined_first": len(report.outcome.quarantined), "exit": report.exit_code,
            "second_exit": again.exit_code,
            "problems": mirror_problems(work / "lake", truth(emulator), quarantined={w.id})}


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workouts", type=int, default=1000)
    parser.add_argument("--kills", type=int, default=25)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    failed: list[str] = []

    async def the_storm(emulator: Emulator, work: Path) -> dict[str, Any]:
        return await storm(emulator, work, kills=args.kills, seed=args.seed,
                           harvest={"concurrency": 8, "page_size": 100})

    for name, body in (("storm", the_storm), ("moves", moves), ("deletes", deletes),
                       ("graphs", graphs), ("damage", damaged), ("bad", bad)):
        await scenario(name, args.workouts, body, failed)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(anyio.run(main))
