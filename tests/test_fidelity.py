"""pylotoncycle 0.9.5, an independent Peloton client, reads the emulator without error.

pylotoncycle hard-codes its API host in __init__ and calls /api/me straight away,
so the only change made is the host: a subclass whose `base_url` always reads
the emulator's URL. Its token URL is a constructor argument.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from pylotoncycle.parser import ParseCyclingMetrics

from harvester.emulator.settings import DEFAULT_PASSWORD, DEFAULT_USERNAME
from tests.pyloton import pointed

WORKOUTS = 230  # more than two pages of 100, with a partial last page


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    """The emulator as a subprocess (pylotoncycle is synchronous)."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "harvester.emulator",
            "--port",
            "0",
            "--workouts",
            str(WORKOUTS),
            "--seed",
            "7",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    try:
        assert url.startswith("http://127.0.0.1:")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stdout.close()


def connect(base_url: str) -> Any:
    return pointed(base_url, DEFAULT_USERNAME, DEFAULT_PASSWORD)


@pytest.fixture(scope="module")
def conn(base_url: str) -> Iterator[Any]:
    client = connect(base_url)
    yield client
    client.s.close()


def test_me_is_read(conn: Any) -> None:
    """GetMe reads id, username and total_workouts."""
    assert conn.total_workouts == WORKOUTS and len(conn.userid) == 32


def test_whole_workout_list_is_unique_and_newest_first(conn: Any) -> None:
    """GetWorkoutList over everything returns every workout once, newest first."""
    workouts = conn.GetWorkoutList()
    ids = [w["id"] for w in workouts]
    assert len(ids) == len(set(ids)) == WORKOUTS
    created = [w["created_at"] for w in workouts]
    assert created == sorted(created, reverse=True)


def test_recent_workouts_have_aligned_graphs(conn: Any) -> None:
    """GetRecentWorkouts joins detail, graph and instructor; every metric aligns with seconds."""
    recent = conn.GetRecentWorkouts(40)
    assert len(recent) == 40
    for w in recent:
        graph = w["performance_graph"]
        seconds = graph["seconds_since_pedaling_start"]
        assert seconds and all(len(m["values"]) == len(seconds) for m in graph["metrics"])
        assert "instructor_name" in w
        assert ParseCyclingMetrics(graph)  # pylotoncycle's own parser accepts it
        assert conn.ParseMetricsData(graph)


def test_instructors_overview_rides_and_mappings(conn: Any) -> None:
    """Instructors, overview, ride details and metadata mappings all read cleanly."""
    instructors = conn.GetInstructors()
    assert instructors["total"] == len(instructors["data"]) == 60
    overview = conn.GetUserOverviewById()
    assert overview["workout_counts"]["total_workouts"] == WORKOUTS
    mappings = conn.GetRideMetadataMappings()
    assert len(mappings["instructors"]) == 60
    workouts = conn.GetWorkoutList(20)
    ride_id = next(
        conn.GetWorkoutById(w["id"])["ride"]["id"]
        for w in workouts
        if len(conn.GetWorkoutById(w["id"])["ride"]["id"]) == 32
        and conn.GetWorkoutById(w["id"])["ride"]["id"] != "0" * 32
    )
    details = conn.GetRideDetailsById(ride_id)
    assert details["ride"]["id"] == ride_id and details["playlist"]["songs"]
    profile = conn.GetUserByIdOrUsername(conn.userid)
    assert profile["id"] == conn.userid
