"""Time per token for a placement: decode at batch 1 and batch B, prefill per ubatch, energy and cost.

Decode is memory-bound: a step reads every weight it uses once (whatever the batch) and each sequence's KV
cache, so its time is the bytes read on each device over that device's effective bandwidth, summed along the
layer sequence (devices take turns, they do not overlap for one step), plus a fixed cost for every switch from
one device to another (a graph split: synchronise, copy the hidden state). Bytes per step and tensor:

* dense tensors (attention, norms, router, shared experts, dense FFN, output): all of it;
* the token embedding: one row per sequence (llama.cpp looks rows up, ``get_rows``);
* routed experts: the expected number of distinct experts the batch touches x the bytes of one expert's
  slice; with per-token routing probabilities ``p_e`` (summing to ``n_expert_used``), distinct experts at batch
  B = ``sum_e 1 - (1 - p_e)^B``; without a routing profile ``p_e = n_expert_used / n_expert`` (uniform),
  which is ``n_expert_used`` experts at batch 1.

:func:`tensor_costs` exposes this as a linear function of the placement (bytes per tensor), which is what the
solver optimises: ``time = sum_i bytes_i / bandwidth(device_i) + boundary terms``.

Prefill runs a ubatch of ``n_ubatch`` tokens: a GPU reads each weight it holds once per ubatch and computes
``2 x elements x tokens`` FLOPs; weights in host memory are copied to the GPU for ops of at least 32 tokens
(op offload, ``GGML_OP_OFFLOAD_MIN_BATCH``), since llama.cpp PR 15346 only the experts the ubatch uses (a
prompt's tokens route alike, so a ubatch touches fewer experts than independent tokens: routing.py's
``PROMPT_ROUTING_SHAPE``; ``Device.copies_all_experts`` for builds before that PR);
``--no-op-offload`` makes the CPU compute them instead. A GPU's FLOPs of a multiplication over few rows cost more
(:func:`gpu_flop_cost`: a small ubatch, or a routed expert that gets a few of its tokens). A prompt of
``n_prompt`` tokens at depth ``d`` (tokens already in the context, llama-bench ``-d``) runs in ubatches; each
ubatch's attention reads the context before it, so its cost grows with the depth. A decoded token's attention is
the larger of reading the KV cache and computing over it (:func:`kv_seconds`; MLA's absorbed attention is
compute-bound on a CPU at depth).

The host is limited by memory AND compute: its effective bandwidth is peak (on an AMD chiplet CPU at most what its
core dies' fabric links read) x a platform-class efficiency, with NUMA nodes after the first counting part,
capped at threads x what one thread draws
(:attr:`Device.effective_bandwidth`); a tensor's decode time there is the larger of reading it and
dequantising + dotting its elements at ``threads x core_rate`` Q4_K elements/s x the type's relative cost
(measured here, ``speed-model.json``). A GPU's kernel efficiency per type scales its bytes the same way, and its
routed experts by a fitted expert efficiency per backend (small indirect MUL_MAT_ID matrices). The host's
prompt FLOPs are costed by type with a table of their own (llama.cpp's batch kernels: repacking, sgemm).
Host weights beyond the RAM available for llama.cpp thrash the page cache: they are read from disk again.

Why one module of about 900 lines: the full estimate and the solver's linear objective (:func:`linear_seconds`)
must read the same terms (bytes and elements per tensor, device rates, link and copy rates, op offload); the
planner once restated the prefill rules, and one module keeps them one copy. The accuracy report
(``benchmarks/accuracy.py``) holds this one module to the published measurements.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

import numpy as np

from moeplace.errors import MoeplaceError
from moeplace.hardware import Device, catalog
from moeplace.memory import (
    OP_OFFLOAD_MIN_BATCH,
    ContextShape,
    Fit,
    HostCheck,
    LayerKV,
    MemoryBreakdown,
    RunConfig,
    context_shape,
    default_margin,
    gpu_fits,
    host_check,
    kv_bytes_per_layer,
    memory_by_device,
)
from moeplace.model import ModelDescription, Role
from moeplace.placement import HOST, Placement
from moeplace.routing import PROMPT_ROUTING_SHAPE, expected_distinct, uniform_probs

ExpertProbs = Mapping[int, np.ndarray]

# Host-to-GPU copies of memory-mapped (pageable) weights run at this fraction of the pinned rate the links' presets
# state. llama.cpp puts -ot/--cpu-moe tensors in pinned host buffers only with --no-mmap: gpt-oss-20b, experts on
# the host, -ub 128 (copy-bound): 298 prompt tok/s with mmap against 544 without, 0.55
# (https://github.com/ggml-org/llama.cpp/pull/20978); a 26K-token prefill on 2x RTX 3090, 166 against 330 tok/s
# (https://github.com/ggml-org/llama.cpp/pull/28223); +36-56% prompt speed in issue 14990, where copies are only
# part of the time.
PAGEABLE_COPY_FACTOR = 0.55

_ROLE_CODE = {role: i for i, role in enumerate(Role)}
_EMBD, _EXPERT = _ROLE_CODE[Role.TOKEN_EMBD], _ROLE_CODE[Role.ROUTED_EXPERT]
# Routing matrices whose derived arrays a TensorTable keeps (a solver uses one, a routing sweep a few).
ROUTED_MEMO = 8


def _remember(store: dict[object, Any], key: object, make: Callable[[], Any]) -> Any:
    """``store[key]``, made by ``make()`` the first time; its arrays (a tuple's too) are made read-only, since every
    later caller shares them."""
    if key not in store:
        value = make()
        for a in value if isinstance(value, tuple) else (value,):
            if isinstance(a, np.ndarray):
                a.flags.writeable = False
        store[key] = value
    return store[key]


class SpeedError(MoeplaceError):
    """An input the speed model cannot use (a routing profile of the wrong shape, an unknown device)."""


# --- routing -------------------------------------------------------------------------------------------------


def normalise_probs(counts: np.ndarray, n_expert: int, n_expert_used: int) -> np.ndarray:
    """Per-token probabilities from anything proportional to routing counts (counts, frequencies, or already
    probabilities summing to ``n_expert_used``). A constant array is uniform routing exactly. Probabilities
    above 1 (impossible: an expert is chosen at most once per token) are clipped."""
    a = np.asarray(counts, dtype=np.float64).reshape(-1)
    if a.shape[0] != n_expert:
        raise SpeedError(f"a routing profile layer has {a.shape[0]} experts, the model has {n_expert}")
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        raise SpeedError("routing probabilities must be finite and non-negative")
    total = a.sum()
    if total <= 0 or np.all(a == a[0]):
        return uniform_probs(n_expert, n_expert_used)
    return np.minimum(a * (n_expert_used / total), 1.0)


# --- per-model tables ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorTable:
    """The loaded tensors of a model as numpy arrays, built once per model and reused across placements."""

    names: tuple[str, ...]
    index: Mapping[str, int]
    nbytes: np.ndarray  # float64
    elements: np.ndarray  # float64
    role: np.ndarray  # int codes, see _ROLE_CODE
    block: np.ndarray  # block index, -1 for global tensors
    n_expert: np.ndarray  # experts stacked in the tensor (0 when not an expert tensor)
    embd_row_bytes: np.ndarray  # bytes of one row of the token embedding (0 for other tensors)
    gate_up: np.ndarray  # bool: routed expert tensor computed before the down projection
    n_layer: int
    uniform: np.ndarray  # [n_layer, n_expert] routing matrix with uniform routing (zero rows: no experts)
    is_expert: np.ndarray  # bool: a routed-expert tensor with experts stacked
    is_embd: np.ndarray  # bool: the token embedding
    block_index: np.ndarray  # block, 0 for global tensors (only used where is_expert)
    slice_bytes: np.ndarray  # bytes of one expert's slice (0 for other tensors)
    slice_elements: np.ndarray
    run_blocks: np.ndarray  # blocks a decode step runs (NextN blocks are not run)
    moe_blocks: np.ndarray  # run blocks with routed experts
    expert_key_tensor: np.ndarray  # routed-expert tensors of run blocks ...
    expert_key_block: np.ndarray  # ... their block ...
    expert_key_stage: np.ndarray  # ... and stage: 0 gate/up projections, 1 down projection
    type_names: tuple[str, ...]  # the ggml types present ...
    type_code: np.ndarray  # ... and each tensor's index into them
    embd_row_elements: np.ndarray  # elements of one row of the token embedding (0 for other tensors)
    # Memo of what repeats across estimates of one model: what a routing matrix implies per token count
    # (:meth:`routed`), per-type cost arrays per device cost table, the KV per layer per run configuration.
    memo: dict[object, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def build(cls, model: ModelDescription) -> TensorTable:
        ts = model.loaded_tensors
        names = tuple(t.name for t in ts)
        embd_rows = [t.nbytes / t.shape[1] if t.role is Role.TOKEN_EMBD and len(t.shape) > 1 else 0.0 for t in ts]
        run = [layer.index for layer in model.layers if not layer.nextn]
        experts = [(i, t.block, 1 if "down" in t.name else 0) for i, t in enumerate(ts)
                   if t.role is Role.ROUTED_EXPERT and t.block is not None and not model.layers[t.block].nextn]
        ek = np.array(experts, dtype=np.int64).reshape(-1, 3)
        nbytes = np.array([t.nbytes for t in ts], dtype=np.float64)
        elements = np.array([t.n_elements for t in ts], dtype=np.float64)
        n_expert = np.array([t.n_expert for t in ts], dtype=np.float64)
        is_expert = np.array([t.role is Role.ROUTED_EXPERT and t.n_expert > 0 for t in ts], dtype=bool)
        per = np.maximum(n_expert, 1)
        type_names = tuple(sorted({t.ggml_type.upper() for t in ts}))
        type_pos = {t: i for i, t in enumerate(type_names)}
        return cls(
            names=names,
            index={n: i for i, n in enumerate(names)},
            nbytes=nbytes,
            elements=elements,
            role=np.array([_ROLE_CODE[t.role] for t in ts], dtype=np.int16),
            block=np.array([-1 if t.block is None else t.block for t in ts], dtype=np.int32),
            n_expert=n_expert,
            embd_row_bytes=np.array(embd_rows, dtype=np.float64),
            gate_up=np.array([t.role is Role.ROUTED_EXPERT and "down" not in t.name for t in ts], dtype=bool),
            n_layer=model.hparams.n_layer,
            uniform=routing_matrix(model, None),
            is_expert=is_expert,
            is_embd=np.array([t.role is Role.TOKEN_EMBD for t in ts], dtype=bool),
            block_index=np.array([t.block or 0 for t in ts], dtype=np.int64),
            slice_bytes=np.where(is_expert, nbytes / per, 0.0),
            slice_elements=np.where(is_expert, elements / per, 0.0),
            run_blocks=np.array(run, dtype=np.int64),
            moe_blocks=np.unique(ek[:, 1]),
            expert_key_tensor=ek[:, 0], expert_key_block=ek[:, 1], expert_key_stage=ek[:, 2],
            type_names=type_names,
            type_code=np.array([type_pos[t.ggml_type.upper()] for t in ts], dtype=np.int64),
            embd_row_elements=np.array([float(t.shape[0]) if t.role is Role.TOKEN_EMBD and len(t.shape) > 1
                                        else 0.0 for t in ts], dtype=np.float64),
        )

    def remember(self, key: object, make: Callable[[], Any]) -> Any:
        """``make()``, computed once per ``key`` for this model (:func:`_remember`)."""
        return _remember(self.memo, key, make)

    def _cost(self, costs: tuple[tuple[str, float], ...]) -> np.ndarray:
        qc = dict(costs)
        return self.remember(("cost", costs),
                             lambda: np.array([qc.get(t, 1.0) for t in self.type_names] or [1.0])[self.type_code])

    def quant_cost(self, device: Device) -> np.ndarray:
        """Each tensor's decode cost per element relative to Q4_K on ``device`` (1 for types it does not list)."""
        return self._cost(device.quant_cost)

    def expert_cost(self, device: Device) -> np.ndarray:
        """Each tensor's decode time per byte on ``device`` relative to a dense weight: ``Device.expert_cost`` for
        routed experts (a GPU's MUL_MAT_ID kernels), 1 for the rest."""
        return np.where(self.is_expert, device.expert_cost, 1.0)

    def expert_flop_cost(self, device: Device) -> np.ndarray:
        """Each tensor's prompt time per FLOP on ``device`` relative to a dense weight's multiplication of as many
        rows: ``Device.expert_flop_cost`` for routed experts, 1 for the rest. The one rule both :func:`estimate`
        (through PrefillWork.expert_flops) and the solver's :func:`linear_seconds` apply."""
        return np.where(self.is_expert, device.expert_flop_cost, 1.0)

    def prefill_cost(self, device: Device) -> np.ndarray:
        """Each tensor's prompt-processing cost per FLOP relative to Q4_K on ``device``: the host's batch kernels
        by type (``Device.prefill_cost``), 1 on a GPU. The one rule both :func:`estimate` and the solver's linear
        prefill (:func:`linear_seconds`) apply."""
        return self._cost(device.prefill_cost if device.is_host else ())

    def routed(self, routing: np.ndarray, key: object, make: Callable[[], Any]) -> Any:
        """``make()``, remembered per routing matrix and ``key``: a solver or a fit estimates many placements under
        one matrix. A matrix is recognised by identity (it is kept here, so its id cannot be reused; callers never
        change one in place), for the last :data:`ROUTED_MEMO` matrices; the values are read-only."""
        cache = self.memo.setdefault("routed", {})
        entry = cache.get(id(routing))
        if entry is None or entry[0] is not routing:
            if len(cache) >= ROUTED_MEMO:
                cache.pop(next(iter(cache)))
            entry = cache[id(routing)] = (routing, {})
        return _remember(entry[1], key, make)

    def distinct(self, routing: np.ndarray, tokens: float, shape: float | None = None) -> np.ndarray:
        """:func:`distinct_by_block`, remembered per routing matrix (:meth:`routed`)."""
        return self.routed(routing, ("distinct", tokens, shape), lambda: distinct_by_block(routing, tokens, shape))


def routing_matrix(model: ModelDescription, profile: ExpertProbs | np.ndarray | None) -> np.ndarray:
    """Per-token routing probabilities as a [n_layer, n_expert] matrix: rows of blocks without routed experts
    are zero (they touch no expert), blocks the profile leaves out route uniformly. A matrix passes through
    unchanged (so a caller in a loop normalises a profile once)."""
    hp = model.hparams
    if isinstance(profile, np.ndarray):
        if profile.shape != (hp.n_layer, hp.n_expert):
            raise SpeedError(f"a routing matrix must be {hp.n_layer} x {hp.n_expert}, got {profile.shape}")
        return profile
    out = np.zeros((hp.n_layer, hp.n_expert), dtype=np.float64)
    for layer in model.layers:
        if not layer.moe or not hp.n_expert:
            continue
        given = None if profile is None else profile.get(layer.index)
        out[layer.index] = (uniform_probs(hp.n_expert, hp.n_expert_used) if given is None
                            else normalise_probs(given, hp.n_expert, hp.n_expert_used))
    return out


def _resolve_routing(model: ModelDescription, table: TensorTable, profile: ExpertProbs | np.ndarray | None
                     ) -> np.ndarray:
    return table.uniform if profile is None else routing_matrix(model, profile)


def distinct_by_block(routing: np.ndarray, tokens: float, shape: float | None = None) -> np.ndarray:
    """Expected distinct experts ``tokens`` tokens touch in each block (0 for blocks without experts): tokens of
    separate sequences (``shape`` None) or of one prompt (``shape``: routing.PROMPT_ROUTING_SHAPE), never fewer
    than one token's own experts."""
    if routing.size == 0:
        return np.zeros(routing.shape[0])
    one = np.sum(routing, axis=1)  # 1 - (1 - p)^1 = p
    if tokens == 1:
        return one
    return np.maximum(np.asarray(expected_distinct(routing, tokens, shape)).reshape(routing.shape[0]), one)


# --- linearisation -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorCosts:
    """Per loaded tensor (``names`` order): what it costs wherever it is placed.

    ``decode_bytes``: bytes read per decode step at ``batch`` sequences; ``prefill_bytes``: bytes read per
    ubatch; ``prefill_flops``: FLOPs per ubatch; ``prefill_rows``: tokens each of its matrix multiplications takes
    (:func:`gpu_flop_cost`); ``prefill_copy_bytes``: bytes copied per ubatch when it sits in host memory under op
    offload (:func:`_prefill_costs`, :func:`copied_bytes`)."""

    names: tuple[str, ...]
    decode_bytes: np.ndarray
    prefill_bytes: np.ndarray
    prefill_flops: np.ndarray
    batch: int
    n_ubatch: int
    prefill_rows: np.ndarray
    prefill_copy_bytes: np.ndarray

    def decode_seconds(self, bandwidth: np.ndarray) -> float:
        """The linear part of the decode step time given each tensor's device bandwidth (bytes/s)."""
        return float(np.sum(self.decode_bytes / bandwidth))


def _touched(table: TensorTable, routing: np.ndarray, batch: int, key: str, per_expert: np.ndarray,
             whole: np.ndarray, embd_row: np.ndarray) -> np.ndarray:
    """Per tensor, the amount (bytes or elements) ``batch`` independent tokens touch: a routed expert tensor's
    distinct experts, one row of the token embedding per token, every other tensor whole; remembered per routing
    matrix under ``key``."""
    def make() -> np.ndarray:
        distinct = table.distinct(routing, batch)
        out = np.where(table.is_expert, per_expert * distinct[table.block_index], whole)
        return np.where(table.is_embd, embd_row * batch, out)
    return table.routed(routing, (key, batch), make)


def _decode_bytes(table: TensorTable, routing: np.ndarray, batch: int) -> np.ndarray:
    return _touched(table, routing, batch, "bytes", table.slice_bytes, table.nbytes, table.embd_row_bytes)


def _decode_elements(table: TensorTable, routing: np.ndarray, batch: int) -> np.ndarray:
    return _touched(table, routing, batch, "elements", table.slice_elements, table.elements, table.embd_row_elements)


def device_seconds(nbytes: np.ndarray, elements: np.ndarray, device: Device, cost: np.ndarray) -> np.ndarray:
    """Decode seconds of tensors on ``device``: bytes over its effective bandwidth, on a GPU scaled by the type's
    kernel cost; on a host with a compute rate, the larger of that and the elements' dequantise + dot work
    (``cost`` from :meth:`TensorTable.quant_cost`)."""
    rate = device.decode_rate
    if device.is_host:
        read = nbytes / device.effective_bandwidth
        return np.maximum(read, elements * cost / rate) if rate > 0 else read
    return nbytes * cost / device.effective_bandwidth


def _prefill_costs(table: TensorTable, routing: np.ndarray, ub: int, n_expert_used: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per tensor and ubatch of ``ub`` tokens: bytes read, FLOPs, the tokens (rows) each of its matrix
    multiplications takes (the whole ubatch for a dense weight, the ubatch's ``ub x k`` expert slots spread over
    the distinct experts independent tokens use for a routed one), and the bytes op offload copies of it: of a
    routed one, the experts one prompt's ubatch uses (routing.PROMPT_ROUTING_SHAPE: its tokens route alike).

    Why two expert counts: the copy volume is what PR 15346 counted and what copy-bound rows (a 4070 prompting
    faster than copying every expert over PCIe 4.0 x16 would allow) require; the GPU kernels' loss on few rows
    (``half_rate_rows``) is fitted on the independent count, and prompts of all-GPU MoE rows show no gain from the
    smaller one (docs/accuracy.md)."""
    def make() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        per_block = table.distinct(routing, ub)[table.block_index]
        used = table.distinct(routing, ub, PROMPT_ROUTING_SHAPE)[table.block_index]
        read = _decode_bytes(table, routing, ub)  # what ub independent tokens read, as a decode batch of ub
        # Every token runs n_expert_used experts: expert FLOPs = 2 x slice elements x tokens x k; a lookup none.
        flops = np.where(table.is_expert, 2.0 * table.slice_elements * ub * n_expert_used,
                         2.0 * table.elements * ub)
        rows = np.where(table.is_expert, ub * n_expert_used / np.maximum(per_block, 1e-9), float(ub))
        copy = np.where(table.is_expert, table.slice_bytes * used, read)
        return read, np.where(table.is_embd, 0.0, flops), np.maximum(rows, 1.0), copy
    return table.routed(routing, ("prefill", ub, n_expert_used), make)


def copied_bytes(table: TensorTable, copy_bytes: np.ndarray, gpu: Device | None) -> np.ndarray:
    """Bytes op offload copies per tensor to ``gpu``: ``copy_bytes`` (:func:`_prefill_costs`), or every expert of
    a routed tensor on builds that copy them all (Device.copies_all_experts). The one rule :func:`estimate` and
    the solver's :func:`linear_seconds` apply."""
    return np.where(table.is_expert, table.nbytes, copy_bytes) if gpu is not None and gpu.copies_all_experts \
        else copy_bytes


def gpu_flop_cost(device: Device, rows: np.ndarray) -> np.ndarray:
    """What one FLOP of a matrix multiplication over ``rows`` tokens costs on ``device`` relative to a large
    batch: a GPU's kernels work in tiles of many rows, so a multiplication of few rows (a small ubatch, or a
    routed expert that gets a few of the ubatch's tokens) runs at ``rows / (rows + half_rate_rows)`` of the rate;
    the host's are not costed by rows (1)."""
    return 1.0 + device.half_rate_rows / rows


def flops_rates(devices: Sequence[Device]) -> np.ndarray:
    """FLOP/s each device sustains in prompt processing: the host's figure (threads x a core's rate) is already a
    sustained one, a GPU's peak is scaled by its ``compute_efficiency``."""
    return np.maximum(np.array([d.flops * (1.0 if d.is_host else d.compute_efficiency) for d in devices]), 1.0)


def copy_factor(cfg: RunConfig) -> float:
    """The share of a link's pinned rate that host-to-GPU copies reach: all of it with --no-mmap, the pageable
    rate (:data:`PAGEABLE_COPY_FACTOR`) with llama.cpp's default mmap."""
    return 1.0 if cfg.no_mmap else PAGEABLE_COPY_FACTOR


def host_copy_bandwidth(device: Device, cfg: RunConfig) -> float:
    """Bytes/s host weights are copied to ``device`` for op offload."""
    return device.link_bandwidth * copy_factor(cfg)


def op_offload_active(cfg: RunConfig, n_ubatch: int, has_gpu: bool) -> bool:
    """Whether host-resident weights are copied to the first GPU for prompt processing (ggml-backend op
    offload: ops of at least OP_OFFLOAD_MIN_BATCH tokens, unless --no-op-offload)."""
    return cfg.op_offload and n_ubatch >= OP_OFFLOAD_MIN_BATCH and has_gpu


def offloaded(table: TensorTable, cfg: RunConfig, n_ubatch: int, gpu: Device | None, n_expert_used: int,
              n_expert: int) -> np.ndarray:
    """Per tensor: whether, sitting in host memory, it is copied to the first GPU ``gpu`` and multiplied there for
    a ubatch of ``n_ubatch`` tokens (:func:`op_offload_active`); never the token embedding (a lookup), and a routed
    expert only when each expert gets ``gpu.moe_offload_rows`` of the tokens on average. The one rule
    :func:`estimate` and the solver's :func:`linear_seconds` apply."""
    if gpu is None or not op_offload_active(cfg, n_ubatch, True):
        return np.zeros(len(table.names), dtype=bool)
    moved = ~table.is_embd
    if gpu.moe_offload_rows > 0 and n_ubatch * n_expert_used < gpu.moe_offload_rows * max(n_expert, 1):
        moved = moved & ~table.is_expert
    return moved


def tensor_costs(model: ModelDescription, cfg: RunConfig, profile: ExpertProbs | np.ndarray | None = None,
                 batch: int = 1, table: TensorTable | None = None) -> TensorCosts:
    """The linearisation the solver uses: bytes each loaded tensor costs per decode step (``batch`` sequences)
    and per prefill ubatch, independent of where it is placed. ``profile``: per-block routing probabilities
    (or counts), or a matrix from :func:`routing_matrix`."""
    if batch < 1:
        raise SpeedError(f"batch must be at least 1, got {batch}")
    table = table or TensorTable.build(model)
    routing = _resolve_routing(model, table, profile)
    ub = context_shape(model, cfg).n_ubatch
    read, flops, rows, copy = _prefill_costs(table, routing, ub, model.hparams.n_expert_used)
    return TensorCosts(table.names, _decode_bytes(table, routing, batch), read, flops, batch, ub, rows, copy)


@dataclass(frozen=True)
class LinearCosts:
    """Seconds per generated token of every loaded tensor on every device (rows follow ``names``, columns the
    devices passed in), and of every block's KV cache read: the objective the solver minimises."""

    names: tuple[str, ...]
    index: Mapping[str, int]
    seconds: np.ndarray  # [tensor, device]
    kv_seconds: np.ndarray  # [block, device]


def linear_seconds(model: ModelDescription, cfg: RunConfig, devices: Sequence[Device],
                   profile: ExpertProbs | np.ndarray | None = None, *, batch: int = 1,
                   prompt_per_generated: float = 0.0, table: TensorTable | None = None) -> LinearCosts:
    """The linear part of :func:`estimate`, per tensor and device: decode bytes over effective bandwidth (shared
    by ``batch`` sequences), plus ``prompt_per_generated`` prompt tokens' share of prefill, where a device reads
    or computes its weights and host weights are copied to the first GPU under op offload. KV reads are per
    sequence, at the full context (decode is slowest there, as the estimate reports)."""
    table = table or TensorTable.build(model)
    tc = tensor_costs(model, cfg, profile, batch=batch, table=table)
    elements = _decode_elements(table, _resolve_routing(model, table, profile), batch)
    eff = np.array([d.effective_bandwidth for d in devices])
    rate = flops_rates(devices)
    decode = np.stack([device_seconds(tc.decode_bytes * table.expert_cost(d), elements, d, table.quant_cost(d))
                       for d in devices], axis=1)
    work = np.stack([tc.prefill_flops * table.prefill_cost(d) * table.expert_flop_cost(d)
                     * gpu_flop_cost(d, tc.prefill_rows) for d in devices], axis=1)
    prefill = np.maximum(tc.prefill_bytes[:, None] / eff[None, :], work / rate[None, :])
    gpu = next((i for i, d in enumerate(devices) if not d.is_host), None)
    host = next((i for i, d in enumerate(devices) if d.is_host), None)
    if gpu is not None and host is not None:
        hp = model.hparams
        moved = offloaded(table, cfg, tc.n_ubatch, devices[gpu], hp.n_expert_used, hp.n_expert)
        link = host_copy_bandwidth(devices[gpu], cfg)
        copy = copied_bytes(table, tc.prefill_copy_bytes, devices[gpu])[moved] / link if link else 0.0
        prefill[moved, host] = copy + (tc.prefill_flops[moved] * gpu_flop_cost(devices[gpu], tc.prefill_rows[moved])
                                       * table.expert_flop_cost(devices[gpu])[moved] / rate[gpu])
    per_token = decode / batch + prompt_per_generated * prefill / tc.n_ubatch
    n_ctx = context_shape(model, cfg).n_ctx_seq
    share = np.array([d.kv_reread_share for d in devices])
    layer_kv = kv_read_bytes_per_layer(model, cfg, n_ctx)
    kv_bytes = layer_kv[:, None] * (1.0 + kv_rereads(model, cfg, devices, n_ctx, layer_kv) * share[None, :])
    kv = kv_seconds(kv_bytes, attention_flops_per_layer(model, n_ctx, table)[:, None], eff[None, :], rate[None, :])
    return LinearCosts(tc.names, {n: i for i, n in enumerate(tc.names)}, per_token, kv)


# --- KV reads ------------------------------------------------------------------------------------------------


def attention_flops_per_position(model: ModelDescription, decode: bool) -> float:
    """FLOPs of one token attending one cached position in one block: QK^T and PV, 2 x heads x (key + value
    width). MLA decodes against the compressed latent with the projections absorbed (key kv_lora_rank + n_rot,
    value kv_lora_rank), as llama.cpp and ik_llama.cpp do for single tokens: 128 heads share one 576-wide
    latent, which makes DeepSeek's decode attention compute-bound on a CPU at depth."""
    hp = model.hparams
    if decode and hp.kv_lora_rank:
        return 2.0 * hp.n_head * (2 * hp.kv_lora_rank + hp.n_rot)
    return 2.0 * hp.n_head * (hp.head_dim_k + hp.head_dim_v)


def _attention_layers(model: ModelDescription) -> list[tuple[int, bool]]:
    """(block, sliding window) of every block with a KV cache."""
    hp = model.hparams
    return [(il, bool(hp.n_swa and il < len(hp.swa_layers) and hp.swa_layers[il]))
            for il, layer in enumerate(model.layers) if layer.has_kv]


def attention_flops_per_layer(model: ModelDescription, n_past: int, table: TensorTable | None = None
                              ) -> np.ndarray:
    """Decode attention FLOPs per block for one token at context position ``n_past`` (sliding-window blocks
    attend at most their window); ``table`` remembers the per-block part across calls."""
    def make() -> np.ndarray:
        full = np.zeros(model.hparams.n_layer, dtype=np.float64)
        swa = np.zeros(model.hparams.n_layer, dtype=np.float64)
        per = attention_flops_per_position(model, decode=True)
        for il, windowed in _attention_layers(model):
            (swa if windowed else full)[il] = per
        return np.stack([full, swa])
    full, swa = _remember(table.memo if table is not None else {}, "attention", make)
    return full * n_past + swa * min(n_past, model.hparams.n_swa)


def kv_seconds(kv_bytes: np.ndarray, attn_flops: np.ndarray, eff: np.ndarray, rate: np.ndarray) -> np.ndarray:
    """Decode time of attention: the larger of reading the KV cache and computing over it, per device."""
    return np.maximum(kv_bytes / eff, attn_flops / rate)


# llama.cpp's CUDA attention kernel choice for one decoded token (ggml_cuda_get_best_fattn_kernel in
# ggml-cuda/fattn.cu): the vector kernel, one block per query head, unless a GQA-aware matrix kernel is faster,
# which needs an even GQA ratio and f16 K and V (a quantized cache would have to be converted for it), and from
# Ada Lovelace on also a GQA ratio above 4 and at least this many cells (PR 15454, 2025-08-20).
CUDA_ADA_CC = 8.9
CUDA_MMA_MIN_CELLS = 8192


def kv_rereads(model: ModelDescription, cfg: RunConfig, devices: Sequence[Device], n_past: int,
               layer_kv: np.ndarray) -> np.ndarray:
    """[block, device]: how many more times than once one decoded token's attention reads the block's KV cache
    (``layer_kv``: its bytes per block at ``n_past``) from memory on each device. llama.cpp's CUDA vector kernel
    reads a KV head once per query head sharing it: GQA ratio - 1 more times, which stay in the GPU's L2 cache
    while the block's K and V fit there, and of which Device.kv_reread_share reach memory once they do not. Its
    matrix kernels, MLA's, other backends' and the host's read it once (as does attention without flash
    attention, which is not modelled). The published depth series show both sides: with a q8_0 cache,
    Qwen3-235B-A22B (16 query heads per KV head) decodes 1.6x slower at 32K than at 512 on an RTX A6000 (6 MiB of
    L2), where reading the cache once explains 1.04x (rows ik370-7965wx-lc-a6000-q8-*); on an RTX 4090 (72 MiB),
    Qwen2.5-3B decodes as fast with the vector kernel as with the matrix kernel up to 32K (llama.cpp PR 15035)."""
    out = np.zeros((model.hparams.n_layer, len(devices)), dtype=np.float64)
    hp = model.hparams
    f16 = cfg.type_k == "f16" and cfg.type_v == "f16"
    vec_shape = hp.head_dim_k <= 256 and hp.head_dim_k % 64 == 0
    if not cfg.flash_attn or not vec_shape or hp.kv_lora_rank:
        return out
    # query heads per KV head of each block; 1 (read once) where the block keeps no attention KV cache
    gqa = np.array([hp.n_head // x.n_head_kv if x.has_kv and x.n_head_kv and x.attention not in ("mla", "recurrent")
                    else 1 for x in model.layers], dtype=np.int64)
    for j, d in enumerate(devices):
        if d.backend == "cuda":
            mma = (gqa % 2 == 0) & f16 & ((d.cuda_cc < CUDA_ADA_CC) | ((gqa > 4) & (n_past >= CUDA_MMA_MIN_CELLS)))
            out[:, j] = np.where(mma | (layer_kv <= d.l2_cache), 0.0, gqa - 1)
    return out


def kv_read_bytes_per_layer(model: ModelDescription, cfg: RunConfig, n_past: int,
                            layers: Sequence[LayerKV] | None = None) -> np.ndarray:
    """Bytes of KV cache one sequence reads per decoded token at context position ``n_past``, per block: K and V
    rows of every cell in use (``min(n_past, n_swa)`` cells for sliding-window layers; chunked layers at most
    one chunk); recurrent layers read their state."""
    hp = model.hparams
    out = np.zeros(hp.n_layer, dtype=np.float64)
    for x in layers if layers is not None else kv_bytes_per_layer(model, cfg):
        if not x.total:
            continue
        if x.kind == "recurrent":
            out[x.layer] = x.total / x.cells
            continue
        per_cell = x.total / (x.cells * (1 if cfg.kv_unified else cfg.n_seq_max))
        used = n_past
        # with --swa-full the window's layers keep every cell, and a decoded token's attention reads them all (the
        # mask hides them from the result, not from the kernel): ik_llama.cpp discussion 758's gpt-oss-20b on an
        # RTX 4080 decodes at 28K at 0.62 of its depth-0 speed with it, 0.74 without
        if x.kind in ("swa", "chunked") and not cfg.swa_full:
            used = min(n_past, hp.n_swa)
        used = min(used, x.cells)
        out[x.layer] = per_cell * used
    return out


# --- results -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DecodeTime:
    """One decode step (``batch`` sequences, one token each) at context position ``n_past``."""

    batch: int
    n_past: int
    weight_seconds: Mapping[str, float]  # per device
    kv_seconds: Mapping[str, float]  # per device
    weight_bytes: Mapping[str, float]  # per device, per step
    kv_bytes: Mapping[str, float]
    switches: int  # device changes along the layer sequence
    switch_seconds: float
    paging_seconds: float  # host weights read again from disk because they do not fit in RAM
    # per device: KV bytes read again from memory by a vector attention kernel (kv_rereads), beyond kv_bytes
    kv_reread_bytes: Mapping[str, float] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return (sum(self.weight_seconds.values()) + sum(self.kv_seconds.values()) + self.switch_seconds
                + self.paging_seconds)

    @property
    def tokens_per_second(self) -> float:
        return self.batch / self.seconds if self.seconds > 0 else float("inf")

    def busy_seconds(self, device: str) -> float:
        return self.weight_seconds.get(device, 0.0) + self.kv_seconds.get(device, 0.0)


@dataclass(frozen=True)
class PrefillTime:
    """A prompt of ``n_tokens`` tokens after ``depth`` tokens of context, in ubatches of ``n_ubatch``."""

    n_ubatch: int
    seconds_by_device: Mapping[str, float]  # compute + reading on each device
    transfer_seconds: float  # host weights copied to the GPU (op offload)
    transfer_bytes: float
    n_tokens: int = 0  # 0: one ubatch
    depth: int = 0

    @property
    def seconds(self) -> float:
        return sum(self.seconds_by_device.values()) + self.transfer_seconds

    @property
    def tokens_per_second(self) -> float:
        return (self.n_tokens or self.n_ubatch) / self.seconds if self.seconds > 0 else float("inf")


@dataclass(frozen=True)
class Energy:
    """Energy of decoding: every device draws its board power while it works and its idle power while it waits."""

    joules_per_token: float
    watts: float  # average draw while decoding

    def cost_per_million(self, price_per_kwh: float) -> float:
        """Electricity cost of a million decoded tokens at ``price_per_kwh``."""
        return self.joules_per_token * 1e6 / 3.6e6 * price_per_kwh


@dataclass(frozen=True)
class Estimate:
    """What a placement costs: memory per device, decode and prefill time, energy."""

    memory: Mapping[str, MemoryBreakdown]
    fits: Mapping[str, Fit]
    host: HostCheck
    decode: DecodeTime
    decode_batch1: DecodeTime
    prefill: PrefillTime
    energy: Energy
    context: ContextShape
    notes: tuple[str, ...] = field(default=())

    @property
    def tokens_per_second(self) -> float:
        """Decode tokens/s of one sequence (batch 1)."""
        return self.decode_batch1.tokens_per_second

    @property
    def all_fit(self) -> bool:
        return all(f.fits for f in self.fits.values()) and self.host.possible


# --- the model -----------------------------------------------------------------------------------------------


def _devices(devices: Mapping[str, Device] | Sequence[Device]) -> dict[str, Device]:
    return dict(devices) if isinstance(devices, Mapping) else {d.name: d for d in devices}


@dataclass(frozen=True)
class _Prepared:
    """What every part of one estimate shares: devices in a fixed order, each tensor's device index, routing."""

    model: ModelDescription
    placement: Placement
    cfg: RunConfig
    devs: dict[str, Device]
    names: list[str]
    table: TensorTable
    idx: np.ndarray  # device index of every loaded tensor (table order)
    routing: np.ndarray
    eff: np.ndarray  # effective bandwidth per device
    cost: tuple[np.ndarray, ...]  # per device: each tensor's cost per element relative to Q4_K there


def _prepare(model: ModelDescription, placement: Placement, cfg: RunConfig,
             devices: Mapping[str, Device] | Sequence[Device], profile: ExpertProbs | np.ndarray | None,
             table: TensorTable | None) -> _Prepared:
    devs = _devices(devices)
    table = table or TensorTable.build(model)
    names = list(devs)
    try:
        placed = np.array(itemgetter(*table.names)(placement.tensor_devices) if table.names else (), dtype=object)
    except KeyError as e:
        raise SpeedError(f"the placement does not place tensor {e}: build it for this model") from None
    idx = np.full(len(table.names), -1, dtype=np.int64)
    for i, n in enumerate(names):
        idx[placed == n] = i
    unknown = {str(d) for d in placed[idx < 0]} | {
        d for d in (*placement.layer_devices, placement.output_device, HOST) if d not in devs}
    if unknown:
        raise SpeedError(f"the placement uses {', '.join(sorted(unknown))} but no such device was given: list "
                         "every device it uses, the host CPU included")
    eff = np.array([d.effective_bandwidth for d in devs.values()], dtype=np.float64)
    cost = tuple(table.quant_cost(d) for d in devs.values())
    return _Prepared(model, placement, cfg, devs, names, table, idx, _resolve_routing(model, table, profile), eff,
                     cost)


def _switch_sequence(pr: _Prepared) -> np.ndarray:
    """Device indices in the order one decode step visits them: the embedding lookup on the host, then per
    block the attention and router on the block's device, the expert gate/up and down projections where they
    sit (the results are summed back on the block's device), and the output layer; repeats merged."""
    pos = {n: i for i, n in enumerate(pr.names)}
    layer_dev = np.array([pos[d] for d in pr.placement.layer_devices], dtype=np.int64)
    t = pr.table
    # Order keys: 4 il (the block), 4 il + 1 + stage (its experts), 4 il + 3 (back on the block's device).
    keys = [4 * t.run_blocks, 4 * t.expert_key_block + 1 + t.expert_key_stage, 4 * t.moe_blocks + 3]
    devs = [layer_dev[t.run_blocks], pr.idx[t.expert_key_tensor], layer_dev[t.moe_blocks]]
    key = np.concatenate(keys)
    dev = np.concatenate(devs)
    order = np.lexsort((dev, key))
    seq = np.concatenate(([pos[HOST]], dev[order], [pos[pr.placement.output_device]]))
    keep = np.ones(len(seq), dtype=bool)
    keep[1:] = seq[1:] != seq[:-1]
    return seq[keep]


def _switch_seconds(devs: Sequence[Device], seq: np.ndarray, act_bytes: float) -> float:
    """Each switch costs the larger latency of the two devices plus the hidden state over each GPU's link."""
    if len(seq) < 2:
        return 0.0
    lat = np.array([x.link_latency for x in devs])
    inv = np.array([0.0 if x.is_host or x.link_bandwidth <= 0 else 1.0 / x.link_bandwidth for x in devs])
    a, b = seq[:-1], seq[1:]
    return float(np.sum(np.maximum(lat[a], lat[b]) + act_bytes * (inv[a] + inv[b])))


@dataclass(frozen=True)
class DecodeWork:
    """What one decode step reads and computes on each device, before any device speed enters: the timing
    (:func:`decode_from_work`) is cheap, so fitting device parameters reuses one DecodeWork per measurement."""

    names: tuple[str, ...]
    batch: int
    n_past: int
    weight_bytes: np.ndarray  # per device
    scaled_bytes: np.ndarray  # per device: bytes x the GPU kernel cost of their types
    expert_bytes: np.ndarray  # per device: the routed experts' part of scaled_bytes (GPUs)
    host_bytes: np.ndarray  # per tensor on the host
    host_work: np.ndarray  # per tensor on the host: elements x the CPU cost of its type (Q4_K elements)
    kv_bytes: np.ndarray  # per device
    kv_reread_bytes: np.ndarray  # per device: further KV reads of a vector attention kernel (kv_rereads)
    attn_flops: np.ndarray  # per device: attention FLOPs over the cached positions
    blocks: np.ndarray  # per device: blocks whose attention runs there (each costs the device's layer overhead)
    switch_seq: np.ndarray  # device indices along the layer sequence
    act_bytes: float
    paged_fraction: float


def _decode_work(pr: _Prepared, batch: int, n_past: int | None, paged_fraction: float,
                 kv_layers: np.ndarray | None = None) -> DecodeWork:
    model, cfg, names = pr.model, pr.cfg, pr.names
    nbytes = _decode_bytes(pr.table, pr.routing, batch)
    elements = _decode_elements(pr.table, pr.routing, batch)
    n = len(names)
    host = names.index(HOST)
    per_dev_bytes = np.bincount(pr.idx, weights=nbytes, minlength=n)
    # each tensor's bytes at the kernel cost of its type on its own device; the host's are costed apart (host_work)
    own = nbytes * np.stack(pr.cost)[pr.idx, np.arange(len(pr.idx))]
    scaled = np.bincount(pr.idx, weights=own, minlength=n)
    experts = np.bincount(pr.idx, weights=np.where(pr.table.is_expert, own, 0.0), minlength=n)
    scaled[host] = experts[host] = 0.0
    on_host = pr.idx == host
    shape = context_shape(model, cfg)
    pos = shape.n_ctx_seq if n_past is None else max(0, min(n_past, shape.n_ctx_seq))
    seq_kv = kv_read_bytes_per_layer(model, cfg, pos) if kv_layers is None else kv_layers
    kv_layer = seq_kv * batch
    pos_of = {d: i for i, d in enumerate(names)}
    kv_idx = np.array([host if cfg.no_kv_offload else pos_of[d] for d in pr.placement.layer_devices],
                      dtype=np.int64)
    rereads = kv_rereads(model, cfg, list(pr.devs.values()), pos, seq_kv)[np.arange(len(kv_idx)), kv_idx]
    return DecodeWork(
        names=tuple(names), batch=batch, n_past=pos, weight_bytes=per_dev_bytes, scaled_bytes=scaled,
        expert_bytes=experts,
        host_bytes=nbytes[on_host], host_work=elements[on_host] * pr.cost[host][on_host],
        kv_bytes=np.bincount(kv_idx, weights=kv_layer, minlength=n),
        kv_reread_bytes=np.bincount(kv_idx, weights=kv_layer * rereads, minlength=n),
        attn_flops=np.bincount(kv_idx, weights=attention_flops_per_layer(model, pos, pr.table) * batch, minlength=n),
        blocks=np.bincount(np.array([pos_of[pr.placement.layer_devices[b]] for b in pr.table.run_blocks],
                                    dtype=np.int64), minlength=n).astype(np.float64),
        switch_seq=_switch_sequence(pr),
        act_bytes=4.0 * model.hparams.n_embd * batch, paged_fraction=paged_fraction)


def decode_from_work(w: DecodeWork, devices: Sequence[Device]) -> DecodeTime:
    """The decode step's time on ``devices`` (in ``w.names`` order): on the host each tensor takes the larger
    of reading it and computing it, a GPU reads its bytes scaled by its kernels' cost per type (and routed
    experts by its expert cost); attention takes the larger of reading the KV cache at each device's bandwidth
    and computing over it (:func:`kv_seconds`), plus a fixed cost per block (kernel launches and thread
    barriers); then a fixed cost per device switch, and host weights beyond the available RAM read again from
    disk (page-cache thrashing)."""
    names = w.names
    host = names.index(HOST)
    eff = np.array([d.effective_bandwidth for d in devices])
    # routed-expert bytes count Device.expert_cost times (TensorTable.expert_cost, the solver's per-tensor form)
    weight_s = (w.scaled_bytes + w.expert_bytes * (np.array([d.expert_cost for d in devices]) - 1.0)) / eff
    hd = devices[host]
    if w.host_bytes.size:
        read = w.host_bytes / eff[host]
        rate = hd.decode_rate
        weight_s[host] = float(np.sum(np.maximum(read, w.host_work / rate) if rate > 0 else read))
    reread = w.kv_reread_bytes * np.array([d.kv_reread_share for d in devices])
    kv_s = kv_seconds(w.kv_bytes + reread, w.attn_flops, eff, flops_rates(devices)) + w.blocks * np.array(
        [d.layer_seconds for d in devices])
    switch_s = _switch_seconds(devices, w.switch_seq, w.act_bytes)
    # Weights beyond the RAM available thrash the page cache: a step's host reads miss it in that proportion
    # and come from disk again.
    paging = (w.paged_fraction * w.weight_bytes[host] / catalog().disk_bandwidth if w.paged_fraction > 0
              else 0.0)
    return DecodeTime(
        batch=w.batch, n_past=w.n_past,
        weight_seconds={n: float(weight_s[i]) for i, n in enumerate(names) if w.weight_bytes[i] > 0},
        kv_seconds={n: float(kv_s[i]) for i, n in enumerate(names) if kv_s[i] > 0},
        weight_bytes={n: float(w.weight_bytes[i]) for i, n in enumerate(names) if w.weight_bytes[i] > 0},
        kv_bytes={n: float(w.kv_bytes[i]) for i, n in enumerate(names) if w.kv_bytes[i] > 0},
        switches=len(w.switch_seq) - 1, switch_seconds=switch_s, paging_seconds=paging,
        kv_reread_bytes={n: float(reread[i]) for i, n in enumerate(names) if reread[i] > 0},
    )


def _decode(pr: _Prepared, batch: int, n_past: int | None, paged_fraction: float,
            kv_layers: np.ndarray | None = None) -> DecodeTime:
    return decode_from_work(_decode_work(pr, batch, n_past, paged_fraction, kv_layers), list(pr.devs.values()))


def decode_time(model: ModelDescription, placement: Placement, cfg: RunConfig,
                devices: Mapping[str, Device] | Sequence[Device], profile: ExpertProbs | np.ndarray | None = None,
                batch: int = 1, n_past: int | None = None, table: TensorTable | None = None,
                paged_fraction: float = 0.0) -> DecodeTime:
    """Time of one decode step of ``batch`` sequences at context position ``n_past`` (default: the full
    context, the slowest point). ``paged_fraction`` of the host's weights are read from disk as well."""
    return _decode(_prepare(model, placement, cfg, devices, profile, table), batch, n_past, paged_fraction)


def _chunks(n_prompt: int, n_ubatch: int, depth: int) -> list[tuple[int, int]]:
    """(start position, tokens) of each ubatch of a prompt of ``n_prompt`` tokens after ``depth`` tokens."""
    out, done = [], 0
    while done < n_prompt:
        u = min(n_ubatch, n_prompt - done)
        out.append((depth + done, u))
        done += u
    return out


@dataclass(frozen=True)
class PrefillWork:
    """What a prompt reads, copies and computes on each device, per ubatch size, before device speeds enter
    (:func:`prefill_from_work` times it)."""

    names: tuple[str, ...]
    n_ubatch: int
    n_tokens: int
    depth: int
    chunks: tuple[tuple[int, int], ...]  # (start position, tokens)
    read: Mapping[int, np.ndarray]  # ubatch size -> bytes read per device
    flops: Mapping[int, np.ndarray]  # ubatch size -> weight FLOPs per device (copied host weights on the GPU)
    # ubatch size -> per device, the sum of each tensor's FLOPs over its rows: with flops, gpu_flop_cost summed
    # (flops x (1 + half / rows) = flops + half x flops / rows)
    flops_per_row: Mapping[int, np.ndarray]
    # the same two for routed experts alone, which cost Device.expert_flop_cost (TensorTable.expert_flop_cost)
    expert_flops: Mapping[int, np.ndarray]
    expert_flops_per_row: Mapping[int, np.ndarray]
    transfer: Mapping[int, float]  # ubatch size -> bytes copied from the host to the first GPU
    link_device: int  # the GPU host weights are copied to (-1: none)
    copy_factor: float  # the share of that link's pinned rate the copies reach (pageable with mmap)
    attn_full: np.ndarray  # per device: FLOPs per (token, attended position) of full-attention blocks
    attn_swa: np.ndarray  # the same for sliding-window blocks
    n_swa: int


def _prefill_work(pr: _Prepared, n_prompt: int | None = None, depth: int = 0) -> PrefillWork:
    model, cfg, names, devs, idx, table = pr.model, pr.cfg, pr.names, pr.devs, pr.idx, pr.table
    n_ubatch = context_shape(model, cfg).n_ubatch
    n_prompt = n_ubatch if n_prompt is None else max(1, n_prompt)
    first = next((i for i, n in enumerate(names) if not devs[n].is_host), -1)  # op offload's target GPU (-1: none)
    gpu = devs[names[first]] if first >= 0 else None
    host_i = names.index(HOST)
    # Attention per KV block: QK^T and PV, 2 x H x d FLOPs per (token, attended position) each; a ubatch of u
    # tokens starting at position s attends u x (s + u/2) positions causally (at most the window on SWA blocks).
    hp = model.hparams
    per_pair = attention_flops_per_position(model, decode=False)
    full = np.zeros(len(names))
    swa = np.zeros(len(names))
    for il, windowed in _attention_layers(model):
        d = host_i if cfg.no_kv_offload else names.index(pr.placement.layer_devices[il])
        (swa if windowed else full)[d] += per_pair
    chunks = tuple(_chunks(n_prompt, n_ubatch, depth))
    read: dict[int, np.ndarray] = {}
    flops: dict[int, np.ndarray] = {}
    flops_per_row: dict[int, np.ndarray] = {}
    expert_flops: dict[int, np.ndarray] = {}
    expert_flops_per_row: dict[int, np.ndarray] = {}
    transfer: dict[int, float] = {}
    for _, u in chunks:
        if u in read:
            continue
        prefill_bytes, prefill_flops, rows, copy = _prefill_costs(table, pr.routing, u, hp.n_expert_used)
        moved = (idx == host_i) & offloaded(table, cfg, u, gpu, hp.n_expert_used, hp.n_expert)
        transfer[u] = float(np.sum(copied_bytes(table, copy, gpu)[moved]))
        compute_idx = np.where(moved, first, idx)
        read[u] = np.bincount(idx[~moved], weights=prefill_bytes[~moved], minlength=len(names))
        # The host's batch kernels cost per FLOP by type (TensorTable.prefill_cost); copied weights run on the GPU.
        on_host = compute_idx == host_i
        prefill_flops = np.where(on_host, prefill_flops * pr.table.prefill_cost(devs[HOST]), prefill_flops)
        per_row = prefill_flops / rows
        flops[u] = np.bincount(compute_idx, weights=prefill_flops, minlength=len(names))
        flops_per_row[u] = np.bincount(compute_idx, weights=per_row, minlength=len(names))
        expert_flops[u] = np.bincount(compute_idx, weights=prefill_flops * table.is_expert, minlength=len(names))
        expert_flops_per_row[u] = np.bincount(compute_idx, weights=per_row * table.is_expert, minlength=len(names))
    return PrefillWork(names=tuple(names), n_ubatch=n_ubatch, n_tokens=n_prompt, depth=depth, chunks=chunks,
                       read=read, flops=flops, flops_per_row=flops_per_row, expert_flops=expert_flops,
                       expert_flops_per_row=expert_flops_per_row, transfer=transfer,
                       link_device=first,
                       copy_factor=copy_factor(cfg), attn_full=full, attn_swa=swa,
                       n_swa=hp.n_swa)


def prefill_from_work(w: PrefillWork, devices: Sequence[Device]) -> PrefillTime:
    """The prompt's time on ``devices``: per ubatch, each device the larger of reading its weights and computing
    its FLOPs (routed experts' at Device.expert_flop_cost; attention over the context before the ubatch included),
    plus the copy of host weights over the first GPU's link under op offload (at the pageable rate with mmap,
    :func:`host_copy_bandwidth`)."""
    eff = np.array([d.effective_bandwidth for d in devices])
    rate = flops_rates(devices)
    half = np.array([d.half_rate_rows for d in devices])
    extra = np.array([d.expert_flop_cost for d in devices]) - 1.0  # routed experts' further cost per FLOP
    link = devices[w.link_device].link_bandwidth * w.copy_factor if w.link_device >= 0 else 0.0
    per_dev = np.zeros(len(w.names))
    transfer_s = transfer_b = 0.0
    for start, u in w.chunks:
        attended = start + u / 2
        attn = u * (w.attn_full * attended + w.attn_swa * min(attended, w.n_swa or attended))
        work = w.flops[u] + half * w.flops_per_row[u] + extra * (w.expert_flops[u] + half * w.expert_flops_per_row[u])
        per_dev += np.maximum(w.read[u] / eff, (work + attn) / rate)
        transfer_b += w.transfer[u]
        transfer_s += w.transfer[u] / link if link else 0.0
    return PrefillTime(
        n_ubatch=w.n_ubatch, n_tokens=w.n_tokens, depth=w.depth,
        seconds_by_device={n: float(per_dev[i]) for i, n in enumerate(w.names) if per_dev[i] > 0},
        transfer_seconds=transfer_s, transfer_bytes=transfer_b,
    )


def _prefill(pr: _Prepared, n_prompt: int | None = None, depth: int = 0) -> PrefillTime:
    return prefill_from_work(_prefill_work(pr, n_prompt, depth), list(pr.devs.values()))


def prefill_time(model: ModelDescription, placement: Placement, cfg: RunConfig,
                 devices: Mapping[str, Device] | Sequence[Device], profile: ExpertProbs | np.ndarray | None = None,
                 table: TensorTable | None = None, *, n_prompt: int | None = None, depth: int = 0) -> PrefillTime:
    """Time of a prompt of ``n_prompt`` tokens (default one ubatch) after ``depth`` tokens of context, in
    ubatches. A device's part of a ubatch is the larger of reading its weights and computing its FLOPs
    (attention over the context included); host weights go to the first GPU under op offload (copy time over
    its link, plus that GPU's compute), else the CPU computes them."""
    return _prefill(_prepare(model, placement, cfg, devices, profile, table), n_prompt, depth)


def energy(decode: DecodeTime, devices: Mapping[str, Device] | Sequence[Device]) -> Energy:
    """Joules per decoded token: each device at its power while busy and at idle power for the rest of the
    step; the host CPU is busy for the switches and paging as well (it drives them)."""
    devs = _devices(devices)
    total = decode.seconds
    joules = 0.0
    for name, d in devs.items():
        busy = min(decode.busy_seconds(name), total)
        if d.is_host:
            busy = min(total, busy + decode.switch_seconds + decode.paging_seconds)
        joules += d.power * busy + d.idle_power * (total - busy)
    per_token = joules / decode.batch
    return Energy(joules_per_token=per_token, watts=joules / total if total > 0 else 0.0)


@dataclass(frozen=True)
class _Parts:
    pr: _Prepared
    memory: Mapping[str, MemoryBreakdown]
    fits: Mapping[str, Fit]
    host: HostCheck
    shape: ContextShape
    pos: int
    kv_read: np.ndarray
    decode1: DecodeWork
    prefill: PrefillWork


def _parts(model: ModelDescription, placement: Placement, cfg: RunConfig, devs: dict[str, Device],
           profile: ExpertProbs | np.ndarray | None, margin: int | None, table: TensorTable | None,
           n_past: int | None, n_prompt: int | None, depth: int | None) -> _Parts:
    if HOST not in devs:
        raise SpeedError("the devices must include the host (CPU): build it with hardware.host_device")
    pr = _prepare(model, placement, cfg, devs, profile, table)
    weights = np.bincount(pr.idx, weights=pr.table.nbytes, minlength=len(pr.names))
    host_experts = bool(np.any((pr.idx == pr.names.index(HOST)) & (pr.table.role == _EXPERT)))
    layers = pr.table.remember(("kv_layers", cfg), lambda: kv_bytes_per_layer(model, cfg))
    mem = memory_by_device(model, placement, cfg, devs,
                           weights={n: int(weights[i]) for i, n in enumerate(pr.names) if weights[i]},
                           host_experts=host_experts, kv_layers=layers)
    fits = gpu_fits(mem, devs, default_margin(devs, margin))
    host = host_check(mem, devs)
    shape = context_shape(model, cfg)
    if n_past is None and depth is not None:
        n_past = depth
    pos = shape.n_ctx_seq if n_past is None else max(0, min(n_past, shape.n_ctx_seq))
    kv_read = pr.table.remember(("kv_read", cfg, pos), lambda: kv_read_bytes_per_layer(model, cfg, pos, layers))
    return _Parts(pr, mem, fits, host, shape, pos, kv_read, _decode_work(pr, 1, pos, host.paged_fraction, kv_read),
                  _prefill_work(pr, n_prompt, depth or 0))


def estimate(model: ModelDescription, placement: Placement, cfg: RunConfig,
             devices: Mapping[str, Device] | Sequence[Device], profile: ExpertProbs | np.ndarray | None = None, *,
             batch: int | None = None, n_past: int | None = None, margin: int | None = None,
             table: TensorTable | None = None, n_prompt: int | None = None, depth: int | None = None) -> Estimate:
    """Memory per device and time per token of ``placement`` under ``cfg`` on ``devices``.

    ``profile`` maps a block index to per-expert routing probabilities (or counts); blocks it leaves out route
    uniformly. ``batch`` defaults to ``cfg.n_seq_max`` (parallel sequences decoding together); ``n_past``
    to ``depth`` when given, else the full context (decode is slowest there); the prompt estimate is for
    ``n_prompt`` tokens (default one ubatch) after ``depth`` (default 0) tokens; ``margin`` is kept free on
    every GPU (default: the backend's, :func:`memory.default_margin`). In a loop, build the :class:`TensorTable`
    once and pass a matrix from :func:`routing_matrix` as the profile."""
    devs = _devices(devices)
    p = _parts(model, placement, cfg, devs, profile, margin, table, n_past, n_prompt, depth)
    b = batch or cfg.n_seq_max
    dev_list = list(devs.values())
    dec1 = decode_from_work(p.decode1, dev_list)
    dec = dec1 if b == 1 else _decode(p.pr, b, p.pos, p.host.paged_fraction, p.kv_read)
    notes = []
    if not p.host.fits:
        notes.append(f"host RAM short: {p.host.paged / 2**30:.1f} GiB of weights will be read from disk as needed")
    pre = prefill_from_work(p.prefill, dev_list)
    first_gpu = next((n for n in devs if not devs[n].is_host), None)
    for d in dev_list:
        notes.extend(f"{d.name}: {n}" for n in d.notes)
        if d.link_assumed and pre.transfer_bytes and d.name == first_gpu:
            notes.append(f"{d.name}: host link assumed {d.link_bandwidth / 1e9:.1f} GB/s effective (the preset's"
                         " link): prompt speed depends on it; give it (--link pcie4x8, one per GPU or one for all)")
    return Estimate(memory=p.memory, fits=p.fits, host=p.host, decode=dec, decode_batch1=dec1, prefill=pre,
                    energy=energy(dec1, devs), context=p.shape, notes=tuple(notes))


def workload(model: ModelDescription, placement: Placement, cfg: RunConfig,
             devices: Mapping[str, Device] | Sequence[Device], profile: ExpertProbs | np.ndarray | None = None, *,
             table: TensorTable | None = None, n_prompt: int | None = None, depth: int = 0,
             full_context: bool = False) -> tuple[DecodeWork, PrefillWork]:
    """What :func:`estimate` times for batch-1 decode at ``depth`` and a prompt of ``n_prompt`` tokens after
    ``depth``, before device speeds enter: :func:`decode_from_work` and :func:`prefill_from_work` then give the
    same figures as :func:`estimate` for any devices of the same names (memory and paging as ``devices``
    have them). Fitting device parameters to measurements calls those two per trial. ``full_context``: decode
    at the full context instead (the solver's and the old headline's position)."""
    p = _parts(model, placement, cfg, _devices(devices), profile, None, table, None, n_prompt,
               None if full_context else depth)
    return p.decode1, p.prefill
