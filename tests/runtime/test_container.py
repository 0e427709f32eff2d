"""What only the container runtime promises: its own namespaces, the agent out of reach."""

from pathlib import Path

from hutch.images.rootfs import PreparedRoot
from hutch.model.sandbox import ProcessSpec, Resources, SandboxSpec
from hutch.runtime.container import AGENT_PATH, ContainerOptions, oci_config
from hutch.runtime.driver import AgentDriver
from tests.runtime.conftest import make_spec, output


async def test_the_workload_has_its_own_namespaces(
    container: AgentDriver, busybox_root: PreparedRoot
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
