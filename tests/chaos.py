"""The lake against the emulator's truth: shared by tests/test_mirror.py and scripts/chaos."""

from __future__ import annotations

import gzip
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

TEMP_MARK = ".tmp-"


def utc_day(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).date().isoformat()


def _rows(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(partition, row) per line; a line that is not JSON fails the check loudly."""
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        data = gzip.decompress(data)
    assert not data or data.endswith(b"\n"), f"{path} ends in a partial line"
    part = path.parent.name.removeprefix("date=")
    return [(part, orjson.loads(line)) for line in data.splitlines() if line.strip()]


def dataset_rows(root: Path, dataset: str) -> list[tuple[str, dict[str, Any]]]:
    base = root / dataset
    found: list[tuple[str, dict[str, Any]]] = []
    for path in sorted([*base.glob("**/*.jsonl"), *base.glob("**/*.jsonl.gz")]):
        found += _rows(path)
    return found


def mirror_problems(
    root: Path, truth: list[dict[str, Any]], *, deleted: set[str] | None = None,
    graphs: bool = True, quarantined: set[str] | None = None,
) -> list[str]:
    """Every way the lake differs from the source: [] when it is its mirror.

    ``truth`` is /_emulator/truth's workouts; ``deleted`` ids deleted at the source
    while they were in the lake; ``quarantined`` ids the source holds as bad records.
    """
    problems: list[str] = []
    deleted, quarantined = deleted or set(), quarantined or set()
    want = {w["id"]: w["created_at"] for w in truth
            if w["status"] == "COMPLETE" and w["id"] not in quarantined}
    workouts = dataset_rows(root, "workouts")
    counts = Counter(row["id"] for _, row in workouts)
    problems += [f"workout {k} held {n} times" for k, n in counts.items() if n > 1]
    held = {row["id"]: (part, row["created_at"]) for part, row in workouts}
    problems += [f"workout {k} missing" for k in sorted(want.keys() - held.keys())]
    problems += [f"workout {k} not at the source" for k in sorted(held.keys() - want.keys())]
    for key, (part, created) in held.items():
        if key in want and created != want[key]:
            problems.append(f"workout {key} has created_at {created}, the source {want[key]}")
        if part != utc_day(created):
            problems.append(f"workout {key} in date={part}, belongs in {utc_day(created)}")
    if graphs:
        rows = dataset_rows(root, "performance_graphs")
        gcounts = Counter(row["workout_id"] for _, row in rows)
        problems += [f"graph {k} held {n} times" for k, n in gcounts.items() if n > 1]
        problems += [f"graph {k} missing" for k in sorted(want.keys() - gcounts.keys())]
        problems += [f"graph {k} not at the source" for k in sorted(gcounts.keys() - want.keys())]
        problems += [f"graph {row['workout_id']} in date={part}" for part, row in rows
                     if part != utc_day(row["created_at"])]
    recorded = Counter(row["workout_id"] for _, row in dataset_rows(root, "deletions"))
    problems += [f"deletion {k} recorded {n} times" for k, n in recorded.items() if n > 1]
    problems += [f"deletion of {k} not recorded" for k in sorted(deleted - recorded.keys())]
    problems += [f"temporary file {p}" for p in root.rglob(f"*{TEMP_MARK}*")
                 if "_harvester" not in p.relative_to(root).parts]
    return problems


# -- the SIGKILL storm ------------------------------------------------------------


async def storm(
    emulator: Any, workdir: Path, *, kills: int, seed: int, harvest: dict[str, object],
) -> dict[str, Any]:
    """Backfills SIGKILLed at random points while the source deletes and re-dates workouts,
    then clean backfills until the lake mirrors the source (at most two are allowed).

    Returns what was measured: kills, deletes, moves, finishing runs, remaining problems.
    """
    import random
    import signal

    import anyio

    from tests.harness import cli_env, run_cli_async, write_config
    from tests.procs import start_cli, wait_until, whole_files

    rng = random.Random(seed)
    env = cli_env(workdir)
    config = write_config(workdir, emulator.url, harvest=harvest)
    root = workdir / "lake"
    args = ["backfill", "--config", str(config), "--no-progress"]
    must_record: set[str] = set()
    moves = 0
    for attempt in range(kills):
        held = {row["id"] for _, row in dataset_rows(root, "workouts")} if root.exists() else set()
        moves += _mutate(emulator, rng, held, must_record)
        base = sum(emulator.stats.by_id["workout"].values())
        target = rng.randint(0, max(1, len(emulator.account.workouts) // (kills + 1)))
        cli = await start_cli(args, env, workdir / "logs", f"storm{attempt}")
        await wait_until(lambda base=base, target=target, cli=cli: (
            sum(emulator.stats.by_id["workout"].values()) - base >= target
            or cli.process.returncode is not None))
        if rng.random() < 0.5:  # a date changes under the running harvest
            moves += _move(emulator, rng)
        await anyio.sleep(rng.uniform(0.0, 0.03))
        if cli.process.returncode is None:
            cli.process.send_signal(signal.SIGKILL)
        await cli.wait()
        await anyio.sleep(0.05)
        whole_files(root)
    runs, problems = 0, ["not run"]
    while problems and runs < 3:
        done = await run_cli_async(args, env)
        runs += 1
        truth = [w.summary() for w in emulator.account.workouts]
        problems = mirror_problems(root, truth, deleted=must_record)
        if done.returncode != 0:
            problems.append(f"finishing run {runs} exited {done.returncode}: {done.stderr[-300:]}")
    return {"kills": kills, "deleted": len(must_record), "moves": moves,
            "finishing_runs": runs, "problems": problems}


def _mutate(emulator: Any, rng: Any, held: set[str], must_record: set[str]) -> int:
    """Between runs: delete one workout the lake holds (a deletion to record), move another."""
    candidates = [w.id for w in emulator.account.workouts if w.id in held and w.end_time]
    if candidates and rng.random() < 0.7:
        gone = rng.choice(candidates)
        emulator.state.delete_workouts([gone])
        must_record.add(gone)
    return _move(emulator, rng)


def _move(emulator: Any, rng: Any) -> int:
    workouts = emulator.account.workouts
    victim = workouts[rng.randrange(len(workouts))]
    shift = rng.choice((-1, 1)) * rng.randint(1, 5) * 86_400
    emulator.state.move_workout(victim.id, victim.created_at + shift)
    return 1
