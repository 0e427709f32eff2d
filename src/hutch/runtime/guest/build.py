"""Build the micro-VM's guest side at set-up time: kernel, guest agent and initramfs, cached by
content.

The kernel comes from Debian's package (downloaded with `apt-get download`, unpacked with
`dpkg-deb`: the host's /boot is never touched). The initramfs holds exactly the kernel modules
the guest needs, busybox (boot diagnostics behind `hutch.debug`) and the guest agent
(hutch-agent), compiled here with gcc, as are the node's own helpers that start QEMU
(hutch-spawn) and copy a suspended guest's RAM back (hutch-copy).
Every artifact's file name carries the hash of its inputs, so a changed input yields a new file
and a stale one is never used. Nothing here is committed to the repository.
"""

import contextlib
import fcntl
import hashlib
import json
import lzma
import os
import shutil
import subprocess
import tempfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from hutch.model.errors import Unavailable
from hutch.runtime.guest import cpio

# What the guest needs beyond the cloud kernel's built-ins (ext4, devtmpfs and tmpfs are built in).
GUEST_MODULES = ("virtio_mmio", "virtio_blk", "virtio_console", "overlay", "erofs", "virtio_net")
DEFAULT_KERNEL_PACKAGE = "linux-image-cloud-amd64"
BUSYBOX = Path("/bin/busybox")
CFLAGS = ("-static", "-Os", "-s", "-Wall", "-Wextra", "-Werror")

Log = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class GuestArtifacts:
    kernel: (
        Path  # uncompressed vmlinux: QEMU boots it through its PVH entry, skipping decompression
    )
    initrd: Path  # the guest agent (hutch-agent) as /init, modules, busybox
    probe_initrd: Path  # an init that prints one line and powers off
    agent: Path  # the static guest agent binary (containers run it as their init)
    spawn: Path  # hutch-spawn: a micro-VM's QEMU joins its cgroup through it (spawn.c)
    copy: Path  # hutch-copy: a suspended guest's RAM back into its RAM file (copy.c)
    kernel_release: str  # e.g. 6.1.0-56-cloud-amd64
    kernel_package: str  # e.g. linux-image-6.1.0-56-cloud-amd64 6.1.192-2


def prepare(
    cache_dir: Path,
    kernel_package: str = DEFAULT_KERNEL_PACKAGE,
    *,
    refresh: bool = False,
    log: Log = lambda _msg: None,
) -> GuestArtifacts:
    """Return the guest artifacts, building what is missing or stale.

    Without `refresh` a kernel already in the cache is used as is (no apt call, so this is cheap
    enough for every driver start); with it, apt is asked for the package's current version.
    """
    root = cache_dir / "guest"
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / ".lock"):
        kernel = _kernel(root / "kernel", kernel_package, refresh, log)
        agent = _compile(root / "bin", "hutch-agent", "agent.c", log)
        probe = _compile(root / "bin", "hutch-probe", "probe.c", log)
        spawn = _compile(root / "bin", "hutch-spawn", "spawn.c", log)
        copy = _compile(root / "bin", "hutch-copy", "copy.c", log)
        busybox = _static_busybox()
        modules = sorted((kernel / "modules").iterdir())
        order = (kernel / "modules.order").read_text()
        initrd = _initramfs(
            root / "initrd",
            "agent",
            [
                *[
                    cpio.directory(d)
                    for d in ("dev", "proc", "sys", "mnt", "newroot", "bin", "lib")
                ],
                cpio.directory("lib/modules"),
                cpio.file("init", agent.read_bytes(), 0o755),
                cpio.file("bin/busybox", busybox, 0o755),
                cpio.symlink("bin/sh", "busybox"),
                *[cpio.file(f"lib/modules/{m.name}", m.read_bytes()) for m in modules],
                cpio.file("lib/modules/order", order.encode()),
            ],
        )
        probe_initrd = _initramfs(
            root / "initrd",
            "probe",
            [cpio.directory("dev"), cpio.file("init", probe.read_bytes(), 0o755)],
        )
        meta = json.loads((kernel / "meta.json").read_text())
        return GuestArtifacts(
            kernel=kernel / "vmlinux",
            initrd=initrd,
            probe_initrd=probe_initrd,
            agent=agent,
            spawn=spawn,
            copy=copy,
            kernel_release=meta["release"],
            kernel_package=f"{meta['package']} {meta['version']}",
        )


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _run(args: list[str], what: str, **kwargs: object) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(args, check=True, capture_output=True, **kwargs)  # type: ignore[call-overload,no-any-return]
    except FileNotFoundError:
        raise Unavailable(f"{what}: {args[0]} is not installed (run `make setup`)") from None
    except subprocess.CalledProcessError as e:
        detail = (e.stderr or b"").decode(errors="replace").strip().splitlines()[-3:]
        raise Unavailable(f"{what} failed: {' / '.join(detail) or e}") from None


def _atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)


# ---- kernel ---------------------------------------------------------------------------------


def _kernel(kernels: Path, package: str, refresh: bool, log: Log) -> Path:
    """The cached kernel directory for `package` (a meta-package or a concrete one)."""
    kernels.mkdir(exist_ok=True)
    pointer = kernels / f"{package}.json"
    if not refresh and pointer.exists():
        current = kernels / str(json.loads(pointer.read_text())["dir"])
        if _has_modules(current):
            return current
    try:
        concrete, version = _resolve_package(package)
    except Unavailable:
        if pointer.exists() and _has_modules(kernels / str(json.loads(pointer.read_text())["dir"])):
            # offline, but we have one: keep using it
            log(f"apt could not resolve {package}; using the cached kernel")
            return kernels / str(json.loads(pointer.read_text())["dir"])
        raise
    # The folder's name carries the module list: adding one to GUEST_MODULES fetches anew.
    modules = hashlib.sha256(" ".join(GUEST_MODULES).encode()).hexdigest()[:8]
    target = kernels / f"{concrete}_{version}_{modules}"
    if not _has_modules(target):
        log(f"fetching guest kernel {concrete} {version} from Debian")
        _fetch_kernel(concrete, version, target)
    _atomic_write(pointer, json.dumps({"dir": target.name}).encode())
    return target


def _has_modules(kernel: Path) -> bool:
    """A cached kernel folder that is complete and holds every module the guest needs."""
    try:
        meta = json.loads((kernel / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(meta.get("modules") == list(GUEST_MODULES))


def _resolve_package(package: str) -> tuple[str, str]:
    """Follow a meta-package (linux-image-cloud-amd64) to the versioned image package."""
    show = _run(["apt-cache", "show", "--no-all-versions", package], f"apt-cache show {package}")
    fields = dict(line.split(": ", 1) for line in show.stdout.decode().splitlines() if ": " in line)
    for dep in fields.get("Depends", "").split(","):
        name = dep.strip().split(" ")[0]
        if name.startswith("linux-image-") and name != package:
            return _resolve_package(name)
    if "Version" not in fields:
        raise Unavailable(f"apt knows no package {package}")
    return package, fields["Version"]


def _fetch_kernel(package: str, version: str, target: Path) -> None:
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        work = Path(tmp)
        _run(
            ["apt-get", "download", "-o", "APT::Sandbox::User=root", f"{package}={version}"],
            f"downloading {package}",
            cwd=work,
        )
        (deb,) = work.glob("*.deb")
        tree = work / "tree"
        _run(["dpkg-deb", "-x", str(deb), str(tree)], f"unpacking {deb.name}")
        (vmlinuz,) = (tree / "boot").glob("vmlinuz-*")
        release = vmlinuz.name.removeprefix("vmlinuz-")
        out = work / "out"
        (out / "modules").mkdir(parents=True)
        (out / "vmlinux").write_bytes(extract_vmlinux(vmlinuz.read_bytes()))
        order = _copy_modules(tree, release, out / "modules")
        (out / "modules.order").write_text("".join(f"{m}\n" for m in order))
        meta = {
            "package": package,
            "version": version,
            "release": release,
            "modules": list(GUEST_MODULES),
        }
        (out / "meta.json").write_text(json.dumps(meta))
        shutil.rmtree(target, ignore_errors=True)
        out.rename(target)


def _copy_modules(tree: Path, release: str, dest: Path) -> list[str]:
    """Copy GUEST_MODULES and their dependencies; return file names in load order."""
    _run(["depmod", "-b", str(tree), release], "depmod")
    order: list[str] = []
    for module in GUEST_MODULES:
        deps = _run(
            ["modprobe", "-d", str(tree), "-S", release, "--show-depends", module],
            f"resolving kernel module {module}",
        )
        for line in deps.stdout.decode().splitlines():
            parts = line.split()
            if parts[:1] != ["insmod"]:
                continue  # "builtin x": nothing to load
            src = Path(parts[1])
            name = src.name.split(".ko")[0] + ".ko"
            if name in order:
                continue
            data = src.read_bytes()
            if src.name.endswith(".xz"):
                data = lzma.decompress(data)
            elif src.name.endswith(".zst"):
                data = _run(["zstd", "-dc", str(src)], f"decompressing {src.name}").stdout
            (dest / name).write_bytes(strip_module_signature(data))
            order.append(name)
    return order


_SIG_MAGIC = b"~Module signature appended~\n"


def strip_module_signature(module: bytes) -> bytes:
    """The module without its appended signature.

    Checking an RSA signature per module under TCG costs tens of milliseconds at every boot, and
    proves nothing here: the modules come from the same verified package as the kernel. The guest
    kernel loads unsigned modules (it only notes the taint).
    """
    if not module.endswith(_SIG_MAGIC):
        return module
    # struct module_signature: algo, hash, id_type, signer_len, key_id_len, pad[3], be32 sig_len
    info = module[-len(_SIG_MAGIC) - 12 : -len(_SIG_MAGIC)]
    signer_len, key_id_len = info[3], info[4]
    sig_len = int.from_bytes(info[8:12], "big")
    return module[: len(module) - len(_SIG_MAGIC) - 12 - sig_len - signer_len - key_id_len]


def extract_vmlinux(bzimage: bytes) -> bytes:
    """The ELF kernel inside a bzImage (what scripts/extract-vmlinux does)."""
    candidates: list[tuple[bytes, Callable[[bytes], bytes]]] = [
        (b"\x02\x21\x4c\x18", lambda d: _pipe(["lz4", "-dc"], d)),
        (b"\xfd7zXZ\x00", lambda d: lzma.LZMADecompressor().decompress(d)),
        (b"\x1f\x8b\x08", lambda d: zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(d)),
        (b"\x28\xb5\x2f\xfd", lambda d: _pipe(["zstd", "-dc"], d)),
    ]
    for magic, decompress in candidates:
        start = bzimage.find(magic)
        while start != -1:
            with contextlib.suppress(Exception):
                out = decompress(bzimage[start:])
                if out[:4] == b"\x7fELF":
                    return out
            start = bzimage.find(magic, start + 1)
    raise Unavailable("no ELF kernel found inside the bzImage (unknown compression?)")


def _pipe(args: list[str], data: bytes) -> bytes:
    # Decompressors complain about the bzImage's trailing bytes; the stream itself is whole.
    return subprocess.run(args, input=data, capture_output=True, check=False).stdout


# ---- guest agent and initramfs -----------------------------------------------------------------


def _compile(bindir: Path, name: str, source: str, log: Log) -> Path:
    src = resources.files("hutch.runtime.guest").joinpath(source).read_bytes()
    key = hashlib.sha256(src + " ".join(CFLAGS).encode()).hexdigest()[:16]
    out = bindir / f"{name}-{key}"
    if out.exists():
        return out
    bindir.mkdir(exist_ok=True)
    log(f"compiling {name}")
    with tempfile.TemporaryDirectory(dir=bindir, prefix=".cc-") as tmp:
        c_file = Path(tmp) / source
        c_file.write_bytes(src)
        binary = Path(tmp) / name
        _run(["gcc", *CFLAGS, "-o", str(binary), str(c_file)], f"compiling {source}")
        binary.chmod(0o755)
        binary.rename(out)
    return out


def _static_busybox() -> bytes:
    try:
        data = BUSYBOX.read_bytes()
    except FileNotFoundError:
        raise Unavailable("busybox is not installed: apt-get install busybox-static") from None
    if b"/lib64/ld-linux" in data[:4096]:
        raise Unavailable(f"{BUSYBOX} is dynamically linked: apt-get install busybox-static")
    return data


def _initramfs(dirpath: Path, name: str, entries: list[cpio.Entry]) -> Path:
    archive = cpio.write_newc(entries)
    out = dirpath / f"{name}-{hashlib.sha256(archive).hexdigest()[:16]}.cpio"
    if not out.exists():
        dirpath.mkdir(exist_ok=True)
        _atomic_write(out, archive)
    return out
