"""Templates: a micro-VM booted to a ready guest agent with no process, snapshotted; its clones
wait, pre-restored, and start as the machine they are given (RuntimeDriver.start(id, spec))."""

import asyncio
import dataclasses
import time
from pathlib import Path

import pytest

from hutch.images.rootfs import PreparedRoot
from hutch.model.errors import Conflict, Invalid, NotFound
from hutch.model.sandbox import ProcessSpec, Resources, SandboxState
from hutch.runtime.driver import SandboxDriver
from tests.helpers.runtime import PATH, driver_in, make_spec, output, wait_for_line

# Sandbox ids name host-wide cgroups: these tests' own.
TEMPLATE = "tpl"


async def first_output(driver: SandboxDriver, sandbox_id: str) -> bytes:
    async for record in driver.logs(sandbox_id, follow=True):
        return record.data
    raise AssertionError(f"{sandbox_id} printed nothing")


async def test_template_clones_start_as_the_machines_they_are_given(
    microvm: SandboxDriver, busybox_root: PreparedRoot, short_dir: Path
) -> None:
    """A template runs no process and is snapshotted without pausing one; each clone of its
    snapshot, made ready at create, starts with its own command, hostname and stdin, and
    that machine is what the sandbox is from then on."""
    spec = dataclasses.replace(
        make_spec(busybox_root, "/bin/sh", "-c", "echo never", sandbox_id=TEMPLATE),
        template=True,
    )
    await microvm.create(spec)
    with pytest.raises(Invalid, match="not restored from a template snapshot"):
        await microvm.start(TEMPLATE, spec)
    assert (await microvm.start(TEMPLATE)).state is SandboxState.RUNNING  # its agent answered
    snap = await microvm.snapshot(TEMPLATE, short_dir / "snap")
    assert snap.template
    assert await microvm.stop(TEMPLATE, timeout=60) is not None
    assert [r async for r in microvm.logs(TEMPLATE)] == []  # its process never ran
    await microvm.destroy(TEMPLATE)

    scripts = {
        "tpl-a": "echo one $(hostname)",
        "tpl-b": "echo two $(hostname); read line; echo got $line; sleep 600",
    }
    for name in scripts:
        await microvm.create(
            dataclasses.replace(
                make_spec(busybox_root, "/bin/true", sandbox_id=name),
                restore_from=snap.path,
            )
        )
        assert (await microvm.inspect(name)).state is SandboxState.CREATED
    # What it starts as is its process, hostname, stop signal and output hold: not another
    # shape. Refused, it waits on to be started.
    created = await microvm.spec("tpl-b")
    with pytest.raises(Invalid, match="other resources"):
        await microvm.start("tpl-b", dataclasses.replace(created, resources=Resources(cpus=2)))

    started_s = {}
    for name, script in scripts.items():
        machine = dataclasses.replace(
            await microvm.spec(name),
            hostname=f"host-{name}",
            process=ProcessSpec(args=("/bin/sh", "-c", script), env=(PATH,), stdin=True),
        )
        t0 = time.monotonic()
        first = asyncio.create_task(first_output(microvm, name))
        info = await microvm.start(name, machine)
        assert info.state is SandboxState.RUNNING
        started_s[name] = (await first, time.monotonic() - t0)
    assert started_s["tpl-a"][0].startswith(b"one host-tpl-a")
    assert started_s["tpl-b"][0].startswith(b"two host-tpl-b")
    assert (await microvm.wait("tpl-a", 30)).code == 0
    assert (await output(microvm, "tpl-a"))[0] == b"one host-tpl-a\n"

    # The started machine is the sandbox's: its spec, its stdin, exec in it.
    assert (await microvm.spec("tpl-b")).hostname == "host-tpl-b"
    stdin = await microvm.attach("tpl-b")
    await stdin.write(b"hello\n")
    await wait_for_line(microvm, "tpl-b", b"got hello")
    proc = await microvm.exec(
        "tpl-b", ProcessSpec(args=("/bin/sh", "-c", "hostname; cat /etc/machine-id"), env=(PATH,))
    )
    status, out, _ = await proc.communicate()
    assert status.code == 0
    hostname, machine_id = out.decode().split()
    assert hostname == "host-tpl-b" and len(machine_id) == 32
    # Started once: not again, as anything else.
    with pytest.raises(Conflict, match="not created"):
        await microvm.start("tpl-b", await microvm.spec("tpl-b"))

    # A clone waiting to be started outlives its host process: a new one re-adopts it ready.
    await microvm.create(
        dataclasses.replace(
            make_spec(busybox_root, "/bin/true", sandbox_id="tpl-c"), restore_from=snap.path
        )
    )
    await microvm.close()
    async for again in driver_in(short_dir / "state", "microvm"):
        assert "tpl-c" in {info.id for info in await again.recover()}
        machine = dataclasses.replace(
            await again.spec("tpl-c"),
            process=ProcessSpec(args=("/bin/echo", "three"), env=(PATH,)),
        )
        await again.start("tpl-c", machine)
        assert (await again.wait("tpl-c", 30)).code == 0
        assert (await output(again, "tpl-c"))[0] == b"three\n"
    print("start to first output (s):", {k: round(v[1], 3) for k, v in started_s.items()})


async def test_containers_make_no_templates(
    container: SandboxDriver, busybox_root: PreparedRoot
) -> None:
    spec = make_spec(busybox_root, "/bin/true", sandbox_id=TEMPLATE)
    with pytest.raises(Invalid, match="micro-VMs do"):
        await container.create(dataclasses.replace(spec, template=True))
    with pytest.raises(NotFound):
        await container.inspect(TEMPLATE)
    await container.create(spec)  # the same sandbox, no template: made
    with pytest.raises(Invalid, match="not restored from a template snapshot"):
        await container.start(TEMPLATE, spec)
