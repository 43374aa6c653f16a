"""Lake files checked against SPEC "The lake", and healed: one account's files at a time.

 1. ``scan`` reads every file the account writes (and the shared ones) line by
    line and never stops at damage: it notes partial and non-JSON lines, rows
    without a key or a partition, keys held twice, rows in the wrong partition.
    What survives is the account's key index (``LakeScan.index``): which keys each
    dataset holds, and in which partition. A run's scan goes through the
    account's scan cache (scancache.py): what it learnt from each file (faults,
    and each row's key, line, partition, stamp; a workout's created_at and
    class), kept under the version the listing showed. It reads only the files
    whose version changed or that are new, and derives everything across files
    (keys held twice, rows in the wrong partition) from the union, as from the
    files; the files stay the only truth. ``verify`` reads every file.
    ``ride_ids`` learns the lake's classes the same way: the account's from its
    scan, other accounts' rides files through the cache.
 2. ``heal`` rewrites the files the scan found wanting: one copy of each key (the
    newest ``_harvested_at``; on a tie the one in its right partition), each in
    the partition its row names. A file that lost a line is first kept whole
    under ``_harvester/quarantine/``. Files gaining rows are renamed before files
    losing rows, so a kill in between duplicates a row (healed next time) and
    never loses one. What a damaged line held is not in the index any more, so
    the run that follows fetches it again (reconcile.py).

Blocking code: runs call it from a worker thread. All file access goes through
``Lake``'s whole-file methods.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import orjson

from harvester.errors import LakeError
from harvester.lake import DATASETS, SHARED_FILES, Lake, class_of, partition_date, primary_key
from harvester.scancache import Facts, ScanCache

log = logging.getLogger(__name__)

Row = dict[str, object]
Output = tuple[str, str | None, str]  # (dataset, partition, file stem): one lake file


@dataclass(slots=True)
class Copy:
    """One line holding a key: where it is, where it belongs, how new it is."""

    path: str  # the lake file's storage key
    line: int  # 1-based line number in the file
    part: str | None  # the partition the file is in
    home: str | None  # the partition the row names
    stamp: str  # its _harvested_at ("" if none): the newest copy wins
    created_at: int | None = None  # workouts only
    ride_id: str | None = None  # workouts only


@dataclass(slots=True)
class FileScan:
    """What one file holds and what is wrong with it."""

    dataset: str
    part: str | None
    path: str  # storage key
    faults: list[str] = field(default_factory=list)  # lost lines: quarantine before rewriting
    no_final_newline: bool = False  # fixed by a rewrite, nothing lost

    @property
    def stem(self) -> str:
        return self.path.rpartition("/")[2].split(".jsonl")[0]

    @property
    def output(self) -> Output:
        return (self.dataset, self.part, self.stem)

    @property
    def moving(self) -> bool:
        """An account's own file of a shared dataset, from before it was shared: its rows move
        to the shared file and it goes."""
        return self.dataset in SHARED_FILES and self.stem != SHARED_FILES[self.dataset]


@dataclass(slots=True)
class LakeScan:
    """Every key of one account's files, each copy of it, and every fault found."""

    files: list[FileScan] = field(default_factory=list)
    copies: dict[str, dict[str, list[Copy]]] = field(
        default_factory=lambda: {d: {} for d in DATASETS})
    temp_files: list[str] = field(default_factory=list)

    def add(self, found: FileScan, rows: list[tuple[str, Copy]]) -> None:
        """One file's scan: its faults, and its copies after those of the files before it."""
        self.files.append(found)
        copies = self.copies[found.dataset]
        for key, copy in rows:
            copies.setdefault(key, []).append(copy)

    def winner(self, dataset: str, key: str) -> Copy:
        """The copy a healed lake keeps: newest, then in its right partition, then last."""
        copies = self.copies[dataset][key]
        return max(copies, key=lambda c: (c.stamp, c.home == c.part))

    def index(self, dataset: str) -> dict[str, Copy]:
        """Key -> the copy kept, for every key of the dataset."""
        return {key: self.winner(dataset, key) for key in self.copies[dataset]}

    def problems(self, root: str = "") -> list[str]:
        """One line per invariant broken, for ``verify`` and the logs; files named under ``root``."""
        def at(key: str) -> str:
            return f"{root}/{key}" if root else key

        found = [f"{at(f.path)}: {fault}" for f in self.files for fault in f.faults]
        found += [f"{at(f.path)}: no newline after its last line"
                  for f in self.files if f.no_final_newline]
        for dataset, keys in self.copies.items():
            for key, copies in keys.items():
                if len(copies) > 1:
                    where = ", ".join(f"{_short(c.path)}:{c.line}" for c in copies)
                    found.append(f"{dataset} key {key} is held {len(copies)} times ({where})")
                found += [f"{at(c.path)}:{c.line}: {dataset} row {key} belongs in date={c.home}"
                          for c in copies if c.home != c.part]
        found += [f"{at(path)}: temporary file left by a killed run" for path in self.temp_files]
        return found

    def outputs_to_rewrite(self) -> set[Output]:
        """The files a heal rewrites: damaged, duplicated, misplaced, or receiving a row."""
        outputs = {f.output for f in self.files if f.faults or f.no_final_newline or f.moving}
        moving = {f.path for f in self.files if f.moving}
        stems = {f.path: f.stem for f in self.files}
        for dataset, keys in self.copies.items():
            for key, copies in keys.items():
                if len(copies) == 1 and copies[0].home == copies[0].part and copies[0].path not in moving:
                    continue
                kept = self.winner(dataset, key)
                outputs.add((dataset, kept.home, _home_stem(dataset, stems[kept.path])))
                outputs.update((dataset, c.part, stems[c.path]) for c in copies)
        return outputs


# -- scan -----------------------------------------------------------------------


def scan(
    lake: Lake, user_id: str, *, temp_files: bool = False, cache: ScanCache | None = None,
) -> LakeScan:
    """Read every file of the account (and the shared ones); never stops at damage.

    ``temp_files``: also list stray temporary files (verify); a run has already
    removed them under its lock (``Lake.clean_temp_files``), and listing them
    costs a pass over every partition directory. ``cache``: take what a file
    holds from there when the listing shows the version it was learnt from,
    and put there what the files read tell (scancache.py).
    """
    result = LakeScan(temp_files=lake.temp_files() if temp_files else [])
    for dataset in DATASETS:
        for part, entry in lake.account_files(dataset, user_id):
            facts = cache.get(entry) if cache is not None else None
            learnt = _from_facts(dataset, part, entry.key, facts) if facts is not None else None
            if learnt is None:
                data, cut = lake.read_file(entry.key)
                learnt = _scan_file(dataset, part, entry.key, data, cut)
                if cache is not None:
                    cache.put(entry, _to_facts(*learnt))
            result.add(*learnt)
    return result


def ride_ids(lake: Lake, user_id: str, found: LakeScan, cache: ScanCache) -> set[str]:
    """Every ride id in the lake: the account's from its scan, other accounts' files through ``cache``."""
    ids = set(found.copies["rides"])
    for entry in lake.other_accounts_files("rides", user_id):
        held = cache.get(entry)
        if held is None or not all(isinstance(ride, str) for ride in held):
            held = [*lake.keys_in("rides", entry.key)]
            cache.put(entry, held)
        ids.update(str(ride) for ride in held)
    return ids


def _scan_file(
    dataset: str, part: str | None, path: str, data: bytes, cut: str | None,
) -> tuple[FileScan, list[tuple[str, Copy]]]:
    """What one file holds: its faults, and a copy per row that can be kept, in line order."""
    found = FileScan(dataset, part, path)
    if cut is not None:
        found.faults.append(cut)
    rows: list[tuple[str, Copy]] = []
    seen: set[str] = set()
    for number, row, problem, last_open in _parsed(dataset, data):
        if problem is not None:
            found.faults.append(f"line {number} {problem}")
            continue
        assert row is not None
        found.no_final_newline = found.no_final_newline or last_open
        key = primary_key(dataset, row)
        copy = Copy(path, number, part, partition_date(dataset, row), _stamp(row))
        if dataset == "workouts":
            copy.created_at, copy.ride_id = _workout_facts(row)
        if key in seen:
            found.faults.append(f"line {number} holds key {key} again")
        seen.add(key)
        rows.append((key, copy))
    return found, rows


def _to_facts(found: FileScan, rows: list[tuple[str, Copy]]) -> Facts:
    """``_scan_file``'s answer as the cache keeps it: [faults, no final newline, rows].

    A row is [key, line, home, stamp], plus created_at and ride_id for workouts;
    home is 0 when it is the file's own partition (nearly always).
    """
    workouts = found.dataset == "workouts"
    encoded: list[object] = []
    for key, c in rows:
        home = 0 if c.home == c.part else c.home
        encoded.append([key, c.line, home, c.stamp, c.created_at, c.ride_id] if workouts
                       else [key, c.line, home, c.stamp])
    return [found.faults, found.no_final_newline, encoded]


def _from_facts(
    dataset: str, part: str | None, path: str, facts: Facts,
) -> tuple[FileScan, list[tuple[str, Copy]]] | None:
    """``_to_facts`` undone; None if the facts do not have its shape (the file is read)."""
    try:
        faults, open_end, encoded = cast("tuple[list[str], bool, list[list[Any]]]", facts)
        found = FileScan(dataset, part, path, [str(f) for f in faults], open_end is True)
        if dataset == "workouts":
            rows = [(key, Copy(path, line, part, part if home == 0 else home, stamp, created, ride))
                    for key, line, home, stamp, created, ride in encoded]
        else:
            rows = [(key, Copy(path, line, part, part if home == 0 else home, stamp))
                    for key, line, home, stamp in encoded]
    except (TypeError, ValueError):
        return None
    return found, rows


def _parsed(dataset: str, data: bytes) -> Iterator[tuple[int, Row | None, str | None, bool]]:
    """(line number, row, what is wrong with the line, ends without a newline) per line."""
    for number, line, last_open in _split(data):
        try:
            row = orjson.loads(line)
        except orjson.JSONDecodeError:
            yield number, None, "is cut short" if last_open else "is not JSON", False
            continue
        if not isinstance(row, dict):
            yield number, None, "is not a JSON object", False
            continue
        try:
            primary_key(dataset, row)
            partition_date(dataset, row)
        except LakeError as exc:
            yield number, None, f"cannot be kept: {exc}", False
            continue
        yield number, row, None, last_open


def _split(data: bytes) -> Iterator[tuple[int, bytes, bool]]:
    """(line number, line without its newline, it is the last and has none); blank lines skipped."""
    start = number = 0
    while start < len(data):
        end = data.find(b"\n", start)
        last_open = end < 0
        line = data[start:] if last_open else data[start:end]
        number += 1
        if line.strip():
            yield number, line, last_open
        start = len(data) if last_open else end + 1


def _home_stem(dataset: str, stem: str) -> str:
    """The file a row of ``stem``'s file is kept in: the shared one, for a shared dataset."""
    return SHARED_FILES.get(dataset, stem)


def _short(key: str) -> str:
    """``date=…/file`` of a key: the partition and file name."""
    return "/".join(key.split("/")[-2:])


def _stamp(row: Row) -> str:
    stamp = row.get("_harvested_at")
    return stamp if isinstance(stamp, str) else ""


def _workout_facts(row: Row) -> tuple[int | None, str | None]:
    created = row.get("created_at")
    return (created if isinstance(created, int) and not isinstance(created, bool) else None,
            class_of(row))


# -- heal -----------------------------------------------------------------------


def heal(lake: Lake, found: LakeScan) -> list[str]:
    """Rewrite what ``found`` found wanting; the problems fixed (empty: the lake was whole)."""
    problems = found.problems(lake.url)
    outputs = found.outputs_to_rewrite()
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for temp in found.temp_files:
        lake.storage.delete(temp)
    if not outputs:
        return problems
    for f in found.files:
        if f.moving:
            log.info("lake file %s: its rows move to the %s file every account shares",
                     f"{lake.url}/{f.path}", SHARED_FILES[f.dataset])
    for f in found.files:
        if f.faults and f.output in outputs:
            kept = lake.quarantine(f.path, stamp)
            log.warning("lake file %s is damaged (%s): kept as %s, its whole lines re-committed",
                        f"{lake.url}/{f.path}", "; ".join(f.faults[:3]), f"{lake.url}/{kept}")
    contents = _healed_contents(lake, found, outputs)
    # Files gaining rows first: a kill in between leaves a row twice, never nowhere.
    held = _held(found, set(contents))
    gaining = {out for out, lines in contents.items() if lines.keys() - held[out]}
    for phase in (gaining, set(contents) - gaining):
        for dataset in DATASETS:
            # A shared file is merged, not replaced: the keys leaving it are named.
            files = [(out[1], out[2], contents[out], frozenset(held[out] - contents[out].keys()))
                     for out in sorted(phase, key=str) if out[0] == dataset]
            if files:
                lake.replace_files(dataset, files)
    return problems


def _healed_contents(lake: Lake, found: LakeScan, outputs: set[Output]) -> dict[Output, dict[str, bytes]]:
    """The lines each rewritten file holds: every winner whose home it is."""
    contents: dict[Output, dict[str, bytes]] = {out: {} for out in outputs}
    for f in found.files:
        if f.output not in outputs:  # a file sending a row away is rewritten too
            continue
        data, _ = lake.read_file(f.path)
        for number, row, problem, _ in _parsed(f.dataset, data):
            if problem is not None or row is None:
                continue
            key = primary_key(f.dataset, row)
            kept = found.winner(f.dataset, key)
            if (kept.path, kept.line) == (f.path, number):
                line = orjson.dumps(row) + b"\n"
                contents.setdefault((f.dataset, kept.home, _home_stem(f.dataset, f.stem)), {})[key] = line
    return contents


def _held(found: LakeScan, outputs: set[Output]) -> dict[Output, set[str]]:
    """The keys each of these files holds now."""
    stems = {f.path: f.stem for f in found.files}
    held: dict[Output, set[str]] = {out: set() for out in outputs}
    for dataset, keys in found.copies.items():
        for key, copies in keys.items():
            for c in copies:
                out = (dataset, c.part, stems[c.path])
                if out in held:
                    held[out].add(key)
    return held
