"""Whole backfills against a misbehaving emulator: faults, throttling, expiring tokens.

Sized to stay quick; ``scripts/soak`` runs the same scenarios at full size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import orjson

from harvester.emulator import Emulator
from harvester.run import run_harvest
from tests.conftest import MakeEmulator
from tests.harness import comparable, harvest_config, stats

FAST_BACKOFF = 0.01  # seconds: the retry envelope's base, so no test sleeps for long


async def clean_lake(make_emulator: MakeEmulator, workouts: int, tmp_path: Path) -> dict[str, Any]:
    """The lake a fault-free backfill of the same synthetic account produces."""
    emulator = await make_emulator(workouts=workouts)
    report = await run_harvest(harvest_config(emulator.url, tmp_path / "clean"), "backfill")
    assert report.exit_code == 0, report.manifest
    return comparable(tmp_path / "clean" / "lake")


async def test_flaky_backfill_equals_the_fault_free_lake(make_emulator: MakeEmulator,
                                                         tmp_path: Path) -> None:
    """Under the flaky profile a backfill exits 0 and its lake equals a fault-free run's."""
    expected = await clean_lake(make_emulator, 300, tmp_path)
    emulator = await make_emulator(workouts=300, faults="flaky")
    config = harvest_config(emulator.url, tmp_path / "flaky", harvest__concurrency=16)
    report = await run_harvest(config, "backfill", backoff_base=FAST_BACKOFF)
    assert report.exit_code == 0, report.manifest["failures"]
    assert sum(emulator.stats.faults.values()) >= 10 and report.stats.retries >= 10
    assert comparable(tmp_path / "flaky" / "lake") == expected


async def test_hostile_backfill_lists_failures_and_the_next_run_completes(
        make_emulator: MakeEmulator, tmp_path: Path) -> None:
    """Hostile with 2 attempts exits 3 listing its failures; the next run fetches them."""
    expected = await clean_lake(make_emulator, 200, tmp_path)
    emulator = await make_emulator(workouts=200, faults="hostile", slow_s=0.5)
    config = harvest_config(emulator.url, tmp_path / "hostile", api__max_attempts=2,
                            api__timeout_s=0.3, harvest__concurrency=16)
    first = await run_harvest(config, "backfill", backoff_base=FAST_BACKOFF)
    assert first.exit_code == 3
    failed = {(f.kind, f.id) for f in first.outcome.failures}
    assert failed and emulator.stats.faults["slow"] > 0
    assert {(f["kind"], f["id"]) for f in first.manifest["failures"]} == failed  # type: ignore[index,union-attr]
    harvester_dir = tmp_path / "hostile" / "lake" / "_harvester"
    listed = orjson.loads((harvester_dir / "failures" / f"{first.user_id}.json").read_bytes())
    assert {(f["kind"], f["id"]) for f in listed["failures"]} == failed
    manifests = [orjson.loads(p.read_bytes()) for p in (harvester_dir / "runs").glob("*.json")]
    assert [m["exit_code"] for m in manifests] == [3]

    emulator.update_settings(faults="none")
    emulator.reset_stats()
    second = await run_harvest(config, "backfill", backoff_base=FAST_BACKOFF)
    assert second.exit_code == 0, second.manifest["failures"]
    fetched = set(emulator.stats_snapshot()["by_id"].get("workout", {}))
    assert {i for kind, i in failed if kind == "workout"} <= fetched
    assert comparable(tmp_path / "hostile" / "lake") == expected


async def test_twice_the_servers_rate_completes_with_few_429s(make_emulator: MakeEmulator,
                                                            tmp_path: Path) -> None:
    """Configured at 2x the edge's limit, the shared limiter keeps 429s to at most 10%."""
    emulator = await make_emulator(workouts=150, rate_limit=80.0, rate_burst=8.0,
                                   rate_limit_style="cloudflare")
    config = harvest_config(emulator.url, tmp_path, harvest__requests_per_second=160.0,
                            api__max_attempts=10)
    report = await run_harvest(config, "backfill", backoff_base=FAST_BACKOFF)
    assert report.exit_code == 0, report.manifest["failures"]
    share = report.stats.throttled / report.stats.requests
    print(f"\nthrottled {report.stats.throttled}/{report.stats.requests} = {share:.1%}")
    assert report.stats.throttled > 0  # the limit was really hit
    assert emulator.stats.throttled == report.stats.throttled
    assert share <= 0.10
    assert len(comparable(tmp_path / "lake")["workouts"]) == 150


async def test_retry_after_styles_are_waited_out_end_to_end(make_emulator: MakeEmulator,
                                                           tmp_path: Path) -> None:
    """429s carrying Retry-After (seconds, then an HTTP date) are honoured; nothing is lost."""
    emulator = await make_emulator(workouts=12, rate_limit=40.0, rate_burst=4.0,
                                   rate_limit_style="retry-after")
    for style in ("retry-after", "http-date"):
        emulator.update_settings(rate_limit_style=style)
        out = tmp_path / style
        report = await run_harvest(
            harvest_config(emulator.url, out, harvest__requests_per_second=80.0),
            "backfill", backoff_base=FAST_BACKOFF)
        assert report.exit_code == 0, (style, report.manifest["failures"])
        assert report.stats.throttled > 0, style
        assert len(comparable(out / "lake")["workouts"]) == 12


async def jump_clock_at(emulator: Emulator, thresholds: list[int], jumped: list[int]) -> None:
    """Expire every token the server issued each time it has seen ``threshold`` requests."""
    for threshold in thresholds:
        while emulator.stats.requests < threshold:  # noqa: ASYNC110 (no event to wait on)
            await anyio.sleep(0.005)
        emulator.advance_clock(7200.0)  # tokens live 3600 s: all of them are now expired
        jumped.append(emulator.stats.requests)


async def test_each_token_expiry_costs_one_refresh_with_32_workers(make_emulator: MakeEmulator,
                                                                   tmp_path: Path) -> None:
    """32 workers, three server-side expiries mid-run: exactly three refreshes, no failures."""
    emulator = await make_emulator(workouts=300, token_ttl=3600.0, latency_ms=3.0)
    config = harvest_config(emulator.url, tmp_path, harvest__concurrency=32)
    jumped: list[int] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(jump_clock_at, emulator, [100, 300, 500], jumped)
        report = await run_harvest(config, "backfill")
        tg.cancel_scope.cancel()  # a jumper still waiting means the run ended early: see below
    assert len(jumped) == 3 and report.stats.requests > jumped[-1] + 32
    assert report.exit_code == 0 and not report.outcome.failures
    seen = await stats(emulator.url)
    assert seen["token_grants"] == {"password": 0, "refresh_token": 3, "authorization_code": 1}
    assert report.stats.reauths == 3
    assert seen["status"].get("401", 0) >= 3  # the expiries were real: requests were refused
    assert len(comparable(tmp_path / "lake")["workouts"]) == 300
