import os
from pathlib import Path

import pytest

from hutch.model.errors import Unavailable
from hutch.runtime.cgroups import Cgroup, Layout, Limits

V1 = """\
30 25 0:26 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
31 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
32 25 0:28 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
33 25 0:29 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""


def test_layout_v1_with_comounted_controllers_and_hybrid_mount() -> None:
    layout = Layout.detect(V1)
    assert layout.v2 is None
    assert layout.v1["cpu"] == layout.v1["cpuacct"] == Path("/sys/fs/cgroup/cpu,cpuacct")
    assert layout.hybrid_mount == Path("/sys/fs/cgroup/unified")


def test_layout_without_a_memory_controller_is_refused() -> None:
    with pytest.raises(Unavailable, match="memory cgroup"):
        Layout.detect("25 1 0:22 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n")


def test_v2_group_is_written_in_v2_terms(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids\n")
    layout = Layout({}, tmp_path)
    group = Cgroup(layout, "hutch", "sb1")
    group.create(Limits(memory_bytes=256 << 20, pids=64, cpus=1.5))
    leaf = tmp_path / "hutch" / "sb1"
    assert (leaf / "memory.max").read_text() == str(256 << 20)
    assert (leaf / "pids.max").read_text() == "64"
    assert (leaf / "cpu.max").read_text() == "150000 100000"
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"
    (leaf / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    (leaf / "cpu.stat").write_text("usage_usec 1500\nuser_usec 1000\n")
    assert group.oom_kills() == 1
    assert group.cpu_ns() == 1_500_000


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create cgroups")
def test_real_group_on_this_host_limits_and_removes() -> None:
    layout = Layout.detect()
    group = Cgroup(layout, "hutch-test", f"g{os.getpid()}")
    group.create(Limits(memory_bytes=64 << 20, pids=16, cpus=0.5))
    try:
        assert group.exists()
        assert group.memory_limit() == 64 << 20
        assert group.oom_kills() == 0
    finally:
        group.remove()
    assert not group.exists()
