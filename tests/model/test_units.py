import pytest

from hutch.model.errors import Invalid
from hutch.model.units import format_bytes, format_duration, parse_duration, parse_mib, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [("128", 128 << 20), ("128M", 128 << 20), ("1G", 1 << 30), ("1.5GiB", 3 << 29),
     ("512k", 512 << 10), (" 2 mb ", 2 << 20), ("10b", 10)],
)  # fmt: skip
def test_sizes(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["", "lots", "1Q", "-5M", "1..2G"])
def test_bad_sizes(bad: str) -> None:
    with pytest.raises(Invalid, match="not a size"):
        parse_size(bad)


def test_mib_rounds_up_and_bytes_read_well() -> None:
    assert parse_mib("1K") == 1
    assert parse_mib("1G") == 1024
    assert parse_size("100", default_unit="b") == 100
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(3 << 30) == "3.0 GiB"


def test_durations() -> None:
    assert [parse_duration(t) for t in ("90", "90s", "30m", "2h", "1d", " 1.5H ")] == [
        90,
        90,
        1800,
        7200,
        86400,
        5400,
    ]
    # What `format_duration` (and `ps`) writes reads back.
    assert [parse_duration(t) for t in ("1h30m", "1d2h3m4s")] == [5400, 93784]
    for bad in ("", "h", "soon", "-5m", "0", "1h1h", "30 1m", "5m-", "1.2.3s", "0h0m", "1m30"):
        with pytest.raises(Invalid):
            parse_duration(bad)


def test_durations_read_well() -> None:
    shown = [format_duration(s) for s in (1.5, 2, 59, 90, 600, 3600 + 60, 86400 * 366)]
    assert shown == ["1.5s", "2s", "59s", "1m30s", "10m", "1h1m", "366d"]
    assert [parse_duration(t) for t in shown] == [1.5, 2, 59, 90, 600, 3660, 86400 * 366]
