"""The nearest configuration for engines that place whole layers by count (Ollama's ``num_gpu``, LM Studio's GPU
offload) and, where they can, keep the experts of the first N blocks on the CPU (LM Studio's MoE-on-CPU setting,
llama.cpp's ``--n-cpu-moe``).

Both engines run llama.cpp underneath, so a configuration places tensors by mainline rules
(:func:`moeplace.targets.llamacpp_rules.apply`): the last ``k`` layer slots on the GPU, and with ``n`` CPU-expert
layers the routed experts of blocks ``0..n-1`` on the host. The search keeps what such engines' users would
do: offload every layer and raise ``n`` until it fits (bisection, memory only falls as ``n`` grows); if even
``n = n_layer`` does not fit, lower ``k`` with every expert on the host. The configuration is scored with the
same estimate as the plan (:meth:`moeplace.planner.Plan.score`), so the two speeds compare like for like.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from moeplace.memory import gpu_fits, memory_by_device
from moeplace.placement import Placement
from moeplace.ranges import first_true
from moeplace.targets.base import TargetError
from moeplace.targets.llamacpp_rules import apply, cpu_moe_patterns

if TYPE_CHECKING:
    from moeplace.planner import Candidate, Plan


@dataclass(frozen=True)
class LayerConfig:
    """``k`` layer slots on the GPU (of ``n_slots`` = blocks + output) and the first ``n`` blocks' experts on the
    CPU, with the placement llama.cpp makes of it and its predicted cost."""

    k: int
    n: int
    n_slots: int
    placement: Placement
    candidate: Candidate


def placement_of(plan: Plan, gpu: str, k: int, n: int) -> Placement:
    """What llama.cpp does with ``-ngl k --n-cpu-moe n`` on one GPU."""
    return apply(plan.model, k, None, cpu_moe_patterns(n), (gpu,))


def nearest(plan: Plan, expert_layers: bool, label: Callable[[int, int], str]) -> LayerConfig:
    """The fastest-to-find fitting configuration as described in the module docstring. ``expert_layers`` False
    (Ollama) allows only ``n = 0``."""
    gpus = [n for n, d in plan.devices.items() if not d.is_host]
    if len(gpus) != 1:
        raise TargetError(f"this engine splits layers between {len(gpus)} GPUs by its own rules, which moeplace "
                          "does not model: plan for one GPU")
    gpu = gpus[0]
    model = plan.model
    n_layer = model.hparams.n_layer
    n_slots = n_layer + 1

    def fits(p: Placement) -> bool:
        mem = memory_by_device(model, p, plan.cfg, plan.devices)
        return all(f.fits for f in gpu_fits(mem, plan.devices, plan.margin).values())

    k, n = n_slots, None
    if expert_layers and model.is_moe:
        n = first_true(lambda x: fits(placement_of(plan, gpu, n_slots, x)), 0, n_layer)
    elif fits(placement_of(plan, gpu, n_slots, 0)):
        n = 0
    if n is None:
        n = n_layer if expert_layers and model.is_moe else 0
        # fewer GPU layers: the largest k that fits, i.e. the fewest slots x taken off (memory rises with k)
        x = first_true(lambda x: fits(placement_of(plan, gpu, n_slots - x, n)), 0, n_slots)
        k = 0 if x is None else n_slots - x
    p = placement_of(plan, gpu, k, n)
    return LayerConfig(k, n, n_slots, p, plan.score(p, label(k, n)))


def exact_ratio(count: int, total: int) -> float:
    """A float ``r`` for ``count / total`` that an engine storing a layer count as a ratio turns back into
    ``count``: ``r * total == count`` exactly where binary64 has such an ``r``; otherwise (3/47 has none: products
    of neighbouring floats step over 3.0) the smallest ``r`` with ``r * total`` above ``count``, so truncation and
    rounding both give ``count`` (a ceiling would give one more)."""
    if total <= 0 or not 0 <= count <= total:
        raise ValueError(f"bad ratio {count}/{total}")
    r = count / total
    while r * total < count:
        r = math.nextafter(r, 2.0)
    while r > 0 and math.nextafter(r, -1.0) * total >= count:
        r = math.nextafter(r, -1.0)
    return r
