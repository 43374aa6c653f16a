"""The classes of one run: each fetched by one account, held for its day, written once.

A class (``rides``) is the same for every account, and the lake keeps one file
of classes per day, shared by all accounts (lake.py ``SHARED_FILES``). The
accounts one process harvests at once share one ``RunClasses`` (a lone
account has its own):

- ``claim``: the first account whose workout names a class fetches it; the
  others skip it.
- ``hold``/``release``: a fetched class waits, as its lake line, until every
  account still running has listed past the day it aired (frontier.py). So
  each day's file is merged about once while the accounts run, instead of once
  by every account that took a class aired that day (at 50 accounts x 200
  workouts: 1,124 merges instead of 5,770).
- An account's last commit takes every day holding one of its classes (the
  other accounts' classes of those days with them): no account's run ends
  with a class of its own unwritten, and none waits for another's.
- Past ``held_bytes`` of JSON held, the fullest days are written early (a
  history naming many classes aired long before); such a day is merged again
  when the rest of it comes.

Each written class counts for the account that fetched it (``credit``),
whichever account's commit wrote it. Everything here runs on the event loop.
"""

from __future__ import annotations

from collections.abc import Iterable

from harvester.frontier import Frontier, HeldRides
from harvester.lake import Encoded

# Classes held for their day to complete, as JSON lines, at most this many bytes in a
# process: past it the days holding most (the nearest to complete) are written early.
DEFAULT_HELD_RIDE_BYTES = 32 * 2**20

Tally = dict[str, int]  # an account's rows written, per dataset (pipeline.Outcome.rows)


class RunClasses:
    """The classes the accounts of one process claim, hold and release."""

    def __init__(self, held_bytes: int = DEFAULT_HELD_RIDE_BYTES) -> None:
        self.held_bytes = held_bytes
        self._claimed: set[str] = set()
        self._held = HeldRides()
        self._owner: dict[str, Tally] = {}  # held or in a commit: ride key -> who fetched it
        self._running: list[Frontier] = []  # the listings of the accounts still running

    def claim(self, ride_id: str) -> bool:
        """True for the first account of the run to ask: that one fetches the class."""
        if ride_id in self._claimed:
            return False
        self._claimed.add(ride_id)
        return True

    # -- the accounts running ------------------------------------------------------

    def join(self, frontier: Frontier) -> None:
        self._running.append(frontier)

    def leave(self, frontier: Frontier) -> None:
        self._running.remove(frontier)

    def _passed(self, day: str) -> bool:
        return all(frontier.passed(day) for frontier in self._running)

    # -- lines held for their day --------------------------------------------------

    def hold(self, ride: Encoded, owner: Tally) -> None:
        self._owner[ride.key] = owner
        self._held.add(ride)

    def due(self) -> bool:
        """A held day is complete for every running account: a commit should take it."""
        newest = self._held.newest_day()
        return newest is not None and self._passed(newest)

    def release(self, leaving: Tally | None = None) -> list[Encoded]:
        """The held classes to commit now.

        ``leaving``: the last commit of that account (it has left): every day holding
        one of its classes, and everything once no account is running. Else the days
        every running account has passed, and past ``held_bytes`` the fullest days
        down to 3/4 of it."""
        if leaving is not None:
            if not self._running:
                return self._held.release(lambda _: True)
            return self._held.release_days([
                day for day, lines in self._held.days()
                if any(self._owner.get(line.key) is leaving for line in lines)])
        released = self._held.release(self._passed)
        if self._held.size > self.held_bytes:
            released += self._held.release_largest(self.held_bytes * 3 // 4)
        return released

    def put_back(self, rides: Iterable[Encoded]) -> None:
        """Released classes whose commit failed: held again, for a later commit to take."""
        for ride in rides:
            self._held.add(ride)

    def credit(self, rides: Iterable[Encoded]) -> None:
        """Released classes now in the lake: each counts for the account that fetched it."""
        for ride in rides:
            owner = self._owner.pop(ride.key, None)
            if owner is not None:
                owner["rides"] = owner.get("rides", 0) + 1
