"""Several accounts: [[accounts]] parsed and checked, --account selecting, one account's failure isolated."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

from harvester.config import AccountConfig, load_config
from harvester.errors import ConfigError
from harvester.keys import class_of
from tests.harness import PASSWORD, USERNAME, cli_env, run_cli_async, write_config
from tests.procs import start_cli, wait_until, whole_files

TWO_ACCOUNTS = """
[[accounts]]
name = "alice"
username_env = "ALICE_USER"
password_env = "ALICE_PASS"
token_cache = "{tmp}/alice.json"

[[accounts]]
name = "bob"
method = "token"
access_token_env = "BOB_TOKEN"
token_cache = "{tmp}/bob.json"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text.replace("{tmp}", str(tmp_path)), encoding="utf-8")
    return path


def test_accounts_parse_with_their_own_secret_variables(tmp_path: Path) -> None:
    """Each entry reads its secrets from the variables it names (PELOTON_* otherwise); for_account gives its method and cache."""
    env = {"ALICE_USER": "a@example.com", "ALICE_PASS": "alice-secret-pw", "BOB_TOKEN": "bob-secret-token",
           "PELOTON_USERNAME": "someone-else"}
    config = load_config(write(tmp_path, TWO_ACCOUNTS), env=env)
    alice, bob = config.accounts
    assert (alice.name, alice.credentials.username, alice.credentials.password) == ("alice", "a@example.com", "alice-secret-pw")
    assert bob.credentials.access_token == "bob-secret-token"
    assert bob.credentials.username == "someone-else"  # a variable it does not name: the PELOTON_* default
    own = config.for_account(bob)
    assert own.auth.method == "token" and own.auth.token_cache == str(tmp_path / "bob.json")
    assert own.credentials.access_token == "bob-secret-token"
    assert config.for_account(alice).auth.method == config.auth.method
    assert "alice-secret-pw" not in repr(config) and "bob-secret-token" not in repr(config)


def test_default_token_cache_is_per_account() -> None:
    """An entry without token_cache gets ~/.cache/peloton-harvester/<name>.json, never the shared one."""
    assert AccountConfig(name="carol").token_cache_path.name == "carol.json"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[[accounts]]\nname = "a"\nusername_evn = "X"\n',
         "unknown config key accounts[0].username_evn; did you mean 'username_env'?"),
        ('[[accounts]]\nmethod = "token"\n', "accounts[0].name must be 1-64 letters"),
        ('[[accounts]]\nname = "../etc"\n', "accounts[0].name must be 1-64 letters"),
        ('[[accounts]]\nname = "a"\npassword_env = "NOT A VAR"\n',
         "accounts[0].password_env must name an environment variable"),
        ('[[accounts]]\nname = "a"\n[[accounts]]\nname = "a"\n', "[[accounts]] name 'a' appears twice"),
        ('[[accounts]]\nname = "a"\ntoken_cache = "/x/t.json"\n[[accounts]]\nname = "b"\n'
         'token_cache = "/x/t.json"\n', "accounts 'a' and 'b' share the token cache"),
        ('[[accounts]]\nname = "a"\nmethod = "oauth"\n', "accounts 'a': method must be one of"),
        ('[[accounts]]\nname = 3\n', "config key accounts[0].name must be a string"),
        ('accounts = "alice"\n', "config key 'accounts' must be an array of tables"),
    ],
)
def test_bad_accounts_name_the_entry_and_key(tmp_path: Path, text: str, expected: str) -> None:
    """Each mistake in [[accounts]] is one ConfigError line naming the entry and the key."""
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env={})
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_select_by_name_in_config_order_and_refuse_strangers(tmp_path: Path) -> None:
    """--account picks entries (config order kept); an unknown name is refused with a suggestion."""
    config = load_config(write(tmp_path, TWO_ACCOUNTS), env={})
    assert [a.name for a in config.select(["bob", "alice"])] == ["alice", "bob"]
    assert [a.name for a in config.select(["bob"])] == ["bob"]
    assert [a.name for a in config.select(None)] == ["alice", "bob"]
    with pytest.raises(ConfigError, match="--account 'alcie' is not in \\[\\[accounts\\]\\]; did you mean 'alice'"):
        config.select(["alcie"])
    with pytest.raises(ConfigError, match="--account needs \\[\\[accounts\\]\\]"):
        load_config(write(tmp_path, ""), env={}).select(["alice"])


# -- the CLI ---------------------------------------------------------------------


def accounts_config(tmp_path: Path, url: str, entries: str) -> Path:
    path = write_config(tmp_path, url)
    path.write_text(path.read_text(encoding="utf-8") + "\n" + entries, encoding="utf-8")
    return path


async def test_one_accounts_failure_does_not_stop_the_others(make_emulator: Any, tmp_path: Path) -> None:
    """Three members into one lake; bob's wrong password fails bob alone: exit 3 naming bob, no secret shown."""
    emulator = await make_emulator(workouts=12, accounts=3)
    entries = "".join(
        f'[[accounts]]\nname = "{name}"\nusername_env = "{name.upper()}_USER"\n'
        f'password_env = "{name.upper()}_PASS"\ntoken_cache = "{tmp_path}/{name}.json"\n'
        for name in ("alice", "bob", "carol")
    )
    path = accounts_config(tmp_path, emulator.url, entries)
    env = cli_env(tmp_path, ALICE_USER=USERNAME, ALICE_PASS=PASSWORD, BOB_USER="user2@example.com",
                  BOB_PASS="wrong-secret-for-bob", CAROL_USER="user3@example.com", CAROL_PASS="pass3")
    done = await run_cli_async(["backfill", "--config", str(path), "--no-progress"], env)
    assert done.returncode == 3, done.stderr
    assert "alice: backfill: " in done.stdout and "carol: backfill: " in done.stdout
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "accounts that failed: bob (" in errors[0], done.stderr
    assert "wrong-secret-for-bob" not in done.stdout + done.stderr
    alice, _bob, carol = (a.user_id for a in emulator.state.accounts)
    files = {p.name for p in (tmp_path / "lake" / "workouts").glob("date=*/*.jsonl")}
    assert files == {f"{alice}.jsonl", f"{carol}.jsonl"}
    assert rows(tmp_path / "lake", "workouts", alice) == rows(tmp_path / "lake", "workouts", carol) == 12
    instructors = list((tmp_path / "lake" / "instructors").glob("*.jsonl"))
    assert len(instructors) == 1  # shared by the members, kept once


def rows(root: Path, dataset: str, user_id: str) -> int:
    return sum(p.read_bytes().count(b"\n") for p in (root / dataset).glob(f"date=*/{user_id}.jsonl"))


async def test_account_option_runs_only_the_named_account(make_emulator: Any, tmp_path: Path) -> None:
    """--account alice harvests alice only: bob (whose secrets are not even set) is not tried."""
    emulator = await make_emulator(workouts=5)
    entries = ('[[accounts]]\nname = "alice"\n'
               f'token_cache = "{tmp_path}/alice.json"\n'
               '[[accounts]]\nname = "bob"\nusername_env = "BOB_USER"\npassword_env = "BOB_PASS"\n'
               f'token_cache = "{tmp_path}/bob.json"\n')
    path = accounts_config(tmp_path, emulator.url, entries)
    done = await run_cli_async(["backfill", "--config", str(path), "--account", "alice", "--no-progress"],
                               cli_env(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("alice: backfill: ") and "bob" not in done.stdout + done.stderr
    unknown = await run_cli_async(["refresh", "--config", str(path), "--account", "carol"], cli_env(tmp_path))
    assert unknown.returncode == 2 and "--account 'carol' is not in [[accounts]]" in unknown.stderr


async def test_an_s3_root_without_credentials_fails_clearly_and_no_folder_named_s3_appears(
    make_emulator: Any, tmp_path: Path
) -> None:
    """output.root = s3://… with no AWS credentials anywhere exits 2 with one line; nothing local."""
    emulator = await make_emulator(workouts=3)
    path = write_config(tmp_path, emulator.url, output={"root": "s3://bucket/lake"})
    env = {k: v for k, v in cli_env(tmp_path).items() if not k.startswith("AWS_")}
    work = tmp_path / "cwd"
    work.mkdir()
    done = await anyio.run_process(
        [sys.executable, "-m", "harvester", "backfill", "--config", str(path)],
        env=env, cwd=work, check=False,
    )
    stderr = done.stderr.decode()
    assert done.returncode == 2, stderr
    assert len(stderr.strip().splitlines()) == 1 and "s3://bucket/lake" in stderr
    assert "credentials" in stderr and "Traceback" not in stderr
    assert list(work.iterdir()) == [] and not (tmp_path / "s3:").exists()
    bad = await run_cli_async(["backfill", "--config", str(path), "--out", "s3://x/../y"], env)
    assert bad.returncode == 2 and "bucket" in bad.stderr


def members_config(tmp_path: Path, url: str, count: int, **harvest: object) -> tuple[Path, dict[str, str]]:
    """[[accounts]] m1..mN for an emulator serving N members, and the environment holding their secrets."""
    path = write_config(tmp_path, url, harvest=dict(harvest))
    entries = "".join(
        f'[[accounts]]\nname = "m{k}"\nusername_env = "M{k}_USER"\npassword_env = "M{k}_PASS"\n'
        f'token_cache = "{tmp_path}/m{k}.json"\n' for k in range(1, count + 1)
    )
    path.write_text(path.read_text(encoding="utf-8") + "\n" + entries, encoding="utf-8")
    secrets = {"M1_USER": USERNAME, "M1_PASS": PASSWORD}
    for k in range(2, count + 1):
        secrets.update({f"M{k}_USER": f"user{k}@example.com", f"M{k}_PASS": f"pass{k}"})
    return path, cli_env(tmp_path, **secrets)


async def test_accounts_of_one_run_harvest_concurrently(make_emulator: Any, tmp_path: Path) -> None:
    """Three accounts, one worker each: the emulator sees requests of several accounts in flight at once."""
    emulator = await make_emulator(workouts=15, accounts=3, latency_ms=20.0)
    path, env = members_config(tmp_path, emulator.url, 3, concurrency=1)
    done = await run_cli_async(["backfill", "--config", str(path), "--no-progress"], env)
    assert done.returncode == 0, done.stderr
    assert [line.split(":")[0] for line in done.stdout.splitlines()] == ["m1", "m2", "m3"]
    # One account with one worker has one request in flight at most (its listing, daily
    # datasets and worker share the one slot): 2 or more means several accounts were
    # being harvested at once, and 3 accounts can never have more than 3.
    assert 2 <= emulator.stats_snapshot()["peak_concurrency"] <= 3
    for account in emulator.state.accounts:
        rows = sum(p.read_bytes().count(b"\n")
                   for p in (tmp_path / "lake" / "workouts").glob(f"date=*/{account.user_id}.jsonl"))
        assert rows == 15


async def test_one_signal_stops_every_account_of_the_run(make_emulator: Any, tmp_path: Path) -> None:
    """SIGINT during a two-account run: both commit what is complete and report INTERRUPTED; exit 130."""
    emulator = await make_emulator(workouts=80, accounts=2, latency_ms=30.0)
    path, env = members_config(tmp_path, emulator.url, 2, concurrency=2)
    cli = await start_cli(["backfill", "--config", str(path), "--no-progress"], env, tmp_path / "logs", "run")
    await wait_until(lambda: int(emulator.stats_snapshot()["by_endpoint"].get("workout", 0)) >= 6)
    cli.process.send_signal(signal.SIGINT)
    assert await cli.wait() == 130, cli.stderr()
    lines = cli.stdout().splitlines()
    assert len(lines) == 2 and all("INTERRUPTED" in line for line in lines), cli.stdout()
    assert whole_files(tmp_path / "lake") == []


async def test_login_signs_in_the_named_account_into_its_own_token_cache(
    make_emulator: Any, tmp_path: Path
) -> None:
    """login --account bob signs in member 2 with bob's variables into bob's cache; without --account: exit 2."""
    emulator = await make_emulator(workouts=3, accounts=2)
    path, env = members_config(tmp_path, emulator.url, 2)
    ambiguous = await run_cli_async(["login", "--config", str(path)], env)
    assert ambiguous.returncode == 2 and "login signs in one account at a time" in ambiguous.stderr
    done = await run_cli_async(["login", "--config", str(path), "--account", "m2"], env)
    assert done.returncode == 0, done.stderr
    assert emulator.state.accounts[1].user_id in done.stdout
    assert (tmp_path / "m2.json").exists() and not (tmp_path / "m1.json").exists()
    no_password = {k: v for k, v in env.items() if not k.startswith("M2_")}
    later = await run_cli_async(["refresh", "--config", str(path), "--account", "m2", "--no-progress"],
                                no_password)  # the stored sign-in does: no password needed
    assert later.returncode == 0, later.stderr
    assert later.stdout.startswith("m2: refresh: ")


# -- classes several accounts took: one row each in the lake -------------------------


def ride_files(root: Path) -> dict[str, list[str]]:
    """ride_id -> the rides files holding it (date=…/name)."""
    held: dict[str, list[str]] = {}
    for path in sorted((root / "rides").glob("date=*/*.jsonl")):
        for line in path.read_bytes().splitlines():
            held.setdefault(orjson.loads(line)["ride_id"], []).append(f"{path.parent.name}/{path.name}")
    return held


def classes_taken(emulator: Any) -> set[str]:
    return {w.ride.id for a in emulator.state.accounts for w in a.workouts
            if w.ride is not None and w.kind == "class"}


def classes_named(emulator: Any) -> set[str]:
    """Every class id the members' workouts name (gym classes too, which answer 404)."""
    return {w.ride.id for a in emulator.state.accounts for w in a.workouts
            if w.ride is not None and w.ride.id != "0" * 32}


async def test_accounts_sharing_a_class_keep_it_once(make_emulator: Any, tmp_path: Path) -> None:
    """Three members of one run who took some of the same classes: each class is asked for
    once (by one of them) and is one row of rides, in one shared file per day; verify finds
    the lake whole."""
    emulator = await make_emulator(workouts=40, accounts=3)
    path, env = members_config(tmp_path, emulator.url, 3)
    done = await run_cli_async(["backfill", "--config", str(path), "--no-progress"], env)
    assert done.returncode == 0, done.stderr
    asked = emulator.stats_snapshot()["by_endpoint"]["ride_details"]
    assert asked == len(classes_named(emulator)) < sum(
        len({w.ride.id for w in a.workouts if w.ride is not None and w.ride.id != "0" * 32})
        for a in emulator.state.accounts)
    held = ride_files(tmp_path / "lake")
    twice = {ride: files for ride, files in held.items() if len(files) > 1}
    assert twice == {}, twice
    assert held.keys() >= classes_taken(emulator)
    assert {Path(f).name for files in held.values() for f in files} == {"rides.jsonl"}
    checked = await run_cli_async(["verify", "--config", str(path)], env)
    assert checked.returncode == 0, checked.stdout + checked.stderr


async def test_a_shared_class_without_details_is_asked_for_once_and_absent_for_all(
    make_emulator: Any, tmp_path: Path,
) -> None:
    """A class two members took answers 404 (retired): one of them asks, once; the run
    exits 0 and verify counts the class as without details for both members."""
    emulator = await make_emulator(workouts=40, accounts=2)
    first, second = ({w.ride.id for w in a.workouts if w.ride is not None and w.kind == "class"}
                     for a in emulator.state.accounts)
    retired = sorted(first & second)[0]
    del emulator.state.account.rides[retired]
    path, env = members_config(tmp_path, emulator.url, 2)
    done = await run_cli_async(["backfill", "--config", str(path), "--no-progress"], env)
    assert done.returncode == 0, done.stderr
    assert emulator.stats_snapshot()["by_endpoint"]["ride_details"] == len(classes_named(emulator))
    assert retired not in ride_files(tmp_path / "lake")
    checked = await run_cli_async(["verify", "--config", str(path)], env)
    assert checked.returncode == 0, checked.stdout + checked.stderr


async def test_accounts_run_by_separate_processes_keep_a_shared_class_once(
    make_emulator: Any, tmp_path: Path,
) -> None:
    """Two members harvested at the same time by two processes (two crontab lines, one lake):
    a class both took is written by both runs and stays one row."""
    emulator = await make_emulator(workouts=40, accounts=2, latency_ms=5.0)
    path, env = members_config(tmp_path, emulator.url, 2, concurrency=2)
    results: dict[str, Any] = {}

    async def run(name: str) -> None:
        results[name] = await run_cli_async(
            ["backfill", "--config", str(path), "--account", name, "--no-progress"], env)

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, "m1")
        tg.start_soon(run, "m2")
    for name, done in results.items():
        assert done.returncode == 0, (name, done.stderr)
    both = [{w.ride.id for w in a.workouts if w.ride is not None and w.kind == "class"}
            for a in emulator.state.accounts]
    assert both[0] & both[1], "the emulator's members share no class"
    held = ride_files(tmp_path / "lake")
    assert {ride: files for ride, files in held.items() if len(files) > 1} == {}
    assert held.keys() >= (both[0] | both[1])


async def test_classes_an_older_version_wrote_per_account_move_to_the_shared_files(
    make_emulator: Any, tmp_path: Path,
) -> None:
    """A lake where each account kept the classes it took in its own files (so a class two took
    is there twice): verify names the duplicates; each account's next run moves its rows to the
    shared files, fetching nothing again; after both, every class is there once."""
    emulator = await make_emulator(workouts=40, accounts=2)
    path, env = members_config(tmp_path, emulator.url, 2)
    assert (await run_cli_async(["backfill", "--config", str(path), "--no-progress"], env)).returncode == 0
    lake = tmp_path / "lake"
    shared = {orjson.loads(line)["ride_id"]: (p.parent.name, line)
              for p in (lake / "rides").glob("date=*/rides.jsonl") for line in p.read_bytes().splitlines()}
    for p in (lake / "rides").glob("date=*/rides.jsonl"):
        p.unlink()
    for account in emulator.state.accounts:  # the old layout: rides/date=…/<user_id>.jsonl
        for ride in {w.ride.id for w in account.workouts if w.ride is not None and w.kind == "class"}:
            part, line = shared[ride]
            with (lake / "rides" / part / f"{account.user_id}.jsonl").open("ab") as out:
                out.write(line + b"\n")
    before = ride_files(lake)
    assert any(len(files) > 1 for files in before.values())
    checked = await run_cli_async(["verify", "--config", str(path)], env)
    assert checked.returncode == 3 and "rides key " in checked.stdout, checked.stdout

    requests = int(emulator.stats_snapshot()["by_endpoint"].get("ride_details", 0))
    first = await run_cli_async(["refresh", "--config", str(path), "--account", "m1", "--no-progress"], env)
    assert first.returncode == 0, first.stderr
    m1, m2 = (a.user_id for a in emulator.state.accounts)
    assert not list((lake / "rides").glob(f"date=*/{m1}.jsonl"))  # m1's moved; m2's not yet
    assert list((lake / "rides").glob(f"date=*/{m2}.jsonl"))
    second = await run_cli_async(["refresh", "--config", str(path), "--account", "m2", "--no-progress"], env)
    assert second.returncode == 0, second.stderr
    assert int(emulator.stats_snapshot()["by_endpoint"].get("ride_details", 0)) == requests
    after = ride_files(lake)
    assert after.keys() == before.keys() and all(len(files) == 1 for files in after.values()), after
    assert {Path(f).name for files in after.values() for f in files} == {"rides.jsonl"}
    assert (await run_cli_async(["verify", "--config", str(path)], env)).returncode == 0


async def test_a_run_of_three_accounts_killed_midway_ends_with_every_class_once(
    make_emulator: Any, tmp_path: Path,
) -> None:
    """SIGKILL a run of three members while their classes wait in the run's one hold: the next
    run fetches the classes their committed workouts name and the lake lacks, each once by one
    member, and verify finds the lake whole."""
    emulator = await make_emulator(workouts=60, accounts=3, latency_ms=4.0)
    path, env = members_config(tmp_path, emulator.url, 3, concurrency=2)
    args = ["backfill", "--config", str(path), "--no-progress"]
    root = tmp_path / "lake"
    cli = await start_cli(args, env, tmp_path / "logs", "killed")
    await wait_until(lambda: len(list(root.glob("workouts/date=*/*.jsonl"))) >= 30)
    cli.process.send_signal(signal.SIGKILL)
    assert await cli.wait() == -signal.SIGKILL, cli.stderr()
    await anyio.sleep(0.05)
    whole_files(root)
    named = {class_of(orjson.loads(line)) for p in root.glob("workouts/date=*/*.jsonl")
             for line in p.read_bytes().splitlines()}
    missing = (named & classes_taken(emulator)) - ride_files(root).keys()
    assert missing, "the kill should leave classes of committed workouts unwritten"
    emulator.reset_stats()
    done = await run_cli_async(args, env)
    assert done.returncode == 0, done.stderr
    held = ride_files(root)
    assert {ride: files for ride, files in held.items() if len(files) > 1} == {}
    assert held.keys() >= classes_taken(emulator)
    asked = emulator.stats_snapshot()["by_id"].get("ride_details", {})
    assert set(asked) >= missing and max(asked.values()) == 1, asked
    checked = await run_cli_async(["verify", "--config", str(path)], env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
