"""What heal.py's scan learnt from each lake file, kept between runs: a run re-reads only what changed.

One object per account, ``_harvester/scan/<user_id>.cache``: a header line
(format, account, digest), then a line per lake file: its storage key, its
version as the listing gave it, and what the scan learnt from it as JSON
(``heal.py`` encodes and decodes those facts; this module does not look
inside them). A run's scan takes a file's facts from here only when
the listing shows the very version they were learnt from, reads every other
file, and forgets files that are gone; everything derived across files (keys
held twice, rows in the wrong partition) is derived afresh from the union.

A file's version is its size, modification time in ns and ETag (object
stores; "" on a local disk) from the listing, taken *before* the file is read:
if the file changes between the listing and the read, the facts are kept
under the older version, which the next listing no longer shows. Any write
changes the version:

- object stores: the ETag changes with the content (S3: its MD5; GCS and
  Azure: a new one per write), and every PUT moves ``last_modified``;
- local disk: our writers write a temporary file and rename it into place, so
  the file's mtime is the time of that write. The one change a version can
  miss is a rewrite of the same size within the same timestamp tick
  (filesystem timestamps come from a clock that advances in ticks of a few
  ms). As git does for its index ("racy git"), facts are not kept for a local
  file modified less than ``RACY_MARGIN_NS`` before the scan began (it is read
  again next run): any later write of a file the cache holds gets a later
  mtime, unless the system clock steps back more than the margin or someone
  sets the old mtime on purpose (``touch -d``, ``cp -p`` or ``rsync -t`` of a
  same-size file). ``verify`` reads every file whatever the cache says, and
  ``verify --repair`` drops the caches before it repairs.

The cache is derived data: a missing, unreadable or damaged object (its
payload carries a BLAKE2b digest), one of another format version or of
another account is rebuilt silently from the files. It is written only by the
run holding the account's lock, in private mode, whole (storage.write:
temporary name and rename locally, one PUT on an object store).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable

import orjson

from harvester.errors import StorageError
from harvester.storage import Entry, Storage

log = logging.getLogger(__name__)

CACHE_DIR = "_harvester/scan"
CACHE_FORMAT = 1
RACY_MARGIN_NS = 2 * 10**9  # coarser than any filesystem's or object store's time stamps
Facts = list[object]  # what heal.py learnt from one file, JSON-ready
Held = tuple[str, bytes]  # a file's version, and its facts as JSON


def cache_key(user_id: str) -> str:
    return f"{CACHE_DIR}/{user_id}.cache"


def file_version(entry: Entry) -> str:
    """Size, mtime in ns and ETag of a listed file: any write changes one of them."""
    return f"{entry.size}:{entry.modified_ns}:{entry.etag}"


class ScanCache:
    """One account's cached facts, by file: ``get`` what is still valid, ``put`` what was read.

    Each file's facts stay JSON bytes until a scan asks for them: a run holds the
    cache at the size of its object, not as a tree of lists.
    """

    def __init__(self, storage: Storage, user_id: str, files: dict[str, Held] | None = None,
                 *, now: Callable[[], int] = time.time_ns) -> None:
        self.storage = storage
        self.user_id = user_id
        self._old = files or {}  # key -> (version, facts as JSON), as loaded
        self._new: dict[str, Held] = {}  # key -> (version, facts as JSON), this scan's
        self._dirty = False
        self._racy_after = now() - RACY_MARGIN_NS

    @classmethod
    def load(cls, storage: Storage, user_id: str, *,
             now: Callable[[], int] = time.time_ns) -> ScanCache:
        """The account's cache; an empty one if it is missing, damaged or not this account's."""
        key = cache_key(user_id)
        try:
            blob = storage.read(key)
        except StorageError as exc:
            log.info("scan cache %s/%s cannot be read (%s); every file is read", storage.url, key, exc)
            blob = None
        files = _decode(blob.data, user_id) if blob is not None else None
        if blob is not None and files is None:
            log.info("scan cache %s/%s is not usable; rebuilt from the files", storage.url, key)
        return cls(storage, user_id, files, now=now)

    @staticmethod
    def discard(storage: Storage, user_id: str) -> None:
        """Delete the account's cache: its next scan reads every file."""
        storage.delete(cache_key(user_id))

    def get(self, entry: Entry) -> Facts | None:
        """The facts learnt from this very version of the file, or None: read it."""
        held = self._old.get(entry.key)
        if held is None or held[0] != file_version(entry):
            return None
        try:
            facts = orjson.loads(held[1])
        except orjson.JSONDecodeError:
            return None
        if not isinstance(facts, list):
            return None
        self._new[entry.key] = held
        return facts

    def put(self, entry: Entry, facts: Facts) -> None:
        """What was read from the file as ``entry`` listed it; not kept for a local file modified
        just now (its next write could get the same mtime)."""
        self._dirty = True
        if entry.etag or entry.modified_ns < self._racy_after:
            self._new[entry.key] = (file_version(entry), orjson.dumps(facts))

    @property
    def files(self) -> int:
        """Files whose facts the next ``save`` keeps."""
        return len(self._new)

    def save(self) -> None:
        """Write the facts of the files this scan met, if any changed; a failure only costs reads."""
        if not self._dirty and self._new.keys() == self._old.keys():
            return  # the same files at the same versions: the object holds this already
        key = cache_key(self.user_id)
        try:
            self.storage.write(key, _encode(self.user_id, self._new), private=True)
        except StorageError as exc:
            log.warning("scan cache %s/%s not written (%s); the next run reads every file",
                        self.storage.url, key, exc)
            return
        self._old, self._new, self._dirty = self._new, dict(self._new), False


def _encode(user_id: str, files: dict[str, Held]) -> bytes:
    """A header line (format, account, digest of the rest), then a line per file:
    ``["key","version"]``, a tab, the facts' JSON (JSON text holds no raw tab or newline)."""
    lines = [orjson.dumps([key, version]) + b"\t" + facts + b"\n"
             for key, (version, facts) in files.items()]
    digest = hashlib.blake2b(digest_size=16)
    for line in lines:
        digest.update(line)
    header = orjson.dumps({"format": CACHE_FORMAT, "user_id": user_id, "blake2b": digest.hexdigest()})
    return b"".join([header, b"\n", *lines])


def _decode(data: bytes, user_id: str) -> dict[str, Held] | None:
    """The files of a cache object, or None if it is not a whole one of this account and format."""
    header_line, *lines = data.split(b"\n")
    try:
        header = orjson.loads(header_line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(header, dict) or header.get("format") != CACHE_FORMAT:
        return None
    digest = hashlib.blake2b(memoryview(data)[len(header_line) + 1:], digest_size=16).hexdigest()
    if header.get("user_id") != user_id or header.get("blake2b") != digest:
        return None
    files: dict[str, Held] = {}
    for line in lines:
        name, _, facts = line.partition(b"\t")
        if not name:
            continue  # the end of the last line
        try:
            key, version = orjson.loads(name)
        except (orjson.JSONDecodeError, TypeError, ValueError):
            return None
        if not isinstance(key, str) or not isinstance(version, str):
            return None
        files[key] = (version, facts)
    return files
