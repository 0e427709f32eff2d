"""Decide between KVM and TCG by booting a real guest, not by the presence of /dev/kvm.

Some hosts expose a /dev/kvm that opens but never runs a guest (nested setups that refuse MSR
writes, or that spin in the host kernel). The probe boots the guest kernel with an init that
prints one line; only if that line arrives in time is KVM used. The answer is cached per host boot,
QEMU binary and guest kernel, and reported as a node capability.
"""

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from hutch.runtime.guest.build import GuestArtifacts

PROBE_LINE = b"hutch-probe: userspace reached"
PROBE_TIMEOUT = 10.0  # a KVM guest reaches userspace in well under a second


@dataclass(frozen=True, slots=True)
class Accel:
    name: str  # "kvm" or "tcg"
    reason: str  # why: "probe booted a guest in 0.21 s", "/dev/kvm: permission denied", ...
    probed_at: float


def choose(
    qemu: str,
    guest: GuestArtifacts,
    cache_dir: Path,
    requested: str = "auto",
    *,
    refresh: bool = False,
) -> Accel:
    """`requested` is "auto", "kvm" or "tcg"; "kvm" is honoured only if the probe passes."""
    if requested == "tcg":
        return Accel("tcg", "configured", time.time())
    cache = cache_dir / "accel.json"
    key = _cache_key(qemu, guest)
    if not refresh:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            cached = json.loads(cache.read_text())
            if cached.pop("key") == key:
                return Accel(**cached)
    accel = probe(qemu, guest)
    with contextlib.suppress(OSError):
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"key": key, **asdict(accel)}))
    return accel


def probe(qemu: str, guest: GuestArtifacts) -> Accel:
    now = time.time()
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
        os.close(fd)
    except OSError as e:
        return Accel("tcg", f"/dev/kvm: {e.strerror}", now)
    args = [
        qemu, "-M", "microvm,x-option-roms=off", "-accel", "kvm", "-cpu", "host", "-m", "128",
        "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio", "-no-reboot",
        "-kernel", str(guest.kernel), "-initrd", str(guest.probe_initrd),
        "-append", "console=ttyS0 quiet reboot=t panic=-1 cryptomgr.notests",
    ]  # fmt: skip
    start = time.monotonic()
    try:
        out = subprocess.run(args, capture_output=True, timeout=PROBE_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        return Accel("tcg", f"a KVM guest did not reach userspace within {PROBE_TIMEOUT:g} s", now)
    except FileNotFoundError:
        return Accel("tcg", f"{qemu} is not installed", now)
    if PROBE_LINE in out.stdout:
        return Accel("kvm", f"probe booted a KVM guest in {time.monotonic() - start:.2f} s", now)
    err = out.stderr.decode(errors="replace").strip().splitlines()
    return Accel("tcg", f"KVM failed: {err[-1] if err else f'exit {out.returncode}'}", now)


def _cache_key(qemu: str, guest: GuestArtifacts) -> str:
    parts = [qemu, str(guest.kernel)]
    with contextlib.suppress(OSError):
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
    with contextlib.suppress(OSError):
        path = shutil.which(qemu) or qemu
        st = os.stat(path)
        parts += [str(st.st_size), str(st.st_mtime_ns)]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()
