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


def test_what_the_ring_dropped_is_reported_exactly(tmp_path: Path) -> None:
    log = LogWriter(tmp_path / "l", 16 << 10)
    sent = b"".join(b"%06d\n" % i for i in range(20000))
    for i in range(0, len(sent), 700):
        log.write(Stream.STDOUT, sent[i : i + 700])
    log.write(Stream.STDERR, b"the end\n")
    log.close()
    records = list(read_log(tmp_path / "l"))
    assert [(r.stream, r.skipped) for r in records if r.skipped] == [
        (Stream.STDOUT, records[0].skipped)
    ]
    out = b"".join(r.data for r in records if r.stream is Stream.STDOUT)
    assert records[0].skipped + len(out) == len(sent) and sent.endswith(out)
    assert all(len(r.data) <= 64 << 10 for r in records)
    again = LogWriter(tmp_path / "l", 16 << 10)  # a new host process goes on counting
    for _ in range(40):
        again.write(Stream.STDERR, b"x" * 1000)
    again.close()
    records = list(read_log(tmp_path / "l"))
    err = [r for r in records if r.stream is Stream.STDERR]
    assert err[0].skipped + sum(len(r.data) for r in err) == 8 + 40_000


async def test_a_follower_makes_the_writer_wait_instead_of_dropping(tmp_path: Path) -> None:
    path = tmp_path / "l"
    log = LogWriter(path, 16 << 10)
    woken = []
    log.on_space = lambda: woken.append(1)
    log.write(Stream.STDOUT, b"a" * 9000)
    log.write(Stream.STDOUT, b"b" * 9000)  # rotates: "a" is in .1
    cursor = log.reader()
    follower = follow_log(path, lambda: False, None, cursor)
    first = await anext(follower)
    assert first.data == b"a" * 9000 and not first.skipped
    assert log.write(Stream.STDOUT, b"c" * 9000) is False  # would drop "b" it has not read
    assert (await anext(follower)).data == b"b" * 9000  # moving to the newer file frees "a"
    assert woken and log.write(Stream.STDOUT, b"c" * 9000)
    assert log.write(Stream.STDOUT, b"d" * 9000) is False
    assert log.write(Stream.STDOUT, b"d" * 9000, force=True)  # the guest ignored its window
    await follower.aclose()  # type: ignore[attr-defined]
    assert log.write(Stream.STDOUT, b"e" * 9000)  # nobody follows: the ring drops again
    log.close()
    records = list(read_log(path))
    assert records[0].skipped == 27000  # a, b and c


def test_hold_keeps_everything_until_a_first_reader(tmp_path: Path) -> None:
    log = LogWriter(tmp_path / "l", 16 << 10)
    log.hold(60)
    assert log.write(Stream.STDOUT, b"a" * 9000) and log.write(Stream.STDOUT, b"b" * 9000)
    assert not log.write(Stream.STDOUT, b"c" * 9000)
    assert 0 < log.hold_left() <= 60
    cursor = log.reader()
    assert log.hold_left() == 0 and not log.write(Stream.STDOUT, b"c" * 9000)
    cursor.close()
    assert log.write(Stream.STDOUT, b"c" * 9000)
    log.close()


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
    joined = b"".join(got)
    numbers = [int(joined[i : i + 4]) for i in range(0, len(joined), 40)]
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
