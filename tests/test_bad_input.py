"""Each user-facing mistake: one clear line, the documented exit code, the lake untouched.

Config mistakes run ``cli.main`` in-process (fast); mistakes that need a server run
the real CLI against a real one on loopback. tests/test_cli.py holds the rest of
the table (missing file, unknown key, missing credentials, wrong password, legacy login).
"""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from harvester import cli
from harvester.run import run_harvest
from harvester.storage import LocalStorage
from harvester.storage.lease import run_lock
from tests.conftest import MakeEmulator
from tests.harness import PASSWORD, USERNAME, cli_env, harvest_config, run_cli_async, write_config
from tests.test_cli import assert_one_line_error


@pytest.fixture(autouse=True)
def _credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PELOTON_ACCESS_TOKEN", "PELOTON_REFRESH_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PELOTON_USERNAME", USERNAME)
    monkeypatch.setenv("PELOTON_PASSWORD", PASSWORD)


def run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """cli.main in-process: its exit code and what it printed on stderr."""
    code = cli.main([*args, "--no-progress"])
    return code, capsys.readouterr().err


def lake_digest(root: Path) -> dict[str, str]:
    """Every file under the lake root, by relative path, as a hash of its bytes."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file()
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.parametrize(
    ("toml", "fragments"),
    [
        ('[harvest]\nconcurrency = "eight"\n', ("harvest.concurrency", "an integer")),
        ("[harvest]\nrequests_per_second = -1\n", ("harvest.requests_per_second", "greater than 0")),
        ("[api]\nmax_attempts = 0\n", ("api.max_attempts", "between 1 and 50")),
        ('[output]\ncompression = "zip"\n', ("output.compression", "gzip")),
        ('[harvest]\ndatasets = ["workouts", "ride"]\n', ("'ride'", "did you mean 'rides'")),
        ('[api]\nbase_url = "http://api.onepeloton.com"\n', ("api.base_url", "https://")),
        ("[harvest]\nconcurrency = 8\nevery_n = [\n", ("TOML syntax error", "line 3")),
        ("[harvest]\nconcurrency = 8 8\n[api]\n", ("TOML syntax error", "line 2")),
    ],
    ids=["type", "range", "attempts", "enum", "dataset", "plain-http", "syntax-end", "syntax"],
)
def test_config_mistakes_exit_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              toml: str, fragments: tuple[str, ...]) -> None:
    """Wrong types, out-of-range values, plain http and TOML syntax: exit 2, named, one line."""
    path = tmp_path / "c.toml"
    path.write_text(toml, encoding="utf-8")
    code, err = run_main(["backfill", "--config", str(path), "--out", str(tmp_path / "lake")],
                         capsys)
    assert code == 2
    assert_one_line_error(err, *fragments)
    assert not (tmp_path / "lake").exists()


def test_output_root_under_a_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An output root that cannot be created says so and what to do, exit 2."""
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a directory\n", encoding="utf-8")
    config = write_config(tmp_path, f"http://127.0.0.1:{free_port()}")
    code, err = run_main(["backfill", "--config", str(config), "--out", str(blocker / "lake")],
                         capsys)
    assert code == 2
    assert_one_line_error(err, "is not writable", "--out")
    assert blocker.read_text(encoding="utf-8") == "not a directory\n"


async def test_account_locked_by_another_run_exits_75_and_leaves_the_lake_alone(
        make_emulator: MakeEmulator, tmp_path: Path) -> None:
    """A second run of the account refuses at once (exit 75: try later), naming the holder; the
    lake is unchanged and the refused run leaves a manifest saying so."""
    emulator = await make_emulator(workouts=10)
    config = write_config(tmp_path, emulator.url)
    await run_harvest(harvest_config(emulator.url, tmp_path), "backfill")
    before = lake_digest(tmp_path / "lake")
    async with run_lock(LocalStorage(tmp_path / "lake"), "default", "backfill"):
        done = await run_cli_async(["refresh", "--config", str(config), "--no-progress"],
                                   cli_env(tmp_path))
    assert done.returncode == 75, done.stderr
    assert_one_line_error(done.stderr, "backfill", str(os.getpid()))
    after = lake_digest(tmp_path / "lake")
    new_manifests = [k for k in after.keys() - before.keys() if k.startswith("_harvester/runs/")]
    assert len(new_manifests) == 1, after.keys() - before.keys()
    manifest = orjson.loads((tmp_path / "lake" / new_manifests[0]).read_bytes())
    assert manifest["exit_code"] == 75 and manifest["outcome"] == "temporary failure"
    assert "in use by another run" in manifest["error"]

    def unchanged(digest: dict[str, str]) -> dict[str, str]:
        return {k: v for k, v in digest.items()
                if not k.startswith("_harvester/lock") and k not in new_manifests}

    assert unchanged(after) == unchanged(before)


@pytest.mark.parametrize(
    ("url", "fragment"),
    [("http://127.0.0.1:{port}", "cannot connect to 127.0.0.1"),
     ("https://api.peloton-harvester-test.invalid", "cannot connect to api.peloton-harvester-test.invalid")],
    ids=["refused", "unknown-host"],
)
def test_unreachable_server_exits_75_naming_the_host(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str],
                                                     url: str, fragment: str) -> None:
    """Connection refused or a host that does not resolve (network down): exit 75, try later;
    the host named, base_url suggested."""
    base = url.format(port=free_port())
    config = write_config(tmp_path, base, api={"max_attempts": 2})
    code, err = run_main(["backfill", "--config", str(config)], capsys)
    assert code == 75
    assert_one_line_error(err, fragment, "api.base_url")


@contextmanager
def tls_server(tmp_path: Path) -> Iterator[int]:
    """A TLS listener with a self-signed certificate no client trusts; yields its port."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    try:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
            check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("openssl is needed to make a self-signed certificate")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            try:
                with context.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                pass  # the client rejected our certificate, as intended

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        listener.close()


def test_tls_failure_exits_2_without_retrying(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """An untrusted certificate: exit 2 at once, saying to check CA certificates or proxy."""
    with tls_server(tmp_path) as port:
        config = write_config(tmp_path, f"https://127.0.0.1:{port}")
        code, err = run_main(["backfill", "--config", str(config)], capsys)
    assert code == 2
    assert_one_line_error(err, "TLS failure talking to 127.0.0.1", "CA certificates")


@asynccontextmanager
async def wrong_server(user_id: str, workouts_body: bytes) -> AsyncIterator[str]:
    """Not the Peloton API: HTML for everything but /api/me and the workout list."""

    async def me(request: web.Request) -> web.Response:
        return web.json_response({"id": user_id})

    async def workouts(request: web.Request) -> web.Response:
        return web.Response(body=workouts_body, content_type="application/json")

    async def page(request: web.Request) -> web.Response:
        return web.Response(text="<!doctype html><html><body>Welcome</body></html>",
                            content_type="text/html")

    app = web.Application()
    app.router.add_get("/api/me", me)
    app.router.add_get("/api/user/{id}/workouts", workouts)
    app.router.add_route("*", "/{tail:.*}", page)
    async with served(app) as url:
        yield url


@asynccontextmanager
async def served(app: web.Application) -> AsyncIterator[str]:
    """``app`` on a free loopback port: its base URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


async def test_html_instead_of_json_exits_2_naming_base_url(make_emulator: MakeEmulator,
                                                            tmp_path: Path) -> None:
    """A 200 with a web page for JSON (wrong base_url): exit 2 at once, nothing written."""
    emulator = await make_emulator(workouts=5)
    async with wrong_server("0" * 32, b"{}") as url:
        # The password grant: this pins the data API's HTML answer (the sign-in's is in test_universal)
        config = write_config(tmp_path, url, api={"auth_url": url}, auth={"method": "password"})
        done = await run_cli_async(["backfill", "--config", str(config), "--no-progress"],
                                   cli_env(tmp_path))
    assert done.returncode == 2, done.stderr
    assert_one_line_error(done.stderr, "HTML, not JSON", "api.base_url")
    assert not list((tmp_path / "lake").glob("workouts/**/*.jsonl"))
    assert emulator.stats.requests == 0  # the emulator only proves nothing else was asked


async def test_list_without_data_is_recorded_and_the_lake_kept(make_emulator: MakeEmulator,
                                                               tmp_path: Path) -> None:
    """A workout list answering 200 without `data`: exit 3, listed as a failure, lake intact."""
    emulator = await make_emulator(workouts=10)
    await run_harvest(harvest_config(emulator.url, tmp_path), "backfill")
    before = lake_digest(tmp_path / "lake")
    async with wrong_server(emulator.account.user_id, b'{"items": []}') as url:
        config = write_config(tmp_path, url, auth={"method": "password"},
                              api={"auth_url": emulator.url})
        done = await run_cli_async(["refresh", "--config", str(config), "--no-progress"],
                                   cli_env(tmp_path))
    assert done.returncode == 3, done.stderr
    assert "1 FAILED" in done.stdout
    root = tmp_path / "lake"
    failures = orjson.loads(
        (root / "_harvester" / "failures" / f"{emulator.account.user_id}.json").read_bytes())
    assert [(f["kind"], f["id"]) for f in failures["failures"]] == [("list", "page 0")]
    assert "no 'data' list" in failures["failures"][0]["error"]
    after = lake_digest(root)
    datasets = ("workouts/", "performance_graphs/", "rides/", "instructors/", "profiles/")
    assert {k: v for k, v in after.items() if k.startswith(datasets)} == {
        k: v for k, v in before.items() if k.startswith(datasets)}


async def test_invalid_ids_and_missing_created_at_are_quarantined(make_emulator: MakeEmulator,
                                                                  tmp_path: Path) -> None:
    """A path-like id and a record without created_at are quarantined with reasons; the rest land."""
    emulator = await make_emulator(workouts=30, quirks=frozenset({"bad_id", "missing_created_at"}))
    report = await run_harvest(harvest_config(emulator.url, tmp_path), "backfill")
    assert report.exit_code == 0, report.manifest
    reasons = {q.id: q.error for q in report.outcome.quarantined}
    assert set(reasons) == {"../../etc/passwd", emulator.account.workouts[4].id}
    assert "invalid id" in reasons["../../etc/passwd"]
    assert "created_at" in reasons[emulator.account.workouts[4].id]
    assert report.manifest["quarantined"] == [q.to_dict() for q in report.outcome.quarantined]
    listed = orjson.loads((tmp_path / "lake" / "_harvester" / "failures" / f"{report.user_id}.json").read_bytes())
    assert {f["id"] for f in listed["failures"] if f["kind"] == "quarantine"} == set(reasons)
    assert report.outcome.rows["workouts"] == 28
    seen = emulator.stats_snapshot()["by_id"]
    assert all("/" not in i and "." not in i for ids in seen.values() for i in ids)
    assert not any("passwd" in str(p) or "etc" in p.name for p in (tmp_path / "lake").rglob("*"))


@asynccontextmanager
async def outage(status: int = 503) -> AsyncIterator[str]:
    """A host in an outage: every request answers ``status``."""

    async def down(request: web.Request) -> web.Response:
        return web.json_response({"status": status, "message": "Service Unavailable"},
                                 status=status)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", down)
    async with served(app) as url:
        yield url


async def test_api_down_after_login_exits_3_listing_what_failed(make_emulator: MakeEmulator,
                                                                tmp_path: Path) -> None:
    """Logged in, then every API request 503s: exit 3, the failed pages listed, lake intact."""
    emulator = await make_emulator(workouts=10)
    await run_harvest(harvest_config(emulator.url, tmp_path), "backfill")
    before = lake_digest(tmp_path / "lake")
    async with outage() as url:
        config = write_config(tmp_path, url, api={"auth_url": emulator.url, "max_attempts": 2})
        done = await run_cli_async(["refresh", "--config", str(config), "--no-progress"],
                                   cli_env(tmp_path))
    assert done.returncode == 3, done.stderr
    assert "1 FAILED (retried next run)" in done.stdout
    failures = orjson.loads((tmp_path / "lake" / "_harvester" / "failures"
                             / f"{emulator.account.user_id}.json").read_bytes())
    assert [(f["kind"], f["id"]) for f in failures["failures"]] == [("list", "page 0")]
    assert "HTTP 503 server error" in failures["failures"][0]["error"]
    after = lake_digest(tmp_path / "lake")
    assert {k: v for k, v in after.items() if not k.startswith("_harvester")} == {
        k: v for k, v in before.items() if not k.startswith("_harvester")}


async def test_token_endpoint_down_exits_75_with_one_line(tmp_path: Path) -> None:
    """The login host 503s: one line naming the request and the status, exit 75 (try later),
    no lake rows."""
    async with outage() as url:
        config = write_config(tmp_path, url, api={"max_attempts": 2}, auth={"method": "password"})
        done = await run_cli_async(["backfill", "--config", str(config), "--no-progress"],
                                   cli_env(tmp_path))
    assert done.returncode == 75, done.stderr
    assert_one_line_error(done.stderr, "POST", "/oauth/token", "HTTP 503 server error")
    assert not list((tmp_path / "lake").glob("workouts/**/*.jsonl"))
