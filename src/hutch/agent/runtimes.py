"""Runtime drivers built from settings: guest artifacts, accelerator probe, options."""

from collections.abc import Callable
from pathlib import Path

from hutch.config import Settings
from hutch.model.errors import Invalid
from hutch.runtime import accel
from hutch.runtime.container import USERNS_SIZE, ContainerBackend, ContainerOptions
from hutch.runtime.driver import DriverOptions, SandboxDriver
from hutch.runtime.guest import build
from hutch.runtime.host import HostOptions
from hutch.runtime.microvm import VM_UIDS, MicroVMBackend, MicroVMOptions
from hutch.runtime.supervisor import Timeouts
from hutch.runtime.wiring import NetworkWiring

RUNTIMES = ("microvm", "container")


def node_dir(settings: Settings) -> Path:
    """The node agent's own state (identity, trust, its sandboxes) under state_dir."""
    return settings.state_dir / "node"


def sandbox_dirs(settings: Settings) -> tuple[Path, ...]:
    """Every directory this host's sandboxes live in: the operator's own (`hutch sandbox`,
    the default of `open_driver`), then the node agent's."""
    return settings.state_dir / "sandboxes", node_dir(settings) / "sandboxes"


def open_driver(
    settings: Settings,
    runtime: str,
    *,
    log: Callable[[str], None] = lambda _msg: None,
    sandboxes_dir: Path | None = None,
    network: NetworkWiring | None = None,
) -> SandboxDriver:
    """The driver for `runtime`, building guest artifacts first if they are missing. Sandboxes
    live under `sandboxes_dir` (default state_dir/sandboxes: the operator's own); `network`
    wires the sandboxes that have networks (None: such sandboxes are refused)."""
    if runtime not in RUNTIMES:
        raise Invalid(f"unknown runtime {runtime!r}: use one of {', '.join(RUNTIMES)}")
    guest = build.prepare(settings.cache_dir, settings.kernel_package, log=log)
    options = DriverOptions(
        state_dir=sandboxes_dir or settings.state_dir / "sandboxes",
        log_max_bytes=settings.log_max_bytes,
        log_hold=settings.log_hold,
        timeouts=Timeouts(boot=settings.boot_timeout),
    )
    host = HostOptions(cgroup_parent=settings.cgroup_parent, network=network)
    if runtime == "container":
        container = ContainerOptions(
            agent=guest.agent,
            crun=settings.crun,
            host=host,
            userns=settings.container_userns,
            uid_base=settings.container_uid_base,
        )
        _check_uid_ranges(settings.vm_uid_base, VM_UIDS, container)
        return SandboxDriver(ContainerBackend(container), options)
    chosen = accel.choose(settings.qemu, guest, settings.cache_dir, settings.accel)
    return SandboxDriver(
        MicroVMBackend(
            MicroVMOptions(
                guest=guest,
                accel=chosen,
                qemu=settings.qemu,
                host=host,
                overhead_mib=settings.vm_overhead_mib,
                uid_base=settings.vm_uid_base,
                console_max_bytes=settings.console_max_bytes,
                debug=settings.vm_debug,
            )
        ),
        options,
    )


def _check_uid_ranges(vm_base: int, vm_count: int, container: ContainerOptions) -> None:
    """A VM's QEMU and a container's root must never be given the same host uid."""
    first, end = container.uid_base, container.uid_base + container.uid_ranges * USERNS_SIZE
    if end > 2**32 - 1:
        raise Invalid(f"container_uid_base {first} leaves no room for containers' uid ranges")
    if container.userns and first < vm_base + vm_count and vm_base < end:
        raise Invalid(
            f"container_uid_base {first} puts containers' uids over the VMs' "
            f"({vm_base}-{vm_base + vm_count - 1}): set it to {vm_base + vm_count} or more"
        )
