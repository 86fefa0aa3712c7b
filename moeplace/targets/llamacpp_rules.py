"""Mainline llama.cpp's placement semantics: what ``-ngl``, ``-ts``, ``-ot``, ``--cpu-moe`` and ``--n-cpu-moe`` do.

Compact patterns that reproduce a plan are :mod:`moeplace.targets.patterns`; the baselines llama.cpp gives by
itself are :mod:`moeplace.targets.llamacpp_baselines` and :mod:`moeplace.targets.fit`.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from moeplace.errors import MoeplaceError
from moeplace.model import ModelDescription
from moeplace.placement import HOST, Placement, default_tensor_device

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


def compile_overrides(overrides: Sequence[Override]) -> list[tuple[re.Pattern[str], str]]:
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
    return place_tensors(model, tuple(layer_devs), output_device, overrides)


def place_tensors(model: ModelDescription, layer_devs: tuple[str, ...], output_device: str,
                  overrides: Sequence[Override]) -> Placement:
    """Every loaded tensor on the buffer of the first override whose pattern searches into its name, else on its
    layer's device: the matching rule llama.cpp and ik_llama.cpp share, given their layer devices."""
    compiled = compile_overrides(overrides)
    tensor_devices: dict[str, str] = {}
    for t in model.tensors:
        if not t.loaded:
            continue
        buffer = next((b for rx, b in compiled if rx.search(t.name)), None)
        tensor_devices[t.name] = buffer or default_tensor_device(t, layer_devs, output_device)
    return Placement(layer_devs, output_device, tensor_devices)



# --- from a placement to -ngl / -ts ---------------------------------------------------------------------------


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



@dataclass(frozen=True)
class LayerRules:
    """An engine's layer rules, as pattern compaction and verification need them: how a set of layer arguments
    and overrides places a model (``apply``), and which layer arguments reproduce a placement's layer layout
    (``layer_arguments``, raising :class:`NotExpressible` where the engine cannot). Forks of llama.cpp differ
    here (ik_llama.cpp counts ``-ngl`` without the output slot) while sharing the ``-ot`` first-match rule."""

    name: str
    apply: Callable[..., Placement]
    layer_arguments: Callable[[Placement, Sequence[str]], tuple[int, tuple[int, ...] | None]]


MAINLINE = LayerRules("llama.cpp", apply, layer_arguments)
