"""``status``: what the lake's state, manifests and lock say, as a document or as text.

Read-only: it never takes a lock (a status during a run must not make the
run's start fail); it reads the holders' details from the lock files instead.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import orjson

from harvester.config import Config
from harvester.errors import LakeError
from harvester.lake import Lake
from harvester.state import StateStore
from harvester.storage import LocalStorage, open_storage

DEFAULT_LISTED = 5  # items of each kind named in the text form; --json lists them all
LOCKS = "_harvester/locks"  # storage/lease.py's local run locks, one per account
_ATTEMPT_KEYS = ("run_id", "command", "started_at", "duration_s", "outcome", "exit_code", "error")

Document = dict[str, object]


def read_status(config: Config) -> Document:
    """The lake's status: the running harvest, the last attempt, and per account its state."""
    storage = open_storage(config.output.root)
    local = isinstance(storage, LocalStorage)
    if local and not config.output.root_path.is_dir():
        raise LakeError(f"there is no lake at {storage.url}: check --out / output.root "
                        "(relative paths in a config file start at the file's folder)")
    store = StateStore(storage)
    lake = Lake(storage, config.output.compression)
    accounts = [_account(store, lake, user_id) for user_id in store.accounts()]
    latest = next(store.manifests(), None)
    return {
        "root": storage.url,
        # Object stores: the leases under _harvester/locks/*.json are not read here yet.
        "running": running_holders(config.output.root_path) if local else [],
        "last_attempt": _attempt(*latest) if latest else None,
        "accounts": accounts,
    }


def running_holders(root: Path) -> list[dict[str, object]]:
    """The runs holding an account's lock now, from ``_harvester/locks/*.lock``.

    A finished run empties its file; a killed one leaves its details behind, so a
    holder counts as running only while its pid lives on this host (one on
    another host is taken at its word).
    """
    holders: list[dict[str, object]] = []
    for path in sorted((root / LOCKS).glob("*.lock")):
        try:
            info = orjson.loads(path.read_bytes() or b"null")
        except (OSError, orjson.JSONDecodeError):
            continue
        if not isinstance(info, dict):
            continue
        pid = info.get("pid")
        dead = not isinstance(pid, int) or isinstance(pid, bool) or not _alive(pid)
        if info.get("host") == socket.gethostname() and dead:
            continue
        holders.append({str(k): v for k, v in info.items()})
    return holders


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return pid > 0


def _account(store: StateStore, lake: Lake, user_id: str) -> Document:
    state = store.load(user_id)
    latest = next(store.manifests(user_id), None)
    return {
        "user_id": user_id,
        "watermark": _iso(state.watermark) if state.watermark is not None else None,
        "backfill_complete": state.backfill_complete and not state.failures,
        "backfill_listed": state.backfill_complete,
        "last_run": state.last_run,
        "last_attempt": _attempt(*latest) if latest else None,
        "rows": lake.row_counts(user_id),
        "failures": [f.to_dict() for f in state.failures],
        "in_progress": list(state.in_progress),
        "missing_classes": list(state.missing_rides),
        "daily": dict(state.daily),
    }


def _attempt(key: str, manifest: dict[str, object]) -> Document:
    return {name: manifest.get(name) for name in _ATTEMPT_KEYS} | {
        "user_id": manifest.get("user_id"), "manifest": key}


def render(document: Document) -> list[str]:
    """The document as lines for people."""
    lines = [f"lake {document['root']}"]
    running = document.get("running")
    for holder in running if isinstance(running, list) else []:
        lines.append(f"running now: {holder.get('command', '?')} of account "
                     f"{holder.get('account', '?')}, pid {holder.get('pid', '?')} on host "
                     f"{holder.get('host', '?')}, since {holder.get('started_at', '?')}")
    accounts = document.get("accounts")
    attempt = document.get("last_attempt")
    if not accounts:
        lines.append("no account harvested yet")
        if isinstance(attempt, dict):
            lines.append(f"last attempt: {_describe(attempt)}")
        return lines
    assert isinstance(accounts, list)
    for account in accounts:
        lines += _account_lines(account)
    return lines


def _account_lines(account: Document) -> list[str]:
    last = account.get("last_run")
    last = last if isinstance(last, dict) else {}
    lines = [
        f"account {account['user_id']}",
        f"  watermark: {account.get('watermark') or 'none'}",
        f"  last run: {last.get('command', '-')} finished {last.get('finished_at', '-')}, "
        f"{last.get('outcome', '-')} (exit {last.get('exit_code', '-')})",
    ]
    attempt = account.get("last_attempt")
    if isinstance(attempt, dict) and attempt.get("run_id") != last.get("run_id"):
        lines.append(f"  last attempt: {_describe(attempt)}")
    failures = account.get("failures")
    assert isinstance(failures, list)
    if account.get("backfill_complete"):
        lines.append("  backfill complete: yes")
    elif account.get("backfill_listed") and failures:
        lines.append(f"  backfill complete: no, {len(failures)} items still to retry "
                     "(the next run fetches them first)")
    else:
        lines.append("  backfill complete: no")
    rows = account.get("rows")
    assert isinstance(rows, dict)
    lines.append("  rows: " + ", ".join(f"{k} {v}" for k, v in sorted(rows.items())))
    if failures:
        named = "; ".join(f"{f.get('kind')} {f.get('id')}: {f.get('error')}"
                          for f in failures[:DEFAULT_LISTED] if isinstance(f, dict))
        lines.append(f"  failures to retry: {len(failures)} ({named}"
                     f"{'; …' if len(failures) > DEFAULT_LISTED else ''})")
    lines += _id_line(account, "in_progress",
                      "in progress at the source (fetched once finished)")
    lines += _id_line(account, "missing_classes",
                      "classes without details (404: gym or retired classes; not asked again)")
    return lines


def _id_line(account: Document, key: str, label: str) -> list[str]:
    ids = account.get(key)
    if not isinstance(ids, list) or not ids:
        return []
    shown = ", ".join(str(i) for i in ids[:DEFAULT_LISTED])
    return [f"  {label}: {len(ids)} ({shown}{', …' if len(ids) > DEFAULT_LISTED else ''})"]


def _describe(attempt: Document) -> str:
    text = (f"{attempt.get('command', '?')} started {attempt.get('started_at', '?')}, "
            f"{attempt.get('outcome', '?')} (exit {attempt.get('exit_code', '?')})")
    if attempt.get("error"):
        text += f": {attempt['error']}"
    return text


def _iso(ts: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
