"""``python -m harvester`` and the ``peloton-harvester`` script."""

from __future__ import annotations

import gc
from typing import NoReturn


def run() -> NoReturn:
    """Import the CLI with the cyclic collector off, then run it.

    Importing aiohttp and the rest creates tens of thousands of objects that live
    as long as the process; meanwhile the collector would walk them again and
    again (10-20 ms of a 0.22 s start here). So collect nothing until they exist,
    then freeze them out of every later collection as well.
    """
    gc.disable()
    try:
        from harvester.cli import entry
    finally:
        gc.enable()
    gc.freeze()
    entry()


if __name__ == "__main__":
    run()
