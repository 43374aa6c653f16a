"""The workers' queue (harvester/jobs.py): order, backpressure and the end of the work."""

from __future__ import annotations

import asyncio

from harvester.jobs import Jobs


async def test_urgent_jobs_go_first_and_the_rest_in_order() -> None:
    """A follow-up put as urgent is taken before jobs queued earlier; the others keep FIFO order."""
    jobs = Jobs[str](limit=10)
    jobs.open()
    for name in ("a", "b", "c"):
        jobs.put(name)
    jobs.put("follow-up", urgent=True)
    assert [await jobs.get() for _ in range(4)] == ["follow-up", "a", "b", "c"]


async def test_workers_stop_only_when_closed_and_no_unit_is_open() -> None:
    """After close, a parked worker keeps waiting while a unit is open (it may add jobs),
    takes the job that unit adds, and gets None once the unit settles."""
    jobs = Jobs[str](limit=10)
    jobs.open()
    jobs.close()
    worker = asyncio.create_task(jobs.get())
    await asyncio.sleep(0)
    assert not worker.done()  # the open unit may still need a request
    jobs.put("late")
    assert await worker == "late"
    second = asyncio.create_task(jobs.get())
    await asyncio.sleep(0)
    assert not second.done()
    jobs.settle()
    assert await second is None
    assert await jobs.get() is None


async def test_the_producer_waits_while_the_limit_of_units_is_open() -> None:
    """room() parks the producer at ``limit`` open units and frees it once a quarter settled."""
    jobs = Jobs[str](limit=8)
    for _ in range(8):
        jobs.open()
    producer = asyncio.create_task(jobs.room())
    await asyncio.sleep(0)
    jobs.settle()  # 7 open: not yet a quarter free
    await asyncio.sleep(0)
    assert not producer.done()
    jobs.settle()  # 6 open: a quarter of the room
    await asyncio.wait_for(producer, 1)
    await jobs.room()  # under the limit: returns at once


async def test_a_cancelled_parked_worker_does_not_swallow_a_wake_up() -> None:
    """A worker cancelled while parked leaves the next job to a live worker."""
    jobs = Jobs[str](limit=10)
    jobs.open()
    gone = asyncio.create_task(jobs.get())
    live = asyncio.create_task(jobs.get())
    await asyncio.sleep(0)
    gone.cancel()
    await asyncio.sleep(0)
    jobs.put("job")
    assert await asyncio.wait_for(live, 1) == "job"
