"""The README's typed-table recipes, run as written against a demo lake and checked
against the same answers computed from the raw lake."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import duckdb
import pytest

from harvester.tables.recipes import monthly_output
from tests.harness import lake_rows
from tests.test_tables import demo_lake

README = Path(__file__).resolve().parent.parent / "README.md"
NULL_RIDE = "0" * 32
BLOCK = re.compile(r"```(sql|python)\n(?:--|#) recipe: (\w+)\n(.*?)```", re.DOTALL)


def recipes() -> dict[str, tuple[str, str]]:
    found = {name: (lang, code) for lang, name, code in BLOCK.findall(README.read_text(encoding="utf-8"))}
    assert set(found) == {"monthly", "power", "instructors", "zones"}
    return found


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A demo lake at <tmp>/peloton-lake, tables built (demo builds them)."""
    return demo_lake(tmp_path_factory.mktemp("recipes"), workouts=150, seed=7)


def run_sql(lake: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    lang, code = recipes()[name]
    assert lang == "sql"
    monkeypatch.chdir(lake.parent)
    return duckdb.sql(code).fetchall()


def run_python(lake: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    lang, code = recipes()[name]
    assert lang == "python"
    monkeypatch.chdir(lake.parent)
    namespace: dict[str, Any] = {}
    exec(compile(code, f"README recipe {name}", "exec"), namespace)
    return namespace


def local_month(workout: dict[str, Any]) -> str:
    return datetime.fromtimestamp(workout["created_at"], ZoneInfo(workout["timezone"])).strftime("%Y-%m")


def graphs_by_workout(lake: Path) -> dict[str, dict[str, Any]]:
    return {g["workout_id"]: g for g in lake_rows(lake, "performance_graphs")}


def test_monthly_recipe_counts_workouts_and_output_per_local_month(
        lake: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Workouts and kJ per month of the workout's own local time, as the raw lake says; demo prints the same."""
    graphs = graphs_by_workout(lake)
    count: Counter[str] = Counter()
    output: defaultdict[str, float] = defaultdict(float)
    for w in lake_rows(lake, "workouts"):
        month = local_month(w)
        count[month] += 1
        summary = {s["slug"]: s["value"] for s in graphs.get(w["id"], {}).get("summaries", [])}
        output[month] += summary.get("total_output") or 0
    got = run_sql(lake, "monthly", monkeypatch)
    assert [(m, n) for m, n, _ in got] == sorted(count.items(), reverse=True)
    assert all(kj == round(output[m]) for m, _, kj in got)
    demo = monthly_output(lake, months=1000)
    assert [(m, n, round(kj)) for m, n, kj in demo] == [(m, n, int(kj)) for m, n, kj in got]


def best_window(samples: list[tuple[int, float]]) -> float | None:
    last = samples[-1][0]
    best: float | None = None
    for i, (start, _) in enumerate(samples):
        if start + 1200 > last:
            break
        window = [v for o, v in samples[i:] if o < start + 1200]
        avg = sum(window) / len(window)
        best = avg if best is None else max(best, avg)
    return best


def test_power_recipe_gives_average_and_best_20_minutes(lake: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Per cycling workout: mean output of its samples and the best 20-minute mean, from the raw graphs."""
    graphs = graphs_by_workout(lake)
    expected: dict[str, tuple[float, float | None]] = {}
    for w in lake_rows(lake, "workouts"):
        graph = graphs.get(w["id"])
        if w["fitness_discipline"] != "cycling" or graph is None:
            continue
        values = next(m["values"] for m in graph["metrics"] if m["slug"] == "output")
        samples = [(o, float(v)) for o, v in zip(graph["seconds_since_pedaling_start"], values, strict=False)
                   if v is not None]
        if samples:
            expected[w["id"]] = (sum(v for _, v in samples) / len(samples), best_window(samples))
    got = run_sql(lake, "power", monkeypatch)
    assert len(expected) > 20 and {row[0] for row in got} == set(expected)
    assert any(row[2] is not None for row in got) and any(row[2] is None for row in got)
    for workout_id, avg, best in got:
        want_avg, want_best = expected[workout_id]
        assert avg == pytest.approx(want_avg, abs=0.051)
        assert (best is None) == (want_best is None)
        if best is not None:
            assert best == pytest.approx(want_best, abs=0.051)
    bests = [row[2] for row in got if row[2] is not None]
    assert bests == sorted(bests, reverse=True)


def test_instructors_recipe_ranks_instructors_by_classes_taken(
        lake: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The top ten instructors and their class counts match the raw workouts and instructors."""
    names = {i["id"]: i["name"] for i in lake_rows(lake, "instructors")}
    taken: Counter[str] = Counter()
    for w in lake_rows(lake, "workouts"):
        ride = w.get("ride") or {}
        if ride.get("id") not in (None, NULL_RIDE) and ride.get("instructor_id") in names:
            taken[names[ride["instructor_id"]]] += 1
    top = run_python(lake, "instructors", monkeypatch)["top"]
    assert len(top) == 10
    assert dict(top.items()) == {name: taken[name] for name in top.index}
    assert list(top.values) == sorted(taken.values(), reverse=True)[:10]


def test_zones_recipe_sums_heart_rate_zone_minutes_per_month(
        lake: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Minutes per heart-rate zone per local month equal the raw workouts' zone durations."""
    seconds: defaultdict[str, list[int]] = defaultdict(lambda: [0] * 5)
    for w in lake_rows(lake, "workouts"):
        zones = w.get("total_heart_rate_zone_durations") or {}
        for z in range(5):
            seconds[local_month(w)][z] += zones.get(f"heart_rate_z{z + 1}_duration") or 0
    frame = run_python(lake, "zones", monkeypatch)["zones"]
    assert frame["local_month"].to_list() == sorted(seconds, reverse=True)
    for row in frame.iter_rows(named=True):
        assert [row[f"zone{z}_min"] for z in range(1, 6)] == [
            pytest.approx(s / 60, abs=0.051) for s in seconds[row["local_month"]]]
