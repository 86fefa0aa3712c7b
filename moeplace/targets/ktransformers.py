"""KTransformers (kt-kernel under SGLang) as a target: attention, dense layers, shared experts and the KV cache on
the GPU, routed experts on the CPU except, per layer, its hottest experts, placed one by one.

How kt-kernel picks GPU experts, read from kvcache-ai/sglang ``python/sglang/srt/layers/moe/kt_utils.py``
(``_init_kt_gpu_experts_masks``) and kt-kernel ``python/experts_base.py`` (``generate_gpu_experts_masks``):
``--kt-num-gpu-experts X`` means X per MoE layer, so ``N = X × (MoE layers)`` experts in all, and
``--kt-gpu-experts-ratio r`` (which wins when both are given) means ``N = int(all experts × r)``; with
``--kt-expert-placement-strategy frequency`` and ``--init-expert-location FILE.pt`` it loads
``logical_count`` (shape ``[buffer, layers, experts]``, summed over the first axis) and puts the N experts with the
largest counts *over the whole model* on the GPU (``torch.topk`` of the flattened table). Dense layers keep
everything on the GPU.

moeplace decides the per-layer counts itself, as a multiple-choice knapsack over the GPU memory left after
everything else (:mod:`moeplace.targets.expert_knapsack`; the value of an expert is the decode time per token it
saves, its routing probability times its bytes times the difference of the devices' seconds per byte), and writes
a count table whose global top N is exactly that placement: planned experts score 2 + p/p_max, the others p/p_max.
So the file encodes the plan, not raw counts; ``kt-placement.json`` lists the experts and their probabilities.

The file kt-kernel reads is a torch ``.pt`` pickle. moeplace does not depend on torch, so it writes the table into
``kt-placement.json`` (``logical_count``, nested lists) and the launch script converts it with the torch that
SGLang already needs, one ``torch.save`` call, before starting the server. N goes in as
``--kt-num-gpu-experts N/L`` when the L MoE layers divide it, else as a ratio checked to give exactly N under
SGLang's ``int(total * ratio)``.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from moeplace.memory import RunConfig, gpu_fits, memory_by_device
from moeplace.model import ModelDescription, Role
from moeplace.targets.base import Baseline, BaselineContext, Emission, Granularity, LayerOrder, TargetError
from moeplace.targets.builds import EngineBuild
from moeplace.targets.expert_knapsack import fill, solve_cp_sat, solve_dp, units
from moeplace.targets.llamacpp_baselines import cpu_moe_placement
from moeplace.targets.llamacpp_rules import apply

if TYPE_CHECKING:
    from moeplace.emit.args import RunSettings
    from moeplace.planner import Plan

PLACEMENT_FILE = "kt-placement.json"
SCRIPT = "kt-server.sh"


@dataclass(frozen=True)
class ExpertPlan:
    """Per MoE block: the experts on the GPU (hottest first); the table kt-kernel reads; the predicted speeds."""

    layers: tuple[int, ...]  # MoE blocks, in order
    gpu_experts: Mapping[int, tuple[int, ...]]
    flag: tuple[str, str]  # ("--kt-num-gpu-experts", "X") or ("--kt-gpu-experts-ratio", "r")
    n_layers_table: int  # rows of the table: blocks without NextN (SGLang's num_hidden_layers)
    n_expert: int
    table: np.ndarray  # [1, n_layers_table, n_expert] float32
    probs: Mapping[int, np.ndarray]
    budget: int
    used: int
    decode_tps: float  # interpolated between the all-CPU-experts and all-GPU estimates (see plan_experts)
    cpu_only_tps: float
    uniform_tps: float  # kt-kernel's uniform strategy with the same N
    uniform_bytes: int  # what that strategy puts on the GPU (it does not look at sizes)

    @property
    def total(self) -> int:
        return sum(len(v) for v in self.gpu_experts.values())


def kt_masks(table: np.ndarray, num_gpu_experts: int) -> np.ndarray:
    """kt-kernel's ``generate_gpu_experts_masks``: the ``num_gpu_experts`` largest entries of the table summed over
    its first axis, over the whole model. Raises if a tie at the cut would make torch.topk's choice arbitrary."""
    freq = table.sum(axis=0).astype(np.float64)
    flat = freq.ravel()
    mask = np.zeros(flat.size, dtype=bool)
    if num_gpu_experts > 0:
        order = np.argsort(-flat, kind="stable")
        if num_gpu_experts < flat.size and flat[order[num_gpu_experts - 1]] == flat[order[num_gpu_experts]]:
            raise ValueError("a tie at the top-N cut: the selection would depend on torch.topk's order")
        mask[order[:num_gpu_experts]] = True
    return mask.reshape(freq.shape)


def _expert_bytes(model: ModelDescription) -> dict[int, int]:
    out: dict[int, int] = {}
    for t in model.loaded_tensors:
        if t.role is Role.ROUTED_EXPERT and t.block is not None:
            out[t.block] = out.get(t.block, 0) + t.nbytes
    return {b: n // model.hparams.n_expert for b, n in out.items()}


def plan_experts(plan: Plan, solver: str = "dp") -> ExpertPlan:
    """The per-layer GPU expert counts for ``plan``'s model, hardware, context and routing profile."""
    model = plan.model
    gpus = [n for n, d in plan.devices.items() if not d.is_host]
    if len(gpus) != 1 or not model.is_moe:
        raise TargetError("KTransformers plans here need one GPU and an MoE model")
    gpu, host = plan.devices[gpus[0]], next(d for d in plan.devices.values() if d.is_host)
    base = cpu_moe_placement(model, gpus, -1)
    fit = gpu_fits(memory_by_device(model, base, plan.cfg, plan.devices), plan.devices, plan.margin)[gpu.name]
    budget = fit.free
    if budget < 0:
        raise TargetError(f"attention, dense layers and the KV cache alone overfill {gpu.name} by "
                          f"{-budget} bytes: lower -c or use -ctk/-ctv q8_0")
    per_expert = _expert_bytes(model)
    first_nextn = model.hparams.n_layer - model.hparams.nextn_layers
    layers = tuple(sorted(b for b in per_expert if b < first_nextn))
    n_exp, n_used = model.hparams.n_expert, model.hparams.n_expert_used
    probs = {b: np.asarray(plan.profile[b], dtype=np.float64) if plan.profile and b in plan.profile
             else np.full(n_exp, n_used / n_exp) for b in layers}
    gain = 1.0 / host.effective_bandwidth - 1.0 / gpu.effective_bandwidth  # seconds per byte saved
    order = {b: np.argsort(-probs[b], kind="stable") for b in layers}
    values = [probs[b][order[b]] * per_expert[b] * gain for b in layers]
    weights, capacity, _unit = units([per_expert[b] for b in layers], budget)
    if solver == "cp-sat":
        scale = 1e6 / max(max((float(v[0]) for v in values if len(v)), default=1.0), 1e-30)
        sol = solve_cp_sat(values, weights, capacity, value_scale=scale)
    else:
        sol = solve_dp(values, weights, capacity)
    sizes = [per_expert[b] for b in layers]
    counts = list(fill(values, sizes, budget, sol.counts))
    chosen = {b: tuple(int(e) for e in order[b][:k]) for b, k in zip(layers, counts)}
    n_rows = model.hparams.n_layer - model.hparams.nextn_layers
    table = np.zeros((1, n_rows, n_exp), dtype=np.float32)
    for b in layers:
        p = probs[b] / max(float(np.max(probs[b])), 1e-30)
        row = p.copy()
        row[list(chosen[b])] += 2.0
        table[0, b] = row
    # Decode time: the full estimate of the two placements llama.cpp's rules can state (every routed expert on the
    # CPU; everything on the GPU), interpolated by the share of the routed-expert read time moved to the GPU.
    t_cpu = plan.score(base, "all experts on the CPU").estimate.decode.seconds
    t_gpu = plan.score(apply(model, -1, None, (), gpus), "everything on the GPU").estimate.decode.seconds
    total_value = sum(float(np.sum(v)) for v in values)

    def seconds(saved: float) -> float:
        return t_gpu + (t_cpu - t_gpu) * (1.0 - saved / total_value) if total_value > 0 else t_cpu

    saved = sum(float(np.sum(v[:k])) for v, k in zip(values, counts))
    flag = count_flag(sum(counts), len(layers), n_exp)
    # kt-kernel's uniform strategy with the same N: N // L experts a layer, one more in the first N % L layers,
    # the first expert *indices* of each (generate_uniform_masks: masks[l, :k] = True)
    n_total = sum(counts)
    even = [n_total // len(layers) + (i < n_total % len(layers)) for i in range(len(layers))]
    uniform = sum(float(np.sum(probs[b][:k])) * per_expert[b] * gain for b, k in zip(layers, even))
    used = sum(k * per_expert[b] for b, k in zip(layers, counts))
    return ExpertPlan(layers, chosen, flag, n_rows, n_exp, table, probs, budget, used,
                      1.0 / seconds(saved), 1.0 / t_cpu, 1.0 / seconds(uniform),
                      sum(k * per_expert[b] for b, k in zip(layers, even)))


def count_flag(n: int, n_moe_layers: int, n_expert: int) -> tuple[str, str]:
    """The SGLang flag that makes kt-kernel place exactly ``n`` experts in all (see the module docstring)."""
    if n % n_moe_layers == 0:
        return "--kt-num-gpu-experts", str(n // n_moe_layers)
    total = n_moe_layers * n_expert
    ratio = (n + 0.5) / total
    if int(total * ratio) != n:  # SGLang's own expression; cannot miss with half an expert of slack, but check
        raise TargetError(f"no ratio gives {n} of {total} experts")
    return "--kt-gpu-experts-ratio", repr(ratio)


def num_gpu_experts(flag: tuple[str, str], n_moe_layers: int, n_expert: int) -> int:
    """What SGLang computes from the flag (kt_utils.py, ``_init_kt_gpu_experts_masks``)."""
    name, value = flag
    if name == "--kt-gpu-experts-ratio":
        return int(n_moe_layers * n_expert * float(value))
    return int(value) * n_moe_layers


class KTransformers:
    name = "ktransformers"
    granularity = Granularity.EXPERT
    layer_order = LayerOrder.CONTIGUOUS_RUNS  # every layer's attention on the one GPU: a single run
    buffer_names = "one CUDA GPU (SGLang device 0) and the CPU"
    tunes_run_settings = False
    expert_cache = False
    launch_scripts = False
    binaries: tuple[str, ...] = ()

    def default_build(self) -> EngineBuild:
        return EngineBuild(self.name, "SGLang with kt-kernel (kvcache-ai/sglang)",
                           frozenset({"--kt-num-gpu-experts", "--kt-gpu-experts-ratio",
                                      "--kt-expert-placement-strategy", "--init-expert-location", "--kt-weight-path"}),
                           "flags of kvcache-ai/sglang server_args and kt_utils.py")

    def check(self, model: ModelDescription, cfg: RunConfig, devices: Sequence[str]) -> None:
        if not model.is_moe:
            raise TargetError(f"{model.name} has no experts: KTransformers places routed experts")
        if len(devices) != 1:
            raise TargetError("moeplace plans KTransformers on one GPU: give one --vram/--gpu")

    def baselines(self, ctx: BaselineContext) -> list[Baseline]:
        return []  # kt-kernel's own strategies are compared in the emission (they place single experts)

    def emit(self, plan: Plan, settings: RunSettings, build: EngineBuild, out_dir: Path | None = None) -> Emission:
        ep = plan_experts(plan)
        mask = kt_masks(ep.table, num_gpu_experts(ep.flag, len(ep.layers), ep.n_expert))
        for b in ep.layers:  # the replay: kt-kernel's selection is the planned one, layer by layer
            if set(np.flatnonzero(mask[b]).tolist()) != set(ep.gpu_experts[b]):
                raise TargetError(f"internal: kt-kernel's top-N would not reproduce block {b}'s planned experts")
        here = '"$(dirname "$0")"'
        convert = ("import json, sys, torch; t = json.load(open(sys.argv[1]))['logical_count']; "
                   "torch.save({'logical_count': torch.tensor(t, dtype=torch.float32)}, sys.argv[2])")
        args = [*ep.flag, "--kt-expert-placement-strategy", "frequency",
                "--context-length", str(plan.estimate.context.n_ctx)]
        script = "\n".join([
            "#!/bin/sh",
            f"# Generated by moeplace for {plan.model.name}: {ep.total} routed experts on the GPU "
            f"({ep.total / len(ep.layers):.1f} per MoE layer on average, placed by frequency).",
            "# kt-kernel reads a torch .pt: moeplace writes the table as JSON and converts it with SGLang's torch.",
            "set -eu",
            ': "${KT_MODEL_PATH:?set KT_MODEL_PATH to the model\'s Hugging Face folder}"',
            ': "${KT_WEIGHT_PATH:=$KT_MODEL_PATH}"',
            f"dir={here}",
            f"python -c {shlex.quote(convert)} \"$dir/{PLACEMENT_FILE}\" \"$dir/expert-location.pt\"",
            'exec python -m sglang.launch_server --model-path "$KT_MODEL_PATH" --kt-weight-path "$KT_WEIGHT_PATH" \\',
            "  " + " ".join(shlex.quote(a) for a in args) + ' --init-expert-location "$dir/expert-location.pt" "$@"',
        ]) + "\n"
        placement = {"generator": "Generated by moeplace", "schema": "moeplace.kt-placement/1",
                     "count_flag": list(ep.flag), "total": ep.total,
                     "budget_bytes": ep.budget, "expert_bytes_on_gpu": ep.used,
                     "layers": {str(b): {"gpu_experts": list(ep.gpu_experts[b]),
                                         "probabilities": [round(float(x), 6) for x in ep.probs[b]]}
                                for b in ep.layers},
                     "predicted_decode_tokens_per_second": {"plan": ep.decode_tps, "uniform": ep.uniform_tps,
                                                            "all_experts_on_cpu": ep.cpu_only_tps},
                     "uniform_strategy_bytes": ep.uniform_bytes,
                     # what kt-kernel reads (as a .pt): [buffer = 1, layers, experts], planned experts first
                     "logical_count": ep.table.tolist()}
        files: dict[str, str | bytes] = {SCRIPT: script, PLACEMENT_FILE: json.dumps(placement) + "\n"}
        notes = (f"kt-kernel: {ep.total} experts on the GPU ({ep.used / 2**30:.2f} GiB of {ep.budget / 2**30:.2f} GiB "
                 f"left after attention, KV and compute); predicted {ep.decode_tps:.1f} tok/s decode against "
                 f"{ep.uniform_tps:.1f} for kt-kernel's uniform strategy ({ep.uniform_bytes / 2**30:.2f} GiB"
                 f"{', over the budget' if ep.uniform_bytes > ep.budget else ''}) and {ep.cpu_only_tps:.1f} with every "
                 "expert on the CPU (batch 1, the estimate interpolated by the share of expert reads on the GPU; "
                 "CPU and GPU experts taken to run one after the other); the table above is the llama.cpp plan",
                 "without --profile every expert is equally likely, and the plan is an even spread")
        command = f"KT_MODEL_PATH=/path/to/hf-model sh {Path(out_dir or '.').resolve() / SCRIPT}"
        doc: dict[str, Any] = {"count_flag": list(ep.flag), "total": ep.total, "decode_tps": ep.decode_tps}
        return Emission(self.name, command, files, None, notes if plan.profile is None else notes[:1], doc)


TARGET = KTransformers()
