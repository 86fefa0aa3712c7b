"""llama.cpp's placement semantics in one place, and the compact, verified ``-ot`` patterns that reproduce a plan.

What llama.cpp does with the arguments that decide where tensors live (read from its source; each rule names
the file it comes from):

* ``-ngl N`` (``src/llama-model.cpp``, ``load_tensors``): there are ``n_layer + 1`` layer *slots*, the blocks
  and then the output layer. ``i_gpu_start = max(n_layer + 1 - N, 0)``: the **last** N slots go to GPUs, the
  earlier ones to the host. A negative N means all slots (``llama_model::n_gpu_layers``); N larger than
  ``n_layer + 1`` is clamped (``act_gpu_layers = min(N, n_layer + 1)``), so ``-ngl 999`` equals ``n_layer + 1``.
* ``-ts a,b,..`` picks the GPU of each GPU slot: the cumulative split is normalised in float32 and slot ``il``
  goes to the first device whose cumulative share is ``> float(il - i_gpu_start) / act_gpu_layers``
  (``std::upper_bound``). Without ``-ts`` the split is the devices' free memory. Device order is llama.cpp's:
  RPC servers first, then local GPUs (``src/llama.cpp``, "add RPC servers at the front of the list").
* Token embeddings stay on the host (input layer); ``output`` and ``output_norm`` follow the output slot;
  ``rope_freqs`` is created with layer 0's buffer list (``TENSOR_DUPLICATED`` for the other layers).
* ``-ot REGEX=BUFT[,REGEX=BUFT..]`` (``common/arg.cpp``, ``parse_tensor_buffer_overrides``): the value is split
  on every ``,``, each item on its first ``=``; an unknown buffer name makes llama.cpp print the available ones
  and exit. For each tensor the overrides are tried in order with ``std::regex_search`` (ECMAScript, a
  *substring* search on the full name with its ``.weight``/``.bias`` suffix) and the **first** match wins
  (``src/llama-model-loader.cpp``, ``create_tensor``). ``-ot``, ``--cpu-moe`` and ``--n-cpu-moe`` all append to
  the same list when the argument parser reaches them (``common/arg.cpp``; patterns from ``common/common.h``,
  ``llm_ffn_exps_cpu_override``, ``llm_add_n_cpu_ffn_overrides``), so an ``-ot`` given before ``--cpu-moe`` wins.

The rules were checked against the llama.cpp revision that llama-cpp-python 0.3.36 vendors (``n_layer_all`` =
``block_count``, NextN blocks included), and the matching semantics against that build itself
(``tests/test_llamacpp_oracle.py``).

Python's ``re.search`` agrees with ECMAScript ``std::regex_search`` on the subset of regex syntax used here:
literals, ``\\.``, character classes of digits (``[0-9]``, ``[1-3]``), groups with ``|`` alternation (empty
alternatives included), ``*``/``+``/``?`` and the ``^``/``$`` anchors. Every pattern moeplace emits stays in that
subset (:func:`check_portable_pattern` guards user-given ones), never contains ``,`` or ``=`` (which llama.cpp's
argument parser would split on) and is anchored at both ends so a block number cannot match a prefix of another.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import IntEnum

import numpy as np

from moeplace.errors import MoeplaceError
from moeplace.model import ModelDescription
from moeplace.placement import HOST, Placement, default_tensor_device
from moeplace.ranges import runs
from moeplace.sizes import MIB

# common/common.h: LLM_FFN_EXPS_REGEX; --cpu-moe adds it as is, --n-cpu-moe N prefixes blk\.<i> for i < N.
LLM_FFN_EXPS_REGEX = r"\.ffn_(up|down|gate|gate_up)_(ch|)exps"


class OverrideError(MoeplaceError):
    """A tensor-override argument or buffer name llama.cpp would refuse."""


class NotExpressible(MoeplaceError):
    """A placement that llama.cpp's arguments cannot reproduce."""


class VerificationError(MoeplaceError):
    """Emitted arguments that would not reproduce the plan under llama.cpp's rules (a moeplace bug)."""


@dataclass(frozen=True)
class Override:
    """One ``-ot`` item: tensors whose name ``pattern`` searches into go to buffer ``buffer``."""

    pattern: str
    buffer: str

    def arg(self) -> str:
        """The item as ``-ot`` takes it: ``pattern=BUFFER``."""
        return f"{self.pattern}={self.buffer}"


# --- buffer names --------------------------------------------------------------------------------------------

# GGML_CUDA_NAME is "CUDA", "ROCm" in HIP builds and "MUSA" in MUSA builds; Vulkan<n> and SYCL<n> from
# ggml-vulkan / ggml-sycl; Metal is "Metal" in single-device builds and "MTL<n>" since the multi-device rework
# (ggml-metal.cpp, GGML_METAL_NAME); RPC buffer types are "RPC<dev>[host:port]" (ggml-rpc.cpp,
# ggml_backend_rpc_buffer_type), "RPC[host:port]" in older builds.
_GPU_BUFFER = re.compile(r"(?:CUDA|ROCm|MUSA|Vulkan|SYCL|MTL)\d+|Metal")
_RPC_BUFFER = re.compile(r"RPC\d*\[(?P<host>[A-Za-z0-9.\-_:]+?|\[[0-9A-Fa-f:.]+\]):(?P<port>\d{1,5})\]")
BUFFER_FORMS = ("CPU, CUDA0.., ROCm0.. (HIP), MUSA0.., Vulkan0.., SYCL0.., Metal or MTL0.., "
                "RPC[host:port] or RPC0[host:port]")


def is_host(buffer: str) -> bool:
    """Whether a buffer name is host memory."""
    return buffer == HOST


def validate_buffer_name(name: str) -> str:
    """Returns ``name`` if it is a buffer name llama.cpp's backends use, else raises :class:`OverrideError`."""
    if name == HOST or _GPU_BUFFER.fullmatch(name) or _RPC_BUFFER.fullmatch(name):
        return name
    hint = (" (CUDA_Host and other host buffer types are not accepted by -ot: write CPU)"
            if "host" in name.lower() else "")
    raise OverrideError(f"unknown buffer name '{name}'{hint}: use one of {BUFFER_FORMS}")


def rpc_endpoint(buffer: str) -> str | None:
    """``host:port`` of an RPC buffer name, None for any other buffer."""
    m = _RPC_BUFFER.fullmatch(buffer)
    return f"{m.group('host')}:{m.group('port')}" if m else None


# --- patterns ------------------------------------------------------------------------------------------------

# Constructs whose meaning differs between Python's re and ECMAScript std::regex, or that one of them rejects.
_NON_PORTABLE = (
    (re.compile(r"\(\?(?![:=!])"), "inline flags, named groups and lookbehind '(?...' (only (?: (?= (?! are portable)"),
    (re.compile(r"\\[AZzGQEpPNxuck0-9]"), "escapes such as \\A \\Z \\x \\u \\p \\1 (their meaning differs)"),
    (re.compile(r"\[:|\[=|\[\."), "POSIX classes like [:alpha:] (Python does not know them)"),
    (re.compile(r"\{,"), "'{,n}' (ECMAScript reads it literally)"),
    (re.compile(r"[*+?}]\+"), "possessive quantifiers"),
)


def check_portable_pattern(pattern: str) -> str:
    """Returns ``pattern`` if Python's ``re`` and llama.cpp's ECMAScript regex read it the same way; raises
    :class:`OverrideError` naming the construct otherwise (also for ``,`` and ``=``, which ``-ot`` splits on)."""
    if "," in pattern or "=" in pattern:
        raise OverrideError(f"pattern '{pattern}' contains ',' or '=': llama.cpp's -ot splits its value on them")
    if not pattern.isascii() or any(not c.isprintable() for c in pattern):
        raise OverrideError(f"pattern {pattern!r} has non-ASCII or control characters: tensor names are ASCII")
    for rx, what in _NON_PORTABLE:
        if rx.search(pattern):
            raise OverrideError(f"pattern '{pattern}' uses {what}; rewrite it with plain groups, classes and anchors")
    try:
        re.compile(pattern, re.ASCII)
    except re.error as e:
        raise OverrideError(f"pattern '{pattern}' is not a valid regular expression: {e}") from None
    return pattern


def parse_override_arg(text: str) -> tuple[Override, ...]:
    """Parses an ``-ot`` value ``regex=BUFT[,regex=BUFT...]`` exactly as llama.cpp splits it (on every ``,``,
    then on the first ``=``), validating buffer names and pattern portability."""
    out = []
    for item in text.split(","):
        pattern, sep, buffer = item.partition("=")
        if not sep:
            raise OverrideError(f"-ot item '{item}' has no '=': write REGEX=BUFFER, e.g. "
                                r"'blk\.1[0-9]\.ffn_.*_exps=CPU'")
        out.append(Override(check_portable_pattern(pattern), validate_buffer_name(buffer)))
    return tuple(out)


def cpu_moe_pattern() -> Override:
    """What ``--cpu-moe`` adds (common/common.h, ``llm_ffn_exps_cpu_override``)."""
    return Override(LLM_FFN_EXPS_REGEX, HOST)


def cpu_moe_patterns(n: int) -> tuple[Override, ...]:
    """What ``--n-cpu-moe n`` adds: ``blk\\.<i>`` + LLM_FFN_EXPS_REGEX for i < n (common/common.h,
    ``llm_ffn_block_regex``). Block indices are literal, so leading dense blocks count toward n."""
    if n < 0:
        raise OverrideError(f"--n-cpu-moe {n}: the count must be >= 0")
    return tuple(Override(rf"blk\.{i}{LLM_FFN_EXPS_REGEX}", HOST) for i in range(n))


# --- what llama.cpp does with a set of arguments --------------------------------------------------------------

def layer_devices(n_layer: int, ngl: int, tensor_split: Sequence[float] | None,
                  devices: Sequence[str]) -> tuple[tuple[str, ...], str]:
    """The device of every block and of the output slot for ``-ngl``/``-ts`` (src/llama-model.cpp,
    ``load_tensors``), computed in float32 like llama.cpp. ``devices`` are the GPUs in llama.cpp's order; pass
    their free memory as ``tensor_split`` to get llama.cpp's default split."""
    n_slots = n_layer + 1
    if ngl < 0:
        ngl = n_slots
    if not devices or ngl == 0:
        return (HOST,) * n_layer, HOST
    split = [float(x) for x in (tensor_split or ())][: len(devices)]
    split += [0.0] * (len(devices) - len(split))
    if any(x < 0 for x in split):
        raise OverrideError(f"tensor split {tensor_split} has a negative entry")
    if all(x == 0 for x in split):
        if len(devices) > 1:
            raise ValueError("several devices and no tensor split: pass their free memory, as llama.cpp does")
        split = [1.0]
    cumulative = np.zeros(len(devices), dtype=np.float32)
    total = np.float32(0)
    for i, x in enumerate(split):
        total = np.float32(total + np.float32(x))
        cumulative[i] = total
    cumulative = (cumulative / total).astype(np.float32)
    i_gpu_start = max(n_slots - ngl, 0)
    act = min(ngl, n_slots)
    slots = []
    for il in range(n_slots):
        if il < i_gpu_start or il - i_gpu_start >= act:
            slots.append(HOST)
            continue
        value = np.float32(np.float32(il - i_gpu_start) / np.float32(act))
        k = int(np.searchsorted(cumulative, value, side="right"))  # std::upper_bound
        slots.append(devices[k])
    return tuple(slots[:n_layer]), slots[n_layer]


def _compiled(overrides: Sequence[Override]) -> list[tuple[re.Pattern[str], str]]:
    out = []
    for o in overrides:
        try:
            out.append((re.compile(o.pattern, re.ASCII), o.buffer))
        except re.error as e:
            raise OverrideError(f"pattern '{o.pattern}' is not a valid regular expression: {e}") from None
    return out


def apply(model: ModelDescription, ngl: int, tensor_split: Sequence[float] | None = None,
          overrides: Sequence[Override] = (), devices: Sequence[str] = ()) -> Placement:
    """The placement llama.cpp produces from ``-ngl``, ``-ts`` and the ordered override list (``-ot``,
    ``--cpu-moe`` and ``--n-cpu-moe`` items in command-line order): each loaded tensor goes to the buffer of the first
    override whose pattern searches into its name, else to its layer's device."""
    layer_devs, output_device = layer_devices(model.hparams.n_layer, ngl, tensor_split, devices)
    compiled = _compiled(overrides)
    tensor_devices: dict[str, str] = {}
    for t in model.tensors:
        if not t.loaded:
            continue
        for rx, buffer in compiled:
            if rx.search(t.name):
                tensor_devices[t.name] = buffer
                break
        else:
            tensor_devices[t.name] = default_tensor_device(t, tuple(layer_devs), output_device)
    return Placement(layer_devs, output_device, tensor_devices)


# --- from a placement to -ngl / -ts ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Expression:
    """llama.cpp arguments that reproduce a placement: ``-ngl``, ``-ts`` (per-device slot counts, None with a
    single device), and the ``-ot`` overrides in order. Built only by :func:`express`, which verifies it."""

    ngl: int
    tensor_split: tuple[int, ...] | None
    overrides: tuple[Override, ...]
    devices: tuple[str, ...]
    n_slots: int


def check_device_order(devices: Sequence[str]) -> tuple[str, ...]:
    """Validates GPU buffer names given in llama.cpp's device order: known names, no repeats, no ``CPU``, and RPC
    servers first (llama.cpp puts them at the front of its device list)."""
    seen: set[str] = set()
    for d in devices:
        validate_buffer_name(d)
        if is_host(d):
            raise NotExpressible("CPU is not a GPU device: list only GPUs, in llama.cpp's device order")
        if d in seen:
            raise NotExpressible(f"device {d} is listed twice")
        seen.add(d)
    rpc = [rpc_endpoint(d) is not None for d in devices]
    if any(not a and b for a, b in itertools.pairwise(rpc)):
        raise NotExpressible("llama.cpp puts RPC servers before local GPUs in its device list: "
                             "list the RPC devices first")
    return tuple(devices)


def layer_arguments(placement: Placement, devices: Sequence[str]) -> tuple[int, tuple[int, ...] | None]:
    """``(-ngl, -ts counts)`` that put every block and the output slot where the placement has them, or
    :class:`NotExpressible` when llama.cpp's layer rule cannot (host layers after GPU layers, GPU runs out of
    device order, the output slot on the host while blocks are on a GPU)."""
    devices = check_device_order(devices)
    slots = (*placement.layer_devices, placement.output_device)
    unknown = sorted({d for d in slots if not is_host(d) and d not in devices})
    if unknown:
        raise NotExpressible(f"layers placed on {', '.join(unknown)}, which is not among the devices "
                             f"{', '.join(devices) or '(none)'}")
    gpu_slots = [i for i, d in enumerate(slots) if not is_host(d)]
    if not gpu_slots:
        return 0, None
    start = gpu_slots[0]
    if any(is_host(d) for d in slots[start:]):
        il = next(i for i in range(start, len(slots)) if is_host(slots[i]))
        what = "the output layer" if il == len(slots) - 1 else f"block {il}"
        raise NotExpressible(f"{what} is on the host after GPU layers: -ngl can only offload the last layers "
                             "(move host layers to the front)")
    order = [devices.index(d) for d in slots[start:]]
    if any(b < a for a, b in itertools.pairwise(order)):
        raise NotExpressible("GPU layers are not in device order: -ts gives each GPU one contiguous run of "
                             f"layers in the order {', '.join(devices)}")
    ngl = len(slots) - start
    if len(devices) == 1:
        return ngl, None
    counts = tuple(order.count(k) for k in range(len(devices)))
    return ngl, counts


# --- compact patterns ------------------------------------------------------------------------------------------

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
    compiled = _compiled(out)
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


def express(model: ModelDescription, planned: Placement, devices: Sequence[str] = ()) -> Expression:
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
    ngl, split = layer_arguments(planned, devices)
    base = apply(model, ngl, split, (), devices)
    overrides = compact_patterns(model, planned, base, devices)
    expr = Expression(ngl, split, overrides, devices, model.hparams.n_layer + 1)
    verify(model, planned, expr)
    return expr


def verify(model: ModelDescription, planned: Placement, expr: Expression) -> None:
    """Raises :class:`VerificationError` unless ``expr`` reproduces ``planned`` under llama.cpp's rules."""
    for o in expr.overrides:
        check_portable_pattern(o.pattern)
    actual = apply(model, expr.ngl, expr.tensor_split, expr.overrides, expr.devices)
    planned_loaded = Placement(planned.layer_devices, planned.output_device,
                               {t.name: planned.tensor_devices[t.name] for t in model.tensors if t.loaded})
    problems = diff_placements(planned_loaded, actual)
    if problems:
        raise VerificationError("the emitted llama.cpp arguments would not reproduce the plan: " + "; ".join(problems))


# --- baselines: what llama.cpp does by itself ----------------------------------------------------------------


def n_cpu_moe_placement(model: ModelDescription, n: int, devices: Sequence[str] = (), ngl: int = -1,
                        tensor_split: Sequence[float] | None = None,
                        user_overrides: Sequence[Override] = ()) -> Placement:
    """The placement of ``-ngl ngl [-ts ..] [-ot user..] --n-cpu-moe n`` (the user's ``-ot`` given first)."""
    return apply(model, ngl, tensor_split, (*user_overrides, *cpu_moe_patterns(n)), devices)


def cpu_moe_placement(model: ModelDescription, devices: Sequence[str] = (), ngl: int = -1,
                      tensor_split: Sequence[float] | None = None,
                      user_overrides: Sequence[Override] = ()) -> Placement:
    """The placement of ``-ngl ngl [-ts ..] [-ot user..] --cpu-moe`` (the user's ``-ot`` given first)."""
    return apply(model, ngl, tensor_split, (*user_overrides, cpu_moe_pattern()), devices)


def smallest_n_cpu_moe(model: ModelDescription, fits: Callable[[Placement], bool], devices: Sequence[str] = (),
                       ngl: int = -1, tensor_split: Sequence[float] | None = None) -> int | None:
    """The smallest ``--n-cpu-moe`` whose placement ``fits`` (None if not even all blocks on the host fit).
    Moving more blocks' experts to the host only frees device memory, so the search is a bisection."""
    n_layer = model.hparams.n_layer

    def ok(n: int) -> bool:
        return fits(n_cpu_moe_placement(model, n, devices, ngl, tensor_split))

    if not ok(n_layer):
        return None
    lo, hi = 0, n_layer  # ok(hi) holds
    while lo < hi:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


# --- --fit (common/fit.cpp) ---------------------------------------------------------------------------------


class LayerFraction(IntEnum):
    """common/fit.cpp ``common_layer_fraction_t``: which part of a device's first partial layer overflows."""

    NONE = 0
    ATTN = 1  # attention stays; every ffn_(gate|up|gate_up|down)* tensor overflows
    UP = 2  # attention + up stay
    GATE = 3  # attention + up + gate stay
    MOE = 4  # everything but the sparse MoE weights stays


def fit_overflow_pattern(il: int, fraction: LayerFraction) -> str:
    """common/fit.cpp ``get_overflow_pattern``."""
    if fraction is LayerFraction.ATTN:
        return rf"blk\.{il}\.ffn_(gate|up|gate_up|down).*"
    if fraction is LayerFraction.UP:
        return rf"blk\.{il}\.ffn_(gate|gate_up|down).*"
    if fraction is LayerFraction.GATE:
        return rf"blk\.{il}\.ffn_down.*"
    if fraction is LayerFraction.MOE:
        return rf"blk\.{il}\.ffn_(up|down|gate_up|gate)_(ch|)exps"
    raise ValueError(fraction)


@dataclass(frozen=True)
class FitResult:
    """What ``--fit`` settles on: the arguments it sets and the placement they give."""

    ngl: int
    tensor_split: tuple[int, ...] | None
    overrides: tuple[Override, ...]
    placement: Placement
    changed: bool  # False when the default (everything on the GPUs) already fit
    use: Mapping[str, int]  # device_bytes of the final placement
    over_target: tuple[str, ...]  # devices left with less than their margin (fit.cpp does not re-check them all)


@dataclass
class _Ngl:
    n_layer: int = 0  # slots on this device
    n_part: int = 0  # of which partial (dense-only) layers, always the last ones of the device's run
    overflow: LayerFraction = LayerFraction.MOE

    @property
    def n_full(self) -> int:
        return self.n_layer - self.n_part


def _c_step(delta: int, num: int, den: int) -> int:
    """``uint32_t step_size = int64_t(delta) * num / den`` with C's truncating division and the unsigned wrap,
    then clamped to [1, delta - 1] as fit.cpp does."""
    if den == 0:
        step = delta - 1  # fit.cpp would divide by zero; only reachable when memory does not change with layers
    else:
        q = abs(delta * num) // abs(den)
        step = (q if (delta * num >= 0) == (den > 0) else -q) & 0xFFFFFFFF
    return min(max(step, 1), delta - 1)


def fit_placement(model: ModelDescription, devices: Sequence[str], free: Mapping[str, int],
                  device_bytes: Callable[[Placement], Mapping[str, int]],
                  margin: int | Mapping[str, int] = 1024 * MIB) -> FitResult:
    """llama.cpp's ``--fit`` (common/fit.cpp, ``common_params_fit_impl``), for a context the user set (moeplace
    always passes ``-c``, so fit's context-shrinking step is a no-op, as it is in llama.cpp with ``-c``).

    ``free`` is each GPU's free memory, ``device_bytes(placement)`` the projected use (model + KV + compute) of
    each device for a placement (what fit measures with a no_alloc dry run), ``margin`` what fit keeps free per
    device (``-fitt``, 1024 MiB by default). Host memory counts as unlimited, as in fit.cpp. Steps: if the
    default (every layer on the GPUs, split by free memory) leaves the margin, nothing changes; else all
    experts go to the host and dense-only layers fill the devices back to front by false position; if that
    leaves room (MoE models), dense-only layers become full layers front to back, and each device's first
    partial layer tries to overflow ``ffn_down``, then ``ffn_gate``+``ffn_down`` or all FFN tensors to the next
    device (the last device overflows to the host).

    fit.cpp's quirks are kept, because this is the baseline llama.cpp users actually get: a device's partial
    (dense-only) layers are the *last* ones of its run, so on the last device the output slot counts as a
    partial layer and the first slot of its run is a full layer; while converting layers for device ``id`` only
    ``id`` (and the device it overflows to) is re-checked. With leading dense blocks (DeepSeek) on several GPUs the
    last device's full slot moves from a dense block onto an expert block and can exceed its target:
    ``FitResult.over_target`` names such devices (llama.cpp would run out of memory there)."""
    devs = check_device_order(devices)
    nd = len(devs)
    hp_ngl = model.hparams.n_layer
    hp_nex = model.hparams.n_expert if model.is_moe else 0
    margins = [margin.get(d, 1024 * MIB) if isinstance(margin, Mapping) else int(margin) for d in devs]
    free_split = [float(free[d]) for d in devs]

    def used(p: Placement) -> list[int]:
        b = device_bytes(p)
        return [int(b.get(d, 0)) for d in devs]

    def result(ngl_: int, split_: tuple[int, ...] | None, tbo_: tuple[Override, ...], p: Placement,
               changed: bool) -> FitResult:
        use = device_bytes(p)
        over = tuple(d for i, d in enumerate(devs) if free[d] - int(use.get(d, 0)) < margins[i])
        return FitResult(ngl_, split_, tbo_, p, changed, dict(use), over)

    if nd == 0:
        return result(0, None, (), apply(model, 0), False)
    full = apply(model, -1, free_split, (), devs)
    mem_full = used(full)
    if all(free[d] - m >= margins[i] for i, (d, m) in enumerate(zip(devs, mem_full, strict=True))):
        return result(-1, None, (), full, False)

    def arguments(cfg: Sequence[_Ngl], overflow_bufts: Sequence[str]) -> tuple[int, tuple[int, ...] | None,
                                                                                tuple[Override, ...]]:
        # fit.cpp set_ngl_tensor_split_tbo
        ngl = sum(c.n_layer for c in cfg)
        split = tuple(c.n_layer for c in cfg) if nd > 1 else None
        il0 = hp_ngl + 1 - ngl
        tbo = []
        for i, c in enumerate(cfg):
            il0 += c.n_full
            for il in range(il0, il0 + c.n_part):
                first = il == il0
                tbo.append(Override(fit_overflow_pattern(il, c.overflow if first else LayerFraction.MOE),
                                    overflow_bufts[i] if first else HOST))
            il0 += c.n_part
        return ngl, split, tuple(tbo)

    def placement_of(cfg: Sequence[_Ngl], overflow_bufts: Sequence[str]) -> Placement:
        ngl, split, tbo = arguments(cfg, overflow_bufts)
        return apply(model, ngl, split if split and any(split) else free_split, tbo, devs)

    def memory(cfg: Sequence[_Ngl], overflow_bufts: Sequence[str]) -> list[int]:
        return used(placement_of(cfg, overflow_bufts))

    def copy(cfg: Sequence[_Ngl]) -> list[_Ngl]:
        return [replace(c) for c in cfg]

    global_surplus_cpu_moe = 0
    if hp_nex > 0:
        pattern_moe_all = Override(r"blk\.\d+\.ffn_(up|down|gate_up|gate)_(ch|)exps", HOST)  # fit.cpp
        cpu_moe = apply(model, -1, free_split, (pattern_moe_all,), devs)
        mem_cpu_moe = used(cpu_moe)
        global_surplus_cpu_moe = sum(free[d] - mem_cpu_moe[i] - margins[i] for i, d in enumerate(devs))

    targets = [free[d] - margins[i] for i, d in enumerate(devs)]
    overflow_bufts = [HOST] * nd
    ngl = [_Ngl() for _ in range(nd)]
    mem = memory(ngl, overflow_bufts)

    # step 3: fill dense(-only) layers back to front
    for id_ in reversed(range(nd)):
        n_unassigned = hp_ngl + 1 - sum(ngl[jd].n_layer for jd in range(id_ + 1, nd))
        high = copy(ngl)
        high[id_].n_layer = n_unassigned
        if hp_nex > 0:
            high[id_].n_part = high[id_].n_layer if id_ < nd - 1 else high[id_].n_layer - 1
        if high[id_].n_layer > 0:
            mem_high = memory(high, overflow_bufts)
            if mem_high[id_] > targets[id_]:
                delta = high[id_].n_layer - ngl[id_].n_layer
                while delta > 1:
                    step = _c_step(delta, targets[id_] - mem[id_], mem_high[id_] - mem[id_])
                    test = copy(ngl)
                    test[id_].n_layer += step
                    if hp_nex:
                        # the first layer is the output layer, which must always be full
                        test[id_].n_part += step - 1 if id_ == nd - 1 and test[id_].n_part == 0 else step
                    mem_test = memory(test, overflow_bufts)
                    if mem_test[id_] <= targets[id_]:
                        ngl, mem = test, mem_test
                    else:
                        high, mem_high = test, mem_test
                    delta = high[id_].n_layer - ngl[id_].n_layer
            else:
                ngl, mem = high, mem_high

    def final(cfg: Sequence[_Ngl], bufts: Sequence[str]) -> FitResult:
        n, split, tbo = arguments(cfg, bufts)
        return result(n, split, tbo, placement_of(cfg, bufts), True)

    if hp_nex == 0 or global_surplus_cpu_moe <= 0:
        return final(ngl, overflow_bufts)

    # step 4: convert dense-only layers to full layers front to back, overflowing to the next device
    id_dense_start = nd
    for id_ in reversed(range(nd)):
        if ngl[id_].n_layer > 0:
            id_dense_start = id_
            continue
        break
    id_ = 0
    while id_ <= id_dense_start < nd:
        high = copy(ngl)
        for jd in range(id_dense_start, nd):
            n_layer_move = high[jd].n_layer if jd < nd - 1 else high[jd].n_layer - 1
            high[id_].n_layer += n_layer_move
            high[jd].n_layer -= n_layer_move
            high[jd].n_part = 0
        id_dense_start_high = nd - 1
        mem_high = memory(high, overflow_bufts)
        if mem_high[id_] > targets[id_]:
            delta = high[id_].n_full - ngl[id_].n_full
            while delta > 1:
                step = _c_step(delta, targets[id_] - mem[id_], mem_high[id_] - mem[id_])
                test = copy(ngl)
                ids_test = id_dense_start
                converted = 0
                while ids_test < nd:
                    n_convert = min(step - converted, test[ids_test].n_part)
                    test[ids_test].n_layer -= n_convert
                    test[ids_test].n_part -= n_convert
                    test[id_].n_layer += n_convert
                    converted += n_convert
                    if test[ids_test].n_part > 0:
                        break
                    ids_test += 1
                mem_test = memory(test, overflow_bufts)
                if mem_test[id_] <= targets[id_]:
                    ngl, mem, id_dense_start = test, mem_test, ids_test
                else:
                    high, mem_high, id_dense_start_high = test, mem_test, ids_test
                delta = high[id_].n_full - ngl[id_].n_full
        else:
            ngl, mem, id_dense_start = high, mem_high, id_dense_start_high

        # try to fit at least part of one more layer (fit.cpp indexes past the end when every layer was
        # converted; that case, and a device without partial layers, are skipped here)
        if (id_dense_start < nd and ngl[id_dense_start].n_part > 0
                and ngl[id_dense_start].n_layer > (0 if id_ < nd - 1 else 1)):
            test = copy(ngl)
            ids_test = id_dense_start
            test[ids_test].n_layer -= 1
            test[ids_test].n_part -= 1
            test[id_].n_layer += 1
            test[id_].n_part += 1
            if test[ids_test].n_part == 0:
                ids_test += 1
            test[id_].overflow = LayerFraction.UP
            bufts_test = list(overflow_bufts)
            if id_ < nd - 1:
                bufts_test[id_] = devs[id_ + 1]
            mem_test = memory(test, bufts_test)

            def fits_(m: Sequence[int], i: int = id_) -> bool:
                return m[i] < targets[i] and (i + 1 == nd or m[i + 1] < targets[i + 1])

            if fits_(mem_test):
                ngl, overflow_bufts, mem, id_dense_start = copy(test), bufts_test, mem_test, ids_test
                test[id_].overflow = LayerFraction.GATE
                mem_test = memory(test, bufts_test)
                if fits_(mem_test):
                    ngl, overflow_bufts, mem, id_dense_start = copy(test), bufts_test, mem_test, ids_test
            else:
                test[id_].overflow = LayerFraction.ATTN
                mem_test = memory(test, bufts_test)
                if fits_(mem_test):
                    ngl, overflow_bufts, mem, id_dense_start = copy(test), bufts_test, mem_test, ids_test
        id_ += 1

    return final(ngl, overflow_bufts)

