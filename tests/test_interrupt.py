"""Graceful stop on SIGINT/SIGTERM, and one run at a time on a lake."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from anyio.abc import ByteStream, SocketAttribute

from harvester.state import StateStore
from tests.harness import cli_env, lake_rows, run_cli_async, write_config
from tests.procs import start_cli, wait_until, whole_files

CONCURRENCY = 4
STOP_WITHIN_S = 5.0  # SPEC: exit 130 within a few seconds; the issue says 5


def detail_requests(emulator: Any) -> int:
    return int(emulator.stats_snapshot()["by_endpoint"].get("workout", 0))


def lock_holder(root: Path) -> dict[str, Any] | None:
    try:
        info = orjson.loads((root / "_harvester" / "locks" / "default.lock").read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return None
    return info if isinstance(info, dict) else None


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_signal_mid_backfill_commits_records_and_exits_130(
    make_emulator: Any, tmp_path: Path, signum: signal.Signals
) -> None:
    """A signal mid-run commits finished work, writes state and manifest, exits 130 within 5 s."""
    emulator = await make_emulator(workouts=300, latency_ms=10.0, jitter_ms=10.0)
    config = write_config(tmp_path, emulator.url, harvest={"concurrency": CONCURRENCY})
    env = cli_env(tmp_path)
    cli = await start_cli(["backfill", "--config", str(config), "--no-progress"], env,
                          tmp_path / "logs", "backfill")
    await wait_until(lambda: detail_requests(emulator) >= 40)
    sent = time.monotonic()
    cli.process.send_signal(signum)
    code = await cli.wait()
    stopped_s = time.monotonic() - sent
    assert code == 130, cli.stderr()
    assert stopped_s < STOP_WITHIN_S

    root = tmp_path / "lake"
    assert whole_files(root) == []
    workouts = {row["id"] for row in lake_rows(root, "workouts")}
    asked = detail_requests(emulator)
    assert 0 < len(workouts) < 300
    # Only work still in a worker's hands is dropped: mid-fetch, or blocked handing it over.
    assert asked - len(workouts) <= 2 * CONCURRENCY, (asked, len(workouts))
    store = StateStore(root)
    state = store.load(emulator.account.user_id)
    assert state.last_run is not None and state.last_run["outcome"] == "interrupted"
    assert state.watermark is None, "an interrupted backfill does not move the watermark"
    manifest = store.latest_manifest(emulator.account.user_id)
    assert manifest is not None and manifest["exit_code"] == 130
    # the daily datasets run beside the workers and may have landed too
    assert manifest["rows"]["workouts"] == manifest["rows"]["performance_graphs"] == len(workouts)
    assert "INTERRUPTED" in cli.stdout()


async def test_sigterm_during_authentication_exits_130_within_5_s(tmp_path: Path) -> None:
    """SIGTERM while the token request hangs unanswered still stops cleanly with exit 130."""
    accepted = anyio.Event()

    async def never_answer(stream: ByteStream) -> None:
        accepted.set()
        async with stream:
            await anyio.sleep_forever()

    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener, \
            anyio.create_task_group() as server:
        server.start_soon(listener.serve, never_answer)
        url = f"http://127.0.0.1:{listener.extra(SocketAttribute.local_port)}"
        config = write_config(tmp_path, url, api={"timeout_s": 30.0})
        cli = await start_cli(["refresh", "--config", str(config), "--no-progress"],
                              cli_env(tmp_path), tmp_path / "logs", "refresh")
        with anyio.fail_after(30):
            await accepted.wait()
        sent = time.monotonic()
        cli.process.send_signal(signal.SIGTERM)
        code = await cli.wait()
        stopped_s = time.monotonic() - sent
        server.cancel_scope.cancel()
    assert code == 130, cli.stderr()
    assert stopped_s < STOP_WITHIN_S
    assert "INTERRUPTED" in cli.stdout()
    assert "Traceback" not in cli.stderr()


async def test_second_run_is_refused_naming_the_first_and_a_killed_holder_never_blocks(
    make_emulator: Any, tmp_path: Path
) -> None:
    """While a run holds the lake a second exits 75 (SPEC: try later) naming its pid; after SIGKILL the next proceeds."""
    emulator = await make_emulator(workouts=200, latency_ms=20.0)
    config = write_config(tmp_path, emulator.url, harvest={"concurrency": 2})
    env = cli_env(tmp_path)
    root = tmp_path / "lake"
    first = await start_cli(["backfill", "--config", str(config), "--no-progress"], env,
                            tmp_path / "logs", "first")
    await wait_until(lambda: detail_requests(emulator) >= 1)
    holder = lock_holder(root)
    assert holder is not None and holder["pid"] == first.pid

    second = await run_cli_async(["refresh", "--config", str(config), "--no-progress"], env)
    assert second.returncode == 75, second.stderr
    lines = [line for line in second.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, second.stderr
    assert "in use by another run" in lines[0] and f"pid {first.pid}" in lines[0]
    assert "backfill" in lines[0]

    first.process.send_signal(signal.SIGKILL)
    assert await first.wait() == -signal.SIGKILL
    assert lock_holder(root) == holder, "the dead holder's details stay in the file"
    emulator.update_settings(latency_ms=0.0)
    third = await run_cli_async(["backfill", "--config", str(config), "--no-progress"], env)
    assert third.returncode == 0, third.stderr
    assert lock_holder(root) is None, "a finished run leaves no holder named"
