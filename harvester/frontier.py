"""When a partition file is complete, so a backfill writes it once instead of per batch.

The workout list comes newest first. Once the listing has reached the UTC day
``D``, no workout it has yet to list is dated after ``D``; and no class it has
yet to name aired after ``D``, since a class airs before anyone takes it. So:

- a workout day after ``D`` whose listed workouts have all come back from the
  workers is complete: its ``workouts`` and ``performance_graphs`` files can be
  written once, whole;
- a ``rides`` day after ``D`` gains no class from workouts still to be listed
  (one a workout already in the workers names may still come: then that file
  is merged again, which is correct, only not free).

The pipeline's writer holds results of open days and commits each day when it
closes (pipeline.py). Nothing here decides correctness: every commit merges with
what the lake holds, so a day written early is merged again, never lost. When
the producer is done every day is closed.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from datetime import date

from harvester.keys import DEFAULT_RIDE_DATE, workout_day
from harvester.lake import Encoded


class Frontier:
    """How far the newest-first listing has reached, and the workout days still in flight."""

    def __init__(self) -> None:
        self._reached: str | None = None  # the oldest day listed so far
        self._open: Counter[str] = Counter()  # day -> workouts queued and not yet back
        self._done = False  # the producer finished: nothing more will be listed

    def listed(self, created_at: int) -> None:
        """The listing reached a workout created at ``created_at`` (queued or not)."""
        day = workout_day(created_at)
        if day is not None and (self._reached is None or day < self._reached):
            self._reached = day

    def queued(self, created_at: int | None) -> None:
        """A listed workout went to the workers; its day stays open until it is back."""
        day = workout_day(created_at)
        if day is not None:
            self._open[day] += 1

    def returned(self, created_at: int | None) -> None:
        """A queued workout's result reached the writer."""
        day = workout_day(created_at)
        if day is not None and self._open[day] > 0:
            self._open[day] -= 1
            if not self._open[day]:
                del self._open[day]

    def finish(self) -> None:
        """Nothing more will be listed or queued: every day closes as its workouts return."""
        self._done = True

    def passed(self, day: str) -> bool:
        """No workout still to be listed is dated on or after ``day`` (nor names a class aired then)."""
        return self._done or (self._reached is not None and day > self._reached)

    def closed(self, day: str) -> bool:
        """The workout day is complete: passed by the listing, and none of it in flight."""
        return day not in self._open and self.passed(day)


class HeldRides:
    """Classes (as lake lines) waiting for their ``rides`` day to complete.

    ``release`` gives the newest days while they are complete; ``release_days``
    the days asked for; ``release_largest`` the days holding the most bytes, when
    too much is held: those are the nearest to complete, so writing them early
    costs the fewest rewrites.
    """

    def __init__(self) -> None:
        self._by_day: dict[str, list[Encoded]] = {}
        self._bytes: dict[str, int] = {}  # day -> bytes held
        self._days: list[tuple[int, str]] = []  # a heap, newest day on top; released days skipped
        self.size = 0  # bytes of JSON held

    def add(self, ride: Encoded) -> None:
        day = ride.part or DEFAULT_RIDE_DATE
        held = self._by_day.get(day)
        if held is None:
            held = self._by_day[day] = []
            self._bytes[day] = 0
            heapq.heappush(self._days, (-date.fromisoformat(day).toordinal(), day))
        held.append(ride)
        self._bytes[day] += len(ride.line)
        self.size += len(ride.line)

    def newest_day(self) -> str | None:
        while self._days and self._days[0][1] not in self._by_day:
            heapq.heappop(self._days)  # released by release_days or release_largest
        return self._days[0][1] if self._days else None

    def release(self, passed: Callable[[str], bool]) -> list[Encoded]:
        """The held classes of the newest days, for as long as ``passed`` says yes of the next."""
        out: list[Encoded] = []
        while (day := self.newest_day()) is not None and passed(day):
            heapq.heappop(self._days)
            out.extend(self._pop(day))
        return out

    def days(self) -> Iterator[tuple[str, list[Encoded]]]:
        """Each day held, with its classes."""
        return iter(self._by_day.items())

    def release_days(self, days: Iterable[str]) -> list[Encoded]:
        """The held classes of ``days``."""
        return [ride for day in days if day in self._by_day for ride in self._pop(day)]

    def release_largest(self, keep: int) -> list[Encoded]:
        """The held classes of the days holding the most bytes, until at most ``keep`` are held."""
        out: list[Encoded] = []
        for day in sorted(self._bytes, key=self._bytes.__getitem__, reverse=True):
            if self.size <= keep:
                break
            out.extend(self._pop(day))
        return out

    def _pop(self, day: str) -> list[Encoded]:
        self.size -= self._bytes.pop(day)
        return self._by_day.pop(day)
