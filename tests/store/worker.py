"""Store work in a separate process, for the concurrency and crash tests.

python worker.py open URL                 open (migrate) the store and exit
python worker.py claim URL PROJECT N      print "ready", wait for a line on stdin, then
                                          run N concurrent quota-checked creates and
                                          print how many made a machine
python worker.py hang URL PROJECT NAME    create machine NAME in a write transaction,
                                          print "ready" and wait inside it, to be killed
"""

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: tests.store...

from hutch.store.sql import SqlStore
from tests.store import factories as f

QUOTA = 10


async def claim(store: SqlStore, project_id: str) -> bool:
    """The services' pattern: lock the project, check its usage, create within the quota."""
    async with store.write() as tx:
        await tx.projects.lock(project_id)
        usage = await tx.machines.usage(project_id)
        if usage.machines >= QUOTA:
            return False
        await asyncio.sleep(0.002)  # widen the window a race would need
        await tx.machines.create(f.machine(project_id))
        return True


async def main(verb: str, url: str, *args: str) -> None:
    store = SqlStore(url)
    await store.open()
    try:
        if verb == "claim":
            project_id, n = args[0], int(args[1])
            print("ready", flush=True)
            sys.stdin.readline()  # all start together: the test wants them to collide
            made = await asyncio.gather(*(claim(store, project_id) for _ in range(n)))
            print(sum(made), flush=True)
        elif verb == "hang":
            async with store.write() as tx:
                await tx.projects.lock(args[0])
                await tx.machines.create(f.machine(args[0], args[1]))
                print("ready", flush=True)
                await asyncio.sleep(3600)
    finally:
        await store.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
