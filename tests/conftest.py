"""Shared fixtures: a real emulator on loopback, started per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from harvester.emulator import Emulator, EmulatorSettings
from harvester.storage import Storage, open_storage
from tests.s3 import MotoS3

TEST_WORKOUTS = 60
MakeEmulator = Callable[..., Awaitable[Emulator]]


@pytest.fixture
async def make_emulator() -> AsyncIterator[MakeEmulator]:
    """Factory: `await make_emulator(faults="flaky")` starts one; all stop at teardown."""
    started: list[Emulator] = []

    async def make(**settings: Any) -> Emulator:
        settings.setdefault("workouts", TEST_WORKOUTS)
        emulator = Emulator(EmulatorSettings(**settings))
        await emulator.start()
        started.append(emulator)
        return emulator

    yield make
    for emulator in started:
        await emulator.stop()


@pytest.fixture
async def emulator(make_emulator: MakeEmulator) -> Emulator:
    """A started emulator with default settings and 60 workouts."""
    return await make_emulator()


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3]:
    """One moto S3 server on loopback for the session; each test makes its own bucket."""
    server = MotoS3().start()
    yield server
    server.stop()


@pytest.fixture
def s3_root(moto_s3: MotoS3, monkeypatch: pytest.MonkeyPatch) -> str:
    """``s3://<fresh bucket>/lake`` with AWS_* in the environment pointing at moto."""
    for name, value in moto_s3.env().items():
        monkeypatch.setenv(name, value)
    return f"s3://{moto_s3.make_bucket()}/lake"


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    """The same tests against both backends: a local folder and a bucket on moto."""
    if request.param == "local":
        return open_storage(str(tmp_path / "lake"))
    return open_storage(request.getfixturevalue("s3_root"))
