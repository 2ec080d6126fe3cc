"""Human sizes: parsing '5GB' / '512MiB' and printing byte and parameter counts and index ranges."""

from __future__ import annotations

import re

from .errors import SpecError

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$", re.ASCII)
MAX_SIZE = 10**18  # an exabyte: a larger size is a typo


def parse_size(text: str, what: str = "size") -> int:
    """'5GB' -> 5_000_000_000, '512MiB' -> 536870912. Decimal units are powers of 10."""
    m = _SIZE.match(text) if isinstance(text, str) and len(text) <= 64 else None
    unit = m.group(2).lower() if m else None
    if not m or unit not in _UNITS:
        raise SpecError(f"{what}: {text!r} is not a size (examples: 5GB, 512MiB, 1000000)")
    value = float(m.group(1)) * _UNITS[unit]
    if value <= 0:
        raise SpecError(f"{what}: {text!r} must be positive")
    if value > MAX_SIZE:
        raise SpecError(f"{what}: {text!r} is larger than {MAX_SIZE:,} bytes")
    return int(value)


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def fmt_params(n: int) -> str:
    if n >= 10**9:
        return f"{n / 1e9:.2f}B"
    if n >= 10**6:
        return f"{n / 1e6:.1f}M"
    return f"{n:,}"


def fmt_ranges(xs, sep: str = ",") -> str:
    """[20, 21, 22, 30] -> '20-22,30' (``sep`` between the parts)."""
    xs = sorted(xs)
    parts, i = [], 0
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[j] + 1:
            j += 1
        parts.append(f"{xs[i]}-{xs[j]}" if j > i else str(xs[i]))
        i = j + 1
    return sep.join(parts)
