"""Shared fixtures: a real emulator on loopback, started per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from harvester.emulator import Emulator, EmulatorSettings

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
