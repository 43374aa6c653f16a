"""scripts/bench --quick still runs end to end: a table and JSON with every scenario's figure.

No timing is asserted: benchmarks are scripts, and their figures live in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = {
    "rate": "rate-bound",
    "rate_2x": "rate-bound, 2 x the limit",
    "rate_5x": "rate-bound, 5 x the limit",
    "latency": "latency-bound",
    "versus": "against pylotoncycle 0.9.5",
    "cpu": "CPU per record",
    "memory": "memory",
    "refresh": "refresh",
    "tables": "typed tables",
    "s3": "S3 vs local disk",
    "inflight": "peak in-flight requests",
    "lake_bytes": "bytes written / lake size",
    "cpu_scale": "CPU per record, large vs small",
    "accounts_zero": "many accounts, zero latency",
}


# A hang guard, not a timing: about 75 s at load average 3 on the 2-core machine.
@pytest.mark.timeout(200)
def test_quick_bench_prints_a_table_and_writes_every_figure(tmp_path: Path) -> None:
    """The quick bench exits 0, prints one table row per scenario and records each figure as JSON."""
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [str(ROOT / "scripts" / "bench"), "--quick", "--json", str(out)],
        capture_output=True, text=True, timeout=190, cwd=ROOT, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:] + done.stdout[-2000:]
    assert "| scenario | setup | figure | measured | target | holds |" in done.stdout
    for title in SCENARIOS.values():
        assert any(line.startswith(f"| {title} |") for line in done.stdout.splitlines()), title
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["quick"] is True and report["machine"]["cores"] >= 1
    for key in SCENARIOS:
        scenario = report["scenarios"][key]
        assert "error" not in scenario, scenario
        assert scenario["value"] is not None and isinstance(scenario["holds"], bool), key
    assert report["scenarios"]["refresh"]["nothing_new"]["requests"] >= 1
    assert "peers" not in report["scenarios"]  # the dlt peer runs only on request (--peers)
    assert report["scenarios"]["rate_5x"]["runs"][0]["requests"] >= 30
    assert report["scenarios"]["cpu"]["bare_loop"]["requests"] == (
        report["scenarios"]["cpu"]["harvester"]["requests"]
    )
    lake = report["scenarios"]["lake_bytes"]["io"]
    assert lake["written_bytes"] >= lake["lake_bytes"] > 0  # every byte of the lake was written once
    accounts = report["scenarios"]["accounts_zero"]
    assert [pair["ratio"] for pair in accounts["pairs"]] == accounts["ratios"] and accounts["pairs"]
    # Each pair has its floor with the JSON work inside the loop, as has each CPU pair.
    assert len(accounts["row_floor_ratios"]) == len(accounts["pairs"])
    cpu = report["scenarios"]["cpu"]
    assert len(cpu["row_floor_ratios"]) == len(cpu["ratios"]) == len(cpu["bare_loop_with_rows"]["runs"])
    # ... and the floor writing the lake's files as it goes, from a thread and from the loop
    # (the bench checks it wrote as many files as the harvester's lake has per-day rows in).
    assert len(cpu["lake_floor_ratios"]) == len(cpu["ratios"]) == len(cpu["bare_loop_writing_lake"]["thread"])
    assert len(cpu["bare_loop_writing_lake"]["inline"]) == len(cpu["ratios"])
    assert min(cpu["bare_loop_writing_lake"]["files"]) > 0
    for pair in accounts["pairs"]:
        # Each class once, by one of the accounts: the bare loop's URLs are the same.
        assert pair["bare_loop"]["by_endpoint"] == pair["harvester"]["by_endpoint"]
        assert pair["harvester"]["by_endpoint"]["ride_details"] == accounts["distinct_classes"]
        assert pair["harvester"]["by_endpoint"]["token"] == report["sizes"]["accounts"]  # one grant each
