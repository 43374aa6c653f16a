"""Temporary names: unique within a process and across processes sharing a directory."""

from __future__ import annotations

import os

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
