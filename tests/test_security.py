"""Secrets never leak (logs at -vv, JSON logs, lake, state, manifests, errors); files are private."""

from __future__ import annotations

import logging
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from harvester.config import Credentials
from harvester.emulator.logins import LoginState, Transaction
from harvester.emulator.tokens import TokenIssuer
from harvester.errors import AuthError
from harvester.run import run_harvest
from tests.conftest import MakeEmulator
from tests.harness import cli_env, harvest_config, run_cli_async, write_config

PASSWORD = "Hunter2-sekr3t-pa55word"


class IssuedSecrets:
    """Every token, session id, authorization code and sign-in cookie the emulator hands out."""

    def __init__(self, issuer: TokenIssuer, login: LoginState | None = None) -> None:
        self.values: set[str] = set()
        grant, open_session = issuer.grant, issuer.open_session
        if login is not None:
            self._record_login(login)

        def recording_grant(now: float, ttl: float, client_id: str, scope: str,
                            family_id: str | None = None) -> dict[str, object]:
            answer = grant(now, ttl, client_id, scope, family_id)
            self.values.update(str(answer[k]) for k in ("access_token", "refresh_token", "id_token")
                               if k in answer)
            return answer

        def recording_session() -> str:
            session = open_session()
            self.values.add(session)
            return session

        issuer.grant = recording_grant  # type: ignore[method-assign]
        issuer.open_session = recording_session  # type: ignore[method-assign]

    def _record_login(self, login: LoginState) -> None:
        begin, issue_code = login.begin, login.issue_code

        def recording_begin(txn: Transaction) -> Transaction:
            self.values.update((txn.id, txn.csrf, txn.session, txn.orca_sid))
            return begin(txn)

        def recording_code(txn: Transaction, now: float) -> str:
            code = issue_code(txn, now)
            self.values.update((code, txn.client_state))
            return code

        login.begin = recording_begin  # type: ignore[method-assign]
        login.issue_code = recording_code  # type: ignore[method-assign]

    def needles(self) -> set[str]:
        """Each secret, and each JWT's signature alone: a leaked fragment is still a leak."""
        found = {PASSWORD, *self.values}
        found.update(v.rsplit(".", 1)[-1] for v in self.values if v.count(".") == 2)
        return found


def leaks(text: str, needles: set[str]) -> list[str]:
    return sorted(n[:12] + "..." for n in needles if n in text)


def exception_texts(exc: BaseException) -> list[str]:
    """str and repr of an exception, its cause/context chain and any group members."""
    texts, todo, seen = [], [exc], set()
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        texts.append(f"{current!s} {current!r}")
        if isinstance(current, BaseExceptionGroup):
            todo.extend(current.exceptions)
        todo.extend(e for e in (current.__cause__, current.__context__) if e is not None)
    return texts


def files_text(root: Path) -> str:
    return "\n".join(p.read_bytes().decode("utf-8", "replace")
                     for p in sorted(root.rglob("*")) if p.is_file())


async def test_verbose_json_backfills_leak_no_secret(make_emulator: MakeEmulator,
                                                     tmp_path: Path) -> None:
    """-vv --log-format json, Universal Login, refreshes, faults, a session login: no secret anywhere."""
    emulator = await make_emulator(workouts=80, password=PASSWORD, token_ttl=2.0,
                                   faults="flaky", latency_ms=5.0)
    issued = IssuedSecrets(emulator.state.tokens, emulator.state.login)
    env = cli_env(tmp_path, PELOTON_PASSWORD=PASSWORD)
    outputs: list[str] = []
    for method, rps in (("login", 60.0), ("password", 60.0), ("session", 2000.0)):
        config = write_config(tmp_path, emulator.url, auth={"method": method},
                              harvest={"requests_per_second": rps})
        done = await run_cli_async(
            ["backfill", "--config", str(config), "-vv", "--log-format", "json", "--no-progress"],
            env)
        assert done.returncode in (0, 3), done.stderr[-2000:]
        assert '"level":"debug"' in done.stderr and '"level":"info"' in done.stderr
        outputs += [done.stdout, done.stderr]
    grants = emulator.stats_snapshot()["token_grants"]
    assert grants["refresh_token"] >= 1 and emulator.stats.logins == 1  # every kind was issued
    assert grants["authorization_code"] == 1
    needles = issued.needles()
    assert len(needles) >= 10
    assert leaks("\n".join(outputs), needles) == []
    assert leaks(files_text(tmp_path / "lake"), needles) == []


async def test_auth_errors_and_logs_name_no_secret(make_emulator: MakeEmulator, tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """Refused pasted tokens and a wrong password: error text and debug records hold no secret."""
    emulator = await make_emulator(workouts=5)
    access, refresh = "eyJhbGciOi.eyJzdWIiOi.c2VjcmV0LXNpZ25hdHVyZQ", "v1.R3fr3sh-t0ken-s3cret"
    caplog.set_level(logging.DEBUG)
    messages: list[str] = []
    cases = [
        ({"auth__method": "token"}, Credentials(access_token=access, refresh_token=refresh)),
        ({}, Credentials(username="demo@example.com", password=PASSWORD)),
    ]
    for n, (overrides, credentials) in enumerate(cases):
        config = replace(harvest_config(emulator.url, tmp_path / str(n), **overrides),
                         credentials=credentials)
        with pytest.raises((AuthError, BaseExceptionGroup)) as info:
            await run_harvest(config, "backfill")
        messages += exception_texts(info.value)
        assert any("PELOTON_" in m for m in messages[-3:]), messages  # the AuthError itself
    messages += [record.getMessage() for record in caplog.records]
    assert len(messages) >= 4
    needles = {PASSWORD, access, refresh, "c2VjcmV0LXNpZ25hdHVyZQ"}
    assert leaks("\n".join(messages), needles) == []


async def test_token_cache_and_state_files_are_private(make_emulator: MakeEmulator,
                                                       tmp_path: Path) -> None:
    """The token cache and every file under _harvester/ are 0600, its directories 0700."""
    emulator = await make_emulator(workouts=10)
    await run_harvest(harvest_config(emulator.url, tmp_path), "backfill")
    private = [tmp_path / "tokens.json", *(tmp_path / "lake" / "_harvester").rglob("*")]
    assert len(private) >= 5
    for path in private:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))
