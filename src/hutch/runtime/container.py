"""The `container` runtime: crun with an OCI bundle, for trusted workloads and hosts without
virtualisation. Same contract as the micro-VM: the guest agent (hutch-agent) is the container's
init.

The guest agent is bind-mounted read-only into the container's private /dev and receives a
listening unix socket as an inherited file descriptor (`--preserve-fds`), so the workload has no
path to its control channel. The root is an overlay: the shared, read-only unpacked image below, the
sandbox's scratch disk (a sparse ext4 file, loop-mounted: disk, not memory) above.

Trusted is not defenceless: container root is an unprivileged host uid range of its own (a user
namespace; the image is shown to it through an idmapped mount), and a seccomp profile refuses new
namespaces, mounts and the other usual ways past a container.
"""

import asyncio
import fcntl
import json
import os
import resource
import signal
import socket
import stat
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hutch.model import machine as model_machine
from hutch.model.errors import Invalid, Unavailable, Unsupported
from hutch.model.sandbox import Capabilities, DiskIO, ExitStatus, SandboxSpec, Stats
from hutch.runtime import host, mounts, scratch, seccomp, volumes
from hutch.runtime.cgroups import CFS_PERIOD_US, Cgroup, Layout
from hutch.runtime.host import HostOptions
from hutch.runtime.ids import IdPool
from hutch.runtime.logs import tail
from hutch.runtime.procs import ProcessRef
from hutch.runtime.state import SandboxDir, SandboxRecord
from hutch.runtime.wiring import check_wired

MIN_MEMORY_MIB = model_machine.MIN_MEMORY_MIB["container"]
AGENT_PATH = "/dev/.hutch-agent"
LISTEN_FD = 3  # the guest agent's listening socket
LEASE_FD = 4  # the lease on the container's host uid range, held by the guest agent for its life
USERNS_SIZE = 65_536  # uids (and gids) per container: 0..65535 inside, as images expect
# Docker's default capability set: what a trusted workload expects, minus the dangerous ones.
DEFAULT_CAPS = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
]  # fmt: skip
MASKED_PATHS = [
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
    "/sys/firmware", "/sys/devices/virtual/powercap",
]  # fmt: skip
READONLY_PATHS = [
    "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
]  # fmt: skip


@dataclass(frozen=True, slots=True)
class ContainerOptions:
    agent: Path  # the guest agent, static (built with the guest artifacts)
    crun: str = "crun"
    host: HostOptions = field(default_factory=HostOptions)
    crun_root: Path = Path(
        "/run/hutch/crun"
    )  # crun's own state: gone after a reboot, as are the containers
    # Each container in a user namespace of its own: its root is host uid uid_base + n * 65536
    # (a range leased host-wide, like VM uids), not host root. False: container root is host root.
    userns: bool = True
    uid_base: int = 1_000_000_000
    uid_ranges: int = 16_384  # containers at once on this host


def oci_config(
    spec: SandboxSpec,
    opts: ContainerOptions,
    memsw: bool,
    host_uid: int | None = None,
    *,
    netns: Path | None = None,
    etc: Path | None = None,
) -> dict[str, Any]:
    """The OCI runtime spec for `spec`: the guest agent as init, the limits as cgroup resources,
    hutch's seccomp profile; in a user namespace whose root is `host_uid` unless None; in the
    network namespace at `netns` (made and wired by the node) with `etc`/resolv.conf and
    `etc`/hosts, else in an empty one of its own."""
    res = spec.resources
    namespaces = ["pid", "network", "ipc", "uts", "mount", "cgroup"]
    userns: dict[str, Any] = {}
    if host_uid is not None:
        namespaces.append("user")
        mapping = [{"containerID": 0, "hostID": host_uid, "size": USERNS_SIZE}]
        userns = {"uidMappings": mapping, "gidMappings": mapping}
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    memory: dict[str, int] = {"limit": res.memory_mib << 20}
    if memsw:
        memory["swap"] = res.memory_mib << 20  # memory + swap: no swapping past the limit
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": [AGENT_PATH, "--listen-fd", str(LISTEN_FD)],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "cwd": "/",
            "capabilities": {k: DEFAULT_CAPS for k in ("bounding", "effective", "permitted")},
            # What this host process may have; raising it needs CAP_SYS_RESOURCE we may lack.
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": nofile, "soft": nofile}],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": False},
        "hostname": spec.hostname or spec.id,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {
                "destination": "/dev",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
            },
            {
                "destination": "/dev/pts",
                "type": "devpts",
                "source": "devpts",
                "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
            },
            {
                "destination": "/dev/shm",
                "type": "tmpfs",
                "source": "shm",
                "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
            },
            {
                "destination": "/dev/mqueue",
                "type": "mqueue",
                "source": "mqueue",
                "options": ["nosuid", "noexec", "nodev"],
            },
            # In the node's network namespace (owned by the host's user namespace) crun cannot
            # mount a sysfs, and would bind the host's /sys: the runtime mounts one of the
            # container's namespace beside the bundle instead.
            {
                "destination": "/sys",
                "type": "bind",
                "source": str(etc.parent / "sys"),
                "options": ["rbind", "nosuid", "noexec", "nodev", "ro"],
            }
            if netns and etc is not None
            else {
                "destination": "/sys",
                "type": "sysfs",
                "source": "sysfs",
                "options": ["nosuid", "noexec", "nodev", "ro"],
            },
            {
                "destination": AGENT_PATH,
                "type": "bind",
                "source": str(opts.agent),
                "options": ["bind", "ro", "nosuid", "nodev"],
            },
            *(
                {
                    "destination": f"/etc/{path.name}",
                    "type": "bind",
                    "source": str(path),
                    "options": ["bind", "ro", "nosuid", "nodev", "noexec"],
                }
                for path in ((etc / "resolv.conf", etc / "hosts") if etc is not None else ())
            ),
        ],
        "linux": {
            "namespaces": [
                {"type": t, "path": str(netns)} if t == "network" and netns else {"type": t}
                for t in namespaces
            ],
            **userns,
            "seccomp": seccomp.profile(),
            "cgroupsPath": f"/{opts.host.cgroup_parent}/{spec.id}",
            "resources": {
                "memory": memory,
                "pids": {"limit": res.pids},
                "cpu": {"quota": res.cpus * CFS_PERIOD_US, "period": CFS_PERIOD_US},
                "devices": [{"allow": False, "access": "rwm"}],
            },
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
        },
    }


class ContainerBackend:
    name = "container"
    volumes_in_guest = False

    def __init__(self, opts: ContainerOptions, layout: Layout | None = None) -> None:
        self.opts = opts
        self._layout = layout or Layout.detect()
        self._uids = (
            IdPool("container-uids", opts.uid_base, opts.uid_ranges, USERNS_SIZE, opts.host.id_dir)
            if opts.userns
            else None
        )
        self._thaw_watchdogs: dict[tuple[str, int], subprocess.Popen[bytes]] = {}

    def capabilities(self) -> Capabilities:
        return Capabilities(
            runtime=self.name,
            isolation="namespaces",
            root="dir",
            exec=True,
            signals=True,
            accel="none",
            min_memory_mib=MIN_MEMORY_MIB,
            max_cpus=host.cpus(),
            max_memory_mib=max(host.memory_mib() - host.HOST_RESERVE_MIB, 0),
            overhead_mib=0,
        )

    def fingerprint(self) -> dict[str, str]:
        out = subprocess.run(
            [self.opts.crun, "--version"], capture_output=True, text=True, check=False
        )
        lines = out.stdout.splitlines()
        return {
            "crun": lines[0] if lines else "unknown",
            "cgroups": self._cgroup_mode(),
            "userns": "on" if self.opts.userns else "off",
        }

    def _cgroup_mode(self) -> str:
        if self._layout.v2 is not None:
            return "v2"
        return "v1 (hybrid)" if self._layout.hybrid_mount else "v1"

    def validate(self, spec: SandboxSpec) -> None:
        if not spec.rootfs:
            raise Invalid("a container needs a root directory (SandboxSpec.rootfs)")
        if not Path(spec.rootfs).is_dir():
            raise Invalid(f"rootfs {spec.rootfs} does not exist or is not a directory")
        check_wired(spec, self.opts.host.network)
        volumes.check_sources(spec)

    # -- launch --------------------------------------------------------------------------------

    async def launch(self, record: SandboxRecord, sdir: SandboxDir) -> ProcessRef:
        spec = record.spec
        bundle = sdir.file("bundle")
        rootfs = bundle / "rootfs"
        rw = sdir.file("rw")
        for path in (bundle, rootfs, rw):
            path.mkdir(mode=0o700, exist_ok=True)
        # crun resolves rootfs from the bundle as the container's root: in a user namespace,
        # that is not host root, and must be let through (the sandbox directory stays 0700).
        bundle.chmod(0o711)
        record.details.update(cgroup=f"{self.opts.host.cgroup_parent}/{spec.id}")
        lease = self._uids.take() if self._uids is not None else None
        try:
            host_uid = lease.id if lease is not None else None
            if host_uid is not None:
                record.details.update(uid=str(host_uid))
            await self._mount_root(spec, sdir, host_uid)
            memsw = (
                self._layout.v2 is not None
                or (self._layout.v1["memory"] / "memory.memsw.limit_in_bytes").exists()
            )
            vol_mounts, vol_devices = await asyncio.to_thread(
                self._mount_volumes, record, sdir, host_uid
            )
            netns, etc = await self._plug(spec, sdir)
            config = oci_config(spec, self.opts, memsw, host_uid, netns=netns, etc=etc)
            config["mounts"] += vol_mounts
            config["linux"]["resources"]["devices"] += vol_devices
            (bundle / "config.json").write_text(json.dumps(config))
            try:
                ref = await self._run(spec.id, sdir, lease.fd if lease is not None else None)
            except BaseException:
                await self.opts.host.unplug(spec.id)
                raise
            if lease is not None:
                lease.bind(ref)
            return ref
        finally:
            if lease is not None:
                lease.close()

    async def _plug(self, spec: SandboxSpec, sdir: SandboxDir) -> tuple[Path | None, Path | None]:
        """The sandbox's wired network namespace and the folder of its resolv.conf and hosts."""
        if not spec.networks or self.opts.host.network is None:
            return None, None
        etc = sdir.file("etc")
        etc.mkdir(mode=0o755, exist_ok=True)
        att = spec.networks[0]
        (etc / "resolv.conf").write_text(att.resolv_conf())
        (etc / "hosts").write_text(att.hosts(spec.hostname or spec.id))
        netns = await asyncio.to_thread(self.opts.host.network.plug_netns, spec)
        sys_dir = sdir.file("sys")
        sys_dir.mkdir(mode=0o755, exist_ok=True)
        try:
            await asyncio.to_thread(mounts.mount_sysfs_of, netns, sys_dir)
        except BaseException:
            await self.opts.host.unplug(spec.id)
            raise
        return netns, etc

    async def _mount_root(self, spec: SandboxSpec, sdir: SandboxDir, host_uid: int | None) -> None:
        """bundle/rootfs: the image, read-only (seen as owned by `host_uid`'s namespace, if
        any), under the upper layer on the scratch disk."""
        rw = sdir.file("rw")
        disk = sdir.file(scratch.FILE_NAME)
        await asyncio.to_thread(scratch.create, disk, spec.resources.scratch_bytes)
        mounts.mount_loop(disk, rw, "ext4", mounts.MS_NOSUID | mounts.MS_NODEV,
                          scratch.MOUNT_OPTIONS)  # fmt: skip
        rw.chmod(0o700)
        for name in ("upper", "work"):
            (rw / name).mkdir(exist_ok=True)
        (rw / "upper").chmod(0o755)
        lower = Path(spec.rootfs)
        if host_uid is not None:
            # The image's tree is shared by every container and owned by host root: an idmapped
            # mount shows it owned by this container's root, without copying or chowning it.
            # Read-only: the overlay never writes it, and a host process that deletes a
            # sandbox's directory while it is mounted would empty the image for every container.
            lower = sdir.file("lower")
            lower.mkdir(mode=0o700, exist_ok=True)
            userns = await asyncio.to_thread(mounts.user_namespace, host_uid, USERNS_SIZE)
            try:
                mounts.bind_idmapped(Path(spec.rootfs), lower, userns, read_only=True)
            finally:
                os.close(userns)
            os.chown(rw / "upper", host_uid, host_uid)  # new files: owned by container root
        mounts.mount(
            "overlay", sdir.file("bundle") / "rootfs", "overlay", 0,
            f"lowerdir={lower},upperdir={rw / 'upper'},workdir={rw / 'work'}",
        )  # fmt: skip

    def _mount_volumes(
        self, record: SandboxRecord, sdir: SandboxDir, host_uid: int | None
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Each volume on a loop device of the node, as crun is to give it to the container: an
        ext4 one mounted at sdir/vol<i> (idmapped at vol<i>.idmap in a user namespace: the
        volume's files stay owned by the uids the workload sees), a raw one as the device node
        sdir/vol<i>.dev. The OCI mounts binding them at their targets, and the devices to
        allow. The loop device of a mount goes with it; a raw one's number is in
        record.details (vol<i>.loop) for cleanup."""
        binds: list[dict[str, Any]] = []
        devices: list[dict[str, Any]] = []
        userns = -1
        try:
            for i, vol in enumerate(record.spec.volumes):
                ro = ["ro"] if vol.read_only else []
                if vol.fs == "none":
                    number = mounts.attach_loop(Path(vol.source), read_only=vol.read_only)
                    record.details[f"vol{i}.loop"] = str(number)
                    rdev = os.stat(f"/dev/loop{number}").st_rdev
                    node = sdir.file(f"vol{i}.dev")
                    node.unlink(missing_ok=True)
                    os.mknod(node, stat.S_IFBLK | 0o660, rdev)
                    if host_uid is not None:
                        os.chown(node, host_uid, host_uid)  # the container's root's
                    binds.append(_bind(vol.target, node, ["nosuid", "noexec", *ro]))
                    devices.append(
                        {
                            "allow": True,
                            "type": "b",
                            "major": os.major(rdev),
                            "minor": os.minor(rdev),
                            "access": "r" if vol.read_only else "rw",
                        }
                    )
                    continue
                point = sdir.file(f"vol{i}")
                point.mkdir(mode=0o700, exist_ok=True)
                try:
                    mounts.mount_loop(
                        Path(vol.source), point, vol.fs, mounts.MS_NOSUID | mounts.MS_NODEV,
                        read_only=vol.read_only, block_size=512,
                    )  # fmt: skip
                except Unavailable as e:
                    raise Unavailable(f"volume {vol.volume_id} at {vol.target}: {e}") from e
                if host_uid is not None:
                    if userns < 0:
                        userns = mounts.user_namespace(host_uid, USERNS_SIZE)
                    shifted = sdir.file(f"vol{i}.idmap")
                    shifted.mkdir(mode=0o700, exist_ok=True)
                    mounts.bind_idmapped(point, shifted, userns)
                    point = shifted
                binds.append(_bind(vol.target, point, ["nosuid", "nodev", *ro]))
        finally:
            if userns >= 0:
                os.close(userns)
        return binds, devices

    async def _run(self, sandbox_id: str, sdir: SandboxDir, lease_fd: int | None) -> ProcessRef:
        """`crun run` the bundle, handing the guest agent its listening socket (and the lease)."""
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(sdir.file("agent.sock")))
            listener.listen(8)
            fds = {LISTEN_FD: listener.fileno()}
            if lease_fd is not None:
                fds[LEASE_FD] = lease_fd
            pid_file = sdir.file("init.pid")
            rc, err = await self._crun(
                "run", "--detach", f"--preserve-fds={len(fds)}", "--pid-file", str(pid_file),
                "--bundle", str(sdir.file("bundle")), sandbox_id,
                pass_fds=fds, log=sdir.file("agent.log"),
            )  # fmt: skip
        finally:
            listener.close()  # the container's init holds its own copy
        if rc != 0:
            raise Unavailable(f"crun could not start the container: {err}")
        ref = ProcessRef.of(int(pid_file.read_text()))
        if ref is None:
            raise Unavailable(f"the container exited at once: {tail(sdir.file('agent.log'))}")
        return ref

    async def _crun(
        self, *args: str, pass_fds: dict[int, int] | None = None, log: Path | None = None
    ) -> tuple[int, str]:
        """Run crun (with `pass_fds`: descriptor number in crun -> ours); on a hybrid cgroup
        host, in a mount namespace without the v2 mount."""
        argv = [self.opts.crun, "--root", str(self.opts.crun_root), *args]
        if self._layout.hybrid_mount is not None:
            hidden = str(self._layout.hybrid_mount)
            argv = [
                "unshare", "--mount", "--propagation", "private",
                "sh", "-c", f'umount "{hidden}" && exec "$@"', "crun", *argv,
            ]  # fmt: skip

        def run() -> tuple[int, str]:
            if log is None:
                proc = subprocess.run(
                    argv, stdin=subprocess.DEVNULL, capture_output=True, check=False
                )
                err = proc.stderr.decode(errors="replace").strip().splitlines()
                return proc.returncode, err[-1] if err else ""
            # `run --detach` hands its stdio to the container's init: a pipe would never reach
            # EOF, so crun's errors and the guest agent's own messages share a file.
            fds = pass_fds or {}
            with log.open("ab") as out:
                rc = subprocess.run(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                    pass_fds=tuple(fds),
                    preexec_fn=_place_fds(fds),
                    check=False,
                ).returncode
            return rc, tail(log, lines=1)

        return await asyncio.to_thread(run)

    def side_tasks(self, record: SandboxRecord, sdir: SandboxDir) -> list[Awaitable[None]]:
        return []

    # -- teardown ------------------------------------------------------------------------------

    async def terminate(self, record: SandboxRecord, sdir: SandboxDir) -> None:
        rc, _ = await self._crun("kill", record.spec.id, "KILL")
        ref = record.process
        if rc != 0 and ref is not None:
            ref.kill(signal.SIGKILL)

    # A container's memory is its processes': there is nothing to save it from (capabilities
    # say so; the driver refuses before these are reached).
    async def save(
        self, record: SandboxRecord, sdir: SandboxDir, dest: Path, with_scratch: bool
    ) -> None:
        raise _no_snapshots()

    async def restore(self, record: SandboxRecord, sdir: SandboxDir, saved: Path) -> ProcessRef:
        raise _no_snapshots()

    async def cont(self, record: SandboxRecord, sdir: SandboxDir) -> None:
        raise _no_snapshots()

    async def pause(self, record: SandboxRecord, sdir: SandboxDir) -> None:
        raise _no_snapshots()

    async def release(self, record: SandboxRecord, sdir: SandboxDir) -> None:
        raise _no_snapshots()

    async def park(self, record: SandboxRecord, sdir: SandboxDir, saved: Path) -> bool:
        raise _no_snapshots()

    async def unpark(self, record: SandboxRecord, sdir: SandboxDir, saved: Path) -> None:
        raise _no_snapshots()

    def guest_net(self, spec: SandboxSpec) -> str:
        return ""  # the node configures a container's network itself

    async def cleanup(self, record: SandboxRecord, sdir: SandboxDir) -> None:
        await self._crun("delete", "--force", record.spec.id)
        for target in (
            sdir.file("bundle") / "rootfs",
            sdir.file("rw"),
            sdir.file("lower"),
            sdir.file("sys"),
        ):
            mounts.unmount(target)
        for i in range(len(record.spec.volumes)):
            # Unmounting the last of a volume's mounts frees its loop device (and writes back
            # what the workload left in the node's cache).
            mounts.unmount(sdir.file(f"vol{i}.idmap"))
            mounts.unmount(sdir.file(f"vol{i}"))
            sdir.file(f"vol{i}.dev").unlink(missing_ok=True)
            if (loop := record.details.get(f"vol{i}.loop")) is not None:
                mounts.detach_loop(int(loop))
        sdir.file(scratch.FILE_NAME).unlink(missing_ok=True)
        await asyncio.to_thread(
            Cgroup(self._layout, self.opts.host.cgroup_parent, record.spec.id).remove
        )
        await self.opts.host.unplug(record.spec.id)

    async def freeze_volume(
        self, record: SandboxRecord, sdir: SandboxDir, index: int, frozen: bool
    ) -> bool:
        """The node's mount of the volume is the container's file system (one superblock):
        freezing it freezes the container's writers. A watchdog thaws it if this process dies."""
        point = sdir.file(f"vol{index}")
        watchdogs = self._thaw_watchdogs
        key = (record.spec.id, index)
        if frozen:
            await asyncio.to_thread(volumes.set_frozen, point, True)
            watchdogs[key] = volumes.thaw_later(point)
            return True
        try:
            await asyncio.to_thread(volumes.set_frozen, point, False)
        finally:
            if (dog := watchdogs.pop(key, None)) is not None:
                dog.kill()
                dog.wait()
        return True

    def oom_killed(self, record: SandboxRecord) -> bool:
        cgroup = Cgroup(self._layout, self.opts.host.cgroup_parent, record.spec.id)
        return cgroup.exists() and cgroup.oom_kills() > 0

    def explain_exit(self, record: SandboxRecord, sdir: SandboxDir) -> str:
        if self.oom_killed(record):
            return "the container ran out of memory and its init was killed"
        detail = tail(sdir.file("agent.log"))
        return f"the container's init exited unexpectedly{': ' + detail if detail else ''}"

    def saved_exit(self, record: SandboxRecord, sdir: SandboxDir) -> ExitStatus | None:
        return None  # a container's guest agent waits for a host to store its exit

    async def sweep(self) -> list[str]:
        return []  # not yet: undoing a container (mounts, bundle) needs its directory

    def stats(self, record: SandboxRecord) -> Stats:
        return Cgroup(self._layout, self.opts.host.cgroup_parent, record.spec.id).stats()

    async def disk_io(self, record: SandboxRecord, sdir: SandboxDir) -> dict[str, DiskIO]:
        # A container writes through the node's page cache to files and loop devices the
        # cgroup's block I/O counters do not attribute per disk: nothing honest to report.
        return {}


def _no_snapshots() -> Unsupported:
    return Unsupported("the container runtime cannot suspend, snapshot or restore; micro-VMs can")


def _bind(target: str, source: Path, options: list[str]) -> dict[str, Any]:
    return {
        "destination": target,
        "type": "bind",
        "source": str(source),
        "options": ["bind", *options],
    }


def _place_fds(fds: dict[int, int]) -> Callable[[], None]:
    """For the forked child: put each of our descriptors at its number for crun. Through
    copies above them all first, so that one placed cannot overwrite another still to place."""

    def place() -> None:
        staged = {target: fcntl.fcntl(fd, fcntl.F_DUPFD, 64) for target, fd in fds.items()}
        for target, fd in staged.items():
            os.dup2(fd, target)

    return place
