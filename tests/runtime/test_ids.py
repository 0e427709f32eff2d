import subprocess
import sys
from pathlib import Path

import pytest

from hutch.model.errors import Unavailable
from hutch.runtime.ids import IdPool
from hutch.runtime.procs import ProcessRef

# A hostile holder (a compromised QEMU) unlocks the descriptor it inherited, then lives on.
DROP_LOCK = (
    "import fcntl, sys, time; fcntl.flock(int(sys.argv[1]), fcntl.LOCK_UN); print(flush=True); "
    "time.sleep(60)"
)


def hand_over(pool: IdPool, argv: list[str]) -> tuple[int, subprocess.Popen[bytes]]:
    """Take an id and give it to a new process, as the drivers do with QEMU or crun's init."""
    lease = pool.take()
    proc = subprocess.Popen([*argv, str(lease.fd)], pass_fds=(lease.fd,), stdout=subprocess.PIPE)
    ref = ProcessRef.of(proc.pid)
    assert ref is not None
    lease.bind(ref)
    return lease.id, proc


def next_id(pool: IdPool) -> int:
    lease = pool.take()
    lease.close()  # never handed to a process: free again at once
    return lease.id


def end(proc: subprocess.Popen[bytes]) -> None:
    proc.kill()
    proc.wait()


def test_an_id_is_held_for_the_life_of_the_process_that_inherits_it(tmp_path: Path) -> None:
    pool = IdPool("uid", 1000, 3, directory=tmp_path)
    first, proc = hand_over(pool, ["sleep", "60"])
    assert first == 1000
    assert next_id(pool) == 1001  # and 1001 again: a lease never handed over is not kept
    assert next_id(pool) == 1001
    end(proc)
    assert next_id(pool) == 1000  # its holder died: the id came back


def test_a_holder_that_drops_its_lock_keeps_its_id(tmp_path: Path) -> None:
    pool = IdPool("uid", 1000, 2, step=100, directory=tmp_path)
    first, proc = hand_over(pool, [sys.executable, "-c", DROP_LOCK])
    assert proc.stdout is not None
    proc.stdout.readline()  # the lock is dropped; the record of its owner stays
    assert next_id(pool) == 1100
    end(proc)
    assert next_id(pool) == first


def test_a_full_pool_is_refused(tmp_path: Path) -> None:
    pool = IdPool("uid", 1000, 1, directory=tmp_path)
    lease = pool.take()
    with pytest.raises(Unavailable, match="all 1 uid ids from 1000 are in use"):
        pool.take()
    lease.close()
