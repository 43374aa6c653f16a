"""The writer: one account's finished workouts into the lake, each day's files once.

The workers hand every ``WorkoutResult`` to ``Writer.add`` (a call: no await, no
stream). Every ``batch_size`` results, or ``flush_interval_s``, ``Writer.run``
looks for the results whose days are complete (frontier.py: the newest-first
listing has passed the day and all its listed workouts are back) and hands them
to the pipeline's commit, which runs in a thread while more results arrive;
the others wait for their day. So a backfill writes each day's ``workouts`` and
``performance_graphs`` files once, together (a committed workout implies its
graph), instead of rewriting them per batch. While a commit runs and
``backlog_limit`` results wait for one, the listing waits (``room``): a disk
slower than the network holds the fetching back instead of filling memory.

Classes (``rides``, partitioned by the day they aired) wait as JSON lines until
every account of the run has listed past that day (classes.py: one hold for all
the accounts of a process, so each day's file is merged about once).

``commit`` is the run's only way into the lake: one commit at a time (a lock),
each in a worker thread, so two merges of one file never overlap. A stopped
run still commits everything the writer holds (shielded).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

import anyio

from harvester.api import WorkoutRef
from harvester.classes import RunClasses
from harvester.frontier import Frontier
from harvester.lake import Encoded, Lake
from harvester.state import FailedItem

Row = dict[str, object]
DEFAULT_BATCH_SIZE = 32  # results between two looks for complete days to commit
DEFAULT_FLUSH_INTERVAL_S = 0.5  # look at least this often while results arrive
# Results handed over and not yet committed past which the listing waits, while a commit
# runs: a disk slower than the network holds the listing back instead of filling memory.
DEFAULT_BACKLOG = 256


@dataclass(slots=True)
class WorkoutResult:
    """What the workers learnt about one workout: its lake lines, made when it settled.

    Lines, not rows: a result may wait for its day for a while, and bytes cost
    neither the memory of a dict of dicts nor the cyclic collector's time.
    """

    ref: WorkoutRef
    workout: Encoded | None = None  # with its graph's line, or neither is written
    graph: Encoded | None = None
    created_at: int | None = None  # what the workout's row names, for the mirror's index
    ride_id: str | None = None
    failures: list[FailedItem] = field(default_factory=list)
    in_progress: bool = False


Commit = Callable[[list[WorkoutResult], bool], Awaitable[None]]  # (results, final)


class Writer:
    """When to commit which results, and the run's one way into the lake."""

    def __init__(
        self, lake: Lake, user_id: str, *, batch_size: int = DEFAULT_BATCH_SIZE,
        flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S,
        classes: RunClasses | None = None, rows: dict[str, int] | None = None,
        backlog_limit: int | None = None,
    ) -> None:
        self.lake = lake
        self.user_id = user_id
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.backlog_limit = DEFAULT_BACKLOG if backlog_limit is None else backlog_limit
        self.backlog = 0  # results handed over and not yet committed
        self._committing = False  # a background commit is running
        self._committed = anyio.Event()  # set (and replaced) when one ends
        self.frontier = Frontier()  # which partitions are complete (written once)
        self._inflight: list[WorkoutResult] = []  # the results a background commit holds
        # Classes waiting for their rides day, with those of the run's other accounts, and
        # the account's tally each class it fetched counts in once written.
        self.classes = RunClasses() if classes is None else classes
        self._rows: dict[str, int] = {} if rows is None else rows
        self._lock = anyio.Lock()  # one lake commit at a time: merges of one file never race
        self._arrived: list[WorkoutResult] = []  # handed over since the last round
        self._wake = anyio.Event()  # a batch's worth arrived, or closed
        self._closed = False

    def add(self, result: WorkoutResult) -> None:
        """A worker's finished workout (no await: the writer looks at it on its next round)."""
        self.frontier.returned(result.ref.created_at)
        self.backlog += 1
        self._arrived.append(result)
        if len(self._arrived) >= self.batch_size:
            self._wake.set()

    async def room(self) -> None:
        """Return when fewer than ``backlog_limit`` results wait for a commit, or when no commit
        is running: then what waits is of days not yet complete, which only the listing can
        complete, so waiting for it would never end."""
        while self.backlog >= self.backlog_limit and self._committing:
            await self._committed.wait()

    def close(self) -> None:
        """No more results: the writer commits what it holds and returns."""
        self._closed = True
        self._wake.set()

    async def run(self, commit: Commit) -> None:
        """Hand ``commit`` the results as their days complete, one commit at a time, in order."""
        pending: list[WorkoutResult] = []  # received, their day not yet complete
        idle = anyio.Event()
        idle.set()
        self.classes.join(self.frontier)
        try:
            async with anyio.create_task_group() as tg:
                while not self._closed:
                    with anyio.move_on_after(self.flush_interval_s):
                        await self._wake.wait()
                    self._wake = anyio.Event()
                    pending += self._arrived
                    self._arrived = []
                    ready, pending = self._complete(pending)
                    if not self._closed and (ready or self._rides_due()):
                        await idle.wait()  # commits stay in order, one at a time
                        idle = anyio.Event()
                        self._inflight = ready
                        self._committing = True
                        tg.start_soon(self._commit_inflight, commit, idle)
                    elif self._closed:
                        pending = [*ready, *pending]
        finally:
            # A stopped run still commits every result already handed over, complete
            # days or not, including a batch whose commit was interrupted (merging is
            # idempotent).
            pending = [*self._inflight, *pending, *self._arrived]
            self._inflight = []
            self._arrived = []
            self.classes.leave(self.frontier)  # this last commit takes the days of its classes
            with anyio.CancelScope(shield=True):
                await commit(pending, True)

    async def _commit_inflight(self, commit: Commit, idle: anyio.Event) -> None:
        await commit(self._inflight, False)
        self.backlog -= len(self._inflight)
        self._inflight = []
        self._committing = False
        self._committed.set()
        self._committed = anyio.Event()
        idle.set()

    def _complete(self, results: list[WorkoutResult]) -> tuple[list[WorkoutResult], list[WorkoutResult]]:
        """The results whose workout days have closed (or that write no row), and the rest."""
        ready: list[WorkoutResult] = []
        waiting: list[WorkoutResult] = []
        closed = self.frontier.closed
        for result in results:
            done = all(line is None or line.part is None or closed(line.part)
                       for line in (result.workout, result.graph))
            (ready if done else waiting).append(result)
        return ready, waiting

    def _rides_due(self) -> bool:
        return self.classes.due()

    # -- classes waiting for their day ---------------------------------------------

    def hold(self, ride: Encoded) -> None:
        """A class this account fetched: it waits for its day with the run's other classes."""
        self.classes.hold(ride, self._rows)

    def release_rides(self, final: bool) -> list[Encoded]:
        """The held classes to commit now (classes.py): in the last commit every day holding
        one of this account's classes; else the days every running account has passed."""
        return self.classes.release(self._rows if final else None)

    # -- the way into the lake -----------------------------------------------------

    async def commit(
        self, batch: Mapping[str, Sequence[Row | Encoded]],
        removals: Mapping[str, Mapping[str, Collection[str]]] | None = None,
    ) -> dict[str, int]:
        """One lake commit at a time (a thread each): two merges of one file never overlap."""
        async with self._lock:
            return await anyio.to_thread.run_sync(self.lake.commit, self.user_id, batch, removals)

