"""Runs that nobody watches: paths, manifests, status, quiet and JSON output, exit codes, secrets."""

from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

from harvester.config import load_config
from harvester.errors import ConfigError
from harvester.lake import Lake
from harvester.run import run_harvest
from harvester.state import AccountState, FailedItem, StateStore
from harvester.storage import LocalStorage
from harvester.storage.lease import run_lock
from tests.harness import cli_env, harvest_config, run_cli, run_cli_async, write_config
from tests.procs import start_cli, wait_until
from tests.test_bad_input import outage
from tests.test_cli import assert_one_line_error

TS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
SECRET = "hunter2-not-a-real-password"


def manifests(root: Path) -> list[dict[str, Any]]:
    return [orjson.loads(p.read_bytes()) for p in sorted((root / "_harvester" / "runs").glob("*.json"))]


# -- 1. paths in a config file -------------------------------------------------


def test_relative_paths_in_a_config_file_start_at_its_folder(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """output.root and auth.token_cache (given or default) resolve against the file's folder;
    ~ expands; --out stays relative to the current directory."""
    folder = tmp_path / "etc"
    folder.mkdir()
    path = folder / "c.toml"
    path.write_text('[output]\nroot = "lake"\n[auth]\ntoken_cache = "cache/t.json"\n', encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    config = load_config(path, env={})
    assert config.output.root_path == folder / "lake"
    assert config.auth.token_cache_path == folder / "cache" / "t.json"
    (folder / "d.toml").write_text("[harvest]\nconcurrency = 2\n", encoding="utf-8")
    assert load_config(folder / "d.toml", env={}).output.root_path == folder / "peloton-lake"
    (folder / "e.toml").write_text('[output]\nroot = "~/lake"\n', encoding="utf-8")
    assert load_config(folder / "e.toml", env={}).output.root_path == Path.home() / "lake"
    out = load_config(path, env={}, overrides={"output.root": "here"})
    assert out.output.root_path == Path("here")


async def test_cron_from_another_directory_refreshes_the_same_lake(make_emulator: Any,
                                                                   tmp_path: Path) -> None:
    """A config with a relative root, run from elsewhere (as cron does), finds the lake beside it."""
    emulator = await make_emulator(workouts=12)
    home = tmp_path / "home"
    home.mkdir()
    config = write_config(home, emulator.url, output={"root": "lake"})
    env = cli_env(tmp_path)
    first = await run_cli_async(["backfill", "--config", str(config), "--no-progress"], env)
    assert first.returncode == 0, first.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = await anyio.run_process([sys.executable, "-m", "harvester", "refresh", "--config",
                                    str(config), "--no-progress"], env=env, cwd=elsewhere, check=False)
    assert done.returncode == 0, done.stderr
    assert "0 new workouts" in done.stdout.decode()
    assert not list(elsewhere.iterdir()), "nothing is created in the working directory"


async def test_refresh_on_a_lake_with_data_but_no_state_says_run_backfill(make_emulator: Any,
                                                                          tmp_path: Path) -> None:
    """refresh refuses (exit 2, one line naming backfill) instead of silently re-harvesting."""
    emulator = await make_emulator(workouts=10)
    config = write_config(tmp_path, emulator.url)
    env = cli_env(tmp_path)
    assert (await run_cli_async(["backfill", "--config", str(config)], env)).returncode == 0
    state = tmp_path / "lake" / "_harvester" / "state" / f"{emulator.account.user_id}.json"
    state.unlink()
    emulator.reset_stats()
    done = await run_cli_async(["refresh", "--config", str(config)], env)
    assert done.returncode == 2, done.stderr
    assert_one_line_error(done.stderr, "no state", "run `backfill`")
    assert emulator.stats_snapshot()["by_endpoint"].get("workouts", 0) == 0
    assert (await run_cli_async(["backfill", "--config", str(config)], env)).returncode == 0
    assert (await run_cli_async(["refresh", "--config", str(config)], env)).returncode == 0


# -- 2. manifests and status ---------------------------------------------------


async def test_failed_runs_leave_manifests_and_status_shows_the_last_attempt(
        make_emulator: Any, tmp_path: Path) -> None:
    """A wrong password leaves a manifest; status shows the last run and that failed attempt,
    in text and in --json."""
    emulator = await make_emulator(workouts=8)
    config = write_config(tmp_path, emulator.url)
    root = tmp_path / "lake"
    ok = await run_cli_async(["backfill", "--config", str(config)], cli_env(tmp_path))
    assert ok.returncode == 0, ok.stderr
    (tmp_path / "tokens.json").unlink()  # so the next run has to log in
    bad = await run_cli_async(["refresh", "--config", str(config)],
                              cli_env(tmp_path, PELOTON_PASSWORD=SECRET))
    assert bad.returncode == 4, bad.stderr
    runs = manifests(root)
    assert [m["outcome"] for m in runs] == ["success", "auth failed"]
    assert runs[1]["exit_code"] == 4 and runs[1]["command"] == "refresh" and runs[1]["error"]
    assert SECRET not in orjson.dumps(runs).decode()

    status = await run_cli_async(["status", "--config", str(config)], cli_env(tmp_path))
    assert status.returncode == 0, status.stderr
    assert "last run: backfill finished" in status.stdout and "success (exit 0)" in status.stdout
    assert re.search(r"last attempt: refresh started \S+, auth failed \(exit 4\): ", status.stdout)
    doc = orjson.loads((await run_cli_async(["status", "--config", str(config), "--json"],
                                            cli_env(tmp_path))).stdout)
    [account] = doc["accounts"]
    assert account["user_id"] == emulator.account.user_id
    assert account["last_run"]["outcome"] == "success"
    assert account["last_attempt"]["exit_code"] == 4 and doc["running"] == []
    assert account["rows"]["workouts"] == 8 and account["backfill_complete"] is True


async def test_a_dead_host_before_any_account_is_known_still_leaves_a_manifest(tmp_path: Path) -> None:
    """The first run ever, against a host that is down: exit 75, and status names the attempt."""
    async with outage() as url:
        config = write_config(tmp_path, url, api={"max_attempts": 1})
        done = await run_cli_async(["backfill", "--config", str(config)], cli_env(tmp_path))
    assert done.returncode == 75, done.stderr
    [manifest] = manifests(tmp_path / "lake")
    assert manifest["user_id"] is None and manifest["outcome"] == "temporary failure"
    status = await run_cli_async(["status", "--config", str(config)], cli_env(tmp_path))
    assert status.returncode == 0, status.stderr
    assert "no account harvested yet" in status.stdout
    assert "last attempt: backfill started" in status.stdout and "(exit 75)" in status.stdout


def test_status_of_a_missing_lake_exits_2(tmp_path: Path) -> None:
    """status on a root that does not exist is an error to fix, not 'no harvest yet'."""
    done = run_cli(["status", "--out", str(tmp_path / "nowhere")], cli_env(tmp_path))
    assert done.returncode == 2
    assert_one_line_error(done.stderr, "no lake at", "nowhere")


async def test_status_shows_the_running_harvest_and_what_to_retry(tmp_path: Path) -> None:
    """status names the lock's live holder, and never says 'backfill complete: yes' beside
    failures; in-progress workouts and classes without details are listed."""
    root = tmp_path / "lake"
    user = "a" * 32
    store = StateStore(root)
    store.save(AccountState(
        user_id=user, watermark=1_700_000_000, backfill_complete=True,
        failures=[FailedItem("workout", "b" * 32, "/api/workout/x", "HTTP 503", 6)] * 3,
        in_progress=["c" * 32], missing_rides=["d" * 32]))
    env = cli_env(tmp_path)
    async with run_lock(LocalStorage(root), "default", "backfill"):
        done = await run_cli_async(["status", "--out", str(root)], env)
        doc = orjson.loads((await run_cli_async(["status", "--out", str(root), "--json"], env)).stdout)
    assert done.returncode == 0, done.stderr
    assert f"running now: backfill of account default, pid {os.getpid()}" in done.stdout
    assert "backfill complete: no, 3 items still to retry" in done.stdout
    assert "backfill complete: yes" not in done.stdout
    assert "failures to retry: 3 (workout " + "b" * 32 + ": HTTP 503" in done.stdout
    assert "in progress at the source (fetched once finished): 1 (" + "c" * 32 in done.stdout
    assert "classes without details" in done.stdout and "d" * 32 in done.stdout
    assert [holder["pid"] for holder in doc["running"]] == [os.getpid()]
    assert doc["accounts"][0]["backfill_complete"] is False
    after = await run_cli_async(["status", "--out", str(root)], env)
    assert "running now" not in after.stdout


async def test_manifests_are_pruned_to_keep_runs(make_emulator: Any, tmp_path: Path) -> None:
    """With output.keep_runs = 3, five runs leave the three newest manifests."""
    emulator = await make_emulator(workouts=5)
    config = harvest_config(emulator.url, tmp_path, output__keep_runs=3)
    ids = [(await run_harvest(config, "refresh")).run_id for _ in range(5)]
    kept = manifests(tmp_path / "lake")
    assert [m["run_id"] for m in kept] == ids[2:]


# -- 3. quiet and JSON lines ---------------------------------------------------


async def test_quiet_prints_nothing_when_all_went_well(make_emulator: Any, tmp_path: Path) -> None:
    """--quiet: empty stdout and stderr on success; an error still reaches stderr."""
    emulator = await make_emulator(workouts=6)
    config = write_config(tmp_path, emulator.url)
    done = await run_cli_async(["backfill", "--config", str(config), "--quiet"], cli_env(tmp_path))
    assert done.returncode == 0 and done.stdout == "" and done.stderr == ""
    (tmp_path / "tokens.json").unlink()
    bad = await run_cli_async(["refresh", "--config", str(config), "--quiet"],
                              cli_env(tmp_path, PELOTON_PASSWORD=SECRET))
    assert bad.returncode == 4 and bad.stdout == ""
    assert_one_line_error(bad.stderr, "PELOTON_PASSWORD")


def _json_lines(text: str) -> list[dict[str, Any]]:
    lines = [orjson.loads(line) for line in text.splitlines() if line.strip()]
    for line in lines:
        assert TS.match(line["ts"]), line
        assert {"level", "message"} <= line.keys()
    return lines


async def test_json_log_format_makes_every_line_json(make_emulator: Any, tmp_path: Path) -> None:
    """--log-format json: logs, the summary (run id, manifest path, new vs re-checked) and
    errors are each one JSON object per line, ts in UTC with milliseconds."""
    emulator = await make_emulator(workouts=9)
    config = write_config(tmp_path, emulator.url)
    args = ["--config", str(config), "--log-format", "json", "-v"]
    done = await run_cli_async(["backfill", *args], cli_env(tmp_path))
    assert done.returncode == 0, done.stderr
    assert len(_json_lines(done.stderr)) >= 1  # -v: at least the login line, as JSON
    [summary] = _json_lines(done.stdout)
    assert summary["event"] == "summary" and summary["workouts_new"] == 9
    assert await anyio.Path(summary["manifest"]).is_file()
    assert summary["run_id"] in summary["manifest"]
    again = await run_cli_async(["refresh", *args], cli_env(tmp_path))
    [summary] = _json_lines(again.stdout)
    assert summary["workouts_new"] == 0 and summary["workouts_rechecked"] >= 1
    assert summary["workouts_changed"] == 0
    assert "0 new workouts" in summary["message"] and "re-checked (look-back)" in summary["message"]
    (tmp_path / "tokens.json").unlink()
    bad = await run_cli_async(["refresh", *args], cli_env(tmp_path, PELOTON_PASSWORD=SECRET))
    assert bad.returncode == 4 and bad.stdout == ""
    errors = [line for line in _json_lines(bad.stderr) if line["level"] == "error"]
    assert errors[-1]["exit_code"] == 4 and "PELOTON_PASSWORD" in errors[-1]["message"]
    usage = run_cli(["refresh", "--log-format", "json", "--bogus"], cli_env(tmp_path))
    assert usage.returncode == 2 and _json_lines(usage.stderr)[0]["level"] == "error"


def test_lake_tally_tells_changed_rows_from_refetched_ones(tmp_path: Path) -> None:
    """A re-fetched row that differs only in _harvested_at is not 'changed'; a new value is."""
    user = "e" * 32
    row = {"id": "f" * 32, "created_at": 1_700_000_000, "title": "a", "_harvested_at": "1"}
    Lake(tmp_path).commit(user, {"workouts": [row]})
    lake = Lake(tmp_path)
    lake.commit(user, {"workouts": [{**row, "_harvested_at": "2"}]})
    assert lake.tally.get("workouts", {"new": 0, "changed": 0}) == {"new": 0, "changed": 0}
    lake.commit(user, {"workouts": [{**row, "title": "b"}, {**row, "id": "0" * 31 + "1"}]})
    assert lake.tally["workouts"] == {"new": 1, "changed": 1}


# -- 4. exit codes -------------------------------------------------------------


@pytest.mark.parametrize("status", [503, 429])
async def test_peloton_down_or_throttling_at_login_exits_75(tmp_path: Path, status: int) -> None:
    """A 5xx or a 429 from the login host is temporary: exit 75, one line, never 1."""
    async with outage(status) as url:
        config = write_config(tmp_path, url, api={"max_attempts": 1})
        done = await run_cli_async(["refresh", "--config", str(config)], cli_env(tmp_path))
    assert done.returncode == 75, done.stderr
    assert_one_line_error(done.stderr, f"HTTP {status}")


# -- 5. secrets ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "variable"),
    [(["--password", SECRET], "PELOTON_PASSWORD"),
     ([f"--password={SECRET}"], "PELOTON_PASSWORD"),
     (["--access-token", SECRET], "PELOTON_ACCESS_TOKEN"),
     (["--refresh_token", SECRET], "PELOTON_REFRESH_TOKEN"),
     (["--username", SECRET], "PELOTON_USERNAME")],
    ids=["password", "password=", "access-token", "refresh_token", "username"],
)
def test_a_secret_on_the_command_line_is_refused_without_echo(tmp_path: Path, args: list[str],
                                                              variable: str) -> None:
    """--password X: exit 2 with 'secrets come from the environment: set VAR', X never shown."""
    done = run_cli(["backfill", *args], cli_env(tmp_path))
    assert done.returncode == 2
    assert_one_line_error(done.stderr, "secrets come from the environment", f"set {variable}")
    assert SECRET not in done.stderr + done.stdout


@pytest.mark.parametrize("args", [["--pasword", SECRET], ["--concurrency", SECRET], [SECRET],
                                  ["--log-format", SECRET]])
def test_argparse_errors_never_echo_typed_values(tmp_path: Path, args: list[str]) -> None:
    """Unknown options, stray arguments and bad values are named, their values not repeated."""
    done = run_cli(["refresh", *args], cli_env(tmp_path))
    assert done.returncode == 2
    assert_one_line_error(done.stderr, "--help")
    assert SECRET not in done.stderr + done.stdout


@pytest.mark.parametrize(("key", "variable"), [("password", "PELOTON_PASSWORD"),
                                               ("username", "PELOTON_USERNAME"),
                                               ("access_token", "PELOTON_ACCESS_TOKEN")])
def test_a_secret_in_the_toml_gets_the_environment_hint(tmp_path: Path, key: str, variable: str) -> None:
    """[auth] password = … is refused naming the variable to set, the value never shown."""
    path = tmp_path / "c.toml"
    path.write_text(f'[auth]\n{key} = "{SECRET}"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert f"auth.{key}" in str(info.value) and f"set {variable}" in str(info.value)
    assert "secrets come from the environment" in str(info.value) and SECRET not in str(info.value)


# -- 9. a second Ctrl-C --------------------------------------------------------


async def test_a_second_ctrl_c_still_leaves_state_and_manifest(make_emulator: Any, tmp_path: Path) -> None:
    """More SIGINTs while the run is stopping: exit 130, and the state and the manifest both
    say interrupted."""
    emulator = await make_emulator(workouts=300, latency_ms=10.0, jitter_ms=10.0)
    config = write_config(tmp_path, emulator.url, harvest={"concurrency": 4})
    cli = await start_cli(["backfill", "--config", str(config), "--no-progress"], cli_env(tmp_path),
                          tmp_path / "logs", "backfill")
    await wait_until(lambda: int(emulator.stats_snapshot()["by_endpoint"].get("workout", 0)) >= 40)
    cli.process.send_signal(signal.SIGINT)
    await wait_until(lambda: "received SIGINT" in cli.stderr())
    for _ in range(200):  # more Ctrl-Cs, as an impatient user types them, until it has exited
        try:
            os.kill(cli.pid, signal.SIGINT)
        except ProcessLookupError:
            break
        await anyio.sleep(0.001)
        if cli.process.returncode is not None:
            break
    assert await cli.wait() == 130, cli.stderr()
    root = tmp_path / "lake"
    state = StateStore(root).load(emulator.account.user_id)
    assert state.last_run is not None and state.last_run["outcome"] == "interrupted"
    [manifest] = manifests(root)
    assert manifest["outcome"] == "interrupted" and manifest["exit_code"] == 130
    assert manifest["run_id"] == state.last_run["run_id"]
    assert "Traceback" not in cli.stderr()


async def test_repeated_ctrl_c_in_a_multi_account_run_still_records_every_account(
        make_emulator: Any, tmp_path: Path) -> None:
    """[[accounts]]: more SIGINTs while the runs stop still leave each account's state and
    manifest saying interrupted, exit 130."""
    from tests.test_accounts import members_config

    emulator = await make_emulator(workouts=150, accounts=2, latency_ms=10.0)
    path, env = members_config(tmp_path, emulator.url, 2, concurrency=2)
    cli = await start_cli(["backfill", "--config", str(path), "--no-progress"], env,
                          tmp_path / "logs", "run")
    await wait_until(lambda: int(emulator.stats_snapshot()["by_endpoint"].get("workout", 0)) >= 20)
    cli.process.send_signal(signal.SIGINT)
    await wait_until(lambda: "received SIGINT" in cli.stderr())
    for _ in range(200):
        try:
            os.kill(cli.pid, signal.SIGINT)
        except ProcessLookupError:
            break
        await anyio.sleep(0.001)
        if cli.process.returncode is not None:
            break
    assert await cli.wait() == 130, cli.stderr()
    root = tmp_path / "lake"
    store = StateStore(root)
    assert len(store.accounts()) == 2
    for user_id in store.accounts():
        state = store.load(user_id)
        assert state.last_run is not None and state.last_run["outcome"] == "interrupted"
        manifest = store.latest_manifest(user_id)
        assert manifest is not None and manifest["outcome"] == "interrupted"
    assert "Traceback" not in cli.stderr()
