"""Shared helpers for tests that run harvests against the emulator."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from harvester.config import Config, load_config

USERNAME = "demo@example.com"
PASSWORD = "peloton-demo"
PRIMARY_KEYS = {
    "workouts": ("id",),
    "performance_graphs": ("workout_id",),
    "rides": ("ride_id",),
    "instructors": ("id",),
    "profiles": ("user_id", "date"),
}


def harvest_config(url: str, tmp_path: Path, **overrides: object) -> Config:
    """A config pointed at an emulator, fast and with a private token cache."""
    values: dict[str, object] = {
        "api.base_url": url,
        "api.auth_url": url,
        "api.timeout_s": 5.0,
        "auth.token_cache": str(tmp_path / "tokens.json"),
        "output.root": str(tmp_path / "lake"),
        "harvest.requests_per_second": 2000.0,
        "harvest.concurrency": 8,
    }
    values.update({k.replace("__", "."): v for k, v in overrides.items()})
    env = {"PELOTON_USERNAME": USERNAME, "PELOTON_PASSWORD": PASSWORD}
    return load_config(None, env=env, overrides=values, search_default=False)


async def stats(url: str, *, arrivals: bool = False) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        query = "?arrivals=1" if arrivals else ""
        async with session.get(f"{url}/_emulator/stats{query}") as response:
            result: dict[str, Any] = orjson.loads(await response.read())
            return result


async def admin(url: str, path: str, body: object | None = None) -> Any:
    async with aiohttp.ClientSession() as session, session.post(
        f"{url}/_emulator/{path}", json=body
    ) as response:
        response.raise_for_status()
        return orjson.loads(await response.read())


def lake_files(root: Path, dataset: str) -> list[Path]:
    base = root / dataset
    return sorted([*base.glob("**/*.jsonl"), *base.glob("**/*.jsonl.gz")])


def lake_rows(root: Path, dataset: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for path in lake_files(root, dataset):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as handle:
            rows.extend(orjson.loads(line) for line in handle if line.strip())
    return rows


def comparable(root: Path) -> dict[str, dict[str, bytes]]:
    """Every dataset as {primary key: row bytes without _harvested_at}; duplicates fail."""
    result: dict[str, dict[str, bytes]] = {}
    for dataset, key in PRIMARY_KEYS.items():
        rows: dict[str, bytes] = {}
        for row in lake_rows(root, dataset):
            pk = "|".join(str(row.get(k)) for k in key) if dataset != "profiles" else str(row["user_id"])
            assert pk not in rows, f"duplicate {dataset} key {pk}"
            row.pop("_harvested_at", None)
            rows[pk] = orjson.dumps(row, option=orjson.OPT_SORT_KEYS)
        result[dataset] = rows
    return result


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PELOTON_")}
    env.update({"PELOTON_USERNAME": USERNAME, "PELOTON_PASSWORD": PASSWORD, **extra})
    return env


def write_config(tmp_path: Path, url: str, **sections: dict[str, object]) -> Path:
    """A TOML config for CLI tests, pointed at an emulator."""
    base: dict[str, dict[str, object]] = {
        "api": {"base_url": url, "auth_url": url, "timeout_s": 5.0},
        "auth": {"token_cache": str(tmp_path / "tokens.json")},
        "harvest": {"requests_per_second": 2000.0, "concurrency": 8},
        "output": {"root": str(tmp_path / "lake")},
    }
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    lines: list[str] = []
    for name, values in base.items():
        lines.append(f"[{name}]")
        for key, value in values.items():
            lines.append(f"{key} = {_toml(value)}")
    path = tmp_path / "config.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _toml(value: object) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


def run_cli(args: list[str], env: dict[str, str], *, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "harvester", *args], env=env, capture_output=True, text=True,
        timeout=timeout, check=False,
    )


async def run_cli_async(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run the CLI without blocking the event loop an in-process emulator serves on."""
    import anyio

    done = await anyio.run_process(
        [sys.executable, "-m", "harvester", *args], env=env, check=False
    )
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
    )
