"""One lake file: its bytes decoded into keyed lines, encoded back, and merged in place when shared.

``lines`` is strict (a damaged file stops a commit with LakeError naming it);
``tolerant_lines`` keeps every whole, keyed line (heal has quarantined the
rest). ``merge_shared`` is the compare-and-swap loop for a file every account
writes (classes, instructors): read with its version, merge, ``replace`` on that
version (``create`` if absent), and on a conflict read and merge again; the
merges of one file within a process take turns, each turn applying all that wait.
``stage_shared`` is the same merge on a local disk, staged in a commit's batch:
checked and renamed at the commit, made durable by its barriers.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import random
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future

import orjson

from harvester.errors import LakeError, StorageConflictError
from harvester.keys import primary_key
from harvester.storage import Storage
from harvester.storage.local import LocalBatch

Row = dict[str, object]
SUFFIXES = {"none": ".jsonl", "gzip": ".jsonl.gz"}
DEFAULT_GZIP_LEVEL = 6
DEFAULT_CAS_ATTEMPTS = 20  # a shared file still changing under us after this many: exit 75
DEFAULT_CAS_BACKOFF_S = 0.02


def encode(lines: Mapping[str, bytes], compression: str) -> bytes:
    """The file's bytes: lines sorted by key, gzipped (reproducibly, no timestamp) if asked."""
    data = b"".join(lines[key] for key in sorted(lines))
    if compression == "gzip":
        data = gzip.compress(data, compresslevel=DEFAULT_GZIP_LEVEL, mtime=0)
    return data


def inflate(data: bytes, where: str) -> bytes:
    """``data`` decompressed if ``where`` names a ``.gz`` file; LakeError naming it if damaged."""
    if not where.endswith(".gz"):
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise LakeError(f"cannot read lake file {where}: {exc}; move it aside and run backfill") from None


def inflate_partial(data: bytes, where: str) -> tuple[bytes, str | None]:
    """What a (possibly damaged) gzip stream holds, and why it stops short, or None."""
    if not where.endswith(".gz"):
        return data, None
    stream = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = stream.decompress(data)
    except zlib.error as exc:
        return b"", f"not gzip: {exc}"
    return out, None if stream.eof else "gzip stream cut short"


def lines(data: bytes, where: str) -> Iterator[tuple[bytes, Row]]:
    """Each line (with its newline) and its parsed row; LakeError at the first damage."""
    if data and not data.endswith(b"\n"):
        raise LakeError(f"lake file {where} ends in a partial line; move it aside and run backfill")
    start = 0
    number = 0
    while start < len(data):
        end = data.index(b"\n", start) + 1
        number += 1
        try:
            row = orjson.loads(data[start:end])
        except orjson.JSONDecodeError as exc:
            raise LakeError(f"lake file {where} line {number} is not JSON: {exc}") from None
        if not isinstance(row, dict):
            raise LakeError(f"lake file {where} line {number} is not a JSON object")
        yield data[start:end], row
        start = end


def keyed_lines(dataset: str, data: bytes, where: str, *, tolerant: bool = False) -> dict[str, bytes]:
    """Key -> line; ``tolerant`` skips lines that are not whole keyed rows instead of failing."""
    if not tolerant:
        return {stored_key(dataset, row, where): line for line, row in lines(data, where)}
    found: dict[str, bytes] = {}
    for line in data.splitlines():
        with contextlib.suppress(orjson.JSONDecodeError, LakeError):
            row = orjson.loads(line)
            if isinstance(row, dict):
                found[primary_key(dataset, row)] = orjson.dumps(row) + b"\n"
    return found


def stored_key(dataset: str, row: Row, where: str) -> str:
    try:
        return primary_key(dataset, row)
    except LakeError as exc:
        raise LakeError(f"lake file {where}: {exc}") from None


Change = Callable[[dict[str, bytes]], dict[str, bytes]]


class _Merges:
    """The merges of one shared file waiting in this process, and whether a thread is applying
    some (that thread applies every one that arrives meanwhile, then leaves)."""

    __slots__ = ("busy", "leader", "pending")

    def __init__(self) -> None:
        self.pending: list[tuple[Change, Future[None]]] = []
        self.busy = False
        self.leader = 0  # the applying thread's ident


_MERGES: dict[tuple[str, str, str, bool], _Merges] = {}
_MERGES_LOCK = threading.Lock()


def _forget_merges() -> None:  # a forked child has one thread: no lock or turn another holds
    global _MERGES_LOCK
    _MERGES.clear()
    _MERGES_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_forget_merges)


def merge_shared(
    storage: Storage, dataset: str, target: str, variants: Sequence[str],
    change: Change, compression: str, *, tolerant: bool = False, absent: bool = False,
) -> None:
    """Merge ``target`` (and its other compression ``variants``) with compare-and-swap.

    ``change`` turns the current key -> line map into the new one. A conflict
    (another writer in between) reads and merges again, up to
    DEFAULT_CAS_ATTEMPTS times, then StorageConflictError (exit 75).

    ``absent``: a listing did not show ``target``, so the first attempt creates it
    without reading it first (an object store's GET saved); if it exists after
    all, the create conflicts and the next attempt reads it. The other variants
    are read either way: a create cannot tell that one of them appeared.

    Within one process the merges of one file form a group: the first thread to
    arrive applies its change and every change that arrives while it works, each
    round in one read and one write, and the others wait for their round's result
    (its error, if it failed). The accounts of one run, which share the classes'
    files, so never conflict with each other, and many changes cost one write.
    """
    group_key = (storage.url, target, compression, tolerant)
    mine: Future[None] = Future()
    me = threading.get_ident()
    with _MERGES_LOCK:
        group = _MERGES.get(group_key)
        if group is None:
            group = _MERGES[group_key] = _Merges()
        nested = group.busy and group.leader == me
        if not nested:
            group.pending.append((change, mine))
            leads = not group.busy
            group.busy = True
            group.leader = me if leads else group.leader
    if nested:  # the applying thread itself, from inside a write: it cannot wait for itself
        _merge_once(storage, dataset, target, variants, change, compression, tolerant=tolerant,
                    absent=absent)
        return
    if not leads:
        mine.result()  # the leading thread's round: done, or its error
        return
    while True:
        with _MERGES_LOCK:
            round_, group.pending = group.pending, []
            if not round_:
                group.busy = False
                del _MERGES[group_key]
                break
        changes = [c for c, _ in round_]
        try:
            _merge_once(storage, dataset, target, variants, _composed(changes), compression,
                        tolerant=tolerant, absent=absent)
        except BaseException as exc:  # each waiting thread raises it, the leader too
            for _, done in round_:
                done.set_exception(exc)
        else:
            for _, done in round_:
                done.set_result(None)
    mine.result()


def stage_shared(
    storage: Storage, staged: LocalBatch, dataset: str, target: str,
    variants: Sequence[str], change: Change, compression: str,
) -> bool:
    """Stage the merge of the shared file ``target`` in ``staged``; False (nothing staged) when
    another compression variant of it exists, which ``merge_shared`` settles instead.

    Read now, merged now and written to a temporary file; at the commit, under the
    directory's lock, renamed if the file is unchanged, or merged again from what
    another writer left (``LocalBatch.put_if``). One barrier pair makes every
    shared file of a commit durable with the rest: no fsync per file.
    """
    if any(storage.stat(key) is not None for key in variants if key != target):
        return False
    blob = storage.read(target)
    where = f"{storage.url}/{target}"

    def merged(data: bytes | None) -> bytes:
        rows = {} if data is None else keyed_lines(dataset, inflate(data, where), where)
        return encode(change(rows), compression)

    data = merged(None if blob is None else blob.data)
    if blob is not None and data == blob.data:
        return True  # nothing new for it
    staged.put_if(target, data, None if blob is None else blob.version, merged)
    return True


def _composed(changes: Sequence[Change]) -> Change:
    def change(merged: dict[str, bytes]) -> dict[str, bytes]:
        for one in changes:
            merged = one(merged)
        return merged

    return change


def _merge_once(
    storage: Storage, dataset: str, target: str, variants: Sequence[str],
    change: Change, compression: str, *, tolerant: bool, absent: bool = False,
) -> None:
    """One compare-and-swap merge of ``target``, retried on conflict (``merge_shared``)."""
    keys = [target, *(v for v in variants if v != target)]
    for attempt in range(DEFAULT_CAS_ATTEMPTS):
        blobs = {key: None if absent and attempt == 0 and key == target else storage.read(key)
                 for key in keys}
        merged: dict[str, bytes] = {}
        for key in reversed(keys):  # the configured variant last: it wins
            blob = blobs[key]
            if blob is not None:
                where = f"{storage.url}/{key}"
                merged.update(keyed_lines(dataset, inflate(blob.data, where), where,
                                          tolerant=tolerant))
        data = encode(change(merged), compression)
        current = blobs[target]
        try:
            if current is None:
                storage.create(target, data)
            else:
                storage.replace(target, data, current.version)
        except StorageConflictError:
            time.sleep(random.uniform(0, DEFAULT_CAS_BACKOFF_S * (attempt + 1)))
            continue
        for key in keys[1:]:
            if blobs[key] is not None:
                storage.delete(key)  # merged into the configured variant
        return
    raise StorageConflictError(
        f"{storage.url}/{target} kept changing under {DEFAULT_CAS_ATTEMPTS} attempts to merge "
        "it (other runs writing it); try again later")
