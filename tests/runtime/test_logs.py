import asyncio
import os
from pathlib import Path

from hutch.model.sandbox import Stream
from hutch.runtime.logs import LogWriter, Pulse, follow_log, read_log, tail


def test_records_round_trip_with_any_bytes(tmp_path: Path) -> None:
    log = LogWriter(tmp_path / "l", 1 << 20)
    log.write(Stream.STDOUT, b"\x00\xffbinary\n", time_ns=5)
    log.write(Stream.STDERR, b"err")
    log.write(Stream.STDOUT, b"")  # nothing to record
    log.close()
    records = list(read_log(tmp_path / "l"))
    assert [(r.stream, r.data) for r in records] == [
        (Stream.STDOUT, b"\x00\xffbinary\n"),
        (Stream.STDERR, b"err"),
    ]
    assert records[0].time_ns == 5


def test_ring_stays_within_its_bound_and_keeps_the_newest(tmp_path: Path) -> None:
    bound = 64 << 10
    log = LogWriter(tmp_path / "l", bound)
    for i in range(5000):
        log.write(Stream.STDOUT, f"line {i:05}\n".encode() * 4)
    log.close()
    size = sum(p.stat().st_size for p in tmp_path.iterdir())
    assert size <= bound + 100
    data = b"".join(r.data for r in read_log(tmp_path / "l"))
    assert data.endswith(b"line 04999\n")
    assert b"line 00000" not in data


def test_a_torn_record_is_not_read(tmp_path: Path) -> None:
    log = LogWriter(tmp_path / "l", 1 << 20)
    log.write(Stream.STDOUT, b"whole")
    log.close()
    with (tmp_path / "l").open("ab") as f:
        f.write(b"\x01\x00\x00\x00\x00\x00\x00\x10")  # a header cut short, as a crash leaves it
    assert [r.data for r in read_log(tmp_path / "l")] == [b"whole"]


async def test_follow_sees_new_records_across_rotation(tmp_path: Path) -> None:
    path = tmp_path / "l"
    log = LogWriter(path, 16 << 10)
    pulse = Pulse()
    done = False
    got: list[bytes] = []

    async def reader() -> None:
        async for record in follow_log(path, lambda: done, pulse):
            got.append(record.data)

    task = asyncio.create_task(reader())
    for i in range(300):
        log.write(Stream.STDOUT, f"{i:04}".encode() * 10)
        pulse.fire()
        if i % 50 == 0:
            await asyncio.sleep(0.01)
    done = True
    pulse.fire()
    await asyncio.wait_for(task, 5)
    log.close()
    numbers = [int(d[:4]) for d in got]
    assert numbers == sorted(numbers)  # in order, nothing twice
    assert numbers[-1] == 299


def test_tail_joins_the_last_lines(tmp_path: Path) -> None:
    (tmp_path / "t").write_bytes(b"one\n\ntwo\r\nthree\nfour\nfive\n")
    assert tail(tmp_path / "t", lines=3) == "three / four / five"
    assert tail(tmp_path / "missing") == ""
    log = LogWriter(tmp_path / "r", 1 << 20)
    log.write(Stream.STDOUT, b"kernel panic\n")
    log.close()
    assert tail(tmp_path / "r", records=True) == "kernel panic"
    assert os.path.exists(tmp_path / "r")
