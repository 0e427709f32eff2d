from pathlib import Path

import pytest

from hutch.model.errors import Conflict, Invalid
from hutch.model.sandbox import ExitStatus, ProcessSpec, Resources, SandboxSpec, SandboxState, User
from hutch.runtime.state import SandboxDir, SandboxRecord, check_state_root


def record() -> SandboxRecord:
    spec = SandboxSpec(
        id="s1",
        process=ProcessSpec(args=("/bin/sh", "-c", "x"), env=("A=1",), user=User(5, 6, (7,))),
        rootfs="/r",
        resources=Resources(cpus=2, memory_mib=256),
    )
    return SandboxRecord(spec=spec, runtime="microvm", pid=42, pid_start=7)


def test_record_round_trips_through_disk(tmp_path: Path) -> None:
    sdir = SandboxDir(tmp_path, "s1")
    sdir.create()
    rec = record()
    rec.state = SandboxState.EXITED
    rec.exit = ExitStatus(137, 9, True)
    rec.details["uid"] = "1500000"
    sdir.save(rec)
    assert sdir.load() == rec
    assert not list(tmp_path.glob("s1/.record-*"))  # no temp file left


def test_directory_exists_once_and_one_process_watches(tmp_path: Path) -> None:
    SandboxDir(tmp_path, "s1").create()
    with pytest.raises(Conflict):
        SandboxDir(tmp_path, "s1").create()
    a, b = SandboxDir(tmp_path, "s1"), SandboxDir(tmp_path, "s1")
    assert a.try_lock()
    assert not b.try_lock()
    a.unlock()
    assert b.try_lock()
    b.remove()
    assert not (tmp_path / "s1").exists()


def test_state_root_must_leave_room_for_socket_paths(short_dir: Path) -> None:
    with pytest.raises(Invalid, match="unix socket"):
        check_state_root(short_dir / ("x" * 90))
    root = check_state_root(short_dir / "ok")
    assert root.stat().st_mode & 0o777 == 0o700
