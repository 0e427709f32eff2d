"""A saved guest's files: copied with their holes and zero pages left holes."""

import os
from pathlib import Path

from hutch.runtime import snapfiles


def test_a_sparse_copy_reads_the_same_and_leaves_zero_pages_out(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    with src.open("wb") as f:
        f.truncate(64 << 20)  # a hole all round
        f.seek(1 << 20)  # data, 8 zero pages written (allocated), data, an unaligned tail
        f.write(os.urandom(8192) + bytes(8 << 12) + os.urandom(100) + bytes(4000) + b"z" * 5000)
        f.seek(32 << 20)
        f.write(os.urandom(3 << 20) + bytes(1 << 20) + os.urandom(12345))
    snapfiles.copy_sparse(src, dst)
    assert dst.read_bytes() == src.read_bytes()
    written_zeros = (8 << 12) + (1 << 20)
    assert snapfiles.allocated(dst) <= snapfiles.allocated(src) - written_zeros
