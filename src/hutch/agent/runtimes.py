"""Runtime drivers built from settings: guest artifacts, accelerator probe, options."""

from collections.abc import Callable
from pathlib import Path

from hutch.config import Settings
from hutch.model.errors import Invalid
from hutch.runtime import accel
from hutch.runtime.container import ContainerBackend, ContainerOptions
from hutch.runtime.driver import AgentDriver, DriverOptions
from hutch.runtime.guest import build
from hutch.runtime.microvm import MicroVMBackend, MicroVMOptions
from hutch.runtime.supervisor import Timeouts

RUNTIMES = ("microvm", "container")


def open_driver(
    settings: Settings,
    runtime: str,
    *,
    log: Callable[[str], None] = lambda _msg: None,
    sandboxes_dir: Path | None = None,
) -> AgentDriver:
    """The driver for `runtime`, building guest artifacts first if they are missing. Sandboxes
    live under `sandboxes_dir` (default state_dir/sandboxes: the operator's own)."""
    if runtime not in RUNTIMES:
        raise Invalid(f"unknown runtime {runtime!r}: use one of {', '.join(RUNTIMES)}")
    guest = build.prepare(settings.cache_dir, settings.kernel_package, log=log)
    options = DriverOptions(
        state_dir=sandboxes_dir or settings.state_dir / "sandboxes",
        log_max_bytes=settings.log_max_bytes,
        timeouts=Timeouts(boot=settings.boot_timeout),
    )
    if runtime == "container":
        return AgentDriver(
            ContainerBackend(
                ContainerOptions(
                    agent=guest.agent, crun=settings.crun, cgroup_parent=settings.cgroup_parent
                )
            ),
            options,
        )
    chosen = accel.choose(settings.qemu, guest, settings.cache_dir, settings.accel)
    return AgentDriver(
        MicroVMBackend(
            MicroVMOptions(
                guest=guest,
                accel=chosen,
                qemu=settings.qemu,
                cgroup_parent=settings.cgroup_parent,
                overhead_mib=settings.vm_overhead_mib,
                uid_base=settings.vm_uid_base,
                console_max_bytes=settings.console_max_bytes,
                debug=settings.vm_debug,
            )
        ),
        options,
    )
