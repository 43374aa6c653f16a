"""User-caused local errors are one line and exit 2, never an internal error (exit 1).

Each is made real: a read-only or full filesystem mounted for the test, a disk the
kernel turns read-only mid-run, a folder the process may not read, a port a
socket really holds. See tests/mounts.py for what skips where mounting is not
possible.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

from harvester.cli import main
from harvester.config import load_config
from harvester.errors import ConfigError
from tests.harness import cli_env, run_cli, run_cli_async, write_config
from tests.mounts import failing_ext4, fill, tmpfs, without_root_file_powers
from tests.procs import start_cli, wait_until

CLOSED_URL = "http://127.0.0.1:9"  # discard port: nothing answers, no request is made anyway


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def config_for(tmp_path: Path, url: str, root: Path, **sections: dict[str, object]) -> Path:
    output = {"root": str(root), **sections.pop("output", {})}
    return write_config(tmp_path, url, output=output, **sections)


# -- disks ------------------------------------------------------------------------


def test_a_read_only_filesystem_is_exit_2_naming_the_root(tmp_path: Path) -> None:
    """A lake root on a read-only mount: one line naming it, exit 2."""
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as mount:
        config = config_for(tmp_path, CLOSED_URL, mount / "lake")
        done = run_cli(["backfill", "--config", str(config)], cli_env(tmp_path))
    line = one_line(done.stderr)
    assert done.returncode == 2, done.stderr
    assert f"{mount / 'lake'}" in line and "Read-only file system" in line


async def test_a_full_disk_while_committing_is_exit_2(make_emulator: Any, tmp_path: Path) -> None:
    """The lake's filesystem fills up mid-backfill: one line saying so, exit 2."""
    emulator = await make_emulator()
    with tmpfs(tmp_path / "small", "1200k") as mount:  # the whole lake needs 2.2 MB
        config = config_for(tmp_path, emulator.url, mount / "lake")
        done = await run_cli_async(["backfill", "--config", str(config), "--no-progress"],
                                   cli_env(tmp_path))
        committed = list((mount / "lake" / "workouts").glob("date=*/*.jsonl"))
    assert committed, "the disk filled up mid-run, after the first commits"
    line = one_line(done.stderr)
    assert done.returncode == 2, done.stderr
    assert "No space left on device" in line and str(mount / "lake") in line


async def test_a_disk_full_before_the_run_is_exit_2(make_emulator: Any, tmp_path: Path) -> None:
    """A filesystem already full to the last byte: the first write fails cleanly, exit 2."""
    emulator = await make_emulator()
    with tmpfs(tmp_path / "full", "256k") as mount:
        (mount / "lake").mkdir()
        fill(mount)
        config = config_for(tmp_path, emulator.url, mount / "lake")
        done = await run_cli_async(["backfill", "--config", str(config), "--no-progress"],
                                   cli_env(tmp_path))
    line = one_line(done.stderr)
    assert done.returncode == 2, done.stderr
    assert "No space left on device" in line


async def test_a_disk_turning_read_only_mid_run_is_exit_2(
    make_emulator: Any, tmp_path: Path
) -> None:
    """The kernel remounts the lake's disk read-only mid-backfill: exit 2 naming it, not 1.

    Releasing the lock then fails too (clearing the holder's details); that must
    not hide the error that ended the run.
    """
    emulator = await make_emulator(workouts=400, latency_ms=5.0)
    with failing_ext4(tmp_path / "disk") as fail:
        root = tmp_path / "disk" / "lake"
        config = config_for(tmp_path, emulator.url, root, harvest={"concurrency": 2})
        cli = await start_cli(["backfill", "--config", str(config), "--no-progress"],
                              cli_env(tmp_path), tmp_path / "logs", "backfill")
        await wait_until(lambda: any((root / "workouts").glob("date=*/*.jsonl")))
        fail()
        code = await cli.wait()
    line = one_line(cli.stderr())
    assert code == 2, cli.stderr()
    assert "Read-only file system" in line and str(root) in line


def test_an_unreadable_lake_folder_is_exit_2_naming_it(tmp_path: Path) -> None:
    """A partition folder the harvester may not read: one line naming the folder, exit 2."""
    root = tmp_path / "lake"
    partition = root / "workouts" / "date=2024-01-02"
    partition.mkdir(parents=True)
    (partition / f"{'a' * 32}.jsonl").write_bytes(b'{"id": "x"}\n')
    partition.chmod(0)
    config = config_for(tmp_path, CLOSED_URL, root)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "harvester", "backfill", "--config", str(config)],
            env=cli_env(tmp_path), capture_output=True, text=True, timeout=60, check=False,
            preexec_fn=without_root_file_powers if os.geteuid() == 0 else None,
        )
    finally:
        partition.chmod(0o755)
    line = one_line(done.stderr)
    assert done.returncode == 2, done.stderr
    assert f"cannot read lake directory {partition}: Permission denied" in line


# -- tokens ---------------------------------------------------------------------------


@pytest.mark.parametrize(("variable", "bad"), [
    ("PELOTON_ACCESS_TOKEN", "tok\x01en"),
    ("PELOTON_REFRESH_TOKEN", "token\n"),
    ("PELOTON_ACCESS_TOKEN", "tok en"),
])
def test_an_unsafe_token_in_the_environment_is_exit_2_naming_the_variable(
    tmp_path: Path, variable: str, bad: str
) -> None:
    """A control character, line break or space in a pasted token: exit 2 naming the variable."""
    secret = "eyJhbGciOi-secret-part"
    config = config_for(tmp_path, CLOSED_URL, tmp_path / "lake", auth={"method": "token"})
    env = cli_env(tmp_path, **{variable: secret + bad})
    done = run_cli(["backfill", "--config", str(config)], env)
    line = one_line(done.stderr)
    assert done.returncode == 2, done.stderr
    assert f"{variable} holds a character no token has" in line
    assert secret not in done.stderr


async def test_an_unsafe_token_in_the_cache_is_exit_2_naming_the_file(
    make_emulator: Any, tmp_path: Path
) -> None:
    """A token cache whose access token holds a control character: exit 2 naming the file."""
    emulator = await make_emulator()
    config = config_for(tmp_path, emulator.url, tmp_path / "lake")
    first = await run_cli_async(["backfill", "--config", str(config)], cli_env(tmp_path))
    assert first.returncode == 0, first.stderr
    cache = tmp_path / "tokens.json"
    record = orjson.loads(cache.read_bytes())
    record["access_token"] = record["access_token"][:20] + "\x07" + record["access_token"][20:]
    cache.write_bytes(orjson.dumps(record))
    done = await run_cli_async(["refresh", "--config", str(config)], cli_env(tmp_path))
    line = one_line(done.stderr)
    assert done.returncode == 2, done.stderr
    assert f"the token cache {cache} holds a character no token has" in line
    assert record["access_token"][:20] not in done.stderr


# -- configuration ----------------------------------------------------------------------


@pytest.mark.parametrize("url", ["https://api.onepeloton.com/api", "https://api.onepeloton.com/api/"])
def test_a_base_url_ending_in_api_is_refused_saying_why(url: str) -> None:
    """api.base_url with /api on the end: the harvester adds it, so say so (exit 2)."""
    with pytest.raises(ConfigError, match=r"must not end in /api .* adds /api/\.\.\. itself"):
        load_config(None, env={}, overrides={"api.base_url": url}, search_default=False)
    load_config(None, env={}, overrides={"api.base_url": "https://proxy.example/peloton"},
                search_default=False)


def test_a_base_url_ending_in_api_is_one_line_from_the_cli(tmp_path: Path) -> None:
    """The same through the CLI: one line on stderr, exit 2."""
    config = config_for(tmp_path, "https://api.onepeloton.com/api", tmp_path / "lake")
    done = run_cli(["backfill", "--config", str(config)], cli_env(tmp_path))
    assert done.returncode == 2
    assert "api.base_url must not end in /api" in one_line(done.stderr)


# -- the emulator command ---------------------------------------------------------------


def test_an_emulator_on_a_port_in_use_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    """A port another socket listens on: one line saying so and what to do, exit 2."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = main(["emulator", "--port", str(port)])
    line = one_line(capsys.readouterr().err)
    assert code == 2
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in line
    assert "--port" in line


@pytest.mark.parametrize(("args", "named"), [
    (["--workouts", "-5"], "--workouts must be 0 or more"),
    (["--rate-limit", "0"], "--rate-limit must be a number of requests per second greater than 0"),
    (["--rate-limit", "inf"], "--rate-limit must be"),
    (["--latency-ms", "nan"], "--latency-ms must be 0 or more"),
    (["--token-ttl", "-1"], "--token-ttl must be greater than 0"),
    (["--port", "70000"], "--port must be between 0 and 65535"),
    (["--drip-s", "0"], "--drip-s must be greater than 0"),
    (["--hostile-routes", "nosuch"], "--hostile-routes has unknown ['nosuch']"),
])
def test_nonsense_emulator_numbers_are_exit_2_naming_the_option(
    capsys: pytest.CaptureFixture[str], args: list[str], named: str
) -> None:
    """Each option value the emulator cannot honour: one line naming the option, exit 2."""
    code = main(["emulator", "--port", "0", *args])
    assert code == 2
    assert named in one_line(capsys.readouterr().err)


async def test_the_port_check_leaves_a_free_port_working(tmp_path: Path) -> None:
    """--port 0 still starts and prints its URL (the checks refuse nonsense, not valid values)."""
    cli = await start_cli(["emulator", "--port", "0", "--workouts", "1"], dict(os.environ),
                          tmp_path, "emulator")
    try:
        await wait_until(lambda: cli.stdout().startswith("http://127.0.0.1:"))
    finally:
        cli.process.terminate()
        with anyio.fail_after(30):
            await cli.process.wait()
