"""What only the container runtime promises: its own namespaces, the agent out of reach, no
way to new namespaces or mounts, and root that is not the host's."""

import errno
import os
import subprocess
from pathlib import Path

import pytest

from hutch.images.rootfs import PreparedRoot
from hutch.model.sandbox import ProcessSpec, Resources, SandboxSpec
from hutch.runtime.cgroups import Cgroup, Layout
from hutch.runtime.container import AGENT_PATH, USERNS_SIZE, ContainerOptions, oci_config
from hutch.runtime.driver import SandboxDriver
from hutch.runtime.ids import ID_DIR
from tests.helpers.runtime import driver_in, make_spec, output, status_fields, wait_for_line


async def test_the_workload_has_its_own_namespaces(
    container: SandboxDriver, busybox_root: PreparedRoot
) -> None:
    script = (
        "hostname; ls /sys/class/net; echo pid1=$(cat /proc/1/comm); "
        f"echo x > {AGENT_PATH} 2>/dev/null && echo agent-writable || echo agent-readonly; "
        "ls /proc/1/fd | wc -l; touch /written && echo root-writable"
    )
    await container.create(make_spec(busybox_root, "/bin/sh", "-c", script, sandbox_id="ns1"))
    await container.start("ns1")
    out, _ = await output(container, "ns1")
    lines = out.decode().split()
    assert lines[:3] == ["ns1", "lo", "pid1=.hutch-agent"]  # own uts, net and pid namespaces
    assert "agent-readonly" in lines
    assert "root-writable" in lines  # the overlay's upper layer, not the shared image
    assert not (Path(busybox_root.rootfs) / "written").exists()


async def test_the_workload_cannot_make_namespaces_or_mount(
    container: SandboxDriver, busybox_root: PreparedRoot, busybox_rootfs: Path
) -> None:
    # The probe works where it is allowed: on the host, busybox makes a user namespace whose
    # root has every capability (as it did in a container before seccomp)...
    host = subprocess.run(
        [str(busybox_rootfs / "bin/busybox"), "unshare", "-U", "-r", "id", "-u"],
        capture_output=True,
        check=False,
    )
    assert (host.returncode, host.stdout) == (0, b"0\n")
    # ...and is refused in the container, where root still writes its scratch.
    script = (
        "id -u; echo scratch > /written && cat /written; "
        "unshare -U -r id -u; echo userns=$?; unshare -m true; echo mountns=$?; "
        "mkdir -p /mnt/t; mount -t tmpfs none /mnt/t; echo mount=$?"
    )
    await container.create(make_spec(busybox_root, "/bin/sh", "-c", script, sandbox_id="sc"))
    await container.start("sc")
    out, err = await output(container, "sc")
    assert out.decode().split() == ["0", "scratch", "userns=1", "mountns=1", "mount=1"]
    assert err.decode().splitlines() == [
        "unshare: unshare(0x10000000): Operation not permitted",  # CLONE_NEWUSER
        "unshare: unshare(0x20000): Operation not permitted",  # CLONE_NEWNS
        "mount: permission denied (are you root?)",  # it is: EPERM from mount(2)
    ]


async def test_container_root_is_an_unprivileged_host_uid(
    container: SandboxDriver, busybox_root: PreparedRoot, short_dir: Path
) -> None:
    script = "id -u; touch /mine; echo up; exec sleep 600"
    for sandbox_id in ("u1", "u2"):
        await container.create(
            make_spec(busybox_root, "/bin/sh", "-c", script, sandbox_id=sandbox_id)
        )
        await container.start(sandbox_id)
        await wait_for_line(container, sandbox_id, b"up")
    host_uids = []
    for sandbox_id in ("u1", "u2"):
        cgroup = Cgroup(Layout.detect(), "hutch", sandbox_id)
        procs = Path(cgroup.procs_files()[0]).read_text().split()
        assert len(procs) >= 2  # the agent and the workload
        uids = {status_fields(int(pid))["Uid"] for pid in procs}  # real, effective, saved, fs
        assert len(uids) == 1
        uid = int(uids.pop().split()[0])
        assert uid != 0 and (await container.inspect(sandbox_id)).details["uid"] == str(uid)
        # The agent holds the lease on its uid range; the workload inherits none of its files.
        init = (await container.inspect(sandbox_id)).pid
        for pid in procs:
            held = {os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()}
            assert (f"{ID_DIR}/container-uids/{uid}" in held) == (int(pid) == init)
        sdir = short_dir / "state/sandboxes/container" / sandbox_id
        assert (sdir / "rw/upper/mine").stat().st_uid == uid  # root's writes: its host uid's
        # The shared image's tree, shifted for it, is read-only from the host as well: an
        # `rm -rf` of a running sandbox's directory once emptied the image for every container.
        # Touching a file is the harmless probe (deleting one was as allowed as touching it).
        with pytest.raises(OSError) as refused:
            os.utime(sdir / "lower/bin/busybox")
        assert refused.value.errno == errno.EROFS
        host_uids.append(uid)
    assert abs(host_uids[0] - host_uids[1]) >= USERNS_SIZE  # ranges of their own
    logged = b"".join([record.data async for record in container.logs("u1")])
    assert logged.split() == [b"0", b"up"]  # root inside


async def test_the_operator_can_keep_container_root_as_host_root(
    busybox_root: PreparedRoot, short_dir: Path
) -> None:
    async for driver in driver_in(short_dir / "state", "container", container_userns=False):
        await driver.create(make_spec(busybox_root, "/bin/sh", "-c", "echo up; sleep 600"))
        await driver.start("sb")
        await wait_for_line(driver, "sb", b"up")
        pid = (await driver.inspect("sb")).pid
        assert status_fields(pid)["Uid"].split()[0] == "0"


def test_oci_config_carries_the_limits_and_the_agent(tmp_path: Path) -> None:
    spec = SandboxSpec(
        id="c1",
        process=ProcessSpec(args=("/bin/true",)),
        rootfs="/r",
        resources=Resources(cpus=2, memory_mib=300, pids=77),
    )
    config = oci_config(spec, ContainerOptions(agent=tmp_path / "agent"), memsw=True)
    res = config["linux"]["resources"]
    assert res["memory"] == {"limit": 300 << 20, "swap": 300 << 20}
    assert res["pids"] == {"limit": 77}
    assert res["cpu"] == {"quota": 200_000, "period": 100_000}
    assert config["process"]["args"] == [AGENT_PATH, "--listen-fd", "3"]
    assert config["process"]["noNewPrivileges"] is True
    assert "CAP_SYS_ADMIN" not in config["process"]["capabilities"]["bounding"]
    agent_mount = next(m for m in config["mounts"] if m["destination"] == AGENT_PATH)
    assert "ro" in agent_mount["options"] and agent_mount["source"] == str(tmp_path / "agent")
    kinds = {ns["type"] for ns in config["linux"]["namespaces"]}
    assert kinds == {"pid", "network", "ipc", "uts", "mount", "cgroup"}
    assert config["linux"]["seccomp"]["defaultAction"] == "SCMP_ACT_ALLOW"
    shifted = oci_config(spec, ContainerOptions(agent=tmp_path / "agent"), True, 2_000_000)
    assert {"type": "user"} in shifted["linux"]["namespaces"]
    assert shifted["linux"]["uidMappings"] == [
        {"containerID": 0, "hostID": 2_000_000, "size": USERNS_SIZE}
    ]
