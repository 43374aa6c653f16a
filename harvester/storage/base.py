"""The storage interface the lake and the state stand on, and what a lake root names.

A key is a relative, ``/``-separated path inside the root (``workouts/date=2024-01-02/<id>.jsonl``).
Every operation works on whole objects:

    read(key)                      -> Blob(data, version) | None
    write(key, data)               replace whole and durably (local: temp name + rename)
    create(key, data)              only if absent, else StorageConflictError; -> version
    replace(key, data, version)    only if unchanged since read, else StorageConflictError; -> version
    delete(key)                    gone (absent is fine)
    move(key, to)                  to ``to`` (replacing it); local: one rename, objects: copy + delete
    stat(key)                      -> Entry | None, without reading the content
    walk(prefix) / list_dir(prefix)  whole objects only, never a temporary name
    batch()                        stage many writes, then publish them together and in order
    sweep_temp(prefix)             remove temporaries a killed writer left (local only)

A ``version`` is an opaque token: the ETag on object stores, a hash of the
content on a local disk. ``replace`` is compare-and-swap on it, so two
writers that read, merge and write back never lose each other's update: the
loser gets StorageConflictError, reads again, merges again.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol
from urllib.parse import urlsplit

from harvester.errors import ConfigError

OBJECT_SCHEMES = {"s3": "s3", "s3a": "s3", "gs": "gs", "gcs": "gs", "az": "az", "abfs": "az",
                  "azure": "az"}
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_SEGMENT = re.compile(r"[^/\\\x00]+")
_BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{2,254}")  # S3, GCS and Azure: 3 or more


class Blob:
    """An object's whole content and the version to pass to ``replace``.

    The version may be given as a function of the content, called on first use:
    a local disk's version is a hash of the whole file, which only compare-and-swap
    needs, and most reads (the lake merging a partition) never ask for it.
    """

    __slots__ = ("_version", "data")

    def __init__(self, data: bytes, version: str | Callable[[bytes], str]) -> None:
        self.data = data
        self._version = version

    @property
    def version(self) -> str:
        if not isinstance(self._version, str):
            self._version = self._version(self.data)
        return self._version

    def __repr__(self) -> str:
        return f"<Blob {len(self.data)} bytes>"


@dataclass(frozen=True, slots=True)
class Entry:
    """One object in a listing."""

    key: str
    size: int
    modified_ns: int  # last modification, ns since the epoch (orders two variants of a file)
    etag: str = ""  # the object store's ETag from the listing; "" on a local disk


@dataclass(frozen=True, slots=True)
class ObjectUrl:
    """``s3://bucket/prefix`` taken apart; ``scheme`` is one of ``s3``, ``gs``, ``az``."""

    scheme: str
    bucket: str
    prefix: str

    def __str__(self) -> str:
        return f"{self.scheme}://{self.bucket}/{self.prefix}".rstrip("/")


class Batch(Protocol):
    """Writes staged together, then published in the order they were staged.

    Local: each ``put`` writes a temporary file; ``commit`` makes all of them
    durable with one barrier, renames each into place, removes the keys it
    ``replaces`` and makes that durable with a second barrier. Object store:
    ``commit`` PUTs each whole object, the objects between two ``barrier``
    calls concurrently, then deletes what they replace. Leaving the
    ``with`` block without ``commit`` discards what was staged.
    """

    def put(self, key: str, data: bytes, *, replaces: Sequence[str] = ()) -> None: ...

    def remove(self, key: str) -> None:
        """Delete ``key`` at its place in the order (absent is fine)."""

    def barrier(self) -> None:
        """What was staged before is published before anything staged after.

        Between barriers an object store may PUT concurrently; locally every
        rename is in order anyway.
        """

    def commit(self) -> None: ...

    def __enter__(self) -> Batch: ...

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None: ...


class Storage(Protocol):
    """Whole objects under one root; see the module docstring. Blocking: call from a thread."""

    @property
    def url(self) -> str:
        """The root as the user wrote it, for messages."""

    @property
    def is_local(self) -> bool: ...

    def check_writable(self) -> None: ...

    def read(self, key: str) -> Blob | None: ...

    def stat(self, key: str) -> Entry | None: ...

    def write(self, key: str, data: bytes, *, private: bool = False) -> None: ...

    def create(self, key: str, data: bytes, *, private: bool = False) -> str: ...

    def replace(self, key: str, data: bytes, version: str, *, private: bool = False) -> str: ...

    def delete(self, key: str) -> None: ...

    def move(self, key: str, to: str) -> None: ...

    def walk(self, prefix: str) -> Iterator[Entry]: ...

    def list_dir(self, prefix: str) -> tuple[list[str], list[Entry]]: ...

    def batch(self) -> Batch: ...

    def sweep_temp(self, prefix: str, *, recursive: bool = True) -> int: ...


def check_key(key: str) -> str:
    """``key`` if it is a relative path of plain segments; ValueError otherwise (a bug, not input)."""
    segments = key.split("/")
    if not key or not all(_SEGMENT.fullmatch(s) and s not in (".", "..") for s in segments):
        raise ValueError(f"storage key {key!r:.80} is not a relative path of plain segments")
    return key


def check_prefix(prefix: str) -> str:
    """A key prefix naming a folder: ``""`` (the root) or a key; no trailing slash kept."""
    prefix = prefix.strip("/")
    return prefix if not prefix else check_key(prefix)


def is_object_url(root: str) -> bool:
    """True if ``root`` has a URL scheme (``s3://``…); a plain path has none."""
    return _SCHEME.match(root) is not None


def parse_object_url(root: str) -> ObjectUrl:
    """Take ``s3://bucket/prefix`` (gs://, az:// likewise) apart; ConfigError naming what is wrong."""
    parts = urlsplit(root)
    scheme = OBJECT_SCHEMES.get(parts.scheme.lower())
    if scheme is None:
        known = ", ".join(f"{s}://" for s in ("s3", "gs", "az"))
        raise ConfigError(f"output.root {root!r:.120}: unknown storage scheme {parts.scheme!r}; "
                          f"use a folder or one of {known}")
    if parts.query or parts.fragment or parts.username or parts.password or parts.port:
        raise ConfigError(f"output.root {root!r:.120} must be {scheme}://bucket/prefix, nothing more "
                          "(credentials and endpoint come from the environment)")
    bucket = parts.netloc
    if not _BUCKET.fullmatch(bucket):
        raise ConfigError(f"output.root {root!r:.120} names no valid bucket or container")
    prefix = parts.path.strip("/")
    if prefix:
        try:
            check_key(prefix)
        except ValueError:
            raise ConfigError(f"output.root {root!r:.120}: the prefix must be plain path segments "
                              "(no '.', '..' or empty segments)") from None
    return ObjectUrl(scheme, bucket, prefix)
