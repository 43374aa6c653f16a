"""Temporary names (unique within a process and across processes sharing a directory) and
the shared durability barrier (group commit)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from harvester import files
from harvester.files import TEMP_NAME, temp_name


def test_temporary_names_never_repeat_in_a_process() -> None:
    """10,000 names for the same file are all different and all look temporary to the lake."""
    names = [temp_name("2024-01-01.jsonl") for _ in range(10_000)]
    assert len(set(names)) == len(names)
    assert all(TEMP_NAME.fullmatch(name) for name in names)


def test_a_forked_child_names_apart_from_its_parent() -> None:
    """A forked child (same counter, same memory) still names files its parent never will."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next names and leave at once
        os.write(write, "\n".join(temp_name("f") for _ in range(3)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as pipe:
        child = set(pipe.read().split("\n"))
    parent = {temp_name("f") for _ in range(3)}
    assert len(child) == 3 and not child & parent
    assert {name.split("-")[1] for name in child} == {str(pid)}


def _gated_syncs(monkeypatch: pytest.MonkeyPatch, fail_first: bool = False) -> tuple[
        list[str], threading.Event, threading.Event]:
    """Replace the syscall with one that records each call and holds the first until released."""
    calls: list[str] = []
    started, release = threading.Event(), threading.Event()

    def fake(path: Path) -> None:
        calls.append(threading.current_thread().name)
        if len(calls) == 1:
            started.set()
            release.wait(5)
            if fail_first:
                raise OSError(5, "Input/output error")

    monkeypatch.setattr(files, "_sync_now", fake)
    return calls, started, release


def _wait_for_asks(path: Path, count: int) -> None:
    group = files._GROUPS[str(path)]
    for _ in range(5000):
        if group._asked >= count:
            return
        threading.Event().wait(0.001)
    raise AssertionError(f"only {group._asked} of {count} callers asked for a barrier")


def test_callers_arriving_during_a_sync_share_the_next_one(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Group commit: while one syncfs runs, the callers that arrive are all covered by one
    more syncfs (it begins after their writes), not one each."""
    calls, started, release = _gated_syncs(monkeypatch)
    first = threading.Thread(target=files.sync_filesystem, args=(tmp_path,), name="first")
    first.start()
    assert started.wait(5)
    late = [threading.Thread(target=files.sync_filesystem, args=(tmp_path,), name=f"late{i}")
            for i in range(4)]
    for thread in late:
        thread.start()
    _wait_for_asks(tmp_path, 5)  # the four have asked for their barrier
    release.set()
    for thread in [first, *late]:
        thread.join(5)
    assert len(calls) == 2  # the first caller's sync, then one for the four who came during it
    files.sync_filesystem(tmp_path)  # a caller after all that still gets a sync of its own
    assert len(calls) == 3


def test_a_failed_sync_covers_no_one(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """When the sync a caller waited behind fails, the caller syncs for itself."""
    calls, started, release = _gated_syncs(monkeypatch, fail_first=True)
    errors: list[BaseException] = []

    def leader() -> None:
        try:
            files.sync_filesystem(tmp_path)
        except OSError as exc:
            errors.append(exc)

    first = threading.Thread(target=leader, name="first")
    first.start()
    assert started.wait(5)
    follower = threading.Thread(target=files.sync_filesystem, args=(tmp_path,), name="follower")
    follower.start()
    _wait_for_asks(tmp_path, 2)
    release.set()
    first.join(5)
    follower.join(5)
    assert len(errors) == 1
    assert calls == ["first", "follower"]
