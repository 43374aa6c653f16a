"""Real filesystems for tests: a small tmpfs (full disks, read-only mounts) and an ext4 image
whose kernel turns it read-only on an error, as a failing disk does.

Mounting needs root (CAP_SYS_ADMIN) and, for ext4, a loop device and mkfs.ext4:
where any of that is missing, the test that asked is skipped, never faked.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE = 1
CAP_DAC_READ_SEARCH = 2


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=False, timeout=30)


def _mount(*args: str) -> None:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a filesystem needs root")
    done = _run("mount", *args)
    if done.returncode != 0:
        pytest.skip(f"cannot mount here: {done.stderr.strip()}")


def _unmount(path: Path) -> None:
    _run("umount", "-l", str(path))  # lazy: a child still inside it cannot keep it busy


@contextlib.contextmanager
def tmpfs(path: Path, size: str, *, read_only: bool = False) -> Iterator[Path]:
    """A tmpfs of ``size`` (e.g. "256k") mounted at ``path``."""
    path.mkdir(parents=True, exist_ok=True)
    _mount("-t", "tmpfs", "-o", f"size={size},mode=0755{',ro' if read_only else ''}", "tmpfs",
           str(path))
    try:
        yield path
    finally:
        _unmount(path)


@contextlib.contextmanager
def failing_ext4(path: Path, size_mb: int = 16) -> Iterator[Callable[[], None]]:
    """An ext4 image mounted with errors=remount-ro; yields a function that makes it fail.

    Calling it reports a filesystem error through sysfs, and the kernel turns the
    filesystem read-only at once (``emergency_ro``), open files included: what a
    disk going bad does to a running program.
    """
    if shutil.which("mkfs.ext4") is None:
        pytest.skip("mkfs.ext4 is not installed")
    image = path.with_suffix(".img")
    with image.open("wb") as handle:
        handle.truncate(size_mb * 1024 * 1024)
    made = _run("mkfs.ext4", "-q", "-F", str(image))
    if made.returncode != 0:
        pytest.skip(f"mkfs.ext4 failed: {made.stderr.strip()}")
    path.mkdir(parents=True, exist_ok=True)
    _mount("-o", "loop,errors=remount-ro", str(image), str(path))
    try:
        device = _run("findmnt", "-n", "-o", "SOURCE", str(path)).stdout.strip()
        trigger = Path("/sys/fs/ext4") / Path(device).name / "trigger_fs_error"
        if not trigger.exists():
            pytest.skip("this kernel cannot inject ext4 errors (no trigger_fs_error)")

        def fail() -> None:
            trigger.write_text("test: the disk turns read-only\n")

        yield fail
    finally:
        _unmount(path)
        image.unlink(missing_ok=True)


def fill(directory: Path) -> None:
    """Fill the filesystem holding ``directory`` to the last byte."""
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 1):  # big blocks, then the last few bytes one at a time
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)


def without_root_file_powers() -> None:
    """For ``preexec_fn``: drop the capabilities that let root ignore file permissions.

    As root, chmod 000 blocks nothing; without CAP_DAC_OVERRIDE and
    CAP_DAC_READ_SEARCH in the bounding set, the exec'ed child is held to the
    file modes like any user (it still owns everything root owns).
    """
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")
