"""``--pin REGEX=DEVICE``: parsed, checked as llama.cpp's std::regex would take it, and refused where matching
could backtrack catastrophically (Python's ``re`` has no timeout, and neither has llama.cpp)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

try:  # the regex parser moved in Python 3.11; sre_parse still works there but warns
    import re._constants as _sre  # type: ignore[import-not-found]
    import re._parser as _sre_parser  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - Python 3.10
    import sre_constants as _sre  # type: ignore[no-redef]
    import sre_parse as _sre_parser  # type: ignore[no-redef]

from moeplace.errors import MoeplaceError
from moeplace.targets.llamacpp_rules import check_portable_pattern


class PinError(MoeplaceError):
    """A --pin that cannot be used."""


@dataclass(frozen=True)
class Pin:
    """``--pin REGEX=DEVICE``: every loaded tensor whose name the regex searches into lives on DEVICE."""

    pattern: str
    device: str


def parse_pin(text: str, devices: Sequence[str]) -> Pin:
    """Parses ``REGEX=DEVICE`` (the last ``=`` separates them) and checks both."""
    pattern, sep, device = text.rpartition("=")
    if not sep or not pattern or not device:
        raise PinError(f"--pin '{text}': write REGEX=DEVICE, e.g. --pin 'blk\\.(0|1)\\.ffn_.*_exps=CPU'")
    if device not in devices:
        raise PinError(f"--pin '{text}': unknown device '{device}'; the devices are {', '.join(devices)}")
    try:
        re.compile(pattern)
        check_portable_pattern(pattern)
    except re.error as e:
        raise PinError(f"--pin '{text}': not a valid regular expression ({e})") from None
    problem = backtracking_risk(pattern)
    if problem:
        raise PinError(f"--pin '{text}': {problem}")
    return Pin(pattern, device)


_REPEATS = tuple(getattr(_sre, n) for n in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT") if hasattr(_sre, n))
# More adjacent open-ended repeats than this (.*a.*b.*c.*d.*) cost n^k steps on a failing name.
MAX_OPEN_REPEATS = 4


def backtracking_risk(pattern: str) -> str:
    """Why matching ``pattern`` could take exponential or high-polynomial time, or "" when it cannot.

    Python's ``re`` has no timeout and llama.cpp's std::regex backtracks too (recursively, so it can also run
    out of stack), so a pin like ``(a+)+`` would hang both. Refused: a repeat inside a repeated group
    (``(a+)+``, ``(.*x){9}``), an alternation inside one (``(a|ab)*``), and more than
    :data:`MAX_OPEN_REPEATS` open-ended repeats in all. Tensor-name pins never need these."""
    tree = _sre_parser.parse(pattern)
    open_repeats = 0
    stack: list[tuple[Any, bool]] = [(tree, False)]
    while stack:
        items, repeated = stack.pop()
        for op, av in items:
            if op in _REPEATS:
                lo, hi, sub = av
                if hi != lo:
                    if repeated:
                        return ("a repeat inside a repeated group, such as (a+)+, can take exponential time here "
                                "and in llama.cpp; repeat the group or its content, not both")
                    open_repeats += hi == _sre.MAXREPEAT
                stack.append((sub, repeated or hi > 1))
            elif op is _sre.BRANCH:
                if repeated:
                    return ("an alternation inside a repeated group, such as (a|ab)*, can take exponential time here "
                            "and in llama.cpp; list the alternatives without repeating them")
                stack.extend((b, repeated) for b in av[1])
            elif op is _sre.SUBPATTERN:
                stack.append((av[-1], repeated))
            elif op in (_sre.ASSERT, _sre.ASSERT_NOT):
                stack.append((av[1], repeated))
    if open_repeats > MAX_OPEN_REPEATS:
        return (f"{open_repeats} open-ended repeats (* or +) can take n^{open_repeats} steps on a name that fails "
                f"to match; use at most {MAX_OPEN_REPEATS}")
    return ""
