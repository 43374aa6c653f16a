"""`peloton-harvester login` and what follows it: cron runs on the stored, rotating refresh token."""

from __future__ import annotations

import functools
import os
import pty
import select
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import orjson
from anyio.streams.text import TextReceiveStream

from harvester.emulator import Emulator
from tests.browser import Person, browser_session
from tests.conftest import MakeEmulator
from tests.harness import PASSWORD, USERNAME, cli_env, run_cli_async, write_config
from tests.procs import start_cli, wait_until
from tests.test_cli import assert_one_line_error


def no_secrets_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a cron job after `login`: no username, no password."""
    env = cli_env(tmp_path)
    del env["PELOTON_USERNAME"], env["PELOTON_PASSWORD"]
    return env


async def login(emulator: Emulator, config: Path, tmp_path: Path) -> None:
    done = await run_cli_async(["login", "--config", str(config)], cli_env(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("\n") == 1 and emulator.account.user_id in done.stdout


async def test_login_then_cron_runs_need_no_password_until_the_session_ends(
        make_emulator: MakeEmulator, tmp_path: Path) -> None:
    """login once; backfill and refresh with no secrets in the environment; revoked: exit 4."""
    emulator = await make_emulator(workouts=10, token_ttl=3600.0)
    config = write_config(tmp_path, emulator.url)
    await login(emulator, config, tmp_path)
    env = no_secrets_env(tmp_path)
    done = await run_cli_async(["backfill", "--config", str(config)], env)
    assert done.returncode == 0, done.stderr
    emulator.advance_clock(7200)  # a day later: the access token has expired
    done = await run_cli_async(["refresh", "--config", str(config)], env)
    assert done.returncode == 0, done.stderr
    grants = emulator.stats_snapshot()["token_grants"]
    assert grants == {"password": 0, "refresh_token": 1, "authorization_code": 1}
    emulator.state.tokens.revoke_all()  # the password was changed, say
    emulator.advance_clock(7200)
    done = await run_cli_async(["refresh", "--config", str(config)], env)
    assert done.returncode == 4, done.stderr
    assert_one_line_error(done.stderr, "sign-in has ended", "run `peloton-harvester login`")


async def test_a_config_of_method_and_two_urls_plus_two_variables_backfills(
        make_emulator: MakeEmulator, tmp_path: Path) -> None:
    """Only method "login", base_url and auth_url (a name, not the IP) and the two variables.

    At the default 5 requests a second: a few workouts keep it to a few seconds."""
    emulator = await make_emulator(workouts=4, orca_host="127.0.0.1")
    url = emulator.url.replace("127.0.0.1", "localhost")
    config = tmp_path / "minimal.toml"
    config.write_text(f'[auth]\nmethod = "login"\n[api]\nbase_url = "{url}"\n'
                      f'auth_url = "{url}"\n', encoding="utf-8")
    env = {**cli_env(tmp_path), "HOME": str(tmp_path / "home")}  # the default token store
    done = await run_cli_async(["backfill", "--config", str(config), "--out",
                                str(tmp_path / "lake")], env)
    assert done.returncode == 0, done.stderr
    assert "4 new workouts" in done.stdout
    assert (tmp_path / "home" / ".cache" / "peloton-harvester" / "tokens.json").is_file()
    assert emulator.stats_snapshot()["token_grants"]["authorization_code"] == 1


async def test_login_off_a_terminal_without_credentials_exits_2(make_emulator: MakeEmulator,
                                                                tmp_path: Path) -> None:
    """No password and no terminal to type it: one line naming the variables, exit 2."""
    emulator = await make_emulator(workouts=1)
    config = write_config(tmp_path, emulator.url)
    done = await run_cli_async(["login", "--config", str(config)], no_secrets_env(tmp_path))
    assert done.returncode == 2
    assert_one_line_error(done.stderr, "PELOTON_USERNAME and PELOTON_PASSWORD", "--browser")
    assert emulator.stats.requests == 0


async def browser_login(emulator: Emulator, config: Path, tmp_path: Path,
                        tamper: bool = False) -> tuple[int, str, str]:
    """Run `login --browser`, playing the person: open the URL, sign in, paste the callback."""
    process = await anyio.open_process(
        [sys.executable, "-m", "harvester", "login", "--browser", "--config", str(config)],
        env=no_secrets_env(tmp_path))
    async with process:
        assert process.stdout is not None and process.stdin is not None
        lines = TextReceiveStream(process.stdout)
        printed = ""
        with anyio.fail_after(30):
            while "\n" not in printed:
                printed += await lines.receive()
        url, rest = printed.split("\n", 1)
        assert url.startswith(f"{emulator.url}/authorize?")
        async with browser_session() as session:
            callback = await Person(session).sign_in(url, USERNAME, PASSWORD)
        if tamper:
            callback = callback.replace("state=", "state=x")
        await process.stdin.send(f"{callback}\n".encode())
        with anyio.fail_after(30):
            code = await process.wait()
        async for chunk in lines:
            rest += chunk
        assert process.stderr is not None
        err = (await process.stderr.receive(65536)).decode() if code else ""
    return code, rest, err


async def test_login_browser_with_the_person_pasting_the_callback(
        make_emulator: MakeEmulator, tmp_path: Path) -> None:
    """The URL on a line of its own, the pasted callback exchanged; then cron needs no password."""
    emulator = await make_emulator(workouts=5, verification=False)
    config = write_config(tmp_path, emulator.url)
    code, out, err = await browser_login(emulator, config, tmp_path)
    assert code == 0, err
    assert f"account {emulator.account.user_id}" in out and out.count("\n") == 1
    done = await run_cli_async(["backfill", "--config", str(config)], no_secrets_env(tmp_path))
    assert done.returncode == 0, done.stderr
    emulator.advance_clock(172800 + 60)  # expired: the next run refreshes, still no password
    done = await run_cli_async(["refresh", "--config", str(config)], no_secrets_env(tmp_path))
    assert done.returncode == 0, done.stderr
    grants = emulator.stats_snapshot()["token_grants"]
    assert grants == {"password": 0, "refresh_token": 1, "authorization_code": 1}


async def test_login_browser_refuses_a_callback_of_another_sign_in(
        make_emulator: MakeEmulator, tmp_path: Path) -> None:
    """A pasted URL whose state is not ours: exit 4, no code exchanged, nothing stored."""
    emulator = await make_emulator(workouts=1)
    config = write_config(tmp_path, emulator.url)
    code, _, err = await browser_login(emulator, config, tmp_path, tamper=True)
    assert code == 4
    assert_one_line_error(err.splitlines()[-1], "state does not match")  # after the instructions
    assert emulator.stats_snapshot()["token_grants"]["authorization_code"] == 0
    assert not (tmp_path / "tokens.json").exists()


async def test_sigkill_during_a_refresh_then_a_run_still_signs_in(
        make_emulator: MakeEmulator, tmp_path: Path) -> None:
    """Killed after the server rotated: the store stays whole; the next run signs in again."""
    emulator = await make_emulator(workouts=10, token_ttl=3600.0)
    config = write_config(tmp_path, emulator.url)
    await login(emulator, config, tmp_path)
    emulator.advance_clock(7200)
    emulator.update_settings(refresh_stall_s=60.0)
    cli = await start_cli(["backfill", "--config", str(config)], no_secrets_env(tmp_path),
                          tmp_path / "logs", "killed")
    await wait_until(lambda: emulator.stats.refresh_in_flight == 1)
    os.kill(cli.pid, signal.SIGKILL)
    assert await cli.wait() == -signal.SIGKILL
    stored = orjson.loads((tmp_path / "tokens.json").read_bytes())
    assert stored["refresh_token"].startswith("v1.")  # whole: the old (now used) token
    emulator.update_settings(refresh_stall_s=0.0)
    done = await run_cli_async(["backfill", "--config", str(config)], cli_env(tmp_path))
    assert done.returncode == 0, done.stderr
    seen = emulator.stats_snapshot()
    # The killed run's rotation was lost with it: the next refresh is a reuse, Auth0 revokes
    # the family, and the run signs in again with the password in its environment.
    assert (seen["refresh_reused"], seen["token_grants"]["authorization_code"]) == (1, 2)


async def test_two_processes_of_32_workers_share_one_store_with_2s_tokens(
        make_emulator: MakeEmulator, tmp_path: Path) -> None:
    """Two whole backfills on one store: one refresh per expiry, no reuse, no revoked family."""
    emulator = await make_emulator(workouts=200, token_ttl=2.0, latency_ms=5.0)
    config = write_config(tmp_path, emulator.url,
                          harvest={"concurrency": 32, "requests_per_second": 120.0})
    await login(emulator, config, tmp_path)
    env = no_secrets_env(tmp_path)  # a refresh that failed could not fall back to a login
    runs = [await start_cli(["backfill", "--config", str(config), "--out",
                             str(tmp_path / f"lake{n}")], env, tmp_path / "logs", f"run{n}")
            for n in (1, 2)]
    for run in runs:
        assert await run.wait() == 0, run.stderr()
    seen = emulator.stats_snapshot()
    grants = seen["token_grants"]
    assert grants["authorization_code"] == 1 and grants["password"] == 0
    assert grants["refresh_token"] >= 2  # the runs outlived several access tokens
    assert (seen["refresh_reused"], seen["families_revoked"], seen["early_refreshes"]) == (0, 0, 0)
    durations = [orjson.loads(path.read_bytes())["duration_s"]
                 for n in (1, 2) for path in (tmp_path / f"lake{n}" / "_harvester" / "runs").glob("*.json")]
    print(f"\nrefresh grants over two whole backfills ({durations} s, 2 s tokens): "
          f"{grants['refresh_token']}; reused {seen['refresh_reused']}, revoked "
          f"{seen['families_revoked']}, early {seen['early_refreshes']}")


async def test_login_on_a_terminal_asks_for_the_password(make_emulator: MakeEmulator,
                                                         tmp_path: Path) -> None:
    """PELOTON_PASSWORD unset, stdin a terminal: getpass asks, nothing is echoed, login works."""
    emulator = await make_emulator(workouts=1)
    config = write_config(tmp_path, emulator.url)
    env = cli_env(tmp_path)
    del env["PELOTON_PASSWORD"]
    master, slave = pty.openpty()
    slave_name = os.ttyname(slave)

    def own_terminal() -> None:  # a session whose controlling terminal is the pty, as a shell's
        os.setsid()
        os.close(os.open(slave_name, os.O_RDWR))

    process = await anyio.to_thread.run_sync(functools.partial(
        subprocess.Popen, [sys.executable, "-m", "harvester", "login", "--config", str(config)],
        env=env, stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        preexec_fn=own_terminal))
    os.close(slave)
    try:
        prompt = await anyio.to_thread.run_sync(read_until, master, b"password: ")
        assert b"Peloton password: " in prompt
        os.write(master, PASSWORD.encode() + b"\n")
        out, err = await anyio.to_thread.run_sync(process.communicate, None, 30)
        echoed = await anyio.to_thread.run_sync(read_until, master, b"")
    finally:
        os.close(master)
    assert process.returncode == 0, err
    assert emulator.account.user_id in out.decode() and PASSWORD.encode() not in echoed + err


def read_until(fd: int, marker: bytes) -> bytes:
    """What the terminal shows, up to ``marker`` (or until it goes quiet, for b"")."""
    seen = b""
    while not marker or marker not in seen:
        ready, _, _ = select.select([fd], [], [], 0.5 if not marker else 20)
        if not ready:
            break
        try:
            chunk = os.read(fd, 1024)
        except OSError:  # the other side closed
            break
        if not chunk:
            break
        seen += chunk
    return seen
