"""Runs of consecutive integers, for block lists people read (``0-5,8``) and regexes that match them."""

from __future__ import annotations

from collections.abc import Callable, Iterable


def runs(values: Iterable[int]) -> list[tuple[int, int]]:
    """``[1, 2, 3, 7]`` -> ``[(1, 3), (7, 7)]`` (sorted, duplicates ignored)."""
    out: list[tuple[int, int]] = []
    for v in sorted(set(values)):
        if out and v == out[-1][1] + 1:
            out[-1] = (out[-1][0], v)
        else:
            out.append((v, v))
    return out


def format_ranges(values: Iterable[int], sep: str = ",") -> str:
    """``[1, 2, 3, 7]`` -> ``'1-3,7'``; ``'none'`` when empty."""
    return sep.join(str(a) if a == b else f"{a}-{b}" for a, b in runs(values)) or "none"


def first_true(ok: Callable[[int], bool], lo: int, hi: int) -> int | None:
    """The smallest ``x`` in ``[lo, hi]`` with ``ok(x)``, for ``ok`` false then true as ``x`` rises (bisection,
    about log2(hi - lo) calls); None where not even ``ok(hi)`` holds."""
    if not ok(hi):
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo
