"""What-if planning without the file or the hardware: another quant of the same model, other hardware, and the
least VRAM that reaches a speed.

* :func:`as_quant` re-types every tensor of a model with llama-quantize's ``llama_tensor_get_type`` rules (the
  port in :mod:`moeplace.testing`, the one copy of those rules) and recomputes its bytes: a projection of the
  file llama-quantize would write from the 16-bit model, not a file.
* :func:`compare` plans the same model on several hardware variants.
* :func:`least_vram` bisects the first GPU's memory with the exact solver (each step is a full DP plan) for the
  smallest size whose plan reaches a decode speed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from gguf import LlamaFileType

from moeplace.errors import MoeplaceError
from moeplace.gguf_file import tensor_nbytes
from moeplace.hardware import Device
from moeplace.memory import RunConfig
from moeplace.model import ModelDescription
from moeplace.placement import HOST
from moeplace.planner import Plan, PlanError, Workload, plan

# The file types whose rules moeplace.testing ports; the rest of llama-quantize's table is not ported yet.
PORTED = ("Q4_0", "Q4_K_M", "Q8_0", "MXFP4_MOE", "F16", "BF16")


def as_quant(model: ModelDescription, quant: str) -> ModelDescription:
    """The model as llama-quantize would type it for ``quant`` (a llama.cpp file type such as Q4_K_M)."""
    from moeplace.testing import ModelSpec
    from moeplace.testing.quant import assign_types  # the port of llama_tensor_get_type

    key = quant.upper().removeprefix("MOSTLY_")
    if key not in PORTED:
        raise MoeplaceError(f"--as-quant {quant}: moeplace ports llama-quantize's rules for {', '.join(PORTED)} "
                            "only; pick one of those")
    ftype = LlamaFileType[f"MOSTLY_{key}"]
    hp = model.hparams
    spec = ModelSpec(name=model.name, arch=hp.arch, n_layer=hp.n_layer, n_embd=hp.n_embd, n_head=hp.n_head,
                     n_head_kv=max(hp.n_head_kv, default=0), head_dim=hp.head_dim_k, n_ff=hp.n_ff,
                     n_vocab=hp.n_vocab, n_ctx=hp.n_ctx_train, ftype=ftype, n_expert=hp.n_expert)
    raw = [(t.name, t.shape, t.role.value) for t in model.tensors]
    types = assign_types(spec, raw)
    tensors = [replace(t, ggml_type=qt.name, nbytes=tensor_nbytes(t.shape, qt)) for t, qt in zip(model.tensors, types)]
    return replace(model, tensors=tuple(tensors), file_type=ftype.name,
                   file_size=model.file_size - sum(t.nbytes for t in model.tensors) + sum(t.nbytes for t in tensors))


@dataclass(frozen=True)
class Outcome:
    """One hardware variant's plan, or why there is none."""

    label: str
    devices: Mapping[str, Device]
    plan: Plan | None
    problem: str = ""

    @property
    def decode_tps(self) -> float:
        return self.plan.chosen.decode_tps if self.plan and self.plan.chosen.fits else 0.0


def compare(model: ModelDescription, variants: Sequence[tuple[str, Mapping[str, Device]]],
            config: Callable[[Mapping[str, Device]], RunConfig], *, workload: Workload, margin: int) -> list[Outcome]:
    """The plan on each (label, devices) variant; ``config`` gives the run config for a device set."""
    out = []
    for label, devices in variants:
        try:
            out.append(Outcome(label, devices, plan(model, devices, config(devices), workload=workload,
                                                    margin=margin, with_baselines=False)))
        except MoeplaceError as e:
            out.append(Outcome(label, devices, None, str(e)))
    return out


def with_gpu_memory(devices: Mapping[str, Device], memory: int) -> dict[str, Device]:
    """The devices with the first GPU's memory set to ``memory`` (same bandwidth and compute)."""
    gpu = next((n for n in devices if n != HOST), None)
    if gpu is None:
        raise MoeplaceError("--target-tps varies the first GPU's memory: give a GPU (--gpu/--vram)")
    return {n: replace(d, memory=memory) if n == gpu else d for n, d in devices.items()}


@dataclass(frozen=True)
class Target:
    """The least memory of the first GPU whose plan decodes at ``tps`` or faster (None if no size does)."""

    tps: float
    memory: int | None
    plan: Plan | None
    ceiling: float  # the speed with the whole model on that GPU: no VRAM does better
    steps: int


STEP = 1 << 28  # bisection resolution: 256 MiB, finer than any card's size steps


def least_vram(model: ModelDescription, devices: Mapping[str, Device], config: Callable[[Mapping[str, Device]],
               RunConfig], tps: float, *, workload: Workload, margin: int) -> Target:
    """Bisects the first GPU's memory (in 256 MiB steps) for the least that reaches ``tps`` decode tokens/s.

    Each probe is an exact DP plan; the bisection assumes more memory never plans slower, which holds for the
    solver's optimum (a larger budget admits every smaller one's placement)."""

    def probe(memory: int) -> Plan | None:
        devs = with_gpu_memory(devices, memory)
        try:
            p = plan(model, devs, config(devs), workload=workload, margin=margin, with_baselines=False)
        except PlanError:
            return None
        return p if p.chosen.fits else None

    # Enough for every weight, the KV cache and buffers: the fastest this GPU can make the model.
    hi = -(-(model.file_size * 5 // 4 + (8 << 30)) // STEP) * STEP
    top = probe(hi)
    steps = 1
    ceiling = top.chosen.decode_tps if top else 0.0
    if top is None or ceiling < tps:
        return Target(tps, None, None, ceiling, steps)
    lo, best = 0, top
    while hi - lo > STEP:
        mid = (lo + hi) // 2 // STEP * STEP
        p = probe(mid)
        steps += 1
        if p is not None and p.chosen.decode_tps >= tps:
            hi, best = mid, p
        else:
            lo = mid
    return Target(tps, hi, best, ceiling, steps)
