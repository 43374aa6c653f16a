"""The harvester's own state under ``<root>/_harvester/``: nothing a table reads.

    _harvester/lock, _harvester/locks/   the run locks: storage/lease.py's
    _harvester/state/<user_id>.json      AccountState: watermark, daily snapshots, failures, resume
    _harvester/failures/<user_id>.json   the items the last run could not fetch, for people to read
    _harvester/runs/<UTC stamp, µs>-<run_id>.json   one manifest per run (failed ones too),
                                         the oldest pruned beyond ``output.keep_runs``

Everything goes through the lake's storage (harvester.storage), so a lake on
an object store carries its own state and any machine can continue it. On a
local disk every file is written atomically (temporary name, fsync, rename)
with mode 0600, in directories of mode 0700: state can name the account and
its history. The state is saved with compare-and-swap on the version loaded.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict, TypeVar

import orjson

from harvester.errors import LeaseLostError, StateError, StorageConflictError, StorageError
from harvester.storage import Storage, is_object_url, open_storage

STATE_DIR = "_harvester"
STATE_VERSION = 1
FAILURE_KINDS = ("workout", "performance_graph", "ride", "profile", "instructors",
                 "metadata_mappings", "list", "quarantine", "deletions")
_HEX32 = re.compile(r"[0-9a-f]{32}")
_RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
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
    """Reads and writes the objects under ``_harvester/`` on the lake's storage.

    ``load`` remembers the version it read; ``save`` writes on that version only
    (compare-and-swap; ``create`` for a first state), so a run that lost its
    account's lease to another run cannot overwrite what that run saved.
    """

    def __init__(self, storage: Storage | Path | str, *,
                 now: Callable[[], float] = time.time) -> None:
        self.storage = open_storage(str(storage)) if isinstance(storage, str | Path) else storage
        self.now = now
        self._versions: dict[str, str | None] = {}  # user id -> version loaded (None: absent)

    def where(self, key: str) -> str:
        """A key as a location for messages: the lake's root joined with it."""
        return f"{self.storage.url}/{key}"

    def load(self, user_id: str) -> AccountState:
        """The account's state; a fresh one if it has none yet."""
        key = _state_key(user_id)
        try:
            blob = self.storage.read(key)
        except StorageError as exc:
            if exc.exit_code != 2:
                raise
            raise StateError(str(exc)) from None
        self._versions[user_id] = None if blob is None else blob.version
        if blob is None:
            return AccountState(user_id=user_id)
        try:
            state = AccountState.from_dict(orjson.loads(blob.data))
        except (orjson.JSONDecodeError, ValueError) as exc:
            raise StateError(
                f"state file {self.where(key)} is unreadable ({_one_line(exc)}); "
                "move it aside to start this account's state afresh"
            ) from None
        if state.user_id != user_id:
            raise StateError(f"state file {self.where(key)} belongs to account {state.user_id!r:.40}")
        return state

    def save(self, state: AccountState) -> None:
        """Replace the account's state whole, if nobody else wrote it since ``load``.

        Without a ``load`` first it is created, or replaced on the version there now.
        """
        key = _state_key(state.user_id)
        data = _encode(key, state.to_dict())
        if state.user_id not in self._versions:
            blob = self.storage.read(key)
            self._versions[state.user_id] = None if blob is None else blob.version
        version = self._versions[state.user_id]
        try:
            if version is None:
                new = self.storage.create(key, data, private=True)
            else:
                new = self.storage.replace(key, data, version, private=True)
        except StorageConflictError:
            raise LeaseLostError(
                f"state {self.where(key)} was written by another run since this one read it "
                "(the account's lease was taken over); this run's state is not saved"
            ) from None
        self._versions[state.user_id] = new

    def accounts(self) -> list[str]:
        """User ids with a state file, sorted."""
        _, files = self.storage.list_dir(f"{STATE_DIR}/state")
        stems = (e.key.rpartition("/")[2].removesuffix(".json") for e in files
                 if e.key.endswith(".json"))
        return sorted(stem for stem in stems if _HEX32.fullmatch(stem))

    def exists(self, user_id: str) -> bool:
        """Whether the account has a state file (a run has recorded it before)."""
        return self.storage.stat(_state_key(user_id)) is not None

    def where_absolute(self, key: str) -> str:
        """``where``, with a local root made absolute (for logs read elsewhere)."""
        root = self.storage.url
        if not is_object_url(root):
            root = str(Path(root).absolute())
        return f"{root}/{key}"

    def manifest_path(self, run_id: str) -> str:
        """The key of ``run_id``'s manifest: ``runs/<UTC yyyymmddThhmmss.ffffffZ>-<run_id>.json``.

        Microseconds, so runs within one second still sort in the order they ran
        (pruning keeps the newest by name).
        """
        if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
            raise StateError(f"manifest run_id {run_id!r:.40} is not a short word")
        now = self.now()
        micros = round((now % 1) * 1_000_000) % 1_000_000
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f".{micros:06d}Z"
        return f"{STATE_DIR}/runs/{stamp}-{run_id}.json"

    def write_manifest(
        self, manifest: Mapping[str, object], *, keep: int | None = None, path: str | None = None,
    ) -> str:
        """Write a run's manifest (at key ``path``, else a new one), then keep the newest ``keep``."""
        if path is None:
            path = self.manifest_path(str(manifest.get("run_id")))
        self.storage.write(path, _encode(path, dict(manifest)), private=True)
        if keep is not None:
            self.prune_manifests(keep)
        return path

    def prune_manifests(self, keep: int) -> int:
        """Delete all but the newest ``keep`` manifests; how many went."""
        keys = self._manifest_keys()
        doomed = keys[:-keep] if keep > 0 else keys
        for key in doomed:
            self.storage.delete(key)
        return len(doomed)

    def manifests(self, user_id: str | None = None) -> Iterator[tuple[str, dict[str, object]]]:
        """(key, manifest), newest first; with ``user_id``, that account's and those of runs
        that stopped before their account was known (``user_id`` null)."""
        if user_id is not None:
            _check_user_id(user_id)
        for key in reversed(self._manifest_keys()):
            try:
                manifest = self._read_json(key)
            except StateError:
                continue  # pruned by a concurrent run since listed, or not ours to judge
            if not isinstance(manifest, dict):
                continue
            if user_id is None or manifest.get("user_id") in (user_id, None):
                yield key, {str(k): v for k, v in manifest.items()}

    def latest_manifest(self, user_id: str) -> dict[str, object] | None:
        """The newest manifest of the account's runs, or None."""
        _check_user_id(user_id)
        for _, manifest in self.manifests(user_id):
            if manifest.get("user_id") == user_id:
                return manifest
        return None

    def _manifest_keys(self) -> list[str]:
        """Manifest keys, oldest first: names start with the UTC time, so name order is time."""
        _, files = self.storage.list_dir(f"{STATE_DIR}/runs")
        return sorted(e.key for e in files if e.key.endswith(".json")
                      and not e.key.rpartition("/")[2].startswith("."))

    def write_failures(self, user_id: str, failures: Sequence[FailedItem]) -> None:
        """The account's outstanding failures, pretty-printed for people to read."""
        key = f"{STATE_DIR}/failures/{_check_user_id(user_id)}.json"
        updated = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.now()))
        document = {"user_id": user_id, "updated_at": updated,
                    "failures": [f.to_dict() for f in failures]}
        self.storage.write(key, _encode(key, document, pretty=True), private=True)

    def clean_temp_files(self) -> int:
        """Delete temporary files a killed run left here (local only); call it holding the lock."""
        return self.storage.sweep_temp(STATE_DIR)

    def _read_json(self, key: str) -> object:
        blob = self.storage.read(key)
        try:
            return orjson.loads(blob.data) if blob is not None else None
        except orjson.JSONDecodeError as exc:
            raise StateError(f"cannot read {self.where(key)}: {_one_line(exc)}") from None


# -- helpers -------------------------------------------------------------------


def _check_user_id(user_id: str) -> str:
    if not isinstance(user_id, str) or not _HEX32.fullmatch(user_id):
        raise StateError(f"user id {user_id!r:.60} is not 32 lower-case hex digits")
    return user_id


def _state_key(user_id: str) -> str:
    return f"{STATE_DIR}/state/{_check_user_id(user_id)}.json"


def _encode(key: str, document: Mapping[str, object], *, pretty: bool = False) -> bytes:
    option = orjson.OPT_INDENT_2 if pretty else 0
    try:
        return orjson.dumps(document, option=option) + b"\n"
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise StateError(f"cannot encode {key.rpartition('/')[2]}: {exc}") from None


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


