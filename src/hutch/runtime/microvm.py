"""The `microvm` runtime: each sandbox is a QEMU `-M microvm` guest booted from hutch's kernel,
initramfs and the workload's read-only root disk, writing to a scratch disk of its own.

QEMU runs with as little as it needs: inside its own cgroup (guest memory plus measured
overhead, a pids limit, a CPU quota), as an unprivileged uid of its own, chrooted into an empty
directory, under QEMU's seccomp sandbox, with no network, no shared folders and no files beyond
its disks. Its sockets (guest agent, console, QMP) live in the sandbox's root-only directory: the
guest has no path to them. Its own stderr is capped by a copier (`head -c`), the guest's console
by a ring log.
"""

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import signal
import socket
import struct
import subprocess
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from qemu.qmp import ConnectError, QMPClient, QMPError

from hutch.model import machine as model_machine
from hutch.model.errors import Conflict, HutchError, Invalid, Unavailable
from hutch.model.sandbox import Capabilities, DiskIO, ExitStatus, SandboxSpec, Stats, Stream
from hutch.runtime import host, scratch, snapfiles, volumes
from hutch.runtime.accel import Accel
from hutch.runtime.cgroups import Cgroup, Layout, Limits
from hutch.runtime.guest.build import GuestArtifacts
from hutch.runtime.host import HostOptions
from hutch.runtime.ids import IdPool
from hutch.runtime.logs import LogWriter, tail
from hutch.runtime.procs import ProcessRef
from hutch.runtime.state import SandboxDir, SandboxRecord
from hutch.runtime.wiring import check_wired, guest_net_params

MIN_MEMORY_MIB = model_machine.MIN_MEMORY_MIB["microvm"]
QEMU_STDERR_MAX = 1 << 20
QEMU_PIDS = 128  # main loop, vCPU, RCU and I/O worker threads; QEMU forks nothing (seccomp)
CPU_HEADROOM = 0.25  # cores on top of the vCPUs for QEMU's I/O thread
# The exit disk: where a guest whose workload ended with no host connected saves the exit status
# before it powers off (EXIT_SERIAL, save_exit in agent.c). Its size is fixed, so what a hostile
# guest writes there is bounded by it; what it says is only ever taken as the workload's exit.
EXIT_FILE = "exit"
EXIT_DISK_BYTES = 4096
EXIT_MAGIC = b"HUTCHEXT"
VM_UIDS = 65_536  # VMs at once on this host, each its QEMU's uid
SOCKETS = ("agent.sock", "console.sock", "qmp.sock")  # QEMU makes them in the sandbox's dir
MIGRATION_TIMEOUT = 60.0  # for QEMU to write or read a guest's device state (and RAM)
# query-blockstats' counters, in DiskIO's order
_BLOCKSTATS = ("rd_bytes", "wr_bytes", "rd_operations", "wr_operations")
QMP_QUERY_TIMEOUT = 2.0  # for QEMU to answer a query (telemetry skips a VM that does not)
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class MicroVMOptions:
    guest: GuestArtifacts
    accel: Accel
    qemu: str = "qemu-system-x86_64"
    host: HostOptions = field(default_factory=HostOptions)
    # Host memory per VM beyond its guest RAM, in its cgroup limit. bench/boot.py measures the
    # peak anonymous overhead of a guest that fills its RAM: 51-61 MiB under TCG (32 of them the
    # translation cache), less under KVM; the rest leaves page cache room before reclaim.
    overhead_mib: int = 96
    # Suspended guests whose QEMU is kept, paused, their RAM given back (`park`): each holds
    # less than its overhead_mib (a booted guest's, parked, under TCG: 54 MiB anonymous, 32 of
    # them the translation cache), which the node's capacity sets aside for all of them.
    parked_max: int = 8
    uid_base: int = 1_500_000  # each VM's QEMU runs as its own uid from this range
    uid_count: int = VM_UIDS
    console_max_bytes: int = 256 << 10
    seccomp: bool = True
    # Transparent huge pages back guest RAM in 2 MiB steps: an idle 128 MiB guest that touched
    # 40 MiB then pins all 128. Off by default for density (Firecracker's choice too); on suits
    # KVM guests that need TLB reach more than hosts need memory.
    huge_pages: bool = False
    debug: bool = False  # a guest that fails to boot prints diagnostics to its console first
    # Guest RAM files: a tmpfs, so a running guest's RAM is never written back to a disk (the
    # VM's cgroup pays for it as shared memory).
    memory_dir: Path = Path("/dev/shm/hutch")
    mtu: int = 1500


def kernel_cmdline(
    accel: str, root_format: str, debug: bool = False, extra: tuple[str, ...] = ()
) -> str:
    """The guest kernel command line (also used as is by bench/boot.py's bare-QEMU baseline);
    `extra`: the guest agent's network flags (`wiring.guest_net_params`)."""
    parts = ["console=ttyS0", "quiet", "reboot=t", "panic=-1", "cryptomgr.notests"]
    if accel == "tcg":
        # TCG's TSC runs at the host's rate but its CPU model does not say so (no constant_tsc):
        # without tsc=reliable the guest's clock is jiffies (4 ms steps), so clock-seeded ids
        # repeat; busybox's nslookup then gives A and AAAA one id and drops the second answer.
        parts.append(f"tsc_early_khz={host.tsc_khz()}")
        parts.append("tsc=reliable")
    parts.append(f"hutch.rootfstype={root_format}")
    if debug:
        parts.append("hutch.debug")
    parts += extra
    return " ".join(parts)


@dataclass(frozen=True, slots=True)
class Memory:
    """Guest RAM as a file, so that a suspend or snapshot saves only device state through the
    migration stream (x-ignore-shared) and copies the RAM file itself, sparsely."""

    path: Path  # a tmpfs file (its pages are never written back to disk), or a snapshot's copy
    # MAP_SHARED (the VM's own file) or MAP_PRIVATE (a clone maps a snapshot's memory
    # copy-on-write: clones share its page cache; their writes stay their own)
    shared: bool = True
    incoming: bool = False  # wait paused for a migration stream (resume, restore)

    def args(self, memory_mib: int) -> list[str]:
        # QEMU opens the file as root, before it chroots and drops to its uid.
        backend = (
            f"memory-backend-file,id=mem,size={memory_mib}M,mem-path={_drive_path(str(self.path))},"
            f"share={'on' if self.shared else 'off'}"
        )
        return ["-object", backend]


def qemu_command(
    spec: SandboxSpec,
    opts: MicroVMOptions,
    sockets: Path,
    *,
    uid: int | None = None,
    jail: Path | None = None,
    scratch_direct: bool = True,
    tap_fds: tuple[int, ...] = (),
    volumes_direct: tuple[bool, ...] | None = None,
    memory: Memory | None = None,
    disk_fds: Mapping[str, tuple[int, int]] | None = None,
    listeners: Mapping[str, int] | None = None,
) -> list[str]:
    """The QEMU command line for `spec`; sockets go in `sockets/` (guest agent, console, qmp), where
    the scratch and exit disks must be (`scratch.create`, `create_exit_disk`); `scratch_direct` if
    it takes O_DIRECT; `tap_fds`:
    one open TAP per `spec.networks` entry, inherited by QEMU (it cannot open /dev/net/tun);
    `volumes_direct`: per `spec.volumes` entry, whether its file takes O_DIRECT (default: all);
    `memory`: guest RAM as a file (None: anonymous memory, as the benchmarks' baselines);
    `disk_fds`: for a writable disk's path, an open read-write and an open read-only descriptor
    of it, inherited by QEMU, which takes them from an fd set instead of opening the path;
    `listeners`: for a socket's name (SOCKETS), a listening descriptor of it QEMU inherits
    instead of making the socket itself."""
    res = spec.resources
    accel = opts.accel.name
    fdsets: list[str] = []

    def disk(path: str | Path) -> str:
        """The file= of a drive. QEMU opens a disk again when a save or restore changes whether
        it writes (it reopens read-only when a migration ends, read-write when one is loaded),
        which it cannot do chrooted as its own uid: it takes the mode it needs from an fd set.
        Without locks: the set's descriptors would hold their locks across the reopen (and only
        this QEMU has the sandbox's own disks)."""
        fds = (disk_fds or {}).get(str(path))
        if fds is None:
            return f"file={_drive_path(str(path))}"
        fdset = len(fdsets) // 4 + 1
        for fd in fds:
            fdsets.extend(["-add-fd", f"fd={fd},set={fdset}"])
        return f"file=/dev/fdset/{fdset},file.locking=off"

    def chardev(name: str, sock: str) -> str:
        fd = (listeners or {}).get(sock)
        where = f"path={sockets / sock}" if fd is None else f"fd={fd}"
        return f"socket,id={name},{where},server=on,wait=off"

    # Host I/O errors (a full host disk) reach the guest as I/O errors, instead of pausing it.
    scratch_drive = (
        f"id=scratch,{disk(sockets / scratch.FILE_NAME)},format=raw,if=none,"
        "werror=report,rerror=report,"
        f"cache.direct={'on' if scratch_direct else 'off'}"
    )
    # A guest restored from a migration stream has booted: QEMU need not read its kernel and
    # initramfs (tens of MB) nor set up their loading (it exits on a guest reset: -no-reboot).
    boot = [] if memory is not None and memory.incoming else [
        "-kernel", str(opts.guest.kernel),
        "-initrd", str(opts.guest.initrd),
        "-append", kernel_cmdline(
            accel, spec.root_disk_format, opts.debug,
            (*guest_net_params(spec, opts.mtu), *filter(None, [volumes.boot_param(spec.volumes)])),
        ),
    ]  # fmt: skip
    args = [
        opts.qemu,
        "-name", f"hutch-{spec.id},debug-threads=on",
        "-M", "microvm,x-option-roms=off,isa-serial=on,rtc=on"
        + (",memory-backend=mem" if memory is not None else ""),
        "-accel", "kvm" if accel == "kvm" else "tcg,tb-size=32",
        "-cpu", "host" if accel == "kvm" else "max",
        "-smp", str(res.cpus),
        "-m", f"{res.memory_mib}M",
        *(memory.args(res.memory_mib) if memory is not None else ()),
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        *boot,
        # The guest agent finds the disks by serial (ROOT_SERIAL, SCRATCH_SERIAL in agent.c).
        "-drive", f"id=root,file={spec.root_disk},format=raw,if=none,readonly=on",
        "-device", "virtio-blk-device,drive=root,serial=hutch-root",
        "-drive", scratch_drive,
        "-device", "virtio-blk-device,drive=scratch,serial=hutch-scratch",
        "-drive", f"id=exit,{disk(sockets / EXIT_FILE)},format=raw,if=none",
        "-device", "virtio-blk-device,drive=exit,serial=hutch-exit",
        "-device", "virtio-serial-device,max_ports=2",
        "-chardev", chardev("agent", "agent.sock"),
        "-device", "virtserialport,chardev=agent,name=hutch.agent",
        "-chardev", chardev("console", "console.sock"),
        "-serial", "chardev:console",
        "-chardev", chardev("qmp", "qmp.sock"),
        "-mon", "chardev=qmp,mode=control",
    ]  # fmt: skip
    # Volumes: QEMU opens their files (and locks them: a second writer's QEMU fails to start)
    # as root before it chroots and drops to its uid, as it does the root disk. The default
    # cache (writeback) passes the guest's flushes on as fdatasync: a guest's fsync is on the
    # node's disk when it returns. Host I/O errors reach the guest as I/O errors.
    direct = volumes_direct or (True,) * len(spec.volumes)
    for index, (vol, odirect) in enumerate(zip(spec.volumes, direct, strict=True)):
        drive = (
            f"id=vol{index},file={_drive_path(vol.source)},format=raw,if=none,"
            f"werror=report,rerror=report,cache.direct={'on' if odirect else 'off'}"
        )
        if vol.read_only:
            drive += ",readonly=on"
        args += [
            "-drive", drive,
            "-device", f"virtio-blk-device,drive=vol{index},serial={volumes.SERIAL.format(index)}",
        ]  # fmt: skip
    # -M microvm has no hotplug: the NICs exist from boot (virtio-mmio, in this order: eth0...).
    for index, (fd, att) in enumerate(zip(tap_fds, spec.networks, strict=True)):
        args += [
            "-netdev", f"tap,id=net{index},fd={fd},vhost=off",
            "-device", f"virtio-net-device,netdev=net{index},mac={att.mac}",
        ]  # fmt: skip
    args += fdsets
    if memory is not None and memory.incoming:
        # Its state comes through QMP (migrate-incoming fd:); it stays paused after (-S).
        args += ["-incoming", "defer", "-S"]
    if uid is not None:
        args += ["-runas", f"{uid}:{uid}"]
    if jail is not None:
        args += ["-chroot", str(jail)]
    if opts.seccomp:
        # elevateprivileges=deny would also forbid -runas's own setuid, which happens after.
        args += ["-sandbox", "on,obsolete=deny,spawn=deny,resourcecontrol=deny"]
    return args


def spawned(opts: MicroVMOptions, cgroup: Cgroup, argv: list[str]) -> list[str]:
    """The command that runs `argv` in `cgroup` from its first byte, without transparent huge
    pages unless `opts` asks for them: hutch-spawn joins the cgroup, then execs `argv`. (A
    Python preexec_fn doing that would fork the whole calling process: tens of milliseconds
    for the node agent's, where vfork and exec of the helper take well under one.)"""
    thp = [] if opts.huge_pages else ["--no-thp"]
    return [str(opts.guest.spawn), *thp, *cgroup.procs_files(), "--", *argv]


def _drive_path(path: str) -> str:
    """A file name inside a -drive option (QEMU's option syntax doubles a comma)."""
    return path.replace(",", ",,")


class MicroVMBackend:
    name = "microvm"
    volumes_in_guest = True

    def __init__(self, opts: MicroVMOptions, layout: Layout | None = None) -> None:
        self.opts = opts
        self._layout = layout or Layout.detect()
        self._qmp: dict[str, QMPClient] = {}
        self._qmp_lock = asyncio.Lock()
        self._shutdown_reason: dict[str, str] = {}
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._copiers: dict[str, subprocess.Popen[bytes]] = {}  # QEMU's stderr -> qemu.log
        self._ram_copies: dict[str, subprocess.Popen[bytes]] = {}  # saved RAM -> its tmpfs file
        self._parked: set[str] = set()  # sandboxes whose QEMU is parked (`park`)
        self._uids = IdPool("vm-uid", opts.uid_base, opts.uid_count, directory=opts.host.id_dir)

    def capabilities(self) -> Capabilities:
        return Capabilities(
            runtime=self.name,
            isolation="vm",
            root="disk",
            exec=True,
            signals=True,
            accel=self.opts.accel.name,
            min_memory_mib=MIN_MEMORY_MIB,
            max_cpus=host.cpus(),
            max_memory_mib=max(
                host.memory_mib()
                - host.HOST_RESERVE_MIB
                - self.opts.overhead_mib * (1 + self.opts.parked_max),
                0,
            ),
            overhead_mib=self.opts.overhead_mib,
            suspend=True,
            snapshot=True,
        )

    def fingerprint(self) -> dict[str, str]:
        version = subprocess.run(
            [self.opts.qemu, "--version"], capture_output=True, text=True, check=False
        ).stdout.splitlines()
        return {
            "qemu": version[0] if version else "unknown",
            "accel": self.opts.accel.name,
            "accel_reason": self.opts.accel.reason,
            "kernel": self.opts.guest.kernel_package,
        }

    def validate(self, spec: SandboxSpec) -> None:
        if not spec.root_disk:
            raise Invalid("a micro-VM needs a root disk image (SandboxSpec.root_disk)")
        if not Path(spec.root_disk).is_file():
            raise Invalid(f"root disk {spec.root_disk} does not exist")
        check_wired(spec, self.opts.host.network)
        volumes.check_sources(spec)
        volumes.boot_param(spec.volumes)  # Invalid if their paths do not fit the command line

    # -- launch --------------------------------------------------------------------------------

    async def launch(self, record: SandboxRecord, sdir: SandboxDir) -> ProcessRef:
        if record.spec.restore_from:
            return await self._launch(record, sdir, Path(record.spec.restore_from), clone=True)
        return await self._launch(record, sdir, None)

    async def restore(self, record: SandboxRecord, sdir: SandboxDir, saved: Path) -> ProcessRef:
        """Start the suspended sandbox's QEMU from what `save` left in `saved`, paused."""
        return await self._launch(record, sdir, saved)

    async def _launch(
        self, record: SandboxRecord, sdir: SandboxDir, saved: Path | None, clone: bool = False
    ) -> ProcessRef:
        """Boot a new guest (`saved` None), or start QEMU paused with the guest `saved` there:
        a suspended sandbox's own (its disks are still in sdir), or a snapshot's for a `clone`
        (which gets a copy of its scratch disk and maps its memory copy-on-write)."""
        spec = record.spec
        res = spec.resources
        cgroup = Cgroup(self._layout, self.opts.host.cgroup_parent, spec.id)
        cgroup.create(
            Limits(
                memory_bytes=(res.memory_mib + self.opts.overhead_mib) << 20,
                pids=QEMU_PIDS,
                cpus=res.cpus + CPU_HEADROOM,
            )
        )
        jail = sdir.file("jail")
        jail.mkdir(mode=0o555, exist_ok=True)
        disk = sdir.file(scratch.FILE_NAME)
        ram = None
        try:
            if saved is None:
                await asyncio.to_thread(scratch.create, disk, res.scratch_bytes)
                create_exit_disk(sdir.file(EXIT_FILE))
            elif clone:
                await asyncio.to_thread(snapfiles.copy_sparse, saved / snapfiles.SCRATCH, disk)
                create_exit_disk(sdir.file(EXIT_FILE))
            lease = self._uids.take()
            # A snapshot of a clone has its RAM in the stream, no file to map: a RAM file of
            # its own then, as a resume from such a stream has.
            if not (clone and saved is not None and (saved / snapfiles.MEMORY).exists()):
                ram = await asyncio.to_thread(
                    self._ram_file, spec.id, lease.id, sdir.path, saved, cgroup
                )
        except (HutchError, OSError):
            if saved is None or clone:
                disk.unlink(missing_ok=True)
            cgroup.remove()
            raise
        uid = lease.id
        if ram is not None:
            memory = Memory(ram, incoming=saved is not None)
            record.details["memory"] = str(ram)
        else:
            assert saved is not None
            memory = Memory(saved / snapfiles.MEMORY, shared=False, incoming=True)
            record.details.pop("memory", None)
        taps: list[int] = []
        network = self.opts.host.network if spec.networks else None
        if network is not None:
            try:
                taps = await asyncio.to_thread(network.open_taps, spec)
                if saved is None:  # a booting guest runs at once: on its bridges first
                    await asyncio.to_thread(network.wire_taps, spec)
            except BaseException:
                for fd in taps:
                    os.close(fd)
                lease.close()
                self._remove_ram(record)
                if saved is None or clone:  # a suspended sandbox's own disk stays
                    disk.unlink(missing_ok=True)
                cgroup.remove()
                raise
        record.details.update(
            uid=str(uid),
            accel=self.opts.accel.name,
            cgroup=cgroup.relpath,
            kernel=self.opts.guest.kernel_package,
        )
        # QEMU's stderr reaches qemu.log through a pipe and a copier that stops after
        # QEMU_STDERR_MAX bytes (QEMU ignores SIGPIPE: what it writes after that is lost). Not
        # RLIMIT_FSIZE: that limit holds for every file QEMU writes, its disks too, and a guest
        # write past it would fail with EIO.
        with sdir.file("qemu.log").open("ab") as log_file:
            copier = subprocess.Popen(  # noqa: ASYNC220 (fork+exec: returns at once)
                ["head", "-c", str(QEMU_STDERR_MAX)],
                stdin=subprocess.PIPE,
                stdout=log_file,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # lives as long as QEMU, not this process
            )
        assert copier.stdin is not None
        stderr = copier.stdin
        self._copiers[spec.id] = copier
        writable = [str(disk), str(sdir.file(EXIT_FILE))]
        disk_fds: dict[str, tuple[int, int]] = {}
        listeners: dict[str, socket.socket] = {}
        try:
            # Listening before QEMU starts: connections wait in their backlog until it takes
            # them, with no polling for sockets it would make (an earlier QEMU's are replaced).
            for sock in SOCKETS:
                sdir.file(sock).unlink(missing_ok=True)
                listeners[sock] = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                listeners[sock].bind(str(sdir.file(sock)))
                listeners[sock].listen(8)
            for path in writable:
                rw = os.open(path, os.O_RDWR | os.O_CLOEXEC)
                disk_fds[path] = (rw, -1)
                disk_fds[path] = (rw, os.open(path, os.O_RDONLY | os.O_CLOEXEC))
            args = qemu_command(
                spec, self.opts, sdir.path, uid=uid, jail=jail,
                scratch_direct=scratch.direct_io(disk), tap_fds=tuple(taps),
                volumes_direct=tuple(scratch.direct_io(Path(v.source)) for v in spec.volumes),
                memory=memory, disk_fds=disk_fds,
                listeners={name: sock.fileno() for name, sock in listeners.items()},
            )  # fmt: skip
            proc = subprocess.Popen(  # noqa: ASYNC220 (vfork+exec: returns at once)
                spawned(self.opts, cgroup, args),
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                # QEMU holds its uid's lease for as long as it lives, its TAPs and its own disks.
                pass_fds=(
                    lease.fd,
                    *taps,
                    *(fd for fds in disk_fds.values() for fd in fds),
                    *(sock.fileno() for sock in listeners.values()),
                ),
                start_new_session=True,  # a Ctrl-C at the operator's terminal is ours to handle
            )
        except OSError as e:
            lease.close()
            self._remove_ram(record)
            await self.opts.host.unplug(spec.id)
            cgroup.remove()
            self._reap_copier(spec.id)
            raise Unavailable(f"cannot start {self.opts.qemu}: {e}") from e
        finally:
            stderr.close()
            for fd in (*taps, *(fd for fds in disk_fds.values() for fd in fds if fd >= 0)):
                os.close(fd)  # QEMU has its copies: they go when it does
            for listener in listeners.values():
                listener.close()
        # A restored guest waits, paused, for its state and then a `cont`: its TAPs go on
        # their bridges while QEMU starts and loads it.
        wiring = (
            asyncio.ensure_future(asyncio.to_thread(network.wire_taps, spec))
            if network is not None and saved is not None
            else None
        )
        ref = ProcessRef.of(proc.pid)
        if ref is not None:
            lease.bind(ref, sdir.path)
        lease.close()
        # QEMU greets on QMP once it has started, or the connection ends: it failed (bad disk,
        # bad options). Not through _qmp_client: its lock would hold every other VM's QMP
        # meanwhile.
        qmp = QMPClient(f"hutch-{spec.id}")
        try:
            await qmp.connect(str(sdir.file("qmp.sock")))
        except ConnectError:
            proc.kill()  # if it lives on, broken
            await asyncio.to_thread(proc.wait)
            await _settled(wiring)
            cgroup.remove()
            self._remove_ram(record)
            await self.opts.host.unplug(spec.id)
            await asyncio.to_thread(self._reap_copier, spec.id)  # qemu.log is whole
            if (unwired := _failure(wiring)) is not None:
                raise unwired from None  # the cause: QEMU failed on the TAPs it removed
            raise Unavailable(f"qemu failed to start: {tail(sdir.file('qemu.log'))}") from None
        self._qmp[spec.id] = qmp
        if ref is None:
            await _settled(wiring)
            raise Unavailable("qemu exited as soon as it started")
        self._children[spec.id] = proc  # reaped in cleanup (ProcessRef.wait may reap it first)
        if saved is not None:
            await self._incoming(
                record, sdir, ref, saved / snapfiles.STATE, clone=clone, wiring=wiring
            )
        return ref

    def _ram_file(
        self, sandbox_id: str, uid: int, home: Path, saved: Path | None, cgroup: Cgroup
    ) -> Path:
        """The guest's RAM file on the host's tmpfs (see _ram_path): empty for a boot or for a
        stream that carries the RAM, else the saved RAM, copied by a process in the VM's cgroup
        (tmpfs pages are charged to their writer's) while QEMU starts (`_incoming` waits for
        it: QEMU reads no RAM before the stream)."""
        self.opts.memory_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        ram = self._ram_path(uid, home)
        ram.unlink(missing_ok=True)  # a leftover of a QEMU that died with its host process
        fd = os.open(ram, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            source = saved / snapfiles.MEMORY if saved is not None else None
            if source is not None and source.exists():
                # Its whole size first, so that QEMU maps it as it is and the copy, not
                # truncating it, fills it in place (its holes skipped: they read as zeros).
                os.ftruncate(fd, source.stat().st_size)
                self._copy_ram(sandbox_id, source, ram, cgroup)
        except BaseException:
            ram.unlink()
            raise
        finally:
            os.close(fd)
        return ram

    def _copy_ram(self, sandbox_id: str, source: Path, ram: Path, cgroup: Cgroup) -> None:
        """Start copying the saved RAM `source` into the guest's RAM file `ram` (`_ram_copied`
        waits for it), by a process in the VM's cgroup: tmpfs pages are charged to their
        writer's."""
        self._ram_copies[sandbox_id] = subprocess.Popen(
            spawned(self.opts, cgroup, [str(self.opts.guest.copy), str(source), str(ram)]),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    async def _ram_copied(self, sandbox_id: str) -> None:
        """Wait for the saved RAM to be in the guest's RAM file; OSError if it could not be."""
        copy = self._ram_copies.get(sandbox_id)
        if copy is None:
            return
        _, err = await asyncio.to_thread(copy.communicate)
        del self._ram_copies[sandbox_id]
        if copy.returncode != 0:
            raise OSError(f"copying the guest's RAM back: {err.decode(errors='replace').strip()}")

    def _ram_path(self, uid: int, home: Path) -> Path:
        """Named by its QEMU's uid and its sandbox directory: a uid is free again once its QEMU
        died, before that sandbox (of this or another hutch process) is destroyed and removes
        its RAM file, which must not be the file of the next VM on that uid."""
        digest = hashlib.sha256(os.fsencode(home)).hexdigest()[:16]
        return self.opts.memory_dir / f"vm-{uid}-{digest}"

    def _remove_ram(self, record: SandboxRecord) -> None:
        if (copy := self._ram_copies.pop(record.spec.id, None)) is not None:
            copy.kill()  # its QEMU is not to run
            copy.communicate()
        ram = record.details.get("memory")
        if ram:
            Path(ram).unlink(missing_ok=True)

    async def _qmp_client(self, sandbox_id: str, sdir: SandboxDir) -> QMPClient:
        """The sandbox's QMP connection (QEMU takes one at a time: everything shares it)."""
        async with self._qmp_lock:
            qmp = self._qmp.get(sandbox_id)
            if qmp is None:
                qmp = QMPClient(f"hutch-{sandbox_id}")
                await qmp.connect(str(sdir.file("qmp.sock")))  # listening since before QEMU
                self._qmp[sandbox_id] = qmp
        return qmp

    async def _incoming(
        self,
        record: SandboxRecord,
        sdir: SandboxDir,
        ref: ProcessRef,
        state: Path,
        *,
        clone: bool,
        wiring: "asyncio.Future[None] | None",
    ) -> None:
        """Load the migration stream `state` into the QEMU just started with -incoming defer,
        and wait for its `wiring` (TAPs); it stays paused. On failure QEMU is killed and what
        launch made is removed."""
        try:
            qmp = await self._qmp_client(record.spec.id, sdir)
            await _set_ignore_shared(qmp, (state.parent / snapfiles.MEMORY).exists())
            await self._ram_copied(record.spec.id)  # loading device state reads guest RAM
            await _migrate(qmp, state, outgoing=False)
            if wiring is not None:
                await asyncio.shield(wiring)  # left to end (its thread would run on anyway)
        except BaseException as e:
            ref.kill(signal.SIGKILL)
            await _settled(wiring)  # before its links are removed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ref.wait(), 10)
            await (self.cleanup if clone else self.release)(record, sdir)
            await asyncio.to_thread(self._reap_copier, record.spec.id)  # qemu.log is whole
            if (unwired := _failure(wiring)) is not None:
                raise unwired from None  # the cause (its TAPs gone, QEMU failed on them after)
            if isinstance(e, Exception) and not isinstance(e, HutchError):
                said = tail(sdir.file("qemu.log"))
                raise Unavailable(
                    f"cannot restore the guest from {state.parent}: {e}"
                    + (f"; QEMU said: {said}" if said else "")
                ) from e
            raise

    async def save(
        self, record: SandboxRecord, sdir: SandboxDir, dest: Path, with_scratch: bool
    ) -> None:
        """Pause the guest and save it into the new directory `dest`: device state, RAM (as a
        file beside the stream when the guest has its own RAM file), and with `with_scratch` a
        copy of its scratch disk. The guest stays paused (`cont` it). On failure, or when
        cancelled, it runs on and `dest` is gone."""
        qmp = await self._qmp_client(record.spec.id, sdir)
        ram = record.details.get("memory")
        # RAM in its file as the guest touched it, else all of it in the stream at most.
        most = snapfiles.allocated(Path(ram)) if ram else record.spec.resources.memory_mib << 20
        if with_scratch:
            most += snapfiles.allocated(sdir.file(scratch.FILE_NAME))
        snapfiles.check_room(dest.parent, most)
        os.mkdir(dest, 0o700)
        copying: asyncio.Future[None] | None = None
        try:
            await qmp.execute("stop")
            await _set_ignore_shared(qmp, bool(ram))
            await _migrate(qmp, dest / snapfiles.STATE, outgoing=True)

            def copy() -> None:
                if ram:
                    snapfiles.copy_sparse(Path(ram), dest / snapfiles.MEMORY)
                if with_scratch:
                    snapfiles.copy_sparse(sdir.file(scratch.FILE_NAME), dest / snapfiles.SCRATCH)

            copying = asyncio.ensure_future(asyncio.to_thread(copy))
            await asyncio.shield(copying)
        except BaseException:
            if copying is not None:  # the copy thread runs on: let it end before removing
                with contextlib.suppress(BaseException):
                    await copying
            with contextlib.suppress(Exception):
                await qmp.execute("migrate_cancel")
            try:
                await qmp.execute("cont")
            except Exception:  # the original error is the one to raise
                log.exception("sandbox %s stays paused after a failed save", record.spec.id)
            shutil.rmtree(dest, ignore_errors=True)
            raise

    async def park(self, record: SandboxRecord, sdir: SandboxDir, saved: Path) -> bool:
        """Keep the QEMU of a guest just saved into `saved`, paused, with its RAM given back
        (its file's pages punched out: `saved` holds them): its devices' state and TCG's
        translations stay, so a resume (`unpark`) copies the RAM back and goes on, with no new
        QEMU to start, no state to load and no guest code to translate again. This holds as
        long as the paused QEMU writes nothing into guest RAM after the save: the host closing
        the guest agent's channel (the driver's detach) did not, compared against the saved
        copy. Its published ports and rules go as a suspend's, its TAPs stay (off their
        bridges). False for a guest
        with no RAM file of its own (a clone's maps its snapshot's), past `parked_max`, or when
        that fails: its QEMU is to end."""
        ram = record.details.get("memory")
        network = self.opts.host.network if record.spec.networks else None
        if not ram or len(self._parked) >= self.opts.parked_max:
            return False
        try:
            if network is not None:
                await asyncio.to_thread(network.unwire_taps, record.spec.id)
            await asyncio.to_thread(snapfiles.punch, Path(ram))
        except (HutchError, OSError) as e:
            log.warning("sandbox %s: not parked: %s", record.spec.id, e)
            return False
        self._parked.add(record.spec.id)
        return True

    async def unpark(self, record: SandboxRecord, sdir: SandboxDir, saved: Path) -> None:
        """The RAM of a parked guest back from `saved`, in place: it reads as it was saved
        (the file's holes as zeros, its data copied); meanwhile its TAPs on their bridges
        again. It stays paused. On failure `release` it (what is left goes with it)."""
        spec = record.spec
        ram = Path(record.details["memory"])
        # Parking assumes the paused QEMU writes no guest RAM after the save; a page written
        # since would mean its devices moved on from the saved state: restore anew instead.
        if snapfiles.allocated(ram):
            raise Conflict(f"sandbox {spec.id}: its parked QEMU wrote guest memory after the save")
        cgroup = Cgroup(self._layout, self.opts.host.cgroup_parent, spec.id)
        self._copy_ram(spec.id, saved / snapfiles.MEMORY, ram, cgroup)
        if spec.networks and self.opts.host.network is not None:
            await asyncio.to_thread(self.opts.host.network.wire_taps, spec)
        await self._ram_copied(spec.id)
        self._parked.discard(spec.id)

    def guest_net(self, spec: SandboxSpec) -> str:
        return " ".join(guest_net_params(spec, self.opts.mtu))

    async def cont(self, record: SandboxRecord, sdir: SandboxDir) -> None:
        """Let the paused guest run."""
        qmp = await self._qmp_client(record.spec.id, sdir)
        await qmp.execute("cont")

    async def pause(self, record: SandboxRecord, sdir: SandboxDir) -> None:
        """Stop the guest's vCPUs where they are (`cont` lets them go on)."""
        qmp = await self._qmp_client(record.spec.id, sdir)
        await qmp.execute("stop")

    def side_tasks(self, record: SandboxRecord, sdir: SandboxDir) -> list[Awaitable[None]]:
        tasks: list[Awaitable[None]] = [
            self._copy_console(sdir),
            self._watch_qmp(record.spec.id, sdir),
        ]
        child, ref = self._children.get(record.spec.id), record.process
        if child is not None and ref is not None:
            tasks.append(_reap(child, ref))
        return tasks

    async def _copy_console(self, sdir: SandboxDir) -> None:
        """Guest serial console -> a bounded ring log (the guest may print forever)."""
        reader, writer = await asyncio.open_unix_connection(str(sdir.file("console.sock")))
        log = LogWriter(sdir.file("console.log"), self.opts.console_max_bytes)
        try:
            while chunk := await reader.read(64 << 10):
                log.write(Stream.STDOUT, chunk)
        finally:
            log.close()
            writer.close()

    async def _watch_qmp(self, sandbox_id: str, sdir: SandboxDir) -> None:
        qmp = await self._qmp_client(sandbox_id, sdir)
        try:
            with qmp.listener("SHUTDOWN") as listener:
                async for event in listener:
                    data = event.get("data") or {}
                    reason = data.get("reason", "unknown") if isinstance(data, dict) else "unknown"
                    self._shutdown_reason[sandbox_id] = str(reason)
        finally:
            self._qmp.pop(sandbox_id, None)
            with contextlib.suppress(Exception):
                await qmp.disconnect()

    # -- teardown ------------------------------------------------------------------------------

    async def terminate(self, record: SandboxRecord, sdir: SandboxDir) -> None:
        """QMP quit (QEMU exits at once, releasing everything); SIGKILL if QMP is not there."""
        qmp = self._qmp.get(record.spec.id)
        ref = record.process
        if qmp is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(qmp.execute("quit"), 2)
                if ref is not None:
                    await asyncio.wait_for(ref.wait(), 3)
                    return
        if ref is not None:
            ref.kill(signal.SIGKILL)

    async def cleanup(self, record: SandboxRecord, sdir: SandboxDir) -> None:
        await self.release(record, sdir)
        sdir.file(scratch.FILE_NAME).unlink(missing_ok=True)
        sdir.file(EXIT_FILE).unlink(missing_ok=True)

    async def release(self, record: SandboxRecord, sdir: SandboxDir) -> None:
        """What cleanup removes except the disks: a suspended sandbox resumes on them."""
        # Removing the cgroup also kills anything left in it: a QEMU that was launched but
        # never recorded (the host process died between spawn and save) does not survive this.
        await asyncio.to_thread(
            Cgroup(self._layout, self.opts.host.cgroup_parent, record.spec.id).remove
        )
        self._shutdown_reason.pop(record.spec.id, None)
        self._parked.discard(record.spec.id)
        child = self._children.pop(record.spec.id, None)
        if child is not None:
            child.wait()
        await asyncio.to_thread(self._reap_copier, record.spec.id)
        self._remove_ram(record)
        await self.opts.host.unplug(record.spec.id)

    def _reap_copier(self, sandbox_id: str) -> None:
        """Wait for the stderr copier of a QEMU that is gone (it ends at the pipe's end)."""
        copier = self._copiers.pop(sandbox_id, None)
        if copier is not None:
            try:
                copier.wait(5)
            except subprocess.TimeoutExpired:
                copier.kill()
                copier.wait()

    async def freeze_volume(
        self, record: SandboxRecord, sdir: SandboxDir, index: int, frozen: bool
    ) -> bool:
        return False  # mounted in the guest only: its guest agent freezes it

    async def sweep(self) -> list[str]:
        """End this host's VMs (of any hutch process) whose sandbox directory is gone: nothing
        could read their record or logs again. The uid leases say which QEMU belongs to which
        directory (QEMU cannot write them). Their TAPs go when the node's links are reconciled."""
        ended = []
        for holder in self._uids.holders():
            if holder.home is None or holder.home.exists():
                continue
            holder.owner.kill(signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(holder.owner.wait(), 10)
            self._ram_path(holder.id, holder.home).unlink(
                missing_ok=True
            )  # tmpfs: memory until removed
            # Only if empty: a sandbox of the same id under another state directory may live.
            Cgroup(self._layout, self.opts.host.cgroup_parent, holder.home.name).prune()
            ended.append(holder.home.name)
        return ended

    def saved_exit(self, record: SandboxRecord, sdir: SandboxDir) -> ExitStatus | None:
        return read_exit_disk(sdir.file(EXIT_FILE))

    def oom_killed(self, record: SandboxRecord) -> bool:
        return False  # the guest's own OOM killer reports through the guest agent

    def explain_exit(self, record: SandboxRecord, sdir: SandboxDir) -> str:
        sandbox_id = record.spec.id
        cgroup = Cgroup(self._layout, self.opts.host.cgroup_parent, sandbox_id)
        if cgroup.exists() and cgroup.oom_kills() > 0:
            return "QEMU itself ran out of host memory (its cgroup limit) and was killed"
        reason = self._shutdown_reason.get(sandbox_id)
        child = self._children.get(sandbox_id)
        code = child.poll() if child is not None else None  # None: not our child (re-adopted)
        if reason in ("guest-reset", "guest-shutdown") or code == 0:
            said = _guest_agent_fatal(
                tail(sdir.file("console.log"), records=True, lines=8, limit=4096)
            )
            if said:  # the guest agent gave up, saying why (a volume it could not mount, ...)
                return f"the guest agent failed: {said}"
            console = tail(sdir.file("console.log"), records=True)
            what = "kernel rebooted (panic?)" if reason == "guest-reset" else "powered off"
            return f"the guest {what} before reporting an exit; console: {console}"
        # QEMU itself ended. Its stderr says why when QEMU knew (an assertion, a host I/O error);
        # the guest's console does not: its last line is whatever the guest printed at boot.
        said = tail(sdir.file("qemu.log"))
        said = f"; QEMU said: {said}" if said else ""
        if code is None:
            return f"QEMU exited unexpectedly{said}"
        if code < 0:
            return f"QEMU was killed by signal {-code} ({_signal_name(-code)}){said}"
        return f"QEMU exited with code {code} while the guest ran{said}"

    def stats(self, record: SandboxRecord) -> Stats:
        return Cgroup(self._layout, self.opts.host.cgroup_parent, record.spec.id).stats()

    async def disk_io(self, record: SandboxRecord, sdir: SandboxDir) -> dict[str, DiskIO]:
        """QEMU's own counters of each drive (query-blockstats), by the drive ids the command
        line gives them."""
        names = {"root": "root", "scratch": "scratch"}
        names |= {f"vol{i}": f"volume:{v.volume_id}" for i, v in enumerate(record.spec.volumes)}
        try:
            qmp = await self._qmp_client(record.spec.id, sdir)
            answer = await asyncio.wait_for(qmp.execute("query-blockstats"), QMP_QUERY_TIMEOUT)
        except (QMPError, OSError, TimeoutError) as e:
            raise Unavailable(f"QEMU of sandbox {record.spec.id} gave no disk counters: {e}") from e
        disks = {}
        for device in answer if isinstance(answer, list) else ():
            name = names.get(str(device.get("device", "")))
            stats = device.get("stats") or {}
            if name is not None:
                disks[name] = DiskIO(
                    *(
                        int(stats.get(k, 0))
                        for k in ("rd_bytes", "wr_bytes", "rd_operations", "wr_operations")
                    )
                )
        return disks


def _guest_agent_fatal(console: str) -> str:
    """The guest agent's last `fatal:` line in a console tail (" / "-joined), if any."""
    mark = "hutch-agent: fatal: "
    lines = [ln for ln in console.split(" / ") if ln.startswith(mark)]
    return lines[-1].removeprefix(mark) if lines else ""


def create_exit_disk(path: Path) -> None:
    """An empty exit disk (root's only, like the sandbox's directory)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, EXIT_DISK_BYTES)
    finally:
        os.close(fd)


def read_exit_disk(path: Path) -> ExitStatus | None:
    """The exit the guest saved there (EXIT_MAGIC, then the EXIT frame's payload), if any."""
    try:
        with path.open("rb") as f:
            data = f.read(len(EXIT_MAGIC) + 12)
    except FileNotFoundError:
        return None
    if len(data) < len(EXIT_MAGIC) + 12 or not data.startswith(EXIT_MAGIC):
        return None
    code, sig, flags = struct.unpack(">iII", data[len(EXIT_MAGIC) :])
    if not (0 <= code <= 255 and sig < 128):  # not an exit any workload could have had
        return None
    return ExitStatus(code, sig, bool(flags & 1))


async def _settled(task: "asyncio.Future[None] | None") -> None:
    """Wait for `task` to end, however it ends, without raising."""
    if task is not None:
        await asyncio.wait([task])


def _failure(task: "asyncio.Future[None] | None") -> BaseException | None:
    """What the ended `task` raised, if it did."""
    return task.exception() if task is not None and not task.cancelled() else None


async def _reap(child: "subprocess.Popen[bytes]", ref: ProcessRef) -> None:
    """Reap QEMU as soon as it ends; its Popen keeps the status for explain_exit."""
    await ref.wait()
    child.poll()


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"SIG{number}"


async def _set_ignore_shared(qmp: QMPClient, on: bool) -> None:
    """Guest RAM saved as a file beside the stream is left out of it (x-ignore-shared); both
    ends of a migration must agree."""
    await qmp.execute(
        "migrate-set-capabilities",
        {"capabilities": [{"capability": "x-ignore-shared", "state": on}]},
    )


async def _migrate(qmp: QMPClient, path: Path, outgoing: bool) -> None:
    """Save the paused guest's state into the new file `path` (`outgoing`), or load it from
    `path` into a QEMU started with -incoming defer, and wait until that is done. QEMU gets the
    file as a descriptor: chrooted under spawn=deny, it can open nothing itself."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL if outgoing else os.O_RDONLY
    fd = os.open(path, flags | os.O_CLOEXEC, 0o600)
    try:
        qmp.send_fd_scm(fd)
        await qmp.execute("getfd", {"fdname": "migration"})
    finally:
        os.close(fd)
    await qmp.execute("migrate" if outgoing else "migrate-incoming", {"uri": "fd:migration"})
    await _migrated(qmp, MIGRATION_TIMEOUT)


async def _migrated(qmp: QMPClient, timeout: float) -> None:
    """Wait for the migration (either way) to complete; Unavailable if it fails."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        info = await qmp.execute("query-migrate")
        status = info.get("status") if isinstance(info, dict) else None
        if status == "completed":
            return
        if status in ("failed", "cancelled"):
            said = info.get("error-desc", status) if isinstance(info, dict) else status
            raise Unavailable(f"QEMU could not save or load the guest: {said}")
        if loop.time() > deadline:
            raise Unavailable(f"saving or loading the guest took over {timeout:g} s")
        await asyncio.sleep(0.005)
