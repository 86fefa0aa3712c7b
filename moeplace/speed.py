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
(op offload, ``GGML_OP_OFFLOAD_MIN_BATCH``), since llama.cpp PR 15346 only the experts the ubatch uses;
``--no-op-offload`` makes the CPU compute them instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter

import numpy as np

from moeplace.errors import MoeplaceError
from moeplace.hardware import Device, catalog
from moeplace.memory import (
    DEFAULT_MARGIN,
    OP_OFFLOAD_MIN_BATCH,
    ContextShape,
    Fit,
    HostCheck,
    LayerKV,
    MemoryBreakdown,
    RunConfig,
    context_shape,
    gpu_fits,
    host_check,
    kv_bytes_per_layer,
    memory_by_device,
)
from moeplace.model import ModelDescription, Role
from moeplace.placement import HOST, Placement
from moeplace.routing import expected_distinct, uniform_probs

ExpertProbs = Mapping[int, np.ndarray]

# Fraction of a GPU's peak FP16 throughput llama.cpp's quantized matrix kernels sustain in prompt processing
# (order of magnitude: MMQ/dequantise+GEMM on quantized weights). The CPU figure in the presets is already a
# sustained one.
GPU_COMPUTE_EFFICIENCY = 0.4

# Host-to-GPU copies of memory-mapped (pageable) weights run at this fraction of the pinned rate the links' presets
# state. llama.cpp puts -ot/--cpu-moe tensors in pinned host buffers only with --no-mmap: gpt-oss-20b, experts on
# the host, -ub 128 (copy-bound): 298 prompt tok/s with mmap against 544 without, 0.55
# (https://github.com/ggml-org/llama.cpp/pull/20978); a 26K-token prefill on 2x RTX 3090, 166 against 330 tok/s
# (https://github.com/ggml-org/llama.cpp/pull/28223); +36-56% prompt speed in issue 14990, where copies are only
# part of the time.
PAGEABLE_COPY_FACTOR = 0.55

_ROLE_CODE = {role: i for i, role in enumerate(Role)}
_EMBD, _EXPERT = _ROLE_CODE[Role.TOKEN_EMBD], _ROLE_CODE[Role.ROUTED_EXPERT]


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
        )


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


def distinct_by_block(routing: np.ndarray, tokens: float) -> np.ndarray:
    """Expected distinct experts ``tokens`` tokens touch in each block (0 for blocks without experts)."""
    return np.asarray(expected_distinct(routing, tokens)).reshape(routing.shape[0])


# --- linearisation -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorCosts:
    """Per loaded tensor (``names`` order): what it costs wherever it is placed.

    ``decode_bytes``: bytes read per decode step at ``batch`` sequences; ``prefill_bytes``: bytes read (or
    copied, when it sits in host memory under op offload) per ubatch; ``prefill_flops``: FLOPs per ubatch."""

    names: tuple[str, ...]
    decode_bytes: np.ndarray
    prefill_bytes: np.ndarray
    prefill_flops: np.ndarray
    batch: int
    n_ubatch: int

    def decode_seconds(self, bandwidth: np.ndarray) -> float:
        """The linear part of the decode step time given each tensor's device bandwidth (bytes/s)."""
        return float(np.sum(self.decode_bytes / bandwidth))


def _decode_bytes(table: TensorTable, routing: np.ndarray, batch: int) -> np.ndarray:
    distinct = distinct_by_block(routing, batch)
    out = np.where(table.is_expert, table.slice_bytes * distinct[table.block_index], table.nbytes)
    return np.where(table.is_embd, table.embd_row_bytes * batch, out)


def _prefill_costs(table: TensorTable, routing: np.ndarray, ub: int, n_expert_used: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    distinct = distinct_by_block(routing, ub)
    read = np.where(table.is_expert, table.slice_bytes * distinct[table.block_index], table.nbytes)
    read = np.where(table.is_embd, table.embd_row_bytes * ub, read)
    # Every token runs n_expert_used experts: expert FLOPs = 2 x slice elements x tokens x k; a lookup none.
    flops = np.where(table.is_expert, 2.0 * table.slice_elements * ub * n_expert_used, 2.0 * table.elements * ub)
    return read, np.where(table.is_embd, 0.0, flops)


def flops_rates(devices: Sequence[Device]) -> np.ndarray:
    """FLOP/s each device sustains in prompt processing: the host's preset figure is already a sustained one, a
    GPU's peak is scaled by :data:`GPU_COMPUTE_EFFICIENCY`."""
    return np.maximum(np.array([d.flops * (1.0 if d.is_host else GPU_COMPUTE_EFFICIENCY) for d in devices]), 1.0)


def host_copy_bandwidth(device: Device, cfg: RunConfig) -> float:
    """Bytes/s host weights are copied to ``device`` for op offload: the link's pinned rate with --no-mmap, the
    pageable rate (:data:`PAGEABLE_COPY_FACTOR`) with llama.cpp's default mmap."""
    return device.link_bandwidth * (1.0 if cfg.no_mmap else PAGEABLE_COPY_FACTOR)


def op_offload_active(cfg: RunConfig, n_ubatch: int, has_gpu: bool) -> bool:
    """Whether host-resident weights are copied to the first GPU for prompt processing (ggml-backend op
    offload: ops of at least OP_OFFLOAD_MIN_BATCH tokens, unless --no-op-offload)."""
    return cfg.op_offload and n_ubatch >= OP_OFFLOAD_MIN_BATCH and has_gpu


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
    read, flops = _prefill_costs(table, routing, ub, model.hparams.n_expert_used)
    return TensorCosts(table.names, _decode_bytes(table, routing, batch), read, flops, batch, ub)


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
                   prompt_per_generated: float = 0.0) -> LinearCosts:
    """The linear part of :func:`estimate`, per tensor and device: decode bytes over effective bandwidth (shared
    by ``batch`` sequences), plus ``prompt_per_generated`` prompt tokens' share of prefill, where a device reads
    or computes its weights and host weights are copied to the first GPU under op offload. KV reads are per
    sequence, at the full context (decode is slowest there, as the estimate reports)."""
    tc = tensor_costs(model, cfg, profile, batch=batch)
    eff = np.array([d.effective_bandwidth for d in devices])
    rate = flops_rates(devices)
    decode = tc.decode_bytes[:, None] / eff[None, :]
    prefill = np.maximum(tc.prefill_bytes[:, None] / eff[None, :], tc.prefill_flops[:, None] / rate[None, :])
    gpu = next((i for i, d in enumerate(devices) if not d.is_host), None)
    host = next((i for i, d in enumerate(devices) if d.is_host), None)
    if gpu is not None and host is not None and op_offload_active(cfg, tc.n_ubatch, True):
        link = host_copy_bandwidth(devices[gpu], cfg)
        copy = tc.prefill_bytes / link if link else 0.0
        prefill[:, host] = copy + tc.prefill_flops / rate[gpu]
    per_token = decode / batch + prompt_per_generated * prefill / tc.n_ubatch
    kv = kv_read_bytes_per_layer(model, cfg, context_shape(model, cfg).n_ctx_seq)
    return LinearCosts(tc.names, {n: i for i, n in enumerate(tc.names)}, per_token, kv[:, None] / eff[None, :])


# --- KV reads ------------------------------------------------------------------------------------------------


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
        if x.kind in ("swa", "chunked"):
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
    """One prompt-processing ubatch of ``n_ubatch`` tokens starting at context position 0."""

    n_ubatch: int
    seconds_by_device: Mapping[str, float]  # compute + reading on each device
    transfer_seconds: float  # host weights copied to the GPU (op offload)
    transfer_bytes: float

    @property
    def seconds(self) -> float:
        return sum(self.seconds_by_device.values()) + self.transfer_seconds

    @property
    def tokens_per_second(self) -> float:
        return self.n_ubatch / self.seconds if self.seconds > 0 else float("inf")


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
    return _Prepared(model, placement, cfg, devs, names, table, idx, _resolve_routing(model, table, profile), eff)


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


def _switch_seconds(pr: _Prepared, seq: np.ndarray, act_bytes: float) -> float:
    """Each switch costs the larger latency of the two devices plus the hidden state over each GPU's link."""
    if len(seq) < 2:
        return 0.0
    d = list(pr.devs.values())
    lat = np.array([x.link_latency for x in d])
    inv = np.array([0.0 if x.is_host or x.link_bandwidth <= 0 else 1.0 / x.link_bandwidth for x in d])
    a, b = seq[:-1], seq[1:]
    return float(np.sum(np.maximum(lat[a], lat[b]) + act_bytes * (inv[a] + inv[b])))


def _decode(pr: _Prepared, batch: int, n_past: int | None, paged_fraction: float,
            kv_layers: np.ndarray | None = None) -> DecodeTime:
    model, cfg, names = pr.model, pr.cfg, pr.names
    per_dev_bytes = np.bincount(pr.idx, weights=_decode_bytes(pr.table, pr.routing, batch), minlength=len(names))
    weight_s = per_dev_bytes / pr.eff

    shape = context_shape(model, cfg)
    pos = shape.n_ctx_seq if n_past is None else max(0, min(n_past, shape.n_ctx_seq))
    kv_layer = (kv_read_bytes_per_layer(model, cfg, pos) if kv_layers is None else kv_layers) * batch
    host = names.index(HOST)
    kv_idx = np.array([host if cfg.no_kv_offload else names.index(d) for d in pr.placement.layer_devices],
                      dtype=np.int64)
    kv_bytes = np.bincount(kv_idx, weights=kv_layer, minlength=len(names))
    kv_s = kv_bytes / pr.eff

    seq = _switch_sequence(pr)
    switch_s = _switch_seconds(pr, seq, 4.0 * model.hparams.n_embd * batch)
    paging = paged_fraction * per_dev_bytes[host] / catalog().disk_bandwidth if paged_fraction > 0 else 0.0
    return DecodeTime(
        batch=batch, n_past=pos,
        weight_seconds={n: float(weight_s[i]) for i, n in enumerate(names) if per_dev_bytes[i] > 0},
        kv_seconds={n: float(kv_s[i]) for i, n in enumerate(names) if kv_bytes[i] > 0},
        weight_bytes={n: float(per_dev_bytes[i]) for i, n in enumerate(names) if per_dev_bytes[i] > 0},
        kv_bytes={n: float(kv_bytes[i]) for i, n in enumerate(names) if kv_bytes[i] > 0},
        switches=len(seq) - 1, switch_seconds=switch_s, paging_seconds=paging,
    )


def decode_time(model: ModelDescription, placement: Placement, cfg: RunConfig,
                devices: Mapping[str, Device] | Sequence[Device], profile: ExpertProbs | np.ndarray | None = None,
                batch: int = 1, n_past: int | None = None, table: TensorTable | None = None,
                paged_fraction: float = 0.0) -> DecodeTime:
    """Time of one decode step of ``batch`` sequences at context position ``n_past`` (default: the full
    context, the slowest point). ``paged_fraction`` of the host's weights are read from disk as well."""
    return _decode(_prepare(model, placement, cfg, devices, profile, table), batch, n_past, paged_fraction)


def _prefill(pr: _Prepared) -> PrefillTime:
    model, cfg, names, devs, idx, table = pr.model, pr.cfg, pr.names, pr.devs, pr.idx, pr.table
    ub = context_shape(model, cfg).n_ubatch
    prefill_bytes, prefill_flops = _prefill_costs(table, pr.routing, ub, model.hparams.n_expert_used)
    gpus = [n for n in names if not devs[n].is_host]
    host_i = names.index(HOST)
    offload = op_offload_active(cfg, ub, bool(gpus))
    flops_rate = flops_rates(list(devs.values()))

    # Attention over the ubatch itself (context position 0): QK^T and PV, 2 x H x d x ubatch x ubatch/2 each.
    hp = model.hparams
    attn_flops = 4.0 * hp.n_head * hp.head_dim_k * ub * ub / 2
    attn_dev = np.zeros(len(names))
    for il, layer in enumerate(model.layers):
        if layer.has_kv:
            attn_dev[host_i if cfg.no_kv_offload else names.index(pr.placement.layer_devices[il])] += attn_flops

    compute_idx = idx
    transfer_bytes = transfer_s = 0.0
    if offload:
        target = names.index(gpus[0])
        moved = (idx == host_i) & ~table.is_embd
        transfer_bytes = float(np.sum(prefill_bytes[moved]))
        link = host_copy_bandwidth(devs[gpus[0]], cfg)
        transfer_s = transfer_bytes / link if link else 0.0
        compute_idx = np.where(moved, target, idx)
        read = np.bincount(idx[~moved], weights=prefill_bytes[~moved], minlength=len(names))
    else:
        read = np.bincount(idx, weights=prefill_bytes, minlength=len(names))
    flops = np.bincount(compute_idx, weights=prefill_flops, minlength=len(names)) + attn_dev
    per_dev = np.maximum(read / pr.eff, flops / flops_rate)
    return PrefillTime(
        n_ubatch=ub,
        seconds_by_device={n: float(per_dev[i]) for i, n in enumerate(names) if per_dev[i] > 0},
        transfer_seconds=transfer_s, transfer_bytes=transfer_bytes,
    )


def prefill_time(model: ModelDescription, placement: Placement, cfg: RunConfig,
                 devices: Mapping[str, Device] | Sequence[Device], profile: ExpertProbs | np.ndarray | None = None,
                 table: TensorTable | None = None) -> PrefillTime:
    """Time of one prompt ubatch at the start of the context. A device's part is the larger of reading its
    weights and computing its FLOPs; host weights go to the first GPU under op offload (copy time over its
    link, plus that GPU's compute), else the CPU computes them."""
    return _prefill(_prepare(model, placement, cfg, devices, profile, table))


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


def estimate(model: ModelDescription, placement: Placement, cfg: RunConfig,
             devices: Mapping[str, Device] | Sequence[Device], profile: ExpertProbs | np.ndarray | None = None, *,
             batch: int | None = None, n_past: int | None = None, margin: int | None = None,
             table: TensorTable | None = None) -> Estimate:
    """Memory per device and time per token of ``placement`` under ``cfg`` on ``devices``.

    ``profile`` maps a block index to per-expert routing probabilities (or counts); blocks it leaves out route
    uniformly. ``batch`` defaults to ``cfg.n_seq_max`` (parallel sequences decoding together); ``n_past``
    to the full context (decode is slowest there); ``margin`` is kept free on every GPU (default
    :data:`memory.DEFAULT_MARGIN`). In a loop, build the :class:`TensorTable` once and pass a matrix from
    :func:`routing_matrix` as the profile."""
    devs = _devices(devices)
    if HOST not in devs:
        raise SpeedError("the devices must include the host (CPU): build it with hardware.host_device")
    pr = _prepare(model, placement, cfg, devs, profile, table)
    weights = np.bincount(pr.idx, weights=pr.table.nbytes, minlength=len(pr.names))
    host_experts = bool(np.any((pr.idx == pr.names.index(HOST)) & (pr.table.role == _EXPERT)))
    layers = kv_bytes_per_layer(model, cfg)
    mem = memory_by_device(model, placement, cfg, devs,
                           weights={n: int(weights[i]) for i, n in enumerate(pr.names) if weights[i]},
                           host_experts=host_experts, kv_layers=layers)
    fits = gpu_fits(mem, devs, DEFAULT_MARGIN if margin is None else margin)
    host = host_check(mem, devs)
    b = batch or cfg.n_seq_max
    shape = context_shape(model, cfg)
    pos = shape.n_ctx_seq if n_past is None else max(0, min(n_past, shape.n_ctx_seq))
    kv_read = kv_read_bytes_per_layer(model, cfg, pos, layers)
    dec1 = _decode(pr, 1, pos, host.paged_fraction, kv_read)
    dec = dec1 if b == 1 else _decode(pr, b, pos, host.paged_fraction, kv_read)
    notes = []
    if not host.fits:
        notes.append(f"host RAM short: {host.paged / 2**30:.1f} GiB of weights will be read from disk as needed")
    for d in devs.values():
        notes.extend(f"{d.name}: {n}" for n in d.notes)
    return Estimate(memory=mem, fits=fits, host=host, decode=dec, decode_batch1=dec1, prefill=_prefill(pr),
                    energy=energy(dec1, devs), context=shape, notes=tuple(notes))
