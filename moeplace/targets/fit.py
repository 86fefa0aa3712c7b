"""llama.cpp's ``--fit`` (``common/fit.cpp``, ``common_params_fit_impl``), ported step by step.

Mirrors ggml-org/llama.cpp@0c1e57098 (the revision llama-cpp-python 0.3.36 vendors). The steps keep fit.cpp's
numbering: step 1 checks whether the defaults already fit; step 2 (shrinking the context) is a no-op because
moeplace always passes ``-c``; step 3 fills dense-only layers back to front by false position; step 4 converts
dense-only layers to full layers front to back, each device's first partial layer overflowing ``ffn_down``,
``ffn_gate``+``ffn_down`` or every FFN tensor to the next device. Its results are compared with llama.cpp's own
only through this port; a ``llama-fit-params`` binary would be the oracle.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import IntEnum

from moeplace.model import ModelDescription
from moeplace.placement import HOST, Placement
from moeplace.sizes import MIB
from moeplace.targets.llamacpp_rules import Override, apply, check_device_order


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
    # step 1: the defaults (every layer on the GPUs, split by free memory) may already leave the margins
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

    # step 2 (reduce the context) does nothing: moeplace always sets -c, and fit.cpp then keeps it
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
