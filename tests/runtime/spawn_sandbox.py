"""Run by test_contract's recovery test in a separate process: create and start the sandbox
described on stdin, print "started", then wait to be killed -9 (as a crashing host would be)."""

import asyncio
import json
import sys
from pathlib import Path

from hutch.agent.runtimes import open_driver
from hutch.runtime.state import SandboxRecord
from tests.helpers.runtime import settings_for


async def main(runtime: str, state_dir: Path) -> None:
    spec = SandboxRecord.from_json(
        {"spec": json.loads(sys.stdin.read()), "runtime": runtime, "state": "created",
         "pid": 0, "pid_start": 0, "created_at": 0}
    ).spec  # fmt: skip
    driver = open_driver(settings_for(state_dir), runtime)
    await driver.create(spec)
    await driver.start(spec.id)
    async for record in driver.logs(spec.id, follow=True):
        if b"tick 3\n" in record.data:
            break
    print("started", flush=True)
    await asyncio.sleep(3600)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], Path(sys.argv[2])))
