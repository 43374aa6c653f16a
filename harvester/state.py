"""The harvester's own state under ``<root>/_harvester/``: nothing a table reads.

    _harvester/lock, _harvester/locks/   the run locks: storage/lease.py's
    _harvester/state/<user_id>.json      AccountState: watermark, daily snapshots, failures, resume
    _harvester/failures/<user_id>.json   the items the last run could not fetch, for people to read
    _harvester/runs/<UTC stamp, µs>-<run_id>.json   one manifest per run (failed ones too),
                                         the oldest pruned beyond ``output.keep_runs``

Every file is written atomically (temporary name, fsync, rename) with mode 0600,
in directories of mode 0700: state can name the account and its history.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict, TypeVar

import orjson

from harvester.errors import StateError
from harvester.files import atomic_write

STATE_DIR = "_harvester"
STATE_VERSION = 1
FAILURE_KINDS = ("workout", "performance_graph", "ride", "profile", "instructors",
                 "metadata_mappings", "list", "quarantine", "deletions")
_HEX32 = re.compile(r"[0-9a-f]{32}")
_RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_TEMP = re.compile(r"\..+\.tmp-\d+-[0-9a-f]+")
T = TypeVar("T")


class FailedItemDict(TypedDict):
    kind: str
    id: str
    endpoint: str
    error: str
    attempts: int


@dataclass(slots=True)
class FailedItem:
    """One item a run could not fetch or store; the next run retries it."""

    kind: str  # one of FAILURE_KINDS
    id: str
    endpoint: str
    error: str  # the last error's one-line message (never holds a secret)
    attempts: int = 1

    def to_dict(self) -> FailedItemDict:
        return {"kind": self.kind, "id": self.id, "endpoint": self.endpoint,
                "error": self.error, "attempts": self.attempts}

    @classmethod
    def from_dict(cls, data: object) -> FailedItem:
        if not isinstance(data, dict):
            raise ValueError("a failure is not an object")
        return cls(kind=_get(data, "kind", str), id=_get(data, "id", str),
                   endpoint=_get(data, "endpoint", str), error=_get(data, "error", str),
                   attempts=_get(data, "attempts", int))


@dataclass(slots=True)
class AccountState:
    """What one account's runs remember between runs."""

    user_id: str
    watermark: int | None = None  # newest created_at (epoch s) below which all is committed
    daily: dict[str, str] = field(default_factory=dict)  # dataset -> UTC day last fetched
    failures: list[FailedItem] = field(default_factory=list)  # retried first next run
    in_progress: list[str] = field(default_factory=list)  # workout ids IN_PROGRESS last run
    missing_rides: list[str] = field(default_factory=list)  # ride ids that answered 404
    backfill_complete: bool = False  # a run has listed the whole history once
    reconciled_day: str | None = None  # UTC day a run last listed everything (reconcile.py)
    reconciled_gap: int | None = None  # the listing's total minus the lake's count, then
    last_run: dict[str, object] | None = None  # run_id, command, times, outcome, exit_code

    def to_dict(self) -> dict[str, object]:
        return {
            "version": STATE_VERSION,
            "user_id": self.user_id,
            "watermark": self.watermark,
            "daily": dict(self.daily),
            "failures": [f.to_dict() for f in self.failures],
            "in_progress": list(self.in_progress),
            "missing_rides": list(self.missing_rides),
            "backfill_complete": self.backfill_complete,
            "reconciled_day": self.reconciled_day,
            "reconciled_gap": self.reconciled_gap,
            "last_run": self.last_run,
        }

    @classmethod
    def from_dict(cls, data: object) -> AccountState:
        """Raises ValueError on a wrong shape; unknown keys are ignored (newer versions)."""
        if not isinstance(data, dict):
            raise ValueError("state is not a JSON object")
        watermark = data.get("watermark")
        if watermark is not None and (
            isinstance(watermark, bool) or not isinstance(watermark, int)
        ):
            raise ValueError("watermark is not an integer")
        daily = data.get("daily", {})
        if not isinstance(daily, dict) or not all(isinstance(v, str) for v in daily.values()):
            raise ValueError("daily is not an object of strings")
        last_run = data.get("last_run")
        if last_run is not None and not isinstance(last_run, dict):
            raise ValueError("last_run is not an object")
        backfill_complete = data.get("backfill_complete", False)
        if not isinstance(backfill_complete, bool):
            raise ValueError("backfill_complete is not true or false")
        reconciled_day, reconciled_gap = data.get("reconciled_day"), data.get("reconciled_gap")
        if reconciled_day is not None and not isinstance(reconciled_day, str):
            raise ValueError("reconciled_day is not a string")
        if reconciled_gap is not None and (
            isinstance(reconciled_gap, bool) or not isinstance(reconciled_gap, int)
        ):
            raise ValueError("reconciled_gap is not an integer")
        return cls(
            user_id=_get(data, "user_id", str),
            watermark=watermark,
            daily={str(k): v for k, v in daily.items()},
            failures=[FailedItem.from_dict(f) for f in _list(data, "failures")],
            in_progress=_strings(data, "in_progress"),
            missing_rides=_strings(data, "missing_rides"),
            backfill_complete=backfill_complete,
            reconciled_day=reconciled_day,
            reconciled_gap=reconciled_gap,
            last_run=last_run,
        )


class StateStore:
    """Reads and writes the files under ``<root>/_harvester``."""

    def __init__(self, root: Path, *, now: Callable[[], float] = time.time) -> None:
        self.root = Path(root)
        self.dir = self.root / STATE_DIR
        self.now = now

    def load(self, user_id: str) -> AccountState:
        """The account's state; a fresh one if it has none yet."""
        path = self._state_path(user_id)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return AccountState(user_id=user_id)
        except OSError as exc:
            raise StateError(f"cannot read state file {path}: {exc.strerror or exc}") from None
        try:
            state = AccountState.from_dict(orjson.loads(raw))
        except (orjson.JSONDecodeError, ValueError) as exc:
            raise StateError(
                f"state file {path} is unreadable ({_one_line(exc)}); "
                "move it aside to start this account's state afresh"
            ) from None
        if state.user_id != user_id:
            raise StateError(f"state file {path} belongs to account {state.user_id!r:.40}")
        return state

    def exists(self, user_id: str) -> bool:
        """Whether the account has a state file (a run has recorded it before)."""
        return self._state_path(user_id).is_file()

    def save(self, state: AccountState) -> None:
        """Replace the account's state file atomically."""
        self._write(self._state_path(state.user_id), state.to_dict())

    def accounts(self) -> list[str]:
        """User ids with a state file, sorted."""
        directory = self.dir / "state"
        if not directory.is_dir():
            return []
        return sorted(p.stem for p in directory.glob("*.json") if _HEX32.fullmatch(p.stem))

    def manifest_path(self, run_id: str) -> Path:
        """Where the manifest of ``run_id`` goes: ``runs/<UTC yyyymmddThhmmss.ffffffZ>-<run_id>.json``.

        Microseconds, so runs within one second still sort in the order they ran
        (pruning keeps the newest by name).
        """
        if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
            raise StateError(f"manifest run_id {run_id!r:.40} is not a short word")
        now = self.now()
        micros = round((now % 1) * 1_000_000) % 1_000_000
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f".{micros:06d}Z"
        return self.dir / "runs" / f"{stamp}-{run_id}.json"

    def write_manifest(
        self, manifest: Mapping[str, object], *, keep: int | None = None, path: Path | None = None,
    ) -> Path:
        """Write a run's manifest (at ``path``, else a new name), then keep the newest ``keep``."""
        if path is None:
            path = self.manifest_path(str(manifest.get("run_id")))
        self._write(path, dict(manifest))
        if keep is not None:
            self.prune_manifests(keep)
        return path

    def prune_manifests(self, keep: int) -> int:
        """Delete all but the newest ``keep`` manifests; how many went."""
        paths = self._manifest_paths()
        doomed = paths[:-keep] if keep > 0 else paths
        for path in doomed:
            path.unlink(missing_ok=True)
        return len(doomed)

    def manifests(self, user_id: str | None = None) -> Iterator[tuple[Path, dict[str, object]]]:
        """Manifests, newest first; with ``user_id``, that account's and those of runs
        that stopped before their account was known (``user_id`` null)."""
        if user_id is not None:
            _check_user_id(user_id)
        for path in reversed(self._manifest_paths()):
            try:
                manifest = _read_json(path)
            except StateError:
                continue  # pruned by a concurrent run since listed, or not ours to judge
            if not isinstance(manifest, dict):
                continue
            if user_id is None or manifest.get("user_id") in (user_id, None):
                yield path, {str(k): v for k, v in manifest.items()}

    def latest_manifest(self, user_id: str) -> dict[str, object] | None:
        """The newest manifest of the account's runs, or None."""
        _check_user_id(user_id)
        for _, manifest in self.manifests(user_id):
            if manifest.get("user_id") == user_id:
                return manifest
        return None

    def _manifest_paths(self) -> list[Path]:
        """Manifest files, oldest first: names start with the UTC time, so name order is time."""
        directory = self.dir / "runs"
        if not directory.is_dir():
            return []
        return sorted(p for p in directory.glob("*.json") if not p.name.startswith("."))

    def write_failures(self, user_id: str, failures: Sequence[FailedItem]) -> None:
        """The account's outstanding failures, pretty-printed for people to read."""
        path = self.dir / "failures" / f"{_check_user_id(user_id)}.json"
        updated = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.now()))
        document = {"user_id": user_id, "updated_at": updated,
                    "failures": [f.to_dict() for f in failures]}
        self._write(path, document, pretty=True)

    def clean_temp_files(self) -> int:
        """Delete temporary files a killed run left here; call it holding the lock."""
        removed = 0
        for directory in (self.dir, *(self.dir / d for d in ("state", "failures", "runs"))):
            if directory.is_dir():
                for path in directory.iterdir():
                    if _TEMP.fullmatch(path.name) and path.is_file():
                        path.unlink(missing_ok=True)
                        removed += 1
        return removed

    def _state_path(self, user_id: str) -> Path:
        return self.dir / "state" / f"{_check_user_id(user_id)}.json"

    def _write(self, path: Path, document: Mapping[str, object], *, pretty: bool = False) -> None:
        option = orjson.OPT_INDENT_2 if pretty else 0
        try:
            data = orjson.dumps(document, option=option) + b"\n"
        except (TypeError, orjson.JSONEncodeError) as exc:
            raise StateError(f"cannot encode {path.name}: {exc}") from None
        try:
            _private_dirs(self.dir, path.parent)
            _atomic_write(path, data)
        except OSError as exc:
            raise StateError(f"cannot write {path}: {exc.strerror or exc}") from None


# -- helpers -------------------------------------------------------------------


def _check_user_id(user_id: str) -> str:
    if not isinstance(user_id, str) or not _HEX32.fullmatch(user_id):
        raise StateError(f"user id {user_id!r:.60} is not 32 lower-case hex digits")
    return user_id


def _read_json(path: Path) -> object:
    try:
        return orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise StateError(f"cannot read {path}: {_one_line(exc)}") from None


def _get(data: dict[str, object], key: str, kind: type[T]) -> T:
    value = data.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
        raise ValueError(f"{key} is not a {kind.__name__}")
    return value


def _list(data: dict[str, object], key: str) -> list[object]:
    value = data.get(key, [])
    if not isinstance(value, list):
        raise ValueError(f"{key} is not a list")
    return value


def _strings(data: dict[str, object], key: str) -> list[str]:
    values = _list(data, key)
    if not all(isinstance(v, str) for v in values):
        raise ValueError(f"{key} is not a list of strings")
    return [str(v) for v in values]


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _private_dirs(top: Path, directory: Path) -> None:
    """Create ``directory`` (inside ``top``) and ``top`` with mode 0700."""
    for path in (top, directory):
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if path.stat().st_mode & 0o777 != 0o700:
            path.chmod(0o700)


def _atomic_write(target: Path, data: bytes) -> None:
    atomic_write(target, data, 0o600)
