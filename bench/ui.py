"""Dashboard benchmark: the server's time to render GET /ui/machines for a project of 1,000
machines (target: under 300 ms).

The controller's real app (API + dashboard) and store (SQLite in a temporary directory), served
in-process (httpx's ASGI transport, so the network adds nothing); the machines are written to
the store directly (no node runs them: a list reads only the store). Signed in through the
sign-in form as a project member, it requests the page N times and reports the median and the
worst of the time the page itself measured (its `Server-Timing` header: the dependency that
finds the session, the listing, the sort and the rendering) and of the time the client waited.
The last line printed is one JSON object with the figures.

    make bench    or    .venv/bin/python -m bench.ui [--machines 1000] [--runs 20]
"""

import argparse
import asyncio
import json
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from hutch import config
from hutch.api.app import create_app
from hutch.cli.servers import settled
from hutch.controller import Controller, bootstrap, build_controller
from hutch.model.machine import Desired, Machine, MachineSpec, MachineState
from hutch.model.tenancy import Project, Role
from hutch.services.ids import new_id
from hutch.web import install as install_web

TARGET_MS = 300.0
STATES = [MachineState.RUNNING] * 6 + [MachineState.EXITED, MachineState.CREATED,
                                       MachineState.SUSPENDED, MachineState.FAILED]  # fmt: skip
IMAGES = ["busybox", "alpine:3.20", "nginx:1.27", "registry.example:5000/team/app:v3"]


async def fill(ctl: Controller, p: Project, count: int) -> None:
    """`count` machines in `p`, of mixed states and images, written in one transaction."""
    now = time.time()
    async with ctl.store.write() as tx:
        for i in range(count):
            state = STATES[i % len(STATES)]
            spec = MachineSpec(image=IMAGES[i % len(IMAGES)], command=("sh", "-c", f"serve {i}"),
                               cpus=1 + i % 4, memory_mib=128 * (1 + i % 8))  # fmt: skip
            desired = Desired.STOPPED if state.finished else Desired.RUNNING
            at = now - (count - i)
            await tx.machines.create(
                Machine(new_id("m"), p.id, f"app-{i:04d}", spec, state, desired, at, at)
            )


async def measure(machines: int, runs: int) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="hutch-bench-ui-"))
    try:
        settings = config.load(state_dir=work, controller_secret="c" * 32, join_secret="j" * 32)
        ctl = build_controller(settings)
        app = create_app(ctl, settings)
        install_web(app, ctl, settings)
        settled()  # as the controller does before it serves
        await ctl.store.open()
        try:
            await bootstrap(ctl, settings)
            admin = await ctl.tenancy.authenticate((work / "admin-token").read_text().strip())
            project, _, member = await ctl.tenancy.create_token(
                admin, settings.project, Role.MEMBER
            )
            assert project is not None
            await fill(ctl, project, machines)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://hutch") as http:
                form = await http.get("/ui/login")
                csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
                assert csrf, "no sign-in form"
                signed = await http.post("/ui/login", data={"token": member, "csrf": csrf[1]})
                assert signed.status_code == 303, signed.text
                server, client = [], []
                for i in range(runs + 2):  # the first two warm the caches up
                    start = time.perf_counter()
                    r = await http.get("/ui/machines")
                    took = (time.perf_counter() - start) * 1000
                    assert r.status_code == 200, r.text[:500]
                    if i == 0:
                        shown = r.text.count('<tr id="m-')
                        assert shown == machines, f"{shown} rows for {machines} machines"
                        size = len(r.content)
                    if i >= 2:
                        timing = re.match(r"app;dur=([\d.]+)", r.headers["server-timing"])
                        assert timing
                        server.append(float(timing[1]))
                        client.append(took)
        finally:
            await ctl.link.close()
            await ctl.store.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    median = statistics.median(server)
    return {
        "machines": machines,
        "runs": runs,
        "page_bytes": size,
        "server_ms_p50": round(median, 1),
        "server_ms_max": round(max(server), 1),
        "client_ms_p50": round(statistics.median(client), 1),
        "target_ms": TARGET_MS,
        "within_target": median < TARGET_MS,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machines", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    figures = asyncio.run(measure(args.machines, args.runs))
    print(f"GET /ui/machines, {figures['machines']} machines ({figures['page_bytes']} bytes): "
          f"server {figures['server_ms_p50']} ms median, {figures['server_ms_max']} ms worst "
          f"of {figures['runs']}; client {figures['client_ms_p50']} ms median")  # fmt: skip
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
