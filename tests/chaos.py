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
