"""The CLI: one clear line and the documented exit code for each user mistake."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any, NoReturn

import pytest

import harvester.__main__
import harvester.cli
from tests.harness import cli_env, run_cli, run_cli_async, write_config


def assert_one_line_error(stderr: str, *fragments: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_unknown_config_key_exits_2(tmp_path: Path) -> None:
    """An unknown key is named with a suggestion, exit 2, no traceback."""
    path = tmp_path / "c.toml"
    path.write_text("[harvest]\nrequests_per_secnd = 3\n", encoding="utf-8")
    done = run_cli(["backfill", "--config", str(path)], cli_env(tmp_path))
    assert done.returncode == 2
    assert_one_line_error(done.stderr, "harvest.requests_per_secnd", "requests_per_second")


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    """--config naming a missing file is exit 2 with one line."""
    done = run_cli(["refresh", "--config", str(tmp_path / "absent.toml")], cli_env(tmp_path))
    assert done.returncode == 2
    assert_one_line_error(done.stderr, "not found")


def test_missing_credentials_exit_2(tmp_path: Path) -> None:
    """Method password without PELOTON_PASSWORD: exit 2 naming the variable."""
    path = write_config(tmp_path, "http://127.0.0.1:9", auth={"method": "password"})
    env = cli_env(tmp_path)
    del env["PELOTON_PASSWORD"]
    done = run_cli(["backfill", "--config", str(path)], env)
    assert done.returncode == 2
    assert_one_line_error(done.stderr, "PELOTON_PASSWORD")


def test_login_method_without_stored_sign_in_or_password_exits_4(tmp_path: Path) -> None:
    """Method login, nothing stored and no password: exit 4 telling to run `login`."""
    path = write_config(tmp_path, "http://127.0.0.1:9")
    env = cli_env(tmp_path)
    del env["PELOTON_PASSWORD"]
    done = run_cli(["backfill", "--config", str(path)], env)
    assert done.returncode == 4
    assert_one_line_error(done.stderr, "run `peloton-harvester login`")


def test_version_and_help() -> None:
    """--version prints the version; --help lists every command."""
    done = run_cli(["--help"], {})
    assert done.returncode == 0
    for command in ("backfill", "refresh", "demo", "emulator", "plan", "status"):
        assert command in done.stdout


async def test_wrong_password_exits_4(make_emulator: Any, tmp_path: Path) -> None:
    """A rejected password gives one line and exit 4."""
    emulator = await make_emulator(workouts=5)
    path = write_config(tmp_path, emulator.url)
    done = await run_cli_async(
        ["backfill", "--config", str(path), "--no-progress"],
        cli_env(tmp_path, PELOTON_PASSWORD="not-the-password"),
    )
    assert done.returncode == 4, done.stderr
    assert_one_line_error(done.stderr, "PELOTON_PASSWORD")
    assert "not-the-password" not in done.stderr + done.stdout


async def test_legacy_login_gone_exits_4_and_says_switch(make_emulator: Any, tmp_path: Path) -> None:
    """The legacy /auth/login 403 tells the user to switch auth.method."""
    emulator = await make_emulator(workouts=5, legacy_login="gone")
    path = write_config(tmp_path, emulator.url, auth={"method": "session"})
    done = await run_cli_async(["backfill", "--config", str(path)], cli_env(tmp_path))
    assert done.returncode == 4, done.stderr
    assert_one_line_error(done.stderr, 'auth.method = "login"', '"token"')


async def test_backfill_then_status_over_the_cli(make_emulator: Any, tmp_path: Path) -> None:
    """backfill exits 0 with a summary line; status shows the account's rows."""
    emulator = await make_emulator(workouts=25)
    path = write_config(tmp_path, emulator.url)
    done = await run_cli_async(["backfill", "--config", str(path)], cli_env(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "25 new workouts" in done.stdout
    status = await run_cli_async(["status", "--config", str(path)], cli_env(tmp_path))
    assert status.returncode == 0, status.stderr
    assert "workouts 25" in status.stdout
    assert emulator.account.user_id in status.stdout


async def test_plan_counts_without_writing(make_emulator: Any, tmp_path: Path) -> None:
    """plan lists only and writes nothing to the lake."""
    emulator = await make_emulator(workouts=30)
    path = write_config(tmp_path, emulator.url)
    done = await run_cli_async(["plan", "--config", str(path)], cli_env(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "30 workouts listed" in done.stdout
    assert not (tmp_path / "lake" / "workouts").exists()


def test_demo_backfills_a_small_account(tmp_path: Path) -> None:
    """demo signs in through the emulator's Universal Login, backfills, builds the tables and prints a recipe's answer."""
    done = run_cli(
        ["demo", "--workouts", "40", "--out", str(tmp_path / "demo"), "--no-progress", "-v"],
        cli_env(tmp_path), timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "signed in with Universal Login" in done.stderr
    assert "read_json(" in done.stdout
    assert list((tmp_path / "demo" / "workouts").glob("date=*/*.jsonl"))
    assert "Workouts and output per month" in done.stdout and "month    workouts  output_kj" in done.stdout
    assert list((tmp_path / "demo" / "tables" / "workouts").glob("month=*/part-0.parquet"))



def test_process_entry_raises_the_young_collection_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    """`python -m harvester` collects young objects every 50,000 allocations, not 700."""
    seen: list[tuple[int, int, int]] = []

    def fake_entry() -> NoReturn:
        seen.append(gc.get_threshold())
        raise SystemExit(0)

    before = gc.get_threshold()
    monkeypatch.setattr(harvester.cli, "entry", fake_entry)
    try:
        with pytest.raises(SystemExit):
            harvester.__main__.run()
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()
    assert seen == [(50_000, before[1], before[2])]
