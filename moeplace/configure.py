"""The run configuration chosen with the placement: ``-ub``/``-b``, the KV cache type, slots for batch workloads and
pinned host memory, each planned in full (a larger ubatch grows the compute buffer and takes VRAM from experts) and
compared for the workload; settings the user gave stay as given."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from moeplace.errors import MoeplaceError
from moeplace.hardware import Device
from moeplace.memory import (
    MIB,
    RunConfig,
    context_shape,
    default_margin,
    validate,
)
from moeplace.model import ModelDescription
from moeplace.pins import Pin
from moeplace.placement import HOST
from moeplace.planner import WORKLOADS, Budget, Plan, PlanError, Workload, plan, score_placement
from moeplace.sizes import format_size
from moeplace.speed import PAGEABLE_COPY_FACTOR, ExpertProbs
from moeplace.targets.base import Target

# Physical batch sizes tried when -ub is not given: llama.cpp's default 512, and powers of two around it. Below 32
# tokens op offload stops; above 8192 the compute buffer (logits of every token) outgrows a desktop GPU's memory.
UBATCH_LADDER = (256, 512, 1024, 2048, 4096, 8192)
# A quantized KV cache costs accuracy the speed model does not see: moeplace picks q8_0 over f16 only when it is
# predicted at least this much faster for the workload.
KV_QUANT_MIN_GAIN = 0.10
# Configurations within this much of the fastest are ties, settled for the one nearest llama.cpp's defaults.
CONFIG_TIE = 0.01
# Settings the search may choose, under RunConfig's field names (the CLI passes those the user gave as pinned).
CONFIG_FIELDS = ("n_ubatch", "n_batch", "type_k", "type_v", "n_seq_max", "kv_unified", "no_mmap")


@dataclass(frozen=True)
class ConfigChoice:
    """The plan of the chosen run configuration, every configuration tried (fastest first), and why it won."""

    plan: Plan
    trade: tuple[Plan, ...]
    why: tuple[str, ...]
    pinned: frozenset[str]


def _distance_from_defaults(cfg: RunConfig) -> tuple[int, int]:
    default = RunConfig()
    return (int(cfg.type_k != default.type_k or cfg.type_v != default.type_v),
            abs(cfg.n_ubatch.bit_length() - default.n_ubatch.bit_length()))


def choose_config(model: ModelDescription, devices: Mapping[str, Device], cfg: RunConfig, *,
                  pinned: Sequence[str] = (), workload: Workload = WORKLOADS["chat"], margin: int | None = None,
                  pins: Sequence[Pin] = (), profile: ExpertProbs | None = None, solver: str = "dp",
                  time_limit: float = 10.0, target: Target | None = None,
                  with_baselines: bool = True) -> ConfigChoice:
    """The run configuration chosen with the placement: every setting of :data:`CONFIG_FIELDS` not in ``pinned``
    is chosen for ``workload``, each candidate planned in full (a larger ``-ub`` grows the compute buffers, which
    leaves the solver less VRAM for experts), and the fastest predicted one that fits wins.

    * ``-ub``/``-b``: each of :data:`UBATCH_LADDER` up to the context; ``-b`` at least ``-ub``;
    * ``-ctk/-ctv``: f16, or q8_0 when it is :data:`KV_QUANT_MIN_GAIN` faster;
    * ``-np``/``-kvu``: a batch workload's sequences get one slot each, sharing one KV buffer;
    * ``--no-mmap``: host weights in pinned memory (faster op-offload copies) wherever the host's share fits in
      RAM without paging, and there is a GPU to copy to."""
    fixed = frozenset(pinned)
    margin = default_margin(devices, margin)
    unknown = fixed - set(CONFIG_FIELDS)
    if unknown:
        raise PlanError(f"unknown run settings {', '.join(sorted(unknown))}: use {', '.join(CONFIG_FIELDS)}")
    has_gpu = any(not d.is_host for d in devices.values())
    base = cfg
    if workload.batch > 1 and "n_seq_max" not in fixed:
        base = base.with_(n_seq_max=workload.batch, kv_unified=True if "kv_unified" not in fixed else base.kv_unified)
    if "no_mmap" not in fixed:
        base = base.with_(no_mmap=has_gpu and model.is_moe)
    n_ctx = context_shape(model, base).n_ctx
    if "n_ubatch" in fixed:
        ubs = [base.n_ubatch]
    else:
        limit = base.n_batch if "n_batch" in fixed else max(n_ctx, UBATCH_LADDER[0])
        ubs = [u for u in UBATCH_LADDER if u <= limit] or [min(base.n_ubatch, limit)]
    kvs = [(base.type_k, base.type_v)]
    if not fixed & {"type_k", "type_v"}:
        kvs = [("f16", "f16"), ("q8_0", "q8_0")]
    budget = Budget(time_limit)  # CP-SAT's, shared by every configuration
    candidates = [(ub, tk, tv) for ub in ubs for tk, tv in kvs]

    def run(c: RunConfig, plans_left: int = 1) -> Plan:
        return plan(model, devices, c, workload=workload, margin=margin, pins=pins, profile=profile, solver=solver,
                    time_limit=budget.share(plans_left), target=target, with_baselines=with_baselines)

    tried: list[Plan] = []
    errors: list[str] = []
    for i, (ub, tk, tv) in enumerate(candidates):
        c = base.with_(n_ubatch=ub, n_batch=base.n_batch if "n_batch" in fixed else max(RunConfig().n_batch, ub),
                       type_k=tk, type_v=tv)
        try:
            validate(model, c)
            p = run(c, len(candidates) - i)
            if c.no_mmap and not p.estimate.host.fits:  # pinned memory cannot be paged: keep mmap here
                p = run(c.with_(no_mmap=False), len(candidates) - i)
        except MoeplaceError as e:
            errors.append(str(e))
            continue
        tried.append(p)
    if not tried:
        raise PlanError(errors[0] if errors else "no run configuration could be planned")
    fitting = [p for p in tried if p.chosen.fits] or tried
    f16 = [p for p in fitting if p.cfg.type_k in ("f16", "bf16", "f32") and p.cfg.type_v in ("f16", "bf16", "f32")]
    best_f16 = min((p.chosen.seconds for p in f16), default=float("inf"))
    eligible = [p for p in fitting if p in f16 or "type_k" in fixed or "type_v" in fixed
                or p.chosen.seconds <= best_f16 * (1 - KV_QUANT_MIN_GAIN)] or fitting
    fastest = min(p.chosen.seconds for p in eligible)
    winner = min((p for p in eligible if p.chosen.seconds <= fastest * (1 + CONFIG_TIE)),
                 key=lambda p: (_distance_from_defaults(p.cfg), p.chosen.seconds))
    if winner.cfg.no_mmap and "no_mmap" not in fixed:
        # Pinned memory only pays where experts are copied to a GPU: without a gain, keep llama.cpp's mmap (it
        # loads faster and lets the kernel drop pages).
        mapped = run(winner.cfg.with_(no_mmap=False))
        if mapped.chosen.fits and mapped.chosen.seconds <= winner.chosen.seconds * (1 + CONFIG_TIE):
            tried[tried.index(winner)] = winner = mapped
    trade = tuple(sorted(tried, key=lambda p: p.chosen.seconds))
    return ConfigChoice(winner, trade, tuple(_why(model, devices, winner, tried, workload, fixed, best_f16,
                                                  margin, profile)), fixed)


def _why(model: ModelDescription, devices: Mapping[str, Device], win: Plan, tried: Sequence[Plan],
         workload: Workload, fixed: frozenset[str], best_f16: float, margin: int,
         profile: ExpertProbs | None) -> list[str]:
    """Why the winner won, in the speed model's own terms, against llama.cpp's defaults (-ub 512, f16 KV)."""
    out = []
    c = win.cfg
    ref = next((p for p in tried if p.cfg.n_ubatch == RunConfig().n_ubatch and p.cfg.type_k == c.type_k
                and p.cfg.type_v == c.type_v), None)
    per = f"{workload.prompt_per_generated:g} prompt tokens per generated token ({workload.name})"
    if "n_ubatch" not in fixed and ref is not None and ref is not win:
        a, b = ref.estimate.prefill, win.estimate.prefill
        gpu = next((n for n, d in devices.items() if not d.is_host), None)
        line = (f"-ub {c.n_ubatch}: prompt {b.tokens_per_second:.0f} tok/s against {a.tokens_per_second:.0f} at -ub "
                f"{ref.cfg.n_ubatch}")
        if gpu and a.transfer_bytes and b.transfer_bytes:
            line += (f" (experts in RAM are copied to {gpu} once per ubatch: {a.transfer_bytes / a.n_ubatch / MIB:.1f} "
                     f"MiB per prompt token at -ub {a.n_ubatch}, {b.transfer_bytes / b.n_ubatch / MIB:.1f} at "
                     f"-ub {b.n_ubatch})")
        cb = {n: x.compute for n, x in win.estimate.memory.items() if n != HOST}
        ca = {n: x.compute for n, x in ref.estimate.memory.items() if n != HOST}
        line += (f"; decode {win.chosen.decode_tps:.2f} tok/s against {ref.chosen.decode_tps:.2f}")
        if gpu and gpu in cb and gpu in ca:
            line += (f" ({gpu}'s compute buffer {format_size(cb[gpu])} instead of {format_size(ca[gpu])} leaves that "
                     "much less room for experts)")
        line += (f"; for {per} that is {win.chosen.seconds * 1e3:.1f} ms per generated token against "
                 f"{ref.chosen.seconds * 1e3:.1f}")
        out.append(line)
    elif "n_ubatch" not in fixed and len({p.cfg.n_ubatch for p in tried}) > 1:
        out.append(f"-ub {c.n_ubatch} (llama.cpp's default): no other ubatch is more than {CONFIG_TIE:.0%} faster "
                   f"for {per}")
    if not fixed & {"type_k", "type_v"}:
        if c.type_k == "q8_0":
            out.append(f"-ctk/-ctv q8_0: {100 * (1 - win.chosen.seconds / best_f16):.0f}% faster than the best f16 "
                       f"cache (it takes a quantized cache only above {KV_QUANT_MIN_GAIN:.0%})")
        else:
            q8 = min((p.chosen.seconds for p in tried if p.cfg.type_k == "q8_0"), default=None)
            if q8 is not None and q8 >= win.chosen.seconds:
                cuda = any(d.backend == "cuda" for d in devices.values())
                out.append(f"-ctk/-ctv f16: q8_0 would be {100 * (q8 / win.chosen.seconds - 1):.1f}% slower"
                           + (": llama.cpp's CUDA backend decodes a quantized cache with its vector attention kernel, "
                              "which reads the cache once per query head" if cuda else ""))
            elif q8 is not None:
                out.append(f"-ctk/-ctv f16: q8_0 would be {100 * (1 - q8 / win.chosen.seconds):.1f}% faster, below "
                           f"the {KV_QUANT_MIN_GAIN:.0%} that would pay for its accuracy cost")
    if "n_seq_max" not in fixed and c.n_seq_max > 1:
        out.append(f"-np {c.n_seq_max} -kvu: the {workload.name} workload decodes {workload.batch} sequences "
                   "together, one slot each, sharing one KV buffer")
    if "no_mmap" not in fixed and c.no_mmap:
        mm = score_placement(model, win.placement, c.with_(no_mmap=False), devices, workload, profile, margin, "mmap")
        host_w = format_size(win.estimate.memory[HOST].weights)
        out.append(f"--no-mmap: the host's {host_w} of weights fit in RAM, so they go to pinned memory and are "
                   f"copied to the GPU {1 / PAGEABLE_COPY_FACTOR:.1f}x faster: "
                   f"prompt {win.chosen.prefill_tps:.0f} tok/s against {mm.prefill_tps:.0f} with mmap")
    elif "no_mmap" not in fixed and any(not d.is_host for d in devices.values()) and model.is_moe:
        why = ("pinned memory would not speed it up (no experts are copied from RAM to a GPU)" if win.estimate.host.fits
               else "the host's share does not fit in RAM without paging, and pinned memory cannot be paged")
        out.append(f"mmap kept (llama.cpp's default): {why}")
    return out
