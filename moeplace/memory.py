"""Bytes per device for a placement: weights, KV cache (llama.cpp's own allocation rules), compute buffers and
runtime overhead, and the host-RAM check.

The KV rules follow llama.cpp exactly; each function names the source file it mirrors:

* ``src/llama-context.cpp`` (constructor): ``n_ctx`` 0 means the trained context; ``n_batch = min(n_ctx,
  n_batch)``, ``n_ubatch = min(n_batch, n_ubatch)``; ``n_ctx`` is padded to a multiple of 256; with a
  per-sequence (not unified) cache ``n_ctx_seq = pad(n_ctx / n_seq_max, 256)`` and ``n_ctx = n_ctx_seq x
  n_seq_max``, with a unified cache ``n_ctx_seq = n_ctx``.
* ``src/llama-kv-cache.cpp``: per layer with KV, K is ``n_embd_k_gqa(il) x kv_size x n_stream`` of
  ``type_k`` and V likewise with ``n_embd_v_gqa(il)`` (``n_embd_v_gqa_max()`` over all layers when V is
  stored transposed, i.e. without flash attention); ``n_stream`` is 1 for a unified cache, else ``n_seq_max``;
  MLA models (``is_mla()``: the ``*.key_length_mla``/``*.value_length_mla`` keys) have no V tensor.
* ``src/llama-hparams.cpp``: ``n_embd_k_gqa(il) = n_embd_head_k(il) x n_head_kv(il)``, the head size being
  the ``*_swa`` one on sliding-window layers.
* ``src/llama-kv-cache-iswa.cpp``: sliding-window (and chunked) layers get their own cache of
  ``pad(min(kv_size, n_swa x (unified ? n_seq_max : 1) + n_ubatch), 256)`` cells, ``kv_size`` with
  ``--swa-full``.
* ``src/llama-memory-recurrent.cpp`` / ``llama-hparams.cpp``: recurrent layers hold F32 states
  ``n_embd_r() + n_embd_s()`` per cell, ``max(1, n_seq_max)`` cells, whatever the context.
* NextN/MTP blocks have no KV in the main context; recurrent layers of a hybrid model have no KV.

The cache of a layer lives on the device that runs the layer (``placement.layer_devices[il]``), or on the
host with ``--no-kv-offload``.

Compute buffers have no closed formula in llama.cpp (it reserves a worst-case graph): :func:`compute_bytes`
is an estimate fitted to the sizes llama.cpp prints, documented there with the measurements.

Why one module of about 650 lines: every figure here is checked together against one oracle (llama.cpp's own
buffer sizes, ``benchmarks/memory_oracle.py``), per device and per kind of buffer, and the rules interlock (the
padded context sizes the KV cache and the compute buffer; the backend's tensor limit moves both weights and
compute to the host). Kept in one room, a rule has one copy and the oracle's table reads against one file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, Keys

from moeplace.errors import MoeplaceError
from moeplace.hardware import Device, catalog, runtime_overhead
from moeplace.model import ModelDescription, Role
from moeplace.placement import HOST, Placement
from moeplace.sizes import MIB

# The cache types llama.cpp's -ctk/-ctv accept (common/arg.cpp, kv_cache_types), in its order.
CACHE_TYPES: dict[str, GGMLQuantizationType] = {
    "f32": GGMLQuantizationType.F32,
    "f16": GGMLQuantizationType.F16,
    "bf16": GGMLQuantizationType.BF16,
    "q8_0": GGMLQuantizationType.Q8_0,
    "q4_0": GGMLQuantizationType.Q4_0,
    "q4_1": GGMLQuantizationType.Q4_1,
    "iq4_nl": GGMLQuantizationType.IQ4_NL,
    "q5_0": GGMLQuantizationType.Q5_0,
    "q5_1": GGMLQuantizationType.Q5_1,
}
UNQUANTIZED_CACHE_TYPES = frozenset({"f32", "f16", "bf16"})

KV_PAD = 256  # llama-context.cpp pads n_ctx (and n_ctx_seq) to 256; llama-kv-cache-iswa.cpp pads SWA cells to 256


class MemoryConfigError(MoeplaceError):
    """A context configuration llama.cpp would refuse."""


def pad(n: int, multiple: int) -> int:
    """ggml's GGML_PAD: ``n`` rounded up to a multiple."""
    return (n + multiple - 1) // multiple * multiple


def row_bytes(cache_type: str, n: int) -> int:
    """Bytes of one row of ``n`` elements of a cache type (ggml_row_size): ``n / block x type size``."""
    block, size = GGML_QUANT_SIZES[CACHE_TYPES[cache_type]]
    if n % block:
        raise MemoryConfigError(f"cache type {cache_type} needs rows that are a multiple of {block} elements; "
                                f"this model's rows have {n}: use f16, bf16 or f32")
    return n // block * size


@dataclass(frozen=True)
class RunConfig:
    """The llama.cpp context options that decide memory and speed, under llama.cpp's own names.

    Defaults are common/common.h's at the llama.cpp revision read (``-c 4096 -b 2048 -ub 512 -np 1``, f16
    cache, per-sequence KV, ``swa_full`` off, KV and op offload on; newer builds default ``-c`` to 0, the
    trained context, and let ``--fit`` shrink it). ``flash_attn`` is the resolved setting: llama.cpp's
    ``-fa auto`` turns it on where every device supports it (see :func:`resolve_flash_attn`).
    ``n_ctx`` 0 means the model's trained context."""

    n_ctx: int = 4096
    n_batch: int = 2048
    n_ubatch: int = 512
    n_seq_max: int = 1
    kv_unified: bool = False
    type_k: str = "f16"
    type_v: str = "f16"
    flash_attn: bool = True
    swa_full: bool = False
    no_kv_offload: bool = False
    op_offload: bool = True
    no_mmap: bool = False  # --no-mmap: host weights in pinned buffers (faster op-offload copies), all resident

    def with_(self, **changes: object) -> RunConfig:
        """A copy with some fields changed (the CLI's context table varies n_ctx and cache types)."""
        return replace(self, **changes)  # type: ignore[arg-type]


def resolve_flash_attn(setting: str, devices: Mapping[str, Device] | None = None) -> bool:
    """``-fa on|off|auto`` to a boolean. llama.cpp's auto (llama-context.cpp) enables flash attention unless a
    layer's attention would have to run on a device other than its KV's, which happens only for backends
    without a flash-attention kernel for the head size; CPU, CUDA, ROCm, Metal and Vulkan have kernels for the
    common head sizes, so auto resolves to on here (measured: on for the CPU backend)."""
    s = setting.strip().lower()
    if s in ("on", "1", "true", "enabled"):
        return True
    if s in ("off", "0", "false", "disabled"):
        return False
    if s == "auto":
        return True
    raise MemoryConfigError(f"flash attention must be on, off or auto, not '{setting}'")


def is_mla(model: ModelDescription) -> bool:
    """llama.cpp's ``hparams.is_mla()``: both decompressed MLA head sizes are in the file."""
    md, arch = model.metadata, model.arch
    return bool(md.get(Keys.Attention.KEY_LENGTH_MLA.format(arch=arch))) and bool(
        md.get(Keys.Attention.VALUE_LENGTH_MLA.format(arch=arch)))


def cache_type_refusal(model: ModelDescription, type_k: str, type_v: str, flash_attn: bool) -> str:
    """Why llama.cpp refuses to create a context with these cache types (src/llama-context.cpp,
    llama_init_from_model), or "" when it accepts them. The one copy of these rules: :func:`validate` and the
    argument builder (:func:`moeplace.emit.args.build_args`) both ask it."""
    # The non-FA attention multiplies by V directly, which needs an unquantized V cache.
    if type_v not in UNQUANTIZED_CACHE_TYPES and not flash_attn:
        return (f"-ctv {type_v} needs flash attention: llama.cpp refuses a quantized V cache with -fa off; add -fa "
                "on or use -ctv f16")
    if is_mla(model) and type_k != type_v:
        # Measured with llama-cpp-python 0.3.36: V is a view of K for MLA, so the types must agree.
        return (f"{model.arch} (MLA) needs the same K and V cache types; got -ctk {type_k} -ctv {type_v}: pass "
                "the same type to both")
    return ""


def validate(model: ModelDescription, cfg: RunConfig) -> None:
    """Raises :class:`MemoryConfigError` for a configuration llama.cpp refuses to create a context with."""
    for what, t in (("-ctk/--cache-type-k", cfg.type_k), ("-ctv/--cache-type-v", cfg.type_v)):
        if t not in CACHE_TYPES:
            raise MemoryConfigError(f"{what} '{t}' is not a llama.cpp cache type: use one of {', '.join(CACHE_TYPES)}")
    if cfg.n_ctx < 0 or cfg.n_batch < 1 or cfg.n_ubatch < 1 or cfg.n_seq_max < 1:
        raise MemoryConfigError("context, batch and ubatch sizes and --parallel must be positive")
    refusal = cache_type_refusal(model, cfg.type_k, cfg.type_v, cfg.flash_attn)
    if refusal:
        raise MemoryConfigError(refusal)
    # llama-context.cpp (llama_init_from_model): with flash attention a quantized cache stores whole blocks per
    # head, so every layer's head size must be a multiple of the type's block size.
    k, v, k_swa, v_swa = _head_dims(model)
    windowed = any(model.hparams.swa_layers)
    for flag, t, dims in (("-ctk", cfg.type_k, {k, k_swa} if windowed else {k}),
                          ("-ctv", cfg.type_v, {v, v_swa} if windowed else {v})):
        block = GGML_QUANT_SIZES[CACHE_TYPES[t]][0]
        if cfg.flash_attn and t not in UNQUANTIZED_CACHE_TYPES and any(d % block for d in dims):
            raise MemoryConfigError(f"{flag} {t} stores blocks of {block} values, which do not divide this model's "
                                    f"head size {sorted(dims)}: llama.cpp refuses it; use f16 or a type whose block "
                                    "divides the head size")


@dataclass(frozen=True)
class ContextShape:
    """The sizes llama.cpp derives from a RunConfig (``llama-context.cpp``, ``llama-kv-cache-iswa.cpp``)."""

    n_ctx: int  # padded total context
    n_ctx_seq: int  # cells of a full-attention layer's cache per stream (kv_size)
    n_stream: int  # 1 for a unified cache, else n_seq_max
    n_batch: int
    n_ubatch: int
    swa_cells: int  # cells of a sliding-window / chunked layer's cache per stream
    recurrent_cells: int  # recurrent state slots


def context_shape(model: ModelDescription, cfg: RunConfig) -> ContextShape:
    """llama.cpp's context arithmetic for ``cfg`` (see the module docstring)."""
    hp = model.hparams
    n_ctx = cfg.n_ctx or hp.n_ctx_train
    n_batch = min(n_ctx, cfg.n_batch)  # causal attention limits the batch to the context
    n_ubatch = min(n_batch, cfg.n_ubatch)
    n_ctx = pad(n_ctx, KV_PAD)
    if cfg.kv_unified:
        n_ctx_seq = n_ctx
    else:
        n_ctx_seq = pad(n_ctx // cfg.n_seq_max, KV_PAD)
        n_ctx = n_ctx_seq * cfg.n_seq_max
    n_stream = 1 if cfg.kv_unified else cfg.n_seq_max
    if cfg.swa_full or not hp.n_swa:
        swa_cells = n_ctx_seq
    else:
        swa_cells = pad(min(n_ctx_seq, hp.n_swa * (cfg.n_seq_max if cfg.kv_unified else 1) + n_ubatch), KV_PAD)
    return ContextShape(n_ctx=n_ctx, n_ctx_seq=n_ctx_seq, n_stream=n_stream, n_batch=n_batch, n_ubatch=n_ubatch,
                        swa_cells=swa_cells, recurrent_cells=max(1, cfg.n_seq_max))


@dataclass(frozen=True)
class LayerKV:
    """The cache of one layer: K and V bytes (for a recurrent layer: its r and s states)."""

    layer: int
    kind: str  # the layer's attention: full, swa, chunked, mla, recurrent, none
    cells: int  # per stream
    k_bytes: int
    v_bytes: int

    @property
    def total(self) -> int:
        return self.k_bytes + self.v_bytes


def _head_dims(model: ModelDescription) -> tuple[int, int, int, int]:
    """(k, v, k_swa, v_swa) head sizes: llama-model.cpp reads key/value_length, and the *_swa ones for
    sliding-window layers, each defaulting to the full-attention size."""
    hp, md, arch = model.hparams, model.metadata, model.arch
    k_swa = md.get(Keys.Attention.KEY_LENGTH_SWA.format(arch=arch)) or hp.head_dim_k
    v_swa = md.get(Keys.Attention.VALUE_LENGTH_SWA.format(arch=arch)) or hp.head_dim_v
    return hp.head_dim_k, hp.head_dim_v, int(k_swa), int(v_swa)


def _recurrent_row(model: ModelDescription) -> tuple[int, int]:
    """Elements of one cell's r and s states (llama-hparams.cpp n_embd_r / n_embd_s, Mamba-style SSM and the
    gated delta net, which share the formula)."""
    hp = model.hparams
    r = (hp.ssm_d_conv - 1 if hp.ssm_d_conv > 0 else 0) * (hp.ssm_d_inner + 2 * hp.ssm_n_group * hp.ssm_d_state)
    s = hp.ssm_d_state * hp.ssm_d_inner
    return r, s


def kv_bytes_per_layer(model: ModelDescription, cfg: RunConfig) -> tuple[LayerKV, ...]:
    """Per layer (one entry per block, zeros where a block has no cache) the K and V bytes llama.cpp allocates
    for ``cfg``. Recurrent layers report their r state as K and s state as V (always F32)."""
    validate(model, cfg)
    hp = model.hparams
    shape = context_shape(model, cfg)
    k_dim, v_dim, k_swa, v_swa = _head_dims(model)
    swa_flags = hp.swa_layers
    mla = is_mla(model)
    v_trans = not cfg.flash_attn
    # n_embd_v_gqa_max() runs over every layer of hparams, windowed or not (llama-hparams.cpp).
    v_max = max((hp.n_head_kv[il] * (v_swa if swa_flags[il] else v_dim) for il in range(hp.n_layer)), default=0)
    r_row, s_row = _recurrent_row(model)
    out = []
    for layer in model.layers:
        il = layer.index
        if layer.attention == "recurrent" and not layer.nextn:
            n = shape.recurrent_cells
            out.append(LayerKV(il, "recurrent", n, row_bytes("f32", r_row) * n, row_bytes("f32", s_row) * n))
            continue
        if not layer.has_kv:
            out.append(LayerKV(il, layer.attention, 0, 0, 0))
            continue
        windowed = swa_flags[il]
        cells = shape.swa_cells if windowed else shape.n_ctx_seq
        n_k = hp.n_head_kv[il] * (k_swa if windowed else k_dim)
        n_v = v_max if v_trans else hp.n_head_kv[il] * (v_swa if windowed else v_dim)
        k = row_bytes(cfg.type_k, n_k) * cells * shape.n_stream
        v = 0 if mla else row_bytes(cfg.type_v, n_v) * cells * shape.n_stream
        out.append(LayerKV(il, layer.attention, cells, k, v))
    return tuple(out)


def kv_bytes(model: ModelDescription, cfg: RunConfig) -> int:
    """All KV (and recurrent state) bytes of the context."""
    return sum(x.total for x in kv_bytes_per_layer(model, cfg))


# --- compute buffers -----------------------------------------------------------------------------------------


def _ffn_width(model: ModelDescription) -> int:
    """The widest FFN activation per token: routed experts used x their width plus shared experts, or a dense
    block's n_ff."""
    hp = model.hparams
    width = 0
    if hp.n_expert:
        expert_ff = hp.n_ff_exp or hp.n_ff  # Mixtral-style files write the expert width as n_ff
        shared = hp.n_ff_shexp or hp.n_expert_shared * expert_ff
        width = hp.n_expert_used * expert_ff + shared
    if any(not layer.moe and not layer.nextn for layer in model.layers) or not hp.n_expert:
        width = max(width, hp.n_ff)
    return width


@dataclass(frozen=True)
class ComputeTerms:
    """The per-ubatch-token working sets of llama.cpp's worst-case graph, in bytes per token.

    ``logits``: the output layer (f32 logits and two hidden states); ``layer``: the largest phase of a block
    (FFN, attention, and without flash attention the n_kv x n_head score matrix, plus the attention masks)."""

    logits: int
    layer: int
    inputs: int  # what the host holds when it runs no layer: the token embeddings and the masks
    n_ubatch: int

    def bytes(self, runs_layers: bool, runs_output: bool) -> int:
        per_token = max(self.logits if runs_output else 0, self.layer if runs_layers else 0)
        return self.n_ubatch * max(per_token, self.inputs)


def compute_terms(model: ModelDescription, cfg: RunConfig) -> ComputeTerms:
    """llama.cpp reserves compute buffers for the worst-case graph of ``n_ubatch`` tokens (llama-context.cpp
    ``graph_reserve(min(n_ctx, n_ubatch), ...)``), and ggml-alloc reuses memory between ops, so a buffer is the
    peak of live tensors at some point of the graph. This estimate takes the largest of the phases below, in
    bytes per ubatch token (E = n_embd, V = n_vocab, H = heads, d = K head size, W = widest FFN per token,
    n_kv = cells of a full-attention layer, plus the window's cells for sliding-window models):

    * logits: ``4 V + 8 E`` plus the masks (glm4moe and gpt-oss keep them live there; Llama and Qwen3 do not,
      where this overestimates by the mask);
    * FFN: ``12 W + 16 E`` plus the attention masks;
    * attention: ``4 (3 E + 2.5 H d)`` plus the masks (``2 n_kv`` bytes with flash attention (f16), ``4 n_kv``
      without) plus, without flash attention, the score matrix ``4 H n_kv``; for MLA the absorbed query takes
      ``4 H (d_mla + 2.5 (kv_lora_rank + n_rot))`` instead.

    Fitted to what llama.cpp (llama-cpp-python 0.3.36, CPU backend, no_alloc) prints as "compute buffer size"
    for the full-scale factory models qwen3-30b-a3b, qwen3-235b-a22b, deepseek-v3, gpt-oss-20b, mixtral-8x7b,
    glm-4.5-air, llama-3-8b and qwen3-next-80b-a3b at contexts 4K/16K/64K, ubatch 128/512/2048, flash attention
    on and off (144 runs): the estimate is within -5.2% .. +24% of the measured size in every run, -16 .. +64 MiB
    at the default ubatch 512 (the +24% is the mask term on Llama/Qwen3 shapes at 64K, which those graphs free
    before the logits). Over the wider grid of benchmarks/memory_oracle.py (docs/memory-oracle.md, contexts up to
    128K) it is -45 .. +128 MiB: never more than 64 MiB under, and more than that over only at 128K, where the same
    mask term reaches +48%. The split between devices (:func:`compute_bytes_by_device`) is measured for Vulkan
    only (:mod:`moeplace.vulkan_compute`, an op-level model checked against the Vulkan oracle on the software
    device); for CUDA, ROCm, SYCL and Metal it is a stated rule, not a measurement."""
    hp = model.hparams
    shape = context_shape(model, cfg)
    n_kv = shape.n_ctx_seq + (shape.swa_cells if hp.n_swa and any(hp.swa_layers) else 0)
    mask = (2 if cfg.flash_attn else 4) * n_kv
    E, V, H = hp.n_embd, hp.n_vocab, hp.n_head
    logits = 4 * V + 8 * E + mask
    ffn = 12 * _ffn_width(model) + 16 * E + mask
    scores = 0 if cfg.flash_attn else 4 * H * shape.n_ctx_seq
    if is_mla(model):
        d_mla = int(model.metadata.get(Keys.Attention.KEY_LENGTH_MLA.format(arch=model.arch), 0))
        attn = int(4 * H * (d_mla + 2.5 * (hp.kv_lora_rank + hp.n_rot))) + mask + scores
    else:
        attn = int(4 * (3 * E + 2.5 * H * hp.head_dim_k)) + mask + scores
    if not any(layer.has_kv for layer in model.layers):
        attn = 0
    inputs = 4 * E + mask
    return ComputeTerms(logits=logits, layer=max(ffn, attn), inputs=inputs, n_ubatch=shape.n_ubatch)


def compute_bytes(model: ModelDescription, cfg: RunConfig) -> int:
    """Estimated compute buffer of a single device running the whole model (the CPU-only case that llama.cpp's
    numbers were fitted on)."""
    return compute_terms(model, cfg).bytes(runs_layers=True, runs_output=True)


# --- per device ----------------------------------------------------------------------------------------------

# ggml-backend: a weight in host memory is used by a GPU op (copied over the link) when the op's batch has at
# least this many tokens (GGML_OP_OFFLOAD_MIN_BATCH, PR 18535), unless --no-op-offload.
OP_OFFLOAD_MIN_BATCH = 32

# Default --margin per GPU, per backend (one rule, default_margin), from the measured errors of the compute-buffer
# estimate. Backends whose compute buffers are a stated rule, not a measurement (CUDA, ROCm, SYCL, Metal: the
# CPU-fitted phases split by device), keep DEFAULT_MARGIN: the CPU oracle's largest underestimate is 45 MiB
# (docs/memory-oracle.md), and pool allocators, cuBLAS/hipBLAS workspaces and graph splits that no oracle here
# shows need room beside it.
DEFAULT_MARGIN = 256 * MIB
# Vulkan is measured buffer by buffer (the Vulkan0 section of docs/memory-oracle.md): its margin is the largest
# underestimate of a GPU buffer there, which benchmarks/memory_oracle.py --backend gpu reports and checks against this
# figure, plus an allowance for what the software device cannot show (a real driver's alignments and its graph
# optimiser's reordering), rounded up to 32 MiB.
VULKAN_WORST_UNDER = 8 * MIB
MARGIN_ALLOWANCE = 64 * MIB
MARGINS = {"vulkan": pad(VULKAN_WORST_UNDER + MARGIN_ALLOWANCE, 32 * MIB)}


def default_margin(devices: Mapping[str, Device] | Sequence[Device] = (), given: int | None = None) -> int:
    """The ``--margin`` kept free on every GPU: ``given`` when the user gave one, else the largest of the GPUs'
    backends' margins (:data:`MARGINS`, else :data:`DEFAULT_MARGIN`); :data:`DEFAULT_MARGIN` when no GPU is given."""
    if given is not None:
        return given
    devs = devices.values() if isinstance(devices, Mapping) else devices
    return max((MARGINS.get(d.backend, DEFAULT_MARGIN) for d in devs if not d.is_host), default=DEFAULT_MARGIN)


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes one device must hold."""

    weights: int = 0
    kv: int = 0
    compute: int = 0
    overhead: int = 0

    @property
    def total(self) -> int:
        return self.weights + self.kv + self.compute + self.overhead

    def as_dict(self) -> dict[str, int]:
        """JSON-ready, with the total."""
        return {"weights": self.weights, "kv": self.kv, "compute": self.compute, "overhead": self.overhead,
                "total": self.total}

    def __add__(self, other: MemoryBreakdown) -> MemoryBreakdown:
        return MemoryBreakdown(self.weights + other.weights, self.kv + other.kv, self.compute + other.compute,
                               self.overhead + other.overhead)


def _device_map(devices: Mapping[str, Device] | object) -> dict[str, Device]:
    if isinstance(devices, Mapping):
        return dict(devices)
    return {d.name: d for d in devices}  # type: ignore[attr-defined]


def _used_devices(placement: Placement, weights: Mapping[str, int] | None) -> list[str]:
    """Devices a placement uses, in first-use order (from the weights per device when a caller has them, which
    avoids a pass over every tensor)."""
    if weights is None:
        return list(placement.devices())
    return list(dict.fromkeys([*placement.layer_devices, placement.output_device, *weights]))


def check_devices(placement: Placement, devices: Mapping[str, Device],
                  weights: Mapping[str, int] | None = None) -> None:
    """Every device the placement uses must be described."""
    missing = [d for d in _used_devices(placement, weights) if d not in devices]
    if missing:
        raise MoeplaceError(f"the placement uses {', '.join(missing)} but no such device was given "
                            f"(known: {', '.join(devices)}): add it with --gpu")


def weight_bytes_by_device(model: ModelDescription, placement: Placement) -> dict[str, int]:
    """Bytes of loaded tensors on each device (NextN blocks are not loaded)."""
    out: dict[str, int] = {}
    for t in model.tensors:
        if t.loaded:
            dev = placement.tensor_devices[t.name]
            out[dev] = out.get(dev, 0) + t.nbytes
    return out


def kv_bytes_by_device(model: ModelDescription, placement: Placement, cfg: RunConfig,
                       layers: Sequence[LayerKV] | None = None) -> dict[str, int]:
    """KV (and recurrent state) bytes on each device: a layer's cache lives where the layer runs
    (llama-kv-cache.cpp ``model.dev_layer(il)``), or on the host with ``--no-kv-offload``."""
    out: dict[str, int] = {}
    for x in layers if layers is not None else kv_bytes_per_layer(model, cfg):
        if x.total:
            dev = HOST if cfg.no_kv_offload else placement.layer_devices[x.layer]
            out[dev] = out.get(dev, 0) + x.total
    return out


def compute_bytes_by_device(model: ModelDescription, placement: Placement, cfg: RunConfig,
                            host_experts: bool | None = None, used: Sequence[str] | None = None,
                            devices: Mapping[str, Device] | None = None) -> dict[str, int]:
    """Compute buffers per device (an estimate; see :func:`compute_terms`). A device that runs blocks gets the
    largest block phase, the one that runs the output layer the logits phase; the host always holds the graph
    inputs (token embeddings are looked up there) and the output buffer llama.cpp reserves for
    ``n_seq_max`` logits rows; with routed experts on the host it computes them for the whole ubatch when op
    offload cannot move them (``--no-op-offload`` or a ubatch below 32 tokens). On Vulkan devices the buffers come
    from replaying llama.cpp's graph, scheduler and allocator op by op (:mod:`moeplace.vulkan_compute`, checked
    against the Vulkan oracle); CUDA, ROCm, SYCL and Metal keep these stated rules."""
    gpus = [d for d in (devices or {}).values() if not d.is_host and d.name in placement.devices()]
    if gpus and all(g.backend == "vulkan" for g in gpus):
        from moeplace.vulkan_compute import vulkan_compute  # it reads this module's shapes

        out = vulkan_compute(model, placement, cfg, gpus)
        out[HOST] = out.get(HOST, 0) + output_bytes(model, cfg)
        return out
    terms = compute_terms(model, cfg)
    runners = set(placement.layer_devices)
    devs = set(placement.devices() if used is None else used) | {HOST}
    out = {d: terms.bytes(runs_layers=d in runners, runs_output=d == placement.output_device) for d in devs}
    if host_experts is None:
        host_experts = any(t.role is Role.ROUTED_EXPERT and placement.tensor_devices.get(t.name) == HOST
                           for t in model.tensors)
    if host_experts and (not cfg.op_offload or terms.n_ubatch < OP_OFFLOAD_MIN_BATCH):
        out[HOST] = max(out[HOST], terms.n_ubatch * terms.layer)
    out[HOST] += output_bytes(model, cfg)
    return out


def output_bytes(model: ModelDescription, cfg: RunConfig) -> int:
    """The output buffer llama.cpp reserves for ``n_seq_max`` rows of f32 logits (llama-context.cpp
    ``output_reserve``), always in host memory (the CPU's or the GPU backend's host buffer type)."""
    return 4 * model.hparams.n_vocab * cfg.n_seq_max


def memory_by_device(model: ModelDescription, placement: Placement, cfg: RunConfig,
                     devices: Mapping[str, Device] | object, *, weights: Mapping[str, int] | None = None,
                     host_experts: bool | None = None, kv_layers: Sequence[LayerKV] | None = None
                     ) -> dict[str, MemoryBreakdown]:
    """What each device must hold for ``placement`` under ``cfg``: weights, KV cache, compute buffers and
    backend overhead, keyed by llama.cpp buffer name (the host is ``CPU``). The keyword arguments pass in what
    a caller has already computed (weights per device, whether routed experts sit on the host, the per-layer
    KV) so that a loop does not redo it."""
    devs = _device_map(devices)
    check_devices(placement, devs, weights)
    weights = weight_bytes_by_device(model, placement) if weights is None else weights
    used = _used_devices(placement, weights)
    kv = kv_bytes_by_device(model, placement, cfg, kv_layers)
    compute = compute_bytes_by_device(model, placement, cfg, host_experts, used, devs)
    names = dict.fromkeys([*used, HOST])
    cat = catalog()
    return {
        d: MemoryBreakdown(weights.get(d, 0), kv.get(d, 0), compute.get(d, 0),
                           runtime_overhead(devs[d], cat) if d in devs else 0)
        for d in names
    }


@dataclass(frozen=True)
class Fit:
    """How a device's needs compare with its memory."""

    device: str
    needed: int
    available: int
    margin: int

    @property
    def free(self) -> int:
        return self.available - self.margin - self.needed

    @property
    def fits(self) -> bool:
        return self.free >= 0


@dataclass(frozen=True)
class HostCheck:
    """The host-RAM check: what the host needs against ``--ram``, and how much of the memory-mapped model then
    cannot stay resident and is read from disk again while decoding (``paged``)."""

    ram: int
    needed: int  # host weights + KV + buffers (+ a unified GPU's use of the same pool)
    weights: int  # host weights: mmap'ed, so the kernel may drop and re-read them
    paged: int  # bytes of host weights that do not fit
    fits: bool  # everything fits without paging
    possible: bool  # False when even with every weight paged the non-weight memory does not fit
    notes: tuple[str, ...] = field(default=())

    @property
    def paged_fraction(self) -> float:
        """Share of the host's weights that are read from disk (uniformly spread, which is what an LRU page
        cache under a streaming access pattern amounts to)."""
        return self.paged / self.weights if self.weights else 0.0


def gpu_fits(breakdown: Mapping[str, MemoryBreakdown], devices: Mapping[str, Device],
             margin: int = DEFAULT_MARGIN) -> dict[str, Fit]:
    """Each GPU's total against its memory less ``margin``."""
    return {name: Fit(name, b.total, devices[name].memory, margin)
            for name, b in breakdown.items() if name != HOST and name in devices}


def host_check(breakdown: Mapping[str, MemoryBreakdown], devices: Mapping[str, Device]) -> HostCheck:
    """Host RAM available to llama.cpp against what the host holds. With unified memory (Apple) the GPUs' use
    comes out of the same pool. Weights on the host are memory-mapped (llama.cpp's default), so what does not
    fit is not an out-of-memory error but pages read again from disk on every token that touches them."""
    host = devices[HOST]
    hb = breakdown.get(HOST, MemoryBreakdown())
    needed = hb.total
    notes = []
    if host.unified:
        shared = sum(b.total for n, b in breakdown.items() if n != HOST and devices.get(n) and devices[n].unified)
        needed += shared
        notes.append("unified memory: GPU buffers come out of the same pool")
    ram = host.available or host.memory  # what llama.cpp may use: the OS and other programs hold the rest
    over = needed - ram
    paged = max(0, min(over, hb.weights))
    return HostCheck(ram=ram, needed=needed, weights=hb.weights, paged=paged, fits=over <= 0,
                     possible=over <= hb.weights, notes=tuple(notes))


def context_ladder(n_ctx_train: int, start: int = 4096) -> list[int]:
    """The contexts worth comparing (solve -c auto, estimate's context table): ``start`` doubling up to the trained
    context, which is always the last."""
    out, c = [], start
    while c < n_ctx_train:
        out.append(c)
        c *= 2
    return [*out, n_ctx_train] if n_ctx_train else out or [start]
