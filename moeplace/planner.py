"""From a model, devices and settings to a Plan: build the optimisation problem, solve it, compare with what
llama.cpp would do by itself, and keep the reasons.

The solver (:mod:`moeplace.solver`) sees only numbers: per-layer bytes and seconds per device. This module
turns the model into those numbers with the memory and speed model's linearisation (bytes read per tensor per
token, prefill copy and compute per ubatch), reserves each GPU's compute buffer, backend overhead and margin,
fixes the tensors the user pinned, and afterwards scores the plan and every baseline with the full estimate
(:func:`moeplace.speed.estimate`): the plan returned is never predicted slower than a baseline that fits.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from moeplace.errors import MoeplaceError
from moeplace.hardware import Device, runtime_overhead
from moeplace.memory import (
    RunConfig,
    compute_terms,
    context_ladder,
    default_margin,
    gpu_fits,
    kv_bytes_per_layer,
    memory_by_device,
)
from moeplace.model import ModelDescription, Role, Tensor
from moeplace.pins import Pin
from moeplace.placement import HOST, Placement, default_tensor_device, host_fallback, layer_placement
from moeplace.sizes import GIB, format_size
from moeplace.solver import HOST_INDEX, LayerItems, Movable, Problem, Solution, solve, solve_cp_sat
from moeplace.speed import Estimate, ExpertProbs, LinearCosts, TensorTable, estimate, linear_seconds
from moeplace.targets.base import BaselineContext, LayerOrder, Target


class PlanError(MoeplaceError):
    """The request cannot be planned: the message says why and what to change."""


@dataclass(frozen=True)
class Workload:
    """What the time per token weighs: ``prompt_per_generated`` prompt tokens are processed for every generated
    token, and generation decodes ``batch`` sequences together, each ``depth`` tokens into its context (None: at
    the full context, where decode is slowest; prompts are then timed from position 0)."""

    name: str
    prompt_per_generated: float
    batch: int = 1
    depth: int | None = None


WORKLOADS = {
    "chat": Workload("chat", 2.0, 1),
    "long-prompt": Workload("long-prompt", 20.0, 1),
    "batch": Workload("batch", 1.0, 8),
}


# Prompt tokens per generated token beyond which the generation term no longer matters to the objective.
MAX_PROMPT_RATIO = 1e6


def parse_workload(text: str, n_parallel: int = 1, depth: int | None = None) -> Workload:
    """``chat``, ``long-prompt``, ``batch`` or a ratio ``PROMPT:GENERATED`` of tokens, e.g. ``8:1``; ``depth`` is
    where in the context its tokens are (llama-bench's ``-d``), None for the full context."""
    if text in WORKLOADS:
        w = WORKLOADS[text]
        return Workload(w.name, w.prompt_per_generated, max(w.batch, n_parallel) if text == "batch" else n_parallel,
                        depth)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*:\s*(\d+(?:\.\d+)?)\s*", text)
    ratio = float(m.group(1)) / float(m.group(2)) if m and float(m.group(2)) > 0 else math.nan
    if not 0 <= ratio <= MAX_PROMPT_RATIO:  # also NaN and a 400-digit (infinite) ratio
        raise PlanError(f"workload '{text[:40]}': use chat, long-prompt, batch, or a ratio of prompt to generated "
                        f"tokens such as 8:1 (at most {MAX_PROMPT_RATIO:g}:1)")
    return Workload(text.strip(), ratio, n_parallel, depth)


@dataclass(frozen=True)
class Candidate:
    """A placement and its predicted cost: the plan, or a baseline (what llama.cpp's own options give)."""

    name: str
    placement: Placement
    estimate: Estimate
    seconds: float  # the workload's predicted seconds per generated token
    fits: bool
    note: str = ""

    @property
    def decode_tps(self) -> float:
        return self.estimate.tokens_per_second

    @property
    def prefill_tps(self) -> float:
        return self.estimate.prefill.tokens_per_second


@dataclass(frozen=True)
class LayerReason:
    """Why a layer's tensors went where they did."""

    block: int
    device: str
    core_bytes: int
    experts_on_device: tuple[str, ...]
    experts_on_host: tuple[str, ...]
    expert_bytes: int
    gain_per_gib: float  # seconds per token saved per GiB of this layer's experts moved to its GPU
    text: str


@dataclass(frozen=True)
class Plan:
    """The chosen placement with its prediction, the baselines beside it, and how it was found."""

    model: ModelDescription
    devices: Mapping[str, Device]
    cfg: RunConfig
    workload: Workload
    margin: int
    chosen: Candidate
    baselines: tuple[Candidate, ...]
    budgets: Mapping[str, int]  # bytes each GPU offered the solver after compute, overhead and margin
    solution: Solution
    solve_seconds: float
    optimality: str
    reasons: tuple[LayerReason, ...]
    pins: tuple[Pin, ...] = ()
    warnings: tuple[str, ...] = field(default=())
    profile: ExpertProbs | None = None
    fallback: str = ""  # the baseline whose placement replaced the solver's ("" when the solver's stands)
    solver_seconds: float = 0.0  # the solver's own placement's predicted seconds per token, fallback or not

    def score(self, placement: Placement, name: str, note: str = "") -> Candidate:
        """Another placement scored exactly as the plan was (same settings, workload, profile and margin): what
        an engine that cannot express the plan gets instead."""
        return score_placement(self.model, placement, self.cfg, self.devices, self.workload, self.profile,
                               self.margin, name, note)

    @property
    def placement(self) -> Placement:
        return self.chosen.placement

    @property
    def estimate(self) -> Estimate:
        return self.chosen.estimate


# --- building the problem ------------------------------------------------------------------------------------


def _stem(name: str) -> str:
    """A tensor's name without .weight/.bias: a weight and its bias move together."""
    return name.rsplit(".", 1)[0] if name.endswith((".weight", ".bias")) else name


def _pinned(model: ModelDescription, pins: Sequence[Pin]) -> dict[str, str]:
    out: dict[str, str] = {}
    compiled = [(re.compile(p.pattern), p.device) for p in pins]
    for t in model.loaded_tensors:
        for rx, dev in compiled:
            if rx.search(t.name):
                out[t.name] = dev
                break
    return out


def _pin_oversized(model: ModelDescription, gpus: Sequence[Device], pinned: dict[str, str]) -> None:
    """Pins to the host every tensor larger than what some GPU takes (Vulkan's storage-buffer range: llama.cpp
    keeps such a weight on the host, and an -ot sending it to the device aborts), so the solver never plans one
    there; refuses a user's pin that sends one to such a GPU."""
    limits = {g.name: g.max_tensor for g in gpus if g.max_tensor}
    if not limits:
        return
    smallest = min(limits.values())
    for t in model.loaded_tensors:
        if t.nbytes <= smallest:
            continue
        dev = pinned.get(t.name)
        if dev in limits and t.nbytes > limits[dev]:
            raise PlanError(f"--pin sends {t.name} ({format_size(t.nbytes)}) to {dev}, whose backend takes tensors "
                            f"of at most {format_size(limits[dev])}: llama.cpp would abort; pin it to CPU")
        if dev is None:
            pinned[t.name] = HOST


def gpu_budgets(model: ModelDescription, cfg: RunConfig, gpus: Sequence[Device], margin: int) -> dict[str, int]:
    """What each GPU can give to layers: its memory less the compute buffer (reserved as if it ran both layers
    and the output, the larger case), the backend's runtime overhead and the safety margin."""
    compute = compute_terms(model, cfg).bytes(runs_layers=True, runs_output=True)
    return {g.name: g.memory - compute - runtime_overhead(g) - margin for g in gpus}


def build_problem(model: ModelDescription, devs: Sequence[Device], cfg: RunConfig, costs: LinearCosts,
                  budgets: Mapping[str, int], pinned: Mapping[str, str], batch: int = 1) -> Problem:
    """The solver's view of the model: per block, the core that runs where the block runs (weights and KV) and
    the routed-expert groups that may stay or go to the host; the output slot; GPU capacities net of pins
    (negative where the pins alone overfill a GPU)."""
    names = [d.name for d in devs]
    col = {n: i for i, n in enumerate(names)}
    kv = {x.layer: x.total for x in kv_bytes_per_layer(model, cfg)}
    capacity = [0] + [budgets[n] for n in names[1:]]
    by_block: dict[int, list[Tensor]] = {il: [] for il in range(model.hparams.n_layer)}
    output: list[Tensor] = []
    for t in model.loaded_tensors:
        if t.name in pinned:
            if pinned[t.name] != HOST:
                capacity[col[pinned[t.name]]] -= t.nbytes
        elif t.block is not None:
            by_block[t.block].append(t)
        elif t.role in (Role.OUTPUT, Role.OUTPUT_NORM):
            output.append(t)
        elif default_tensor_device(t, (names[1],) if len(names) > 1 else (HOST,), HOST) != HOST:
            by_block[0].append(t)  # rope_freqs and its kind live with layer 0
    layers = []
    for il in range(model.hparams.n_layer):
        core_bytes = 0
        core_time = np.zeros(len(names))
        groups: dict[str, list[Tensor]] = {}
        for t in by_block[il]:
            if t.role is Role.ROUTED_EXPERT:
                groups.setdefault(_stem(t.name), []).append(t)
            else:
                core_bytes += t.nbytes
                core_time += costs.seconds[costs.index[t.name]]
        if not cfg.no_kv_offload:
            core_bytes += kv.get(il, 0)
            core_time += costs.kv_seconds[il]
        movs = [Movable(tuple(t.name for t in ts), sum(t.nbytes for t in ts),
                        tuple(float(x) for x in sum(costs.seconds[costs.index[t.name]] for t in ts)))
                for _, ts in sorted(groups.items())]
        layers.append(LayerItems(core_bytes, tuple(float(x) for x in core_time), tuple(movs),
                                 (True,) * len(names)))
    out_time = sum((costs.seconds[costs.index[t.name]] for t in output), np.zeros(len(names)))
    gpus = [d for d in devs if not d.is_host]
    # Per generated token, as the estimate counts a switch (speed._switch_seconds): one decode step of ``batch``
    # sequences pays the latency once and moves every sequence's hidden state, so per token that is the latency
    # over the batch plus one hidden state over the link. The hops the solver chooses are host <-> GPU (a split
    # layer, the host end has no link); a unified-memory GPU (Apple) has no link at all (link_bandwidth 0).
    links = [d.link_bandwidth for d in gpus if d.link_bandwidth > 0]
    switch = max((d.link_latency for d in gpus), default=0.0) / batch + (4.0 * model.hparams.n_embd / min(links)
                                                                         if links else 0.0)
    return Problem(tuple(names), tuple(capacity), tuple(layers), sum(t.nbytes for t in output),
                   tuple(float(x) for x in out_time), switch)


def _placement_of(model: ModelDescription, problem: Problem, sol: Solution, pinned: Mapping[str, str]) -> Placement:
    names = problem.devices
    layer_devs = tuple(names[d] for d in sol.layer_device)
    overrides = dict(pinned)
    for il, host in enumerate(sol.on_host):
        for mv, h in zip(problem.layers[il].movables, host):
            target = HOST if h else layer_devs[il]
            for n in mv.names:
                overrides[n] = target
    return layer_placement(model, layer_devs, names[sol.output_device], overrides)


# --- scoring and baselines ------------------------------------------------------------------------------------


def score_placement(model: ModelDescription, placement: Placement, cfg: RunConfig, devices: Mapping[str, Device],
           workload: Workload, profile: ExpertProbs | None, margin: int, name: str, note: str = "",
           table: TensorTable | None = None) -> Candidate:
    """The placement (with the weights a backend refuses on the host) scored for the workload by the full estimate;
    ``table``, the model's :class:`~moeplace.speed.TensorTable`, saves rebuilding it when one plan scores many."""
    placement = host_fallback(model, placement, {n: d.max_tensor for n, d in devices.items()})
    est = estimate(model, placement, cfg, devices, profile, batch=workload.batch, margin=margin, depth=workload.depth,
                   table=table)
    seconds = (est.decode.seconds / workload.batch
               + workload.prompt_per_generated * est.prefill.seconds / est.prefill.n_ubatch)
    fits = all(f.fits for f in est.fits.values()) and est.host.possible
    return Candidate(name, placement, est, seconds, fits, note)


def baselines(model: ModelDescription, cfg: RunConfig, devices: Mapping[str, Device], workload: Workload,
              profile: ExpertProbs | None, margin: int, target: Target | None = None,
              table: TensorTable | None = None) -> list[Candidate]:
    """What the engine's own options give on the same hardware (for llama.cpp: the smallest ``--n-cpu-moe`` that
    fits, ``--cpu-moe``, and ``--fit``), each scored with the full estimate."""
    target = target or _default_target()
    gpus = tuple(n for n, d in devices.items() if not d.is_host)

    def mem(p: Placement) -> dict[str, int]:
        return {d: b.total for d, b in memory_by_device(model, p, cfg, devices).items()}

    def fits(p: Placement) -> bool:
        return all(f.fits for f in gpu_fits(memory_by_device(model, p, cfg, devices), devices, margin).values())

    split = tuple(float(devices[g].memory) for g in gpus) if len(gpus) > 1 else None
    ctx = BaselineContext(model, devices, gpus, split, mem, fits)
    return [score_placement(model, b.placement, cfg, devices, workload, profile, margin, b.name, b.note, table)
            for b in target.baselines(ctx)]


def _default_target() -> Target:
    from moeplace.targets.registry import get_target  # the registry's modules import the emitters, which import us

    return get_target("llama.cpp")


# --- explanations ---------------------------------------------------------------------------------------------


def _reasons(problem: Problem, sol: Solution) -> tuple[LayerReason, ...]:
    names = problem.devices
    # Gain of keeping a layer's experts on a GPU instead of the host, per GiB: the solver fills each GPU with the
    # highest gains first (up to how the sizes pack), so the smallest gain kept is the bar others did not clear.
    gains = []
    for il, layer in enumerate(problem.layers):
        gpu = sol.layer_device[il] if sol.layer_device[il] != HOST_INDEX else min(1, len(names) - 1)
        gains.append([(m.time[HOST_INDEX] - m.time[gpu]) / max(m.nbytes, 1) * GIB for m in layer.movables])
    kept = [g for il, row in enumerate(gains) for g, h in zip(row, sol.on_host[il])
            if not h and sol.layer_device[il] != HOST_INDEX]
    floor = min(kept, default=0.0)
    out = []
    for il, layer in enumerate(problem.layers):
        d = sol.layer_device[il]
        dev = names[d]
        host = sol.on_host[il]
        on_dev = tuple(m.names[0] for m, h in zip(layer.movables, host) if not h and d != HOST_INDEX)
        on_host = tuple(m.names[0] for m, h in zip(layer.movables, host) if h or d == HOST_INDEX)
        gain = float(np.mean(gains[il])) if gains[il] else 0.0
        if d == HOST_INDEX:
            text = ("runs on the host: the GPU budget went to later layers, whose attention and KV are read every "
                    "token (llama.cpp offloads the last layers first)")
        elif not layer.movables:
            text = "no routed experts: attention, KV and dense FFN on the GPU"
        elif not on_host:
            text = f"experts kept on {dev}: {gain * 1e3:.2f} ms/token saved per GiB"
        elif not on_dev and gain >= floor * 0.995:
            text = (f"experts on the host: they save as much per GiB ({gain * 1e3:.2f} ms/token) as the experts "
                    f"kept, so which blocks stay is decided by how their sizes pack into {dev}'s budget")
        elif not on_dev:
            text = (f"experts on the host: {gain * 1e3:.2f} ms/token per GiB would not beat the "
                    f"{floor * 1e3:.2f} ms/GiB of the experts kept, and {dev} is full")
        else:
            text = f"split: {len(on_dev)} expert tensor(s) filled the last room on {dev}, the rest on the host"
        out.append(LayerReason(il, dev, layer.core_bytes, on_dev, on_host, sum(m.nbytes for m in layer.movables),
                               gain, text))
    return tuple(out)


# --- the entry point -------------------------------------------------------------------------------------------


def _solve(problem: Problem, solver: str, deadline: float
           ) -> tuple[Solution, Solution, Solution | None, float, str]:
    """The exact DP's answer, then with ``solver`` "cp-sat" CP-SAT's from it until ``deadline`` (the DP's time
    counts against it too): the better solution, the DP's, CP-SAT's (None when not run or stopped without
    one), the seconds CP-SAT was given, and a note on why it did not run."""
    try:
        dp = solve(problem)
    except ValueError:  # the budgets were checked above; what is left is that no layer order fits them at all
        raise PlanError("no placement fits the GPU budgets with these pins and this context: pin fewer tensors, "
                        "give more VRAM, or lower -c") from None
    cp, cp_limit, cp_note = None, 0.0, ""
    if solver == "cp-sat":
        cp_limit = deadline - time.perf_counter()
        if cp_limit < MIN_CP_SAT_SECONDS:
            cp_note = "CP-SAT not run: the --time-limit of the whole run was spent"
        else:
            try:
                cp = solve_cp_sat(problem, time_limit=cp_limit, hint=dp)
            except ValueError as e:  # stopped before it found a placement: the DP's answer stands
                cp_note = f"CP-SAT: {e}"
    return (cp if cp is not None and cp.objective < dp.objective else dp), dp, cp, cp_limit, cp_note


def plan(model: ModelDescription, devices: Mapping[str, Device], cfg: RunConfig, *,
         workload: Workload = WORKLOADS["chat"], margin: int | None = None, pins: Sequence[Pin] = (),
         profile: ExpertProbs | None = None, solver: str = "dp", time_limit: float = 10.0,
         target: Target | None = None, with_baselines: bool = True) -> Plan:
    """The placement with the best predicted time per token that fits every GPU, with baselines and reasons.

    ``devices`` maps llama.cpp buffer names to devices: the host ``CPU`` and the GPUs in llama.cpp's order.
    ``solver`` "dp" (exact dynamic programme, the default) or "cp-sat" (OR-Tools, started from the DP's answer,
    stopped after ``time_limit`` seconds with its gap reported). ``with_baselines=False`` skips llama.cpp's own
    placements (most of the time on a large model) for callers that rank many models (moeplace.choose)."""
    if solver not in ("dp", "cp-sat"):
        raise PlanError(f"solver '{solver}': use dp or cp-sat")
    target = target or _default_target()
    if target.layer_order is not LayerOrder.CONTIGUOUS_RUNS:  # the only layout the dynamic programme is exact for
        raise PlanError(f"{target.name} lays out layers as '{target.layer_order.value}', which the solver does "
                        "not model")
    if HOST not in devices:
        raise PlanError("the devices must include the host CPU")
    gpus = [d for n, d in devices.items() if n != HOST]
    devs = [devices[HOST], *gpus]
    margin = default_margin(gpus, margin)
    budgets = gpu_budgets(model, cfg, gpus, margin)
    if gpus and all(b <= 0 for b in budgets.values()):
        need = min(g.memory - b for g, b in zip(gpus, budgets.values()))
        raise PlanError(f"no GPU has room for any layer: compute buffers, runtime overhead and the "
                        f"{format_size(margin)} margin alone need {format_size(need)}; give more VRAM, or lower "
                        "-ub/--ubatch-size, -c/--ctx or --margin")
    pinned = _pinned(model, pins)
    _pin_oversized(model, gpus, pinned)
    warnings: list[str] = []
    for p in pins:
        if not any(re.search(p.pattern, t.name) for t in model.loaded_tensors):
            warnings.append(f"--pin {p.pattern}={p.device} matches no tensor of this model")
    table = TensorTable.build(model)  # once: the linear costs, the plan and every baseline read it
    costs = linear_seconds(model, cfg, devs, profile, batch=workload.batch,
                           prompt_per_generated=workload.prompt_per_generated, table=table)
    problem = build_problem(model, devs, cfg, costs, budgets, pinned, workload.batch)
    over_pins = [n for n, cap in zip(problem.devices[1:], problem.capacity[1:]) if budgets[n] > 0 and cap < 0]
    if over_pins:
        raise PlanError(f"the tensors pinned to {', '.join(over_pins)} do not fit its budget: pin fewer")
    t0 = time.perf_counter()
    for round_ in range(REBUDGET_ROUNDS):
        sol, dp, cp, cp_limit, cp_note = _solve(problem, solver, t0 + time_limit)
        elapsed = time.perf_counter() - t0
        placement = _placement_of(model, problem, sol, pinned)
        chosen = score_placement(model, placement, cfg, devices, workload, profile, margin, "moeplace", table=table)
        # The budgets reserved the compute buffers of the CPU-fitted phases; the backend's own rules (Vulkan's
        # op-offload copies, a device's size limit) can need more for this placement: take the shortfall off
        # that GPU's budget and solve again.
        short = {f.device: -f.free for f in chosen.estimate.fits.values() if not f.fits and f.device in budgets}
        if not short or round_ == REBUDGET_ROUNDS - 1:  # the budgets reported are the ones solved for
            break
        budgets = {n: b - short.get(n, 0) for n, b in budgets.items()}
        problem = build_problem(model, devs, cfg, costs, budgets, pinned, workload.batch)
    base = baselines(model, cfg, devices, workload, profile, margin, target, table) \
        if with_baselines and not pins else []
    # A tie is not a win: the same prediction summed in another order differs in the last bit.
    own_seconds = chosen.seconds
    better = [b for b in base if b.fits and b.seconds < chosen.seconds * (1 - TIE_RTOL)]
    fallback = ""
    if better:
        best = min(better, key=lambda b: b.seconds)
        fallback = best.name
        chosen = Candidate("moeplace", best.placement, best.estimate, best.seconds, best.fits,
                           f"the full estimate ranks the {best.name} placement above the solver's (the solver's "
                           "objective is its linear part), so the plan uses that placement")
        warnings.append(chosen.note)
    if not chosen.fits:
        over = [f.device for f in chosen.estimate.fits.values() if not f.fits]
        if over:
            warnings.append(f"the estimate puts {', '.join(over)} over budget even after {REBUDGET_ROUNDS} solves "
                            "with the budget lowered by the overfill: raise --margin or lower -ub")
        if not chosen.estimate.host.possible:
            raise PlanError(f"the model does not fit in VRAM plus {format_size(devices[HOST].memory)} of RAM "
                            "even with the host's weights paged from disk: give --ram, or use a smaller quant")
    if not chosen.estimate.host.fits:
        warnings.append(f"host RAM short by {format_size(chosen.estimate.host.paged)}: that much of the model "
                        "is re-read from disk through mmap, which is slow")
    if gpus and any(d == HOST_INDEX for d in sol.layer_device):
        n_host = sum(d == HOST_INDEX for d in sol.layer_device)
        cores = sum(x.core_bytes for x in problem.layers) + problem.output_bytes
        reserve = gpus[0].memory - budgets[gpus[0].name]
        warnings.append(f"{n_host} layer(s) run entirely on the host: every layer's attention, shared experts and "
                        f"KV cache on one GPU need {format_size(cores + reserve)} at this context "
                        f"({format_size(cores)} + {format_size(reserve)} compute, overhead and margin); "
                        "a smaller -c or -ctk/-ctv q8_0 lowers that")
    optimality = (f"optimal for the linear model (exact dynamic programme over {len(problem.layers)} layers, "
                  f"{dp.states} states, sizes rounded up to {format_size(dp.unit)})")
    if cp is not None:
        found = "proven optimal" if cp.proven else f"stopped at {cp_limit:.3g} s, {100 * cp.gap:.2f}% from its bound"
        used = "its placement is used" if sol is cp else "the dynamic programme's answer is as good and is used"
        optimality += f"; CP-SAT: {found}, {used}"
    elif cp_note:
        optimality += f"; {cp_note}"
    return Plan(model, devices, cfg, workload, margin, chosen, tuple(base), budgets, sol, elapsed, optimality,
                _reasons(problem, sol), tuple(pins), tuple(warnings), profile, fallback, own_seconds)


# Relative difference in predicted seconds below which two placements are the same prediction.
TIE_RTOL = 1e-9

# Solves at most this many times, each with the GPU budgets lowered by what the last placement overfilled.
REBUDGET_ROUNDS = 3

# Below this many seconds CP-SAT cannot even load a model: it is skipped and the DP's answer stands.
MIN_CP_SAT_SECONDS = 0.05

# Decode speed a longer context may cost before -c auto stops growing it.
AUTO_CONTEXT_LOSS = 0.10


class Budget:
    """One deadline for CP-SAT over several plans: each gets what is left, split evenly over the plans still to
    make; a plan given less than :data:`MIN_CP_SAT_SECONDS` keeps the DP's exact answer."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.perf_counter() + seconds

    def share(self, plans_left: int = 1) -> float:
        return max(0.0, self.deadline - time.perf_counter()) / max(1, plans_left)


def auto_context(model: ModelDescription, devices: Mapping[str, Device], cfg: RunConfig, *,
                 workload: Workload = WORKLOADS["chat"], margin: int | None = None, pins: Sequence[Pin] = (),
                 profile: ExpertProbs | None = None, solver: str = "dp", time_limit: float = 10.0,
                 target: Target | None = None) -> tuple[Plan, list[Plan]]:
    """Plans every context of :func:`context_ladder` and picks the largest whose predicted decode speed is within
    :data:`AUTO_CONTEXT_LOSS` of the smallest context's; returns it and the whole trade for display.
    ``time_limit`` is CP-SAT's budget for the whole ladder, not per context."""
    trade: list[Plan] = []
    budget = Budget(time_limit)
    margin = default_margin(devices, margin)
    ladder = context_ladder(model.hparams.n_ctx_train)
    for i, n_ctx in enumerate(ladder):
        try:
            trade.append(plan(model, devices, cfg.with_(n_ctx=n_ctx), workload=workload, margin=margin, pins=pins,
                              profile=profile, solver=solver, time_limit=budget.share(len(ladder) - i),
                              target=target))
        except PlanError:
            break
    if not trade:
        raise PlanError("not even a 4096-token context fits: give more memory, or -ctk/-ctv q8_0")
    floor = trade[0].chosen.decode_tps * (1 - AUTO_CONTEXT_LOSS)
    best = max((p for p in trade if p.chosen.fits and p.chosen.decode_tps >= floor),
               key=lambda p: p.cfg.n_ctx, default=trade[0])
    return best, trade
