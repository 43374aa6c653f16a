"""``python -m harvester`` and the ``peloton-harvester`` script."""

from __future__ import annotations

import gc
from typing import NoReturn

# Container allocations between two young-generation collections (CPython's default: 700).
DEFAULT_GC_YOUNG_THRESHOLD = 50_000


def run() -> NoReturn:
    """Import the CLI with the cyclic collector off, then run it.

    Importing aiohttp and the rest creates tens of thousands of objects that live
    as long as the process; meanwhile the collector would walk them again and
    again (10-20 ms of a 0.22 s start here). So collect nothing until they exist,
    then freeze them out of every later collection as well.

    A run then decodes every answer into a few hundred containers that live until
    their batch is committed (about half a second): at the default threshold the
    collector walked each batch several times while it was alive (0.6-0.8 s of a
    2,000-workout backfill's 5 s of CPU, for no cycle found); at 10,000 it cost
    0.05 s. Fifty accounts at once keep ten times as much alive: at 10,000 their
    run (50 x 200 workouts) spent 0.2-0.35 s in collections of 9-16 ms each; at 50,000,
    0.06-0.09 s. Cyclic garbage (about a thousand aiohttp and asyncio objects in such
    a run) is still collected, only in larger rounds.
    """
    gc.disable()
    try:
        from harvester.cli import entry
    finally:
        gc.enable()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(DEFAULT_GC_YOUNG_THRESHOLD, older, oldest)
    entry()


if __name__ == "__main__":
    run()
