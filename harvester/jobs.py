"""The workers' queue: one request per job, as many workers as request slots.

A harvest's requests are small and many (a workout's detail, graph and class),
so what the event loop spends around each one counts: at zero latency the loop,
not the network, bounds a run. The workers therefore take requests, not
workouts: ``concurrency`` workers each pull the next request from one queue and
send it, the shape of the plainest aiohttp loop. A workout's requests go in
together; one that needs another request after its answers (a retried workout's
graph, a class the detail names) puts it at the front, so started workouts
finish first.

Taking a job that is waiting costs no turn of the event loop; a worker parks
only when the queue is empty. The producer (the listing) waits while
``limit`` workouts are open, so memory stays bounded and the listing never runs
far ahead of the fetching.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

J = TypeVar("J")


class Jobs(Generic[J]):
    """A FIFO of jobs for a pool of workers, with urgent jobs in front and open-unit accounting.

    A *unit* (a workout) is opened by ``open`` and closed by ``settle``; it owns
    the jobs ``put`` for it. After ``close`` the workers drain the queue and
    stop once no unit is open (an open unit may still add jobs).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit  # open units past which the producer waits
        self.open_units = 0
        self._queue: deque[J] = deque()
        self._waiting: deque[asyncio.Future[None]] = deque()  # parked workers
        self._room: asyncio.Future[None] | None = None  # the producer, parked on a full queue
        self._closed = False

    def put(self, job: J, *, urgent: bool = False) -> None:
        if urgent:
            self._queue.appendleft(job)
        else:
            self._queue.append(job)
        self._wake_one()

    def open(self) -> None:
        self.open_units += 1

    def settle(self) -> None:
        """One unit is done: room for the producer; the workers' end once closed and idle."""
        self.open_units -= 1
        room = self._room
        # Wake the producer when a quarter of the room is free, not per unit.
        if room is not None and self.open_units <= self.limit - max(1, self.limit // 4):
            self._room = None
            if not room.done():
                room.set_result(None)
        if self._closed and self.open_units == 0 and not self._queue:
            self._wake_all()

    async def room(self) -> None:
        """Return when fewer than ``limit`` units are open."""
        while self.open_units >= self.limit:
            self._room = asyncio.get_running_loop().create_future()
            await self._room

    def close(self) -> None:
        """No more units will be opened; parked workers stop when nothing is left."""
        self._closed = True
        if self.open_units == 0 and not self._queue:
            self._wake_all()

    async def get(self) -> J | None:
        """The next job, or None when the queue is closed, empty and no unit is open."""
        queue = self._queue
        while not queue:
            if self._closed and self.open_units == 0:
                return None
            waiter = asyncio.get_running_loop().create_future()
            self._waiting.append(waiter)
            try:
                await waiter
            finally:
                if not waiter.done():  # cancelled while parked
                    waiter.cancel()
        return queue.popleft()

    def _wake_one(self) -> None:
        waiting = self._waiting
        while waiting:
            waiter = waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _wake_all(self) -> None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
