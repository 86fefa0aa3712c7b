"""Compact, verified ``-ot`` patterns that reproduce a plan, and the layer arguments beside them.

Every pattern is anchored at both ends, merges layer ranges into decimal-range alternations and tensor kinds into
one group (``ffn_(up|down|gate)_exps``), and is checked tensor by tensor against the plan with llama.cpp's
first-match rule before it leaves this module. :func:`express` adds ``-ngl``/``-ts`` from an engine's
:class:`~moeplace.targets.llamacpp_rules.LayerRules` (mainline llama.cpp by default) and re-applies the whole
argument set with those rules: a plan the arguments would not reproduce is a :class:`VerificationError`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from moeplace.model import ModelDescription
from moeplace.placement import Placement
from moeplace.ranges import runs
from moeplace.targets.llamacpp_rules import (
    MAINLINE,
    LayerRules,
    NotExpressible,
    Override,
    VerificationError,
    check_device_order,
    check_portable_pattern,
    compile_overrides,
    is_host,
    validate_buffer_name,
)


@dataclass(frozen=True)
class Expression:
    """Arguments that reproduce a placement: ``-ngl``, ``-ts`` (per-device slot counts, None with a single
    device), and the ``-ot`` overrides in order. Built only by :func:`express`, which verifies it."""

    ngl: int
    tensor_split: tuple[int, ...] | None
    overrides: tuple[Override, ...]
    devices: tuple[str, ...]
    n_slots: int
    rules: str = "llama.cpp"


_SAFE_NAME = re.compile(r"[A-Za-z0-9_.\-]+")
_BLOCK_NAME = re.compile(r"blk\.(\d+)\.(.+)")


def _literal(text: str) -> str:
    """A regex matching ``text`` literally, for tensor-name characters (only '.' is special among them)."""
    if not _SAFE_NAME.fullmatch(text):
        raise NotExpressible(f"tensor name part {text!r} has characters moeplace does not put into patterns")
    return text.replace(".", r"\.")


def decimal_range_pieces(lo: int, hi: int) -> list[tuple[int, int]]:
    """Splits ``[lo, hi]`` into ranges each of which is one fixed-length digit pattern (the classic
    range-to-regex decomposition): same number of digits, a common prefix, one digit range, then free digits."""
    if lo < 0 or hi < lo:
        raise ValueError(f"bad range [{lo}, {hi}]")
    out: list[tuple[int, int]] = []
    while lo <= hi:
        # Never cross a power of ten: numbers of different lengths need different patterns.
        top = min(hi, 10 ** len(str(lo)) - 1)
        size = 1
        while lo % (size * 10) == 0 and lo + size * 10 - 1 <= top:
            size *= 10
        count = min((top - lo + 1) // size, 10 - (lo // size) % 10)
        out.append((lo, lo + count * size - 1))
        lo += count * size
    return out


def _piece_regex(lo: int, hi: int) -> str:
    a, b = str(lo), str(hi)
    free = 0
    while free < len(a) - 1 and a[len(a) - 1 - free] == "0" and b[len(b) - 1 - free] == "9":
        free += 1
    fixed = len(a) - free - 1
    prefix, d1, d2 = a[:fixed], a[fixed], b[fixed]
    digit = d1 if d1 == d2 else f"[{d1}-{d2}]"
    return prefix + digit + "[0-9]" * free


def decimal_range_regex(lo: int, hi: int) -> str:
    """A regex (no anchors, alternatives joined by '|') whose full matches are exactly the decimal numerals of
    the integers in ``[lo, hi]``, without leading zeros. Blocks 10-23 give ``1[0-9]|2[0-3]``."""
    return "|".join(_piece_regex(a, b) for a, b in decimal_range_pieces(lo, hi))


def _block_regex(required: set[int], allowed: set[int], n_layer: int) -> str:
    """The shortest regex this heuristic finds matching every required block number and only allowed ones.
    Blocks at or beyond ``n_layer`` do not exist, so a run of allowed blocks that reaches the last block may
    extend to any larger number."""
    top = 10 ** len(str(max(n_layer - 1, 0))) - 1
    parts = []
    spans = runs(allowed | required)
    for run_lo, run_hi in spans:
        need = sorted(b for b in required if run_lo <= b <= run_hi)
        if not need:
            continue
        open_end = run_hi >= n_layer - 1
        hi_limit = top if open_end else run_hi
        lefts = {need[0], run_lo} | {x for x in range(run_lo, need[0] + 1) if x % 10 == 0}
        rights = {need[-1], hi_limit} | {x for x in range(need[-1], hi_limit + 1) if x % 10 == 9}
        best = None
        for a in sorted(lefts):
            for b in sorted(rights):
                rx = decimal_range_regex(a, b)
                key = (len(rx), b - a)
                if best is None or key < best[0]:
                    best = (key, rx)
        if run_lo == 0 and open_end:
            best = min(best, ((len("[0-9]+"), 0), "[0-9]+")) if best else ((6, 0), "[0-9]+")
        assert best is not None
        parts.append(best[1])
    return "|".join(parts)


def _common_prefix(items: Sequence[str]) -> str:
    p = items[0]
    for s in items[1:]:
        while not s.startswith(p):
            p = p[:-1]
    return p


def alternation(items: Sequence[str]) -> str:
    """A regex matching exactly the given literal strings, with their common prefix and suffix factored out:
    ``ffn_up_exps, ffn_down_exps`` -> ``ffn_(up|down)_exps``."""
    items = list(dict.fromkeys(items))
    if len(items) == 1:
        return _literal(items[0])
    prefix = _common_prefix(items)
    rest = [s[len(prefix):] for s in items]
    suffix = _common_prefix([s[::-1] for s in rest])[::-1]
    middles = [s[: len(s) - len(suffix)] for s in rest]
    inner = "|".join(_literal(m) if m else "" for m in middles)
    return f"{_literal(prefix) if prefix else ''}({inner}){_literal(suffix) if suffix else ''}"


@dataclass
class _Entry:
    stems: list[str]
    suffixes: list[str | None]
    required: set[int]
    allowed: set[int] = field(default_factory=set)


def _split_block_name(name: str) -> tuple[int, str, str | None] | None:
    m = _BLOCK_NAME.fullmatch(name)
    if not m:
        return None
    rest = m.group(2)
    stem, dot, suffix = rest.rpartition(".")
    return (int(m.group(1)), stem, suffix) if dot else (int(m.group(1)), rest, None)


def _tensor_name(block: int, stem: str, suffix: str | None) -> str:
    return f"blk.{block}.{stem}" + (f".{suffix}" if suffix is not None else "")


def _suffix_key(s: str | None) -> tuple[int, str]:
    order = {"weight": 0, "bias": 1}
    return (order.get(s or "", 2), s or "")


def _device_patterns(device: str, required: Sequence[str], status: Mapping[str, str], n_layer: int,
                     stem_order: Mapping[str, int]) -> list[str]:
    """Patterns sending every ``required`` tensor to ``device`` and matching only tensors planned there
    (``status[name] != 'forbidden'``) or absent from the model."""

    def allowed_blocks(stems: Sequence[str], suffixes: Sequence[str | None]) -> set[int]:
        return {b for b in range(n_layer)
                if all(status.get(_tensor_name(b, s, x), "absent") != "forbidden" for s in stems for x in suffixes)}

    by_cell: dict[tuple[str, str | None], set[int]] = {}
    globals_: list[str] = []
    for name in required:
        parts = _split_block_name(name)
        if parts is None:
            globals_.append(name)
            continue
        block, stem, suffix = parts
        by_cell.setdefault((stem, suffix), set()).add(block)

    entries: list[_Entry] = []
    for (stem, suffix), blocks in sorted(by_cell.items(), key=lambda kv: (min(kv[1]), stem_order.get(kv[0][0], 0),
                                                                          _suffix_key(kv[0][1]))):
        cand = None
        for e in entries:
            if (suffix is None) != (e.suffixes == [None]):
                continue  # a name without suffix cannot share a '\.(suffix)' group
            stems = e.stems if stem in e.stems else [*e.stems, stem]
            suffixes = e.suffixes if suffix in e.suffixes else [*e.suffixes, suffix]
            req = e.required | blocks
            allowed = allowed_blocks(stems, suffixes)
            if req <= allowed:
                cand = (e, stems, suffixes, req, allowed)
                break
        if cand:
            e, e.stems, e.suffixes, e.required, e.allowed = cand
        else:
            entries.append(_Entry([stem], [suffix], set(blocks), allowed_blocks([stem], [suffix])))

    patterns = []
    for e in entries:
        stems = sorted(e.stems, key=lambda s: stem_order.get(s, 0))
        suffixes = sorted(e.suffixes, key=_suffix_key)
        blocks = _block_regex(e.required, e.allowed, n_layer)
        block_part = f"({blocks})" if "|" in blocks else blocks
        if suffixes == [None]:
            suffix_part = ""
        elif len(suffixes) == 1:
            suffix_part = r"\." + _literal(str(suffixes[0]))
        else:
            suffix_part = r"\.(" + "|".join(_literal(str(s)) for s in suffixes) + ")"
        stem_part = alternation(stems)
        patterns.append(rf"^blk\.{block_part}\.{stem_part}{suffix_part}$")
    if globals_:
        patterns.append(f"^{alternation(sorted(globals_))}$")
    return patterns


def compact_patterns(model: ModelDescription, planned: Placement, base: Placement,
                     devices: Sequence[str] = ()) -> tuple[Override, ...]:
    """Anchored, compact overrides that move every tensor whose planned device differs from ``base`` (where
    ``-ngl``/``-ts`` alone put it). One or a few patterns per target device: layer ranges merged into decimal
    range alternations, tensor kinds merged (``ffn_(up|down|gate)_exps``), suffix ``\\.weight`` or
    ``\\.(weight|bias)``. Each pattern matches only tensors planned on its device (a tensor already there by
    default may be matched too, which is harmless), so the patterns are disjoint and their order cannot change
    the result; GPU groups come first in ``devices`` order, then the host. Verified against ``planned`` tensor by
    tensor with the first-match rule (:class:`VerificationError` otherwise); :func:`express` also verifies the
    layer arguments."""
    loaded = [t for t in model.tensors if t.loaded]
    stem_order: dict[str, int] = {}
    for t in loaded:
        parts = _split_block_name(t.name)
        if parts:
            stem_order.setdefault(parts[1], len(stem_order))
    targets = sorted({planned.tensor_devices[t.name] for t in loaded
                      if planned.tensor_devices[t.name] != base.tensor_devices[t.name]},
                     key=lambda d: (is_host(d), devices.index(d) if d in devices else len(devices), d))
    out = []
    for device in targets:
        validate_buffer_name(device)
        status = {t.name: ("forbidden" if planned.tensor_devices[t.name] != device else
                           "optional" if base.tensor_devices[t.name] == device else "required") for t in loaded}
        required = [t.name for t in loaded if status[t.name] == "required"]
        out.extend(Override(p, device) for p in _device_patterns(device, required, status, model.hparams.n_layer,
                                                                stem_order))
    # The patterns are only as good as this check: llama.cpp's first-match rule over the model's full tensor list.
    compiled = compile_overrides(out)
    for t in loaded:
        got = next((buffer for rx, buffer in compiled if rx.search(t.name)), base.tensor_devices[t.name])
        if got != planned.tensor_devices[t.name]:
            raise VerificationError(f"pattern construction sends {t.name} to {got} instead of "
                                    f"{planned.tensor_devices[t.name]}")
    return tuple(out)


def diff_placements(expected: Placement, actual: Placement, limit: int = 5) -> list[str]:
    """Human-readable differences between two placements (at most ``limit`` tensor lines)."""
    out = []
    if expected.layer_devices != actual.layer_devices:
        out.append(f"layer devices {actual.layer_devices} instead of {expected.layer_devices}")
    if expected.output_device != actual.output_device:
        out.append(f"output layer on {actual.output_device} instead of {expected.output_device}")
    names = sorted(set(expected.tensor_devices) | set(actual.tensor_devices))
    bad = [n for n in names if expected.tensor_devices.get(n) != actual.tensor_devices.get(n)]
    for n in bad[:limit]:
        out.append(f"{n} on {actual.tensor_devices.get(n)} instead of {expected.tensor_devices.get(n)}")
    if len(bad) > limit:
        out.append(f"... and {len(bad) - limit} more tensors")
    return out


def express(model: ModelDescription, planned: Placement, devices: Sequence[str] = (),
            rules: LayerRules = MAINLINE) -> Expression:
    """``-ngl``, ``-ts`` and compact ``-ot`` overrides reproducing ``planned``, **verified**: the arguments are
    re-applied to the model's full tensor list with llama.cpp's rules and :class:`VerificationError` is raised if
    the result differs from the plan in any layer or tensor. :class:`NotExpressible` when the layer layout
    cannot be written as ``-ngl``/``-ts``."""
    devices = check_device_order(devices)
    missing = set(t.name for t in model.tensors if t.loaded) - set(planned.tensor_devices)
    if missing:
        raise NotExpressible(f"the placement names no device for {len(missing)} tensors, e.g. {sorted(missing)[0]}")
    for d in set(planned.tensor_devices.values()):
        validate_buffer_name(d)
        if not is_host(d) and d not in devices:
            raise NotExpressible(f"tensors placed on {d}, which is not among the devices "
                                 f"{', '.join(devices) or '(none)'}")
    ngl, split = rules.layer_arguments(planned, devices)
    base = rules.apply(model, ngl, split, (), devices)
    overrides = compact_patterns(model, planned, base, devices)
    expr = Expression(ngl, split, overrides, devices, model.hparams.n_layer + 1, rules.name)
    verify(model, planned, expr, rules)
    return expr


def verify(model: ModelDescription, planned: Placement, expr: Expression, rules: LayerRules = MAINLINE) -> None:
    """Raises :class:`VerificationError` unless ``expr`` reproduces ``planned`` under the engine's rules."""
    for o in expr.overrides:
        check_portable_pattern(o.pattern)
    actual = rules.apply(model, expr.ngl, expr.tensor_split, expr.overrides, expr.devices)
    planned_loaded = Placement(planned.layer_devices, planned.output_device,
                               {t.name: planned.tensor_devices[t.name] for t in model.tensors if t.loaded})
    problems = diff_placements(planned_loaded, actual)
    if problems:
        raise VerificationError("the emitted llama.cpp arguments would not reproduce the plan: " + "; ".join(problems))
