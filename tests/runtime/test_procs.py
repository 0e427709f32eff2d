import asyncio
import os
import subprocess

from hutch.runtime.procs import ProcessRef


async def test_ref_follows_a_process_to_its_end() -> None:
    proc = subprocess.Popen(["sleep", "30"])
    ref = ProcessRef.of(proc.pid)
    assert ref is not None and ref.alive()
    ref.kill()
    await asyncio.wait_for(ref.wait(), 5)
    assert not ref.alive()  # a zombie is not alive
    assert proc.wait() == -9  # the status is left to the parent's Popen
    assert ProcessRef.of(proc.pid) is None


def test_a_reused_pid_is_not_the_same_process() -> None:
    me = ProcessRef.of(os.getpid())
    assert me is not None
    impostor = ProcessRef(me.pid, me.start_ticks + 1)
    assert not impostor.alive()
    impostor.kill()  # must not signal us
    assert me.alive()
