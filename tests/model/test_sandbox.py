import signal

import pytest

from hutch.model.errors import Invalid
from hutch.model.machine import MachineSpec
from hutch.model.sandbox import (
    ExitStatus,
    ProcessSpec,
    Resources,
    SandboxSpec,
    User,
    parse_signal,
    scratch_mib,
    validate_sandbox_id,
)


@pytest.mark.parametrize("good", ["a", "sb-1f2e", "web.1", "x" * 40, "0_9"])
def test_good_ids(good: str) -> None:
    assert validate_sandbox_id(good) == good


@pytest.mark.parametrize("bad", ["", "-a", "A", "a/b", "../x", "x" * 41, "a b"])
def test_bad_ids_are_refused(bad: str) -> None:
    with pytest.raises(Invalid, match="sandbox id"):
        validate_sandbox_id(bad)


def test_process_spec_validation() -> None:
    with pytest.raises(Invalid, match="no command"):
        ProcessSpec(args=())
    with pytest.raises(Invalid, match="absolute"):
        ProcessSpec(args=("x",), cwd="relative")
    with pytest.raises(Invalid, match="KEY=VALUE"):
        ProcessSpec(args=("x",), env=("NOEQ",))
    with pytest.raises(Invalid, match="KEY=VALUE"):
        ProcessSpec(args=("x",), env=("1BAD=x",))
    with pytest.raises(Invalid, match="NUL"):
        ProcessSpec(args=("x\0y",))
    with pytest.raises(Invalid, match="exceed"):
        ProcessSpec(args=("x", "y" * (300 << 10)))
    with pytest.raises(Invalid, match="out of range"):
        User(uid=-1)
    assert ProcessSpec(args=("x",), env=("A=b=c",)).env == ("A=b=c",)


def test_resources() -> None:
    with pytest.raises(Invalid, match="cpus"):
        Resources(cpus=0)
    with pytest.raises(Invalid, match="memory"):
        Resources(memory_mib=0)
    with pytest.raises(Invalid, match="pids"):
        Resources(pids=1)
    assert Resources(memory_mib=256).scratch_bytes == 128 << 20
    assert Resources(memory_mib=256, scratch_mib=10).scratch_bytes == 10 << 20


@pytest.mark.parametrize(("disk", "memory", "scratch"), [(0, 256, 128), (0, 20, 16), (10, 256, 10)])
def test_a_machine_and_its_sandbox_get_the_same_scratch(
    disk: int, memory: int, scratch: int
) -> None:
    """What the scheduler and quotas count (the machine's) is what the driver gives."""
    spec = MachineSpec(image="busybox", memory_mib=memory, disk_mib=disk)
    assert spec.scratch_mib == scratch_mib(disk, memory) == scratch
    assert Resources(memory_mib=memory, scratch_mib=disk).scratch_bytes == scratch << 20


def test_spec_hostname_is_checked() -> None:
    proc = ProcessSpec(args=("x",))
    with pytest.raises(Invalid, match="hostname"):
        SandboxSpec(id="s", process=proc, hostname="bad_host!")
    assert SandboxSpec(id="s", process=proc, hostname="web-1").hostname == "web-1"


def test_signals_by_number_and_name() -> None:
    assert parse_signal("SIGQUIT") == parse_signal("quit") == parse_signal(3) == signal.SIGQUIT
    assert parse_signal("15") == 15
    for bad in ("SIGNOPE", "0", "99", "5\u00b2", "\u0663"):
        with pytest.raises(Invalid):
            parse_signal(bad)


def test_exit_status_describes_itself() -> None:
    assert ExitStatus(0).describe() == "exit code 0"
    assert "signal 9" in ExitStatus(137, 9).describe()
    assert "out of memory" in ExitStatus(137, 9, oom_killed=True).describe()
    failed = ExitStatus(255, error="guest did not boot")
    assert failed.failed and failed.describe() == "guest did not boot"
