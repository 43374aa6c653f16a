"""Hold one account's run lock until stdin closes: a stand-in for a run, for the lease tests.

    python -m tests.lease_holder ROOT ACCOUNT TTL_S

Prints ``held`` once the lock is taken; on a HarvesterError prints one line
on stderr and exits with the error's exit code, as the CLI does.
"""

from __future__ import annotations

import sys

import anyio

from harvester.errors import HarvesterError
from harvester.storage import open_storage
from harvester.storage.lease import run_lock


async def hold(root: str, account: str, ttl_s: float) -> None:
    async with run_lock(open_storage(root), account, "backfill", ttl_s=ttl_s):
        print("held", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.read)


def main() -> int:
    root, account, ttl = sys.argv[1], sys.argv[2], float(sys.argv[3])
    try:
        anyio.run(hold, root, account, ttl)
    except HarvesterError as exc:
        print(f"peloton-harvester: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
