"""Byte sizes as people write them: ``24G`` and ``24GiB`` are 24 x 2^30 bytes, ``24GB`` is 24 x 10^9."""

from __future__ import annotations

import re

from moeplace.errors import MoeplaceError

KIB, MIB, GIB, TIB = 1 << 10, 1 << 20, 1 << 30, 1 << 40  # the one copy of the binary units

_UNITS = {
    "K": KIB, "KIB": KIB, "KB": 10**3,
    "M": MIB, "MIB": MIB, "MB": 10**6,
    "G": GIB, "GIB": GIB, "GB": 10**9,
    "T": TIB, "TIB": TIB, "TB": 10**12,
    "B": 1,
}
# 1 EiB: more than any machine holds, and every size below it is exact as an int64 and as a float's integer part.
MAX_SIZE = 1 << 60
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]+)\s*$")

SIZE_HELP = "24G or 24GiB = 24 x 2^30 bytes (what a '24 GB' card has); 24GB = 24 x 10^9 bytes; also K, M, T"


def parse_size(text: str) -> int:
    """Parses ``24G``, ``24GiB``, ``10.5G``, ``24GB``, ``512M``... into bytes; a bare number is refused because
    it is ambiguous."""
    m = _SIZE.match(text)
    if not m or m.group(2).upper() not in _UNITS:
        if re.fullmatch(r"\s*\d+(\.\d+)?\s*", text):
            raise MoeplaceError(f"size '{text}' has no unit: write {text.strip()}G for GiB "
                                f"or {text.strip()}GB for 10^9 bytes")
        raise MoeplaceError(f"malformed size '{text}': write a number and a unit, like 24G ({SIZE_HELP})")
    value = float(m.group(1)) * _UNITS[m.group(2).upper()]  # a 400-digit number is inf here, not an error
    if not value <= MAX_SIZE:
        raise MoeplaceError(f"size '{text.strip()[:40]}' is larger than any machine's memory "
                            "(limit 1 EiB)")
    return round(value)


def format_size(n: float) -> str:
    """Binary units, as llama.cpp prints them (MiB, GiB)."""
    sign = "-" if n < 0 else ""
    n = abs(n)
    for unit, scale in (("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if n >= scale:
            return f"{sign}{n / scale:.2f} {unit}"
    return f"{sign}{int(n)} B"
