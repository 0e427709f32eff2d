"""Human sizes: "128M", "1.5GiB", "10Gi", "512" (MiB when no unit)."""

import re

from hutch.model.errors import Invalid

_UNITS = {
    "": 1 << 20,
    "b": 1,
    "k": 1 << 10,
    "kb": 1 << 10,
    "kib": 1 << 10,
    "ki": 1 << 10,
    "m": 1 << 20,
    "mb": 1 << 20,
    "mib": 1 << 20,
    "mi": 1 << 20,
    "g": 1 << 30,
    "gb": 1 << 30,
    "gib": 1 << 30,
    "gi": 1 << 30,
    "t": 1 << 40,
    "tb": 1 << 40,
    "tib": 1 << 40,
    "ti": 1 << 40,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str, default_unit: str = "m") -> int:
    """Bytes in `text`; a bare number is in `default_unit`. Binary units: 1M = 1 MiB."""
    m = _SIZE.match(text)
    unit = m.group(2).lower() if m else ""
    if not m or unit not in _UNITS:
        raise Invalid(f"{text!r} is not a size: a number with an optional unit (512M, 10G, 1T)")
    factor = _UNITS[unit or default_unit.lower()]
    return int(float(m.group(1)) * factor)


def parse_mib(text: str) -> int:
    """Whole MiB in `text` (rounded up)."""
    return -(-parse_size(text) // (1 << 20))


def format_bytes(n: int) -> str:
    """Short binary form: 1536 -> "1.5 KiB"."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


_DURATION = {"s": 1, "m": 60, "h": 3600, "d": 86400}


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)([smhd]?)")


def parse_duration(text: str) -> float:
    """Seconds from "90", "90s", "30m", "2h", "1d" or a sum as `format_duration` writes it
    ("1h30m", "1d2h3m4s")."""
    value = text.strip().lower()
    if value.startswith("-") and _DURATION_PART.match(value, 1):
        raise Invalid(f"{text!r}: a duration must be positive")
    parts = _DURATION_PART.findall(value)
    units = [unit for _, unit in parts]
    if (
        not parts
        or "".join(n + u for n, u in parts) != value
        or ("" in units and len(parts) > 1)
        or len(set(units)) != len(units)
    ):
        raise Invalid(f"{text!r} is not a duration (like 90s, 30m, 2h, 1d or 1h30m)")
    seconds = sum(float(number) * _DURATION[unit or "s"] for number, unit in parts)
    if not seconds > 0:
        raise Invalid(f"{text!r}: a duration must be positive")
    return seconds


def format_duration(seconds: float) -> str:
    """Short form: 90 -> "1m30s", 600 -> "10m", 1.5 -> "1.5s"."""
    if seconds < 60:
        return f"{seconds:.3g}s" if seconds < 10 else f"{seconds:.0f}s"
    whole = round(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, whole = divmod(whole, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
