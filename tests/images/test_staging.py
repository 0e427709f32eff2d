"""Reservations of unpack staging space: shared by threads and processes, given back by those
that end (or die), grown as an unpack goes, never past what hutch may hold."""

import os
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from hutch.images.staging import GROW_STEP, PAGE, Reservation, Staging, StagingFull
from hutch.images.unpack import TooLarge

MIB = 1 << 20


def held(staging: Staging, nbytes: int) -> Reservation:
    reservation = staging.reserve(nbytes)
    assert reservation is not None
    return reservation


def test_reservations_share_hutchs_part_of_the_staging(tmp_path: Path) -> None:
    staging = Staging(tmp_path, 10 * MIB)
    a = staging.reserve(6 * MIB)
    assert a is not None and a.scaffold.is_dir() and list(a.scaffold.iterdir()) == []
    assert staging.reserve(6 * MIB) is None  # 12 MiB would be more than the 10 hutch may hold
    b = staging.reserve(4 * MIB)
    assert b is not None and b.scaffold != a.scaffold
    assert staging.reserve(1) is None
    (a.scaffold / "file").write_bytes(b"x")
    a.release()
    assert not a.scaffold.exists()
    a.release()  # twice is harmless
    again = staging.reserve(6 * MIB)
    assert again is not None
    again.release()
    b.release()


def test_a_reservation_grows_only_into_room_that_is_free(tmp_path: Path) -> None:
    staging = Staging(tmp_path, 10 * MIB)
    with held(staging, 1 * MIB) as grower:
        grower.cover(0, 1 * MIB)  # within what it holds: nothing to do
        grower.cover(MIB // 2, 3 * MIB)  # 3 MiB + a step does not fit; 3 MiB does
        assert grower.reserved == 3 * MIB
        other = staging.reserve(7 * MIB)
        assert other is not None
        with pytest.raises(StagingFull, match="cannot hold 4"):
            grower.cover(3 * MIB, 4 * MIB)
        other.release()
        grower.cover(3 * MIB, 4 * MIB)
        assert grower.reserved == 4 * MIB  # a step more would pass the 10 MiB
    roomy = Staging(tmp_path, 1 << 40)
    with held(roomy, MIB) as r:
        r.cover(0, 2 * MIB)
        assert r.reserved == 2 * MIB + GROW_STEP  # a step ahead, so that growing is rare


def test_an_unpack_budget_charges_a_page_per_entry(tmp_path: Path) -> None:
    with held(Staging(tmp_path, 3 * PAGE), PAGE) as reservation:
        budget = reservation.budget(max_bytes=1 << 30)
        budget.take_entry()  # one page: what it holds
        budget.take_bytes(PAGE)  # its data: a second page, which the reservation grows to
        budget.take_entry()
        assert reservation.reserved == 3 * PAGE
        with pytest.raises(StagingFull):
            budget.take_entry()
        # Its own limits still hold too, and come first.
        with pytest.raises(TooLarge):
            reservation.budget(max_bytes=10).take_bytes(11)


def test_threads_never_reserve_more_than_there_is(tmp_path: Path) -> None:
    staging = Staging(tmp_path, 10 * MIB)
    got: list[Reservation] = []
    start = threading.Barrier(8)

    def reserve() -> None:
        start.wait()
        if (r := staging.reserve(2 * MIB)) is not None:
            got.append(r)

    threads = [threading.Thread(target=reserve) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 5
    for r in got:
        r.release()
    whole = staging.reserve(10 * MIB)
    assert whole is not None
    whole.release()


HOLD = """
import sys
from pathlib import Path
from hutch.images.staging import Staging
r = Staging(Path(sys.argv[1]), int(sys.argv[2])).reserve(int(sys.argv[2]))
(r.scaffold / "half-unpacked").write_bytes(b"x")
print(r.scaffold, flush=True)
sys.stdin.read()
"""


def test_a_process_that_dies_gives_its_reservation_back(tmp_path: Path) -> None:
    staging = Staging(tmp_path, 10 * MIB)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path), str(10 * MIB)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout is not None
        scaffold = Path(holder.stdout.readline().strip())
        assert (scaffold / "half-unpacked").exists()
        assert staging.reserve(1) is None  # another process holds it all
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    mine = staging.reserve(10 * MIB)  # the dead one's space is free again, its tree gone
    assert mine is not None and not scaffold.exists()
    mine.release()
    assert sorted(p.name for p in mine.scaffold.parent.iterdir()) == ["ledger.lock"]


def test_the_staging_directory_is_left_alone_and_a_planted_one_refused(tmp_path: Path) -> None:
    shm = tmp_path / "shm"
    shm.mkdir()
    shm.chmod(0o1777)  # as /dev/shm: everyone's
    staging = Staging(shm, 10 * MIB)
    with held(staging, MIB) as r:
        area = r.scaffold.parent
        assert area == shm / f".hutch-{os.geteuid()}"
        assert stat.S_IMODE(area.stat().st_mode) == 0o700
    assert stat.S_IMODE(shm.stat().st_mode) == 0o1777
    # Someone else's directory (or a symlink) in its place: nothing is unpacked there.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    planted = Path(f"{shm}2")
    planted.mkdir()
    (planted / f".hutch-{os.geteuid()}").symlink_to(elsewhere)
    assert Staging(planted, 10 * MIB).reserve(MIB) is None
    assert list(elsewhere.iterdir()) == []
    open_to_all = Path(f"{shm}3")
    (open_to_all / f".hutch-{os.geteuid()}").mkdir(parents=True)
    (open_to_all / f".hutch-{os.geteuid()}").chmod(0o777)
    assert Staging(open_to_all, 10 * MIB).reserve(MIB) is None
    assert Staging(tmp_path / "missing", 10 * MIB).reserve(MIB) is None


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs")
def test_reservations_fit_the_file_systems_free_space(tmp_path: Path) -> None:
    shm = tmp_path / "shm"
    shm.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "hutch-test", str(shm)], check=True)
    try:
        staging = Staging(shm, 1 << 40)  # hutch's share is no limit here; the tmpfs is
        (shm / "someone-elses").write_bytes(b"x" * (4 * MIB))  # 12 MiB free
        assert staging.reserve(13 * MIB) is None
        with held(staging, 8 * MIB) as r:
            assert staging.reserve(5 * MIB) is None  # 8 are promised already
            (r.scaffold / "used").write_bytes(b"x" * (6 * MIB))  # 6 MiB free
            r.cover(6 * MIB, 9 * MIB)  # 3 more to come
            # What it wrote is gone from the free space, and not counted twice.
            held(staging, 2 * MIB).release()
            assert staging.reserve(4 * MIB) is None
    finally:
        subprocess.run(["umount", str(shm)], check=True)
