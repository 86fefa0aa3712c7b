"""llama.cpp's expert cache (``--moe-cache-mib N``): how large to make it, against static placement.

Newer llama.cpp builds (PR 29887; not the 0.3.36 bundled with llama-cpp-python, so a plan that uses it says so)
can keep an LRU cache of experts in one GPU's memory for the experts that live in RAM: a token whose routed
expert is cached reads it from VRAM; on a miss the expert's slices are copied over the GPU's link and then used
there. Published: 25.0 -> 40.7 tok/s on an RTX 4090 and 30.8 -> 67.8 on an RTX 5090, but 8.0 -> 3.6 behind a
PCIe x4 link (FIELD-NOTES). The cache's MiB come out of the same VRAM that static placement (``-ot``) would fill
with experts, so the question is a trade, and it depends on the order of routing: an LRU cache hits when the
same experts come back soon, which per-expert counts cannot tell.

The model here, per generated token and per host-resident MoE layer ``l`` (``u_l`` = bytes of one expert's
host-resident slices, ``k`` = experts per token, ``h_l`` = the layer's hit rate):

* without the cache the CPU reads ``k u_l`` from RAM at the host's effective bandwidth;
* with it the GPU reads ``k u_l`` at its own, and the misses ``(1 - h_l) k u_l`` first cross the link (at the
  pinned or pageable copy rate, :func:`moeplace.speed.host_copy_bandwidth`).

The hit rate comes from the profile's routing trace where it has one: an exact LRU simulation of that layer's
expert sequence (stack distances, so every cache size at once; first uses are misses). Without a trace the
tokens are assumed to route independently with the profile's (or uniform) probabilities, and the LRU hit rate
follows Che's approximation (H. Che, Y. Tung, Z. Wang, IEEE JSAC 20(7), 2002); under that assumption an LRU
cache is no better than placing the same bytes of experts statically, so it never wins: say so, and profile.

Stated simplifications: the cache's capacity is shared equally by the host-resident layers (a global LRU over
layers visited in turn behaves so when their locality is alike); it serves decode only (prompt processing is
predicted as without it, where published builds lose some prompt speed); batch 1 decode only; the device
switches it saves are not credited (conservative).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from moeplace.errors import MoeplaceError
from moeplace.hardware import Device
from moeplace.memory import MIB, RunConfig
from moeplace.model import ModelDescription, Role
from moeplace.pins import Pin
from moeplace.placement import HOST
from moeplace.planner import Budget, Plan, PlanError, Workload, plan
from moeplace.speed import ExpertProbs, host_copy_bandwidth, routing_matrix
from moeplace.targets.base import Target

# Cache sizes tried, as fractions of the caching GPU's memory, rounded down to CACHE_STEP.
CACHE_FRACTIONS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
CACHE_STEP = 256 * MIB


class CacheError(MoeplaceError):
    """An expert-cache request that cannot be planned."""


# --- hit rates ---------------------------------------------------------------------------------------------------


def lru_stack_distances(ids: np.ndarray) -> np.ndarray:
    """For each expert use of a token-ordered ``[tokens, k]`` id array (flattened token-major): how many distinct
    experts were used since this expert's previous use (its LRU stack distance), -1 for a first use. An LRU cache
    of ``c`` experts hits exactly the uses with ``0 <= distance < c``."""
    stack: list[int] = []
    flat = np.asarray(ids).ravel().tolist()
    out = np.empty(len(flat), dtype=np.int64)
    for i, e in enumerate(flat):
        try:
            d = stack.index(e)
            del stack[d]
        except ValueError:
            d = -1
        stack.insert(0, e)
        out[i] = d
    return out


def trace_hit_rates(ids: np.ndarray, slots: Sequence[int], distances: np.ndarray | None = None) -> np.ndarray:
    """Hit rate of an LRU cache of each number of ``slots`` experts on a layer's routing trace (``distances``:
    its :func:`lru_stack_distances`, when already computed)."""
    d = lru_stack_distances(ids) if distances is None else distances
    if d.size == 0:
        return np.zeros(len(slots))
    return np.array([float(np.mean((d >= 0) & (d < s))) for s in slots])


def independent_hit_rates(p: np.ndarray, slots: Sequence[int]) -> np.ndarray:
    """Hit rate of an LRU cache of each number of ``slots`` experts when tokens route independently with per-token
    probabilities ``p`` (Che's approximation: the characteristic time ``T`` solves ``sum(1 - exp(-p T)) = c``,
    and the hit rate is ``sum(p (1 - exp(-p T))) / sum(p)``)."""
    p = np.asarray(p, dtype=np.float64)
    live = p[p > 0]
    out = []
    for c in slots:
        if c <= 0 or live.size == 0:
            out.append(0.0)
            continue
        if c >= live.size:
            out.append(1.0)
            continue
        lo, hi = 0.0, 1.0
        while np.sum(1 - np.exp(-live * hi)) < c:
            hi *= 2
        for _ in range(80):
            mid = (lo + hi) / 2
            if np.sum(1 - np.exp(-live * mid)) < c:
                lo = mid
            else:
                hi = mid
        occ = 1 - np.exp(-live * hi)
        out.append(float(np.sum(live * occ) / np.sum(live)))
    return np.array(out)


# --- the trade ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CacheOption:
    """One cache size: the static placement planned around it and the predicted speed with the cache."""

    mib: int
    plan: Plan  # placement of the rest of the VRAM (the caching GPU's memory less the cache)
    slots: int  # cached experts per host-resident layer
    hit_rate: float  # mean over host-resident layers, weighted by their expert bytes
    decode_tps: float  # batch-1 decode with the cache
    seconds: float  # the workload's seconds per generated token with the cache

    @property
    def static_decode_tps(self) -> float:
        return self.plan.chosen.decode_tps


@dataclass(frozen=True)
class CacheChoice:
    best: CacheOption
    options: tuple[CacheOption, ...]
    device: str  # the GPU that holds the cache
    method: str  # how hit rates were found
    notes: tuple[str, ...]


def _host_units(model: ModelDescription, p: Plan) -> dict[int, float]:
    """Bytes of one expert's host-resident slices, per layer that has host-resident experts."""
    out: dict[int, float] = {}
    for t in model.loaded_tensors:
        if (t.role is Role.ROUTED_EXPERT and t.n_expert and t.block is not None
                and p.placement.tensor_devices[t.name] == HOST):
            out[t.block] = out.get(t.block, 0.0) + t.nbytes / t.n_expert
    return out


def _with_cache(model: ModelDescription, p: Plan, mib: int, gpu: str, workload: Workload,
                probs: np.ndarray, trace: Mapping[int, np.ndarray], distances: dict[int, np.ndarray]) -> CacheOption:
    units = _host_units(model, p)
    k = model.hparams.n_expert_used
    dec = p.estimate.decode_batch1.seconds
    slots = int(mib * MIB // sum(units.values())) if units and mib else 0
    hits = {}
    for layer in units:
        if layer in trace:
            if layer not in distances:
                distances[layer] = lru_stack_distances(trace[layer])
            hits[layer] = float(trace_hit_rates(trace[layer], [slots], distances[layer])[0])
        else:
            hits[layer] = float(independent_hit_rates(probs[layer], [slots])[0])
    host, dev = p.devices[HOST], p.devices[gpu]
    copy = host_copy_bandwidth(dev, p.cfg)
    if mib and units:
        without = sum(k * u / host.effective_bandwidth for u in units.values())
        miss = (lambda h: (1 - h) / copy) if copy > 0 else (lambda h: 0.0 if h >= 1 else math.inf)
        with_c = sum(k * u * (1 / dev.effective_bandwidth + miss(hits[layer])) for layer, u in units.items())
        dec = dec - without + with_c
    total = sum(units.values())
    hit = sum(hits[layer] * u for layer, u in units.items()) / total if total else 0.0
    prefill = p.estimate.prefill
    seconds = dec / workload.batch + workload.prompt_per_generated * prefill.seconds / prefill.n_ubatch
    return CacheOption(mib, p, slots, hit, 1 / dec if dec > 0 else math.inf, seconds)


def cache_sizes(gpu: Device) -> list[int]:
    """The cache sizes tried (MiB): :data:`CACHE_FRACTIONS` of the GPU's memory in :data:`CACHE_STEP` steps."""
    return sorted({int(gpu.memory * f) // CACHE_STEP * CACHE_STEP // MIB for f in CACHE_FRACTIONS} - {0})


def choose_cache(model: ModelDescription, devices: Mapping[str, Device], cfg: RunConfig, *, workload: Workload,
                 margin: int, pins: Sequence[Pin] = (), profile: ExpertProbs | None = None,
                 trace: Mapping[int, np.ndarray] | None = None, sizes: Sequence[int] | None = None,
                 solver: str = "dp", time_limit: float = 10.0, target: Target | None = None) -> CacheChoice:
    """Plans static placement around each cache size (``sizes`` in MiB; default :func:`cache_sizes`; 0, no cache,
    is always among them unless a single size is given) and predicts the speed with the cache; the fastest for
    the workload wins."""
    gpus = [n for n, d in devices.items() if not d.is_host]
    if not gpus:
        raise CacheError("--moe-cache-mib needs a GPU to hold the cache")
    if not model.is_moe:
        raise CacheError(f"{model.name} has no routed experts to cache")
    gpu = gpus[0]
    notes = [f"the cache lives on {gpu} (the expert cache uses one device)"]
    if workload.batch > 1:
        raise CacheError(f"the {workload.name} workload decodes {workload.batch} sequences together; the expert-cache "
                         "model covers batch-1 decode only: drop --moe-cache-mib or use --workload chat")
    tried = [0, *cache_sizes(devices[gpu])] if sizes is None else list(sizes)
    probs = routing_matrix(model, profile)
    traced = sorted(trace) if trace else []
    method = (f"routing trace ({next(iter(trace.values())).shape[0]} tokens; LRU simulated per layer)" if traced
              else "independence assumption (no routing trace in the profile: run 'moeplace profile run'): "
                   "under it an LRU cache serves no more than static placement of the same bytes")
    options = []
    distances: dict[int, np.ndarray] = {}  # per traced layer, computed once for every cache size
    budget = Budget(time_limit)  # CP-SAT's, shared by every size
    for i, mib in enumerate(tried):
        if mib < 0:
            raise CacheError(f"--moe-cache-mib {mib}: give a size in MiB, 0 for none, or auto")
        d = dict(devices)
        d[gpu] = replace(devices[gpu], memory=devices[gpu].memory - mib * MIB)
        try:
            p = plan(model, d, cfg, workload=workload, margin=margin, pins=pins, profile=profile, solver=solver,
                     time_limit=budget.share(len(tried) - i), target=target)
        except PlanError:
            if mib == 0 or sizes is not None:
                raise
            break  # larger caches leave even less room
        if not p.chosen.fits:
            continue
        options.append(_with_cache(model, p, mib, gpu, workload, probs, trace or {}, distances))
    if not options:
        raise CacheError("no cache size leaves room for the model's layers: give a smaller --moe-cache-mib")
    untraced = sorted({layer for o in options for layer in _host_units(model, o.plan)} - set(traced))
    if traced and untraced:
        notes.append(f"layers {untraced} have no routing trace: their hit rates assume independent routing")
    best = min(options, key=lambda o: o.seconds)
    return CacheChoice(best, tuple(options), gpu, method, tuple(notes))
