"""The mirror: what the lake holds against what the source lists -> fetch, move, delete.

One ``Mirror`` per run and account, built from heal.py's scan (the key index):

 1. ``need``: per listed workout, what the lake lacks: nothing, the whole
    workout (new, or its ``created_at`` changed), or only its graph (enabled
    after the workout was harvested, or lost with a damaged file). Classes the
    lake lacks are the pipeline's orphan rides, named by ``referenced_rides``.
 2. ``removals``: when a batch commits, the old partitions of the rows it moves,
    removed in the same commit (lake.py), so at rest no key is in two partitions.
 3. ``deletions``: after a complete listing (every page agreeing on ``total``,
    that many distinct ids seen), the workouts the source no longer has: removed
    from ``workouts`` and ``performance_graphs`` and recorded in ``deletions``;
    refused when they are more than ``MASS_DELETE_SHARE`` of the account (and
    more than ``MASS_DELETE_MIN``) unless ``--allow-mass-delete``.
 4. ``reconcile_due``: a refresh lists everything again (pages of
    ``RECONCILE_PAGE_SIZE``) when the listing's ``total`` moved away from the
    lake's count since the last reconcile, when the scan healed something, or
    once a UTC day.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from harvester.heal import Copy, LakeScan
from harvester.lake import Encoded

log = logging.getLogger(__name__)

Row = dict[str, object]
Removals = dict[str, dict[str, set[str]]]  # dataset -> partition -> keys

MASS_DELETE_SHARE = 0.10
MASS_DELETE_MIN = 5  # deleting this many is never "mass", whatever the share
RECONCILE_PAGE_SIZE = 100  # the id-only listing: the largest page the API serves
NEED_ALL = "all"
NEED_GRAPH = "graph"


class MassDeleteError(Exception):
    """A listing would delete too much of an account to be trusted (nothing deleted)."""


@dataclass(slots=True)
class Listing:
    """What one complete pass over the workout list saw, for deletions."""

    ids: set[str] = field(default_factory=set)  # every valid id, in progress or quarantined too
    totals: set[int] = field(default_factory=set)  # the `total` of every page
    pages_missing_total: bool = False

    def trustworthy(self) -> bool:
        """Every page agreed on the total, and that many distinct ids were seen."""
        return (not self.pages_missing_total and len(self.totals) == 1
                and len(self.ids) == next(iter(self.totals)))


class Mirror:
    """One account's key index against the source's listing."""

    def __init__(self, found: LakeScan, datasets: Collection[str], *, healed: bool = False) -> None:
        self.workouts: dict[str, Copy] = found.index("workouts")
        self.graphs: dict[str, str | None] = {
            key: c.home for key, c in found.index("performance_graphs").items()}
        self.recorded_deletions: set[str] = set(found.copies["deletions"])
        self.wants_graph = "performance_graphs" in datasets
        self.healed = healed  # the scan found damage: a refresh reconciles at once
        self.listing = Listing()
        self.moved = 0

    # -- what the lake holds ----------------------------------------------------

    def committed(self) -> dict[str, int]:
        """``id -> created_at`` of the account's workouts in the lake."""
        return {key: c.created_at for key, c in self.workouts.items() if c.created_at is not None}

    def referenced_rides(self) -> set[str]:
        return {c.ride_id for c in self.workouts.values() if c.ride_id is not None}

    def need(self, workout_id: str, created_at: int | None) -> str | None:
        """What a listed workout lacks in the lake: NEED_ALL, NEED_GRAPH or None."""
        held = self.workouts.get(workout_id)
        if held is None or held.created_at != created_at:
            return NEED_ALL  # new, or its date changed at the source: it moves
        if self.wants_graph and self.graphs.get(workout_id, "") != held.home:
            return NEED_GRAPH  # none, or one dated otherwise than its workout
        return None

    # -- commits ----------------------------------------------------------------

    def removals(self, lines: Mapping[str, Sequence[Encoded]]) -> Removals:
        """The old partitions of the batch's rows (as lake lines) whose partition changed."""
        gone: Removals = {}
        for line in lines.get("workouts", ()):
            held = self.workouts.get(line.key)
            if held is not None and held.home is not None and held.home != line.part:
                gone.setdefault("workouts", {}).setdefault(held.home, set()).add(line.key)
                self.moved += 1
        for line in lines.get("performance_graphs", ()):
            old = self.graphs.get(line.key)
            if old is not None and old != line.part:
                gone.setdefault("performance_graphs", {}).setdefault(old, set()).add(line.key)
        return gone

    def landed(self, lines: Mapping[str, Sequence[Encoded]],
               named: Sequence[tuple[int | None, str | None]]) -> None:
        """Record a committed batch in the index: its lines, and what its workout rows name
        (``created_at`` and the class id, in the order of ``lines["workouts"]``)."""
        for line in lines.get("performance_graphs", ()):
            self.graphs[line.key] = line.part
        for line, (created_at, ride_id) in zip(lines.get("workouts", ()), named, strict=True):
            self.workouts[line.key] = Copy(
                path=_NO_PATH, line=0, part=None, home=line.part, stamp="",
                created_at=created_at, ride_id=ride_id)

    # -- deletions --------------------------------------------------------------

    def deletions(
        self, user_id: str, detected_at: str, *, allow_mass_delete: bool,
    ) -> tuple[dict[str, list[Row]], Removals]:
        """The deletions batch and removals after a trustworthy complete listing.

        Raises MassDeleteError when the share is too large to believe.
        """
        if not self.listing.trustworthy():
            return {}, {}
        gone = sorted(self.workouts.keys() - self.listing.ids)
        if not gone:
            return {}, {}
        held = len(self.workouts)
        if (len(gone) > MASS_DELETE_MIN and len(gone) > MASS_DELETE_SHARE * held
                and not allow_mass_delete):
            raise MassDeleteError(
                f"the listing would delete {len(gone)} of the {held} workouts in the lake "
                f"(more than {MASS_DELETE_SHARE:.0%}); nothing deleted. If they really are gone "
                "at the source, run again with --allow-mass-delete")
        rows: list[Row] = [
            {"workout_id": key, "user_id": user_id, "created_at": self.workouts[key].created_at,
             "detected_at": detected_at}
            for key in gone if key not in self.recorded_deletions]
        removals: Removals = {}
        for key in gone:
            home = self.workouts[key].home
            if home is not None:
                removals.setdefault("workouts", {}).setdefault(home, set()).add(key)
            graph = self.graphs.get(key)
            if graph is not None:
                removals.setdefault("performance_graphs", {}).setdefault(graph, set()).add(key)
        return {"deletions": rows}, removals

    def deleted(self, removals: Removals) -> list[str]:
        """Drop committed deletions from the index; the workout ids removed."""
        ids = sorted({k for keys in removals.get("workouts", {}).values() for k in keys})
        for key in ids:
            self.workouts.pop(key, None)
            self.graphs.pop(key, None)
            self.recorded_deletions.add(key)
        return ids

    # -- refresh ----------------------------------------------------------------

    def gap(self, total: int, also_known: Collection[str]) -> int:
        """The listing's total minus what the lake holds (or this run brings) of it."""
        return total - len(self.workouts.keys() | set(also_known))

    def reconcile_due(
        self, today: str, gap: int, last_day: str | None, last_gap: int | None,
    ) -> str | None:
        """Why a refresh should list everything now, or None."""
        if self.healed:
            return "the lake needed healing"
        if last_day != today:
            return "first reconcile today"
        if last_gap != gap:
            return f"the listing's total is {gap} away from the lake (was {last_gap})"
        return None


_NO_PATH = ""  # a row committed this run: where it sits is its partition
