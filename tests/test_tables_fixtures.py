"""Two real Peloton answers (a rowing workout and its graph) through the lake and the tables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds

from harvester.lake import Lake
from harvester.tables import build_tables
from harvester.tables.schemas import METRIC_SLUGS, SUMMARY_SLUGS
from tests.harness import lake_rows

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "peloton"
STAMP = "2026-04-01T12:00:00Z"


def real_lake(root: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Commit the real list item and graph the way the pipeline does; returns both as sent."""
    page = json.loads((FIXTURES / "workouts_page_rowing.json").read_text(encoding="utf-8"))
    graph = json.loads((FIXTURES / "performance_graph_rowing.json").read_text(encoding="utf-8"))
    workout = page["data"][0]
    Lake(root).commit(workout["user_id"], {
        "workouts": [{**workout, "_harvested_at": STAMP}],
        "performance_graphs": [{**graph, "workout_id": workout["id"], "user_id": workout["user_id"],
                                "created_at": workout["created_at"], "_harvested_at": STAMP}],
    })
    return workout, graph


def test_real_rowing_workout_lands_in_typed_columns(tmp_path: Path) -> None:
    """Every metric slug, summary and average of the real graph lands in a column with its value."""
    root = tmp_path / "lake"
    workout, graph = real_lake(root)
    assert lake_rows(root, "performance_graphs")[0]["muscle_group_score"] == graph["muscle_group_score"]
    build_tables(root)

    row = ds.dataset(root / "tables/workouts", partitioning="hive").to_table().to_pylist()
    assert len(row) == 1
    got = row[0]
    assert got["workout_id"] == workout["id"] and got["fitness_discipline"] == "caesar"
    assert str(got["local_date"]) == "2022-12-04"  # 22:04 UTC is 16:04 at Etc/GMT+6
    assert got["total_work_j"] == workout["total_work"] and got["duration_s"] == 603
    assert got["class_id"] == workout["ride"]["id"] and got["class_title"] == "10 min Form & Drills Row"
    assert got["class_type_ids"] == workout["ride"]["class_type_ids"]
    assert [got[f"hr_zone{z}_s"] for z in range(1, 6)] == [164, 173, 246, 70, 0]
    assert got["total_effort_points"] == 10.3 and got["samples"] == 600

    for summary in graph["summaries"]:
        assert summary["slug"] in SUMMARY_SLUGS, summary["slug"]
        assert got[summary["slug"]] == summary["value"], summary["slug"]
    assert got["distance_unit"] == "m"
    for average in graph["average_summaries"]:
        assert got[average["slug"]] == average["value"], average["slug"]
    for metric in graph["metrics"]:
        assert got[f"max_{metric['slug']}"] == metric["max_value"], metric["slug"]
    assert got["other_summaries"] is None  # nothing of the real graph was left without a column

    samples = ds.dataset(root / "tables/workout_metrics", partitioning="hive").to_table()
    samples = samples.sort_by("offset_s")
    assert samples["offset_s"].to_pylist() == graph["seconds_since_pedaling_start"]
    for metric in graph["metrics"]:
        assert metric["slug"] in METRIC_SLUGS, metric["slug"]
        assert samples[metric["slug"]].to_pylist() == [
            None if v is None else float(v) for v in metric["values"]], metric["slug"]
    assert samples["other_metrics"].null_count == samples.num_rows
