"""The synthetic account: one user and a deterministic workout history.

Only compact records are built up front (20,000 workouts in well under a
second); the JSON for a workout is rendered on demand from its record.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from harvester.emulator.catalog import (
    BY_SLUG,
    CLASS_TYPES,
    DISCIPLINES,
    UNKNOWN_DISCIPLINE,
    ZERO_ID,
    Instructor,
    Ride,
    hex_id,
    make_instructors,
    ride_title,
    uuid_id,
)

# History ends here, not at "now": the same seed must give byte-identical
# responses whenever it runs. Arrivals are stamped with the real clock.
DEFAULT_ANCHOR = 1793491200  # 2026-11-01T00:00:00Z
DAY = 86400
BAD_ID = "../../etc/passwd"

# Quirk flags on a workout record.
NULL_NUMBERS = 1
NO_CREATED_AT = 2

# (IANA or POSIX zone name, offset from UTC in seconds); no DST zones, so the
# offset of a name never depends on the date.
ZONES: tuple[tuple[str, int], ...] = (
    ("America/Phoenix", -7 * 3600),
    ("Etc/GMT+5", -5 * 3600),
    ("Etc/GMT+6", -6 * 3600),
    ("Pacific/Honolulu", -10 * 3600),
    ("UTC", 0),
    ("Etc/GMT-1", 3600),
    ("Asia/Kolkata", 19800),
    ("Asia/Tokyo", 9 * 3600),
    ("Australia/Brisbane", 10 * 3600),
    ("Etc/GMT-12", 12 * 3600),
)


@dataclass(slots=True)
class Workout:
    id: str
    created_at: int
    start_time: int
    end_time: int | None  # None while IN_PROGRESS
    seconds: int  # time actually worked out
    discipline: str
    kind: str  # class | free (Just Ride/Run/Walk) | outdoor | gym
    ride: Ride | None  # None for free and outdoor workouts
    zone: tuple[str, int]
    flags: int = 0

    @property
    def status(self) -> str:
        return "IN_PROGRESS" if self.end_time is None else "COMPLETE"

    def __getitem__(self, key: str) -> object:
        """Dict-style reads of the main list keys, for tests that think in JSON."""
        return self.summary()[key]

    def summary(self) -> dict[str, object]:
        """The identifying keys of the list item (the full JSON lives in render.py)."""
        return {
            "id": self.id,
            "status": self.status,
            "created_at": self.created_at,
            "start_time": self.start_time,
            "end_time": self.end_time,
            "fitness_discipline": self.discipline,
            "timezone": self.zone[0],
            "ride": {"id": self.ride.id if self.ride else ZERO_ID},
        }


class Account:
    """One member: profile facts, instructors, class rides, workouts newest first."""

    def __init__(
        self,
        workouts: int,
        seed: int,
        username: str,
        quirks: frozenset[str] = frozenset(),
        in_progress: bool = False,
        anchor: int = DEFAULT_ANCHOR,
        shared: Account | None = None,
        history_days: int | None = None,
    ) -> None:
        self._rng = random.Random(seed)
        rng = self._rng
        self.username = username
        self.user_id = hex_id(rng)
        self.member_since = anchor - 6 * 365 * DAY
        if shared is None:
            self.instructors: list[Instructor] = make_instructors(rng)
            self.rides: dict[str, Ride] = {}  # class rides with /details
            self._pool: dict[str, list[Ride]] = {d.slug: [] for d in DISCIPLINES}
        else:  # another member of the same service: the same instructors and class library
            self.instructors, self.rides, self._pool = shared.instructors, shared.rides, shared._pool
        self.instructors_by_id = {i.id: i for i in self.instructors}
        self.gym_rides: dict[str, Ride] = {}
        self._home = ZONES[seed % len(ZONES)]
        self.workouts: list[Workout] = self._history(workouts, anchor, history_days)
        self._ensure_variety()
        self.by_id = {w.id: w for w in self.workouts}
        self._apply_quirks(quirks)
        if in_progress and self.workouts:
            newest = self.workouts[0]
            newest.end_time = None
        self.generation = 0  # bumped whenever the list changes

    # -- generation -------------------------------------------------------

    def _history(self, count: int, anchor: int, days: int | None) -> list[Workout]:
        rng = self._rng
        span = int((days or min(5 * 365, max(60, count * 1.2))) * DAY)
        times = [anchor - rng.randrange(span) for _ in range(count)]
        for i in range(0, count, 17):
            # Just either side of a UTC midnight: the date partition must follow UTC.
            midnight = times[i] - times[i] % DAY
            times[i] = midnight + rng.choice((-1, 1)) * rng.randint(1, 900)
        times.sort()
        for i in range(1, count):
            times[i] = max(times[i], times[i - 1] + 1)
        out = [self._workout(t) for t in times]
        out.reverse()
        return out

    def _workout(self, created_at: int) -> Workout:
        rng = self._rng
        d = rng.choices(DISCIPLINES, weights=[x.weight for x in DISCIPLINES])[0]
        kind, ride = self._kind_and_ride(d.slug, created_at)
        if ride is not None and ride.duration is not None:
            seconds = ride.duration if rng.random() > 0.05 else rng.randint(60, ride.duration)
        else:
            seconds = rng.randint(10, 60) * 60
        zone = self._home if rng.random() < 0.85 else rng.choice(ZONES)
        start = created_at + rng.randint(5, 90)
        return Workout(
            hex_id(rng), created_at, start, start + seconds, seconds, d.slug, kind, ride, zone
        )

    def _kind_and_ride(self, slug: str, created_at: int) -> tuple[str, Ride | None]:
        rng = self._rng
        roll = rng.random()
        if slug in ("cycling", "running", "walking") and roll < 0.08:
            return "free", None
        if slug in ("running", "walking") and roll < 0.16:
            return "outdoor", None
        if slug == "strength" and roll < 0.12:
            ride = self._new_ride(slug, created_at, gym=True)
            self.gym_rides[ride.id] = ride
            return "gym", ride
        pool = self._pool[slug]
        if pool and rng.random() < 0.3:  # a retake of a class taken before
            return "class", rng.choice(pool)
        distance = (slug == "running" and roll < 0.24) or (slug == "caesar" and roll < 0.1)
        ride = self._new_ride(slug, created_at, distance=distance)
        self.rides[ride.id] = ride
        pool.append(ride)
        return "class", ride

    def _new_ride(
        self, slug: str, created_at: int, gym: bool = False, distance: bool = False
    ) -> Ride:
        rng = self._rng
        d = BY_SLUG[slug]
        teachers = [i for i in self.instructors if slug in i.disciplines] or self.instructors
        types = CLASS_TYPES[slug]
        type_index = rng.randrange(len(types))
        minutes = None if distance else rng.choice(d.durations)
        title = ride_title(slug, minutes, types[type_index], rng)
        ride_id = uuid_id(rng) if gym else hex_id(rng)
        if gym:
            title = f"Gym: {title}"
        air = created_at - rng.randint(3600, 400 * DAY)
        return Ride(
            ride_id,
            slug,
            rng.choice(teachers),
            None if minutes is None else minutes * 60,
            (5.0 if slug == "running" else 2.0) if distance else None,
            air,
            title,
            type_index,
            gym,
        )

    def _ensure_variety(self) -> None:
        """Even a small account holds each awkward kind once: gym, Just Ride, outdoor."""
        ws = self.workouts
        if len(ws) < 12:
            return
        kinds = {w.kind for w in ws}
        for k, (kind, slug) in enumerate(
            (("gym", "strength"), ("free", "cycling"), ("outdoor", "running"))
        ):
            if kind in kinds:
                continue
            w = ws[5 + 2 * k]  # near the top: tests with a workout limit still see it
            w.discipline, w.kind, w.ride = slug, kind, None
            if kind == "gym":
                w.ride = self._new_ride(slug, w.created_at, gym=True)
                self.gym_rides[w.ride.id] = w.ride
                w.seconds = w.ride.duration or w.seconds
            if w.end_time is not None:
                w.end_time = w.start_time + w.seconds

    def _apply_quirks(self, quirks: frozenset[str]) -> None:
        ws = self.workouts
        if not ws:
            return
        if "bad_id" in quirks:
            w = ws[min(2, len(ws) - 1)]
            del self.by_id[w.id]
            w.id = BAD_ID
        if "missing_created_at" in quirks:
            ws[min(4, len(ws) - 1)].flags |= NO_CREATED_AT
        if "null_numbers" in quirks:
            for w in ws[1::9]:
                w.flags |= NULL_NUMBERS
        if "unknown_enum" in quirks:
            for w in ws[3::11]:
                if w.id != BAD_ID:
                    self._make_unknown(w)

    def _make_unknown(self, w: Workout) -> None:
        slug = UNKNOWN_DISCIPLINE.slug
        if slug not in self._pool:
            self._pool[slug] = []
        ride = self._new_ride(slug, w.created_at)
        self.rides[ride.id] = ride
        w.discipline, w.kind, w.ride = slug, "class", ride
        w.seconds = ride.duration or w.seconds
        if w.end_time is not None:
            w.end_time = w.start_time + w.seconds

    # -- changes while serving ---------------------------------------------

    def add_workout(self, now: float) -> Workout:
        """A workout that just finished: newest of all, created 'now'."""
        newest = self.workouts[0].created_at if self.workouts else 0
        w = self._workout(max(int(now), newest + 60))
        self.workouts.insert(0, w)
        self.by_id[w.id] = w
        self.generation += 1
        return w

    def complete(self, now: float) -> Workout | None:
        """Finish the in-progress workout, if any."""
        for w in self.workouts[:3]:
            if w.end_time is None:
                w.end_time = max(int(now), w.start_time + w.seconds)
                self.generation += 1
                return w
        return None

    def delete(self, workout_id: str) -> bool:
        """Remove a workout, as a member deleting it in the app; False if unknown."""
        w = self.by_id.pop(workout_id, None)
        if w is None:
            return False
        self.workouts.remove(w)
        self.generation += 1
        return True

    def set_created_at(self, workout_id: str, created_at: int) -> bool:
        """Change a workout's ``created_at`` (its start and end follow); False if unknown.

        The list stays newest first. Any integer is taken, a millisecond stamp
        included: that is how a test makes a record the harvester must quarantine.
        """
        w = self.by_id.get(workout_id)
        if w is None:
            return False
        shift = created_at - w.created_at
        w.created_at = created_at
        w.start_time += shift
        if w.end_time is not None:
            w.end_time += shift
        self.workouts.sort(key=lambda x: x.created_at, reverse=True)
        self.generation += 1
        return True

    @property
    def total(self) -> int:
        return len(self.workouts)
