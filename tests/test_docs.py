"""The documentation is self-contained and true: links resolve, recipes run, messages exist,
the unattended examples do what they say."""

from __future__ import annotations

import ast
import configparser
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from harvester.cli import build_parser
from harvester.run import run_harvest
from tests.harness import cli_env, harvest_config

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# What a README message may hold that the code's text does not: placeholders and examples.
PLACEHOLDER = re.compile(r"[(),;:…]|\.\.\.|\b(?:A|X|N|M|U|T|H|HOST|HTTP|\d+)\b|\S*[._'\"=/<>{}`-]\S*")
RECIPE = re.compile(r"<!-- recipe -->\n```sh\n(.*?)```", re.S)


def _anchor(heading: str) -> str:
    return re.sub(r"[^a-z0-9 -]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_in_the_readme_and_docs_resolves_in_a_clone() -> None:
    """Relative links point at files in the repository (never ../shared), anchors at headings."""
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        assert "../shared" not in text and "/work/shared" not in text, doc
        for target in LINK.findall(text):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path, _, anchor = target.partition("#")
            file = (doc.parent / path).resolve() if path else doc
            assert file.exists(), f"{doc.name}: {target}"
            assert REPO in file.parents or file == REPO, f"{doc.name}: {target} leaves the repository"
            if anchor and file.suffix == ".md":
                headings = {_anchor(h) for h in re.findall(r"^#+ (.*)$", file.read_text(encoding="utf-8"), re.M)}
                assert anchor in headings, f"{doc.name}: {target}"


def _code_strings() -> list[str]:
    """Every string literal in the package; f-strings with their placeholders as NUL."""
    found: list[str] = []
    for path in (REPO / "harvester").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                found.append(node.value)
            elif isinstance(node, ast.JoinedStr):
                found.append("".join(v.value if isinstance(v, ast.Constant) else "\0"
                                     for v in node.values))
    return found


def test_troubleshooting_messages_are_ones_the_code_prints() -> None:
    """Each message in the README's troubleshooting table (placeholders aside) is in the code."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    table = readme.split("## Troubleshooting", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) > 20
    corpus = "\n".join(_code_strings())
    for row in rows:
        message = re.search(r"``(.+?)``|`(.+?)`", row)
        assert message is not None, row
        text = message.group(1) or message.group(2)
        # Between placeholders (X, N, …) and example values, every run of 3+ words is the code's.
        phrases = [" ".join(p.split()) for p in PLACEHOLDER.split(text)]
        phrases = ([p for p in phrases if len(p.split()) >= 3]
                   or [p for p in phrases if len(p.split()) == 2] or [max(phrases, key=len)])
        for phrase in phrases:
            assert phrase in corpus, f"{phrase!r} is not in the code ({text!r})"
        code = int(row.split("|")[-3].strip())
        assert code in (0, 1, 2, 3, 4, 75, 130), row


@pytest.fixture(scope="module")
def demo_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding ``demo-lake`` (written with gzip) and ``.venv/bin/python``, as after
    ./scripts/demo in a clone; recipes run there as printed."""
    import anyio

    from harvester.emulator import Emulator, EmulatorSettings

    home = tmp_path_factory.mktemp("clone")

    async def harvest() -> None:
        async with Emulator(EmulatorSettings(workouts=150, seed=5)) as emulator:
            config = harvest_config(emulator.url, home, output__root=str(home / "demo-lake"),
                                    output__compression="gzip")
            assert (await run_harvest(config, "backfill")).exit_code == 0

    anyio.run(harvest)
    (home / ".venv" / "bin").mkdir(parents=True)
    python = home / ".venv" / "bin" / "python"  # this interpreter, venv and all
    python.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} \"$@\"\n", encoding="utf-8")
    python.chmod(0o755)
    return home


def test_readme_recipes_run_as_printed_on_a_gzip_lake(demo_lake: Path) -> None:
    """The DuckDB, pandas and polars recipes run unchanged and read every workout, .gz included."""
    recipes = RECIPE.findall((REPO / "README.md").read_text(encoding="utf-8"))
    assert len(recipes) == 4
    assert not list(demo_lake.glob("demo-lake/workouts/**/*.jsonl")), "the lake is all gzip"
    outputs = []
    for recipe in recipes:
        done = subprocess.run(["bash", "-c", recipe], cwd=demo_lake, capture_output=True, text=True,
                              timeout=120, check=False)
        assert done.returncode == 0, (recipe, done.stderr)
        assert done.stderr == "", done.stderr  # no warnings either
        outputs.append(done.stdout)
    duck_days, duck_classes, pandas_days, polars_disciplines = outputs
    assert "local_day" in duck_days and "in_another_local_day" in duck_days
    assert re.search(r"│\s+\d+\s+│\s+150\s+│", duck_days), duck_days  # every workout counted
    assert "times_taken" in duck_classes
    assert "local_day" in pandas_days
    counts = [int(n) for n in re.findall(r"┆ (\d+)\s+│", polars_disciplines)]
    assert "fitness_discipline" in polars_disciplines and counts


def _crontab_command() -> str:
    lines = [line for line in (REPO / "examples" / "cron" / "crontab").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert len(lines) == 1
    return lines[0].split(None, 5)[5]


async def test_crontab_line_runs_as_written(make_emulator: Any, tmp_path: Path) -> None:
    """The crontab command, run by sh with only HOME set (as cron does), reads the env file,
    runs a quiet refresh through the wrapper, prints nothing and leaves a manifest."""
    import anyio

    from tests.harness import PASSWORD, USERNAME, write_config

    emulator = await make_emulator(workouts=5)
    home = tmp_path / "home"
    secrets = home / ".config" / "peloton-harvester" / "env"
    secrets.parent.mkdir(parents=True)
    secrets.write_text(f"PELOTON_USERNAME='{USERNAME}'\nPELOTON_PASSWORD='{PASSWORD}'\n")
    executable = home / "peloton-harvester" / ".venv" / "bin" / "peloton-harvester"
    executable.parent.mkdir(parents=True)
    executable.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m harvester \"$@\"\n")
    executable.chmod(0o755)
    shutil.copytree(REPO / "examples", home / "peloton-harvester" / "examples")
    (home / "peloton").mkdir()
    write_config(home / "peloton", emulator.url).rename(home / "peloton" / "peloton-harvester.toml")
    env = {"HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    done = await anyio.run_process(["sh", "-c", _crontab_command()], env=env, cwd="/", check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout + done.stderr == b""
    [manifest] = (home / "peloton" / "lake" / "_harvester" / "runs").glob("*.json")
    assert b'"command":"refresh"' in manifest.read_bytes()


@pytest.mark.parametrize(("scenario", "code", "silent"), [("ok", 0, True), ("down", 0, True),
                                                         ("wrong-password", 4, False)])
async def test_cron_wrapper_is_silent_on_success_and_on_exit_75(
        make_emulator: Any, tmp_path: Path, scenario: str, code: int, silent: bool) -> None:
    """refresh-quietly: no output on success or on a temporary failure (exit 75, retried by the
    next run); anything else is printed with its exit code, for cron to mail."""
    import anyio

    from tests.harness import write_config
    from tests.test_bad_input import outage

    emulator = await make_emulator(workouts=4)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "peloton-harvester"
    shim.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m harvester \"$@\"\n")
    shim.chmod(0o755)
    env = cli_env(tmp_path, PELOTON_HARVESTER=str(shim))
    if scenario == "wrong-password":
        env["PELOTON_PASSWORD"] = "wrong"
    wrapper = str(REPO / "examples" / "cron" / "refresh-quietly")

    async def run(url: str) -> Any:
        config = write_config(tmp_path, url, api={"max_attempts": 1})
        return await anyio.run_process([wrapper, "--config", str(config)], env=env, check=False)

    if scenario == "down":
        async with outage() as url:
            done = await run(url)
    else:
        done = await run(emulator.url)
    assert done.returncode == code, done.stdout
    assert (done.stdout + done.stderr == b"") is silent, done.stdout
    if not silent:
        assert b"PELOTON_PASSWORD" in done.stdout


def test_systemd_service_runs_a_quiet_refresh_and_retries_only_exit_75() -> None:
    """The service's ExecStart is a valid quiet refresh; Restart covers 75, not 1/2/3/4/130."""
    service = configparser.ConfigParser(strict=False, interpolation=None)
    service.read(REPO / "examples" / "systemd" / "peloton-harvester.service")
    argv = shlex.split(service["Service"]["ExecStart"])
    assert argv[0].endswith("/peloton-harvester")
    args = build_parser().parse_args(argv[1:])
    assert args.command == "refresh" and args.quiet and args.config is not None
    assert service["Service"]["Restart"] == "on-failure"
    prevented = set(service["Service"]["RestartPreventExitStatus"].split())
    assert "75" not in prevented and {"1", "2", "3", "4"} <= prevented
    timer = configparser.ConfigParser(strict=False, interpolation=None)
    timer.read(REPO / "examples" / "systemd" / "peloton-harvester.timer")
    assert timer["Timer"]["OnCalendar"] and timer["Install"]["WantedBy"] == "timers.target"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """systemd itself accepts the unit files (paths pointed at this checkout)."""
    executable = Path(sys.executable).parent / "peloton-harvester"
    if not executable.exists():
        pytest.skip("the console script is not installed next to this interpreter")
    for name in ("peloton-harvester.service", "peloton-harvester.timer"):
        text = (REPO / "examples" / "systemd" / name).read_text(encoding="utf-8")
        text = text.replace("%h/peloton-harvester/.venv/bin/peloton-harvester", str(executable))
        (tmp_path / name).write_text(text, encoding="utf-8")
    done = subprocess.run(["systemd-analyze", "verify", *(str(tmp_path / n) for n in
                           ("peloton-harvester.service", "peloton-harvester.timer"))],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "SYSTEMD_LOG_LEVEL": "warning"})
    assert done.returncode == 0, done.stderr
