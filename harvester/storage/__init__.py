"""Where the lake's bytes live: a local folder or an object store, behind one small interface.

    base.py     Storage / Batch protocols, Blob, Entry, keys, object-store URLs
    local.py    LocalStorage: temp name + rename, fsync / syncfs barriers, flock
    objects.py  ObjectStorage: obstore, one PUT per object, ETag preconditions
    lease.py    the run lock: a per-account flock locally, a renewed lease object elsewhere

``open_storage`` picks the backend from the root: a path, or ``s3://``, ``gs://``, ``az://``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from harvester.storage.base import (
    Batch,
    Blob,
    Entry,
    ObjectUrl,
    Storage,
    is_object_url,
    parse_object_url,
)
from harvester.storage.local import LocalStorage

__all__ = ["Batch", "Blob", "Entry", "LocalStorage", "ObjectUrl", "Storage", "is_object_url",
           "open_storage", "parse_object_url"]


def open_storage(root: str, env: Mapping[str, str] | None = None) -> Storage:
    """The storage for a lake root: ``s3://bucket/prefix`` (gs://, az://) or a folder."""
    if is_object_url(root):
        from harvester.storage.objects import open_object_store

        return open_object_store(parse_object_url(root), env)
    return LocalStorage(Path(root).expanduser())
