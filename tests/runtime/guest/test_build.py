import lzma
import stat
import struct
import subprocess
from pathlib import Path

import pytest

from hutch.model.errors import Unavailable
from hutch.runtime.guest import cpio
from hutch.runtime.guest.build import (
    GUEST_MODULES,
    GuestArtifacts,
    extract_vmlinux,
    strip_module_signature,
)


def test_cpio_is_deterministic_and_readable_by_cpio(tmp_path: Path) -> None:
    entries = [
        cpio.directory("bin"),
        cpio.file("bin/x", b"hello", 0o755),
        cpio.symlink("y", "bin/x"),
    ]
    archive = cpio.write_newc(entries)
    assert archive == cpio.write_newc(entries)
    listing = subprocess.run(
        ["cpio", "-itv"], input=archive, capture_output=True, check=True
    ).stdout.decode()
    assert "bin/x" in listing and "y -> bin/x" in listing
    assert stat.S_ISLNK(entries[2].mode)


def test_vmlinux_is_found_inside_a_compressed_image() -> None:
    elf = b"\x7fELF" + bytes(100)
    bzimage = b"MZ boot sector..." + lzma.compress(elf, format=lzma.FORMAT_XZ) + b"trailing"
    assert extract_vmlinux(bzimage) == elf
    with pytest.raises(Unavailable, match="no ELF"):
        extract_vmlinux(b"not a kernel")


def test_module_signature_is_stripped() -> None:
    body = b"\x7fELF module body"
    signer, key_id, sig = b"", b"", b"S" * 300
    info = struct.pack(">BBBBB3xI", 0, 0, 2, len(signer), len(key_id), len(sig))
    signed = body + signer + key_id + sig + info + b"~Module signature appended~\n"
    assert strip_module_signature(signed) == body
    assert strip_module_signature(body) == body


def test_artifacts_are_built_with_the_needed_modules(guest: GuestArtifacts) -> None:
    order = (guest.kernel.parent / "modules.order").read_text().split()
    names = {m.removesuffix(".ko").replace("-", "_") for m in order}
    assert set(GUEST_MODULES) <= names
    assert order.index("virtio.ko") < order.index("virtio_mmio.ko")  # dependencies first
    assert guest.kernel.read_bytes()[:4] == b"\x7fELF"
    listing = (
        subprocess.run(
            ["cpio", "-it"], input=guest.initrd.read_bytes(), capture_output=True, check=True
        )
        .stdout.decode()
        .split()
    )
    assert {"init", "bin/busybox", "lib/modules/order"} <= set(listing)
    for module in (guest.kernel.parent / "modules").iterdir():
        assert not module.read_bytes().endswith(b"~Module signature appended~\n")
