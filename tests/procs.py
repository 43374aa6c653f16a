"""The real CLI as a child process a test can signal, beside an in-process emulator."""

from __future__ import annotations

import gzip
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import anyio
import orjson
from anyio.abc import Process

TEMP_NAME = re.compile(r"\..+\.tmp-\d+-[0-9a-f]+")
POLL_S = 0.005
WAIT_S = 60.0  # no child run in these tests comes near this


@dataclass
class Cli:
    """A running ``python -m harvester`` with its output in files (no pipe to fill)."""

    process: Process
    out: Path
    err: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    async def wait(self) -> int:
        with anyio.fail_after(WAIT_S):
            return await self.process.wait()

    def stdout(self) -> str:
        return self.out.read_text(encoding="utf-8")

    def stderr(self) -> str:
        return self.err.read_text(encoding="utf-8")


async def start_cli(args: list[str], env: dict[str, str], logs: Path, name: str) -> Cli:
    out, err = logs / f"{name}.out", logs / f"{name}.err"
    stdout, stderr = _open_logs(out, err)
    with stdout, stderr:
        process = await anyio.open_process(
            [sys.executable, "-m", "harvester", *args], env=env, stdout=stdout, stderr=stderr
        )
    return Cli(process, out, err)


def _open_logs(out: Path, err: Path) -> tuple[BinaryIO, BinaryIO]:
    out.parent.mkdir(parents=True, exist_ok=True)
    return out.open("wb"), err.open("wb")


async def wait_until(check: Callable[[], bool]) -> None:
    """Poll ``check`` (it watches another process's effects, so there is no event to await)."""
    with anyio.fail_after(WAIT_S / 2):
        while not check():  # noqa: ASYNC110
            await anyio.sleep(POLL_S)


def whole_files(root: Path) -> list[Path]:
    """Assert every visible lake file holds whole JSON lines; return the hidden temp files."""
    temps: list[Path] = []
    if not root.exists():
        return temps
    for path in root.rglob("*"):
        if path.is_dir() or "_harvester" in path.relative_to(root).parts:
            continue
        if path.name.startswith("."):
            assert TEMP_NAME.fullmatch(path.name), path
            temps.append(path)
            continue
        assert path.name.endswith((".jsonl", ".jsonl.gz")), path
        data = path.read_bytes()
        if path.name.endswith(".gz"):
            data = gzip.decompress(data)
        assert data.endswith(b"\n"), f"{path} ends in a partial line"
        for line in data.splitlines():
            assert isinstance(orjson.loads(line), dict), path
    return temps
