"""Test model factory: real GGUF files of Mixture-of-Experts (and dense) models for tests and benchmarks.

Two families:

* tiny models (``TINY``): kilobytes to a few hundred kilobytes of real, deterministic random weights that
  llama.cpp loads and evaluates. They carry a minimal SentencePiece ("llama") vocabulary with the 256 byte
  tokens, so any text tokenizes, and every hyper-parameter key ``src/models/<arch>.cpp`` reads.
* full-scale header-only models (``FULL``): the real tensor names, shapes and the quant mix of a popular
  GGUF of a real model, and the real vocabulary size; the data region is a sparse hole (the file has its full
  apparent size but uses almost no disk). llama.cpp can load them with ``no_alloc`` for memory checks.

Everything that gguf-py provides is taken from it: metadata keys go through ``GGUFWriter.add_*`` (which
formats ``gguf.Keys`` with the arch name), tensor names come from ``gguf.TENSOR_NAMES`` and are checked
against ``gguf.MODEL_TENSORS[arch]``, byte sizes from ``gguf.GGML_QUANT_SIZES`` and data from
``gguf.quants.quantize``. Shapes follow ``create_tensor`` calls in llama.cpp's ``src/models/<arch>.cpp``
and keys follow ``conversion/*.py`` (the converter) of the same llama.cpp revision that llama-cpp-python
0.3.36 vendors. Quant types follow ``llama_tensor_get_type`` of ``src/llama-quant.cpp`` for the spec's
``ftype``, so a "Q4_K_M" spec has the per-layer Q6_K ``ffn_down``/``attn_v`` mix a real Q4_K_M file has.

``expected(spec)`` gives what an inspector must find, from the spec alone (no file is read). Roles:
``token_embd``, ``output``, ``output_norm``; ``attention`` (every ``attn_*`` weight and bias, ``attn_sinks``,
the linear-attention ``attn_qkv``/``attn_gate`` of recurrent layers); ``norm`` (every other ``*norm``
tensor, ``ssm_norm`` included); ``router`` (``ffn_gate_inp`` weight and bias, ``exp_probs_b``);
``routed_expert`` (``ffn_*_exps`` weights and biases); ``shared_expert`` (``ffn_*_shexp`` and
``ffn_gate_inp_shexp``); ``dense_ffn``; ``ssm`` (other ``ssm_*`` tensors); ``nextn`` (every tensor of a NextN
block, which llama.cpp does not load); ``other`` (e.g. ``rope_freqs``).
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import struct
import sys
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf import GGML_QUANT_SIZES, MODEL_TENSOR, ExpertGatingFuncType, GGUFValueType, LlamaFileType, TokenType
from gguf import GGMLQuantizationType as QT

__all__ = [
    "FULL",
    "ROLES",
    "SPECS",
    "TINY",
    "Expected",
    "ModelSpec",
    "TensorSpec",
    "expected",
    "main",
    "tensor_plan",
    "write_all",
    "write_model",
]

ROLES: tuple[str, ...] = (
    "token_embd",
    "output",
    "output_norm",
    "attention",
    "router",
    "routed_expert",
    "shared_expert",
    "dense_ffn",
    "norm",
    "nextn",
    "ssm",
    "other",
)

_ARCH_BY_NAME: dict[str, gguf.MODEL_ARCH] = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}

# K-quants cannot be produced with data (gguf.quants has no K-quant encoder); tiny models must avoid them.
_K_QUANTS = frozenset({QT.Q2_K, QT.Q3_K, QT.Q4_K, QT.Q5_K, QT.Q6_K, QT.Q8_K})


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to write one model.

    Sizes are llama.cpp's hparams (``n_layer`` is ``block_count``: NextN blocks included). Zero means
    "absent". ``ftype`` decides the quant mix the way ``llama-quantize`` would (see the module doc).
    """

    name: str
    arch: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    n_vocab: int
    n_ctx: int
    ftype: LlamaFileType
    header_only: bool = False
    # Mixture of experts.
    n_expert: int = 0
    n_expert_used: int = 0
    n_ff_exp: int = 0
    n_expert_shared: int = 0
    n_ff_shexp: int = 0  # written as its own key (qwen3next); else n_ff_exp * n_expert_shared
    n_dense_lead: int = 0
    moe_layer_step: int = 0  # llama4 interleave_moe_layer_step: block i is MoE when (i + 1) % step == 0
    n_nextn: int = 0
    expert_gating: ExpertGatingFuncType | None = None
    expert_weights_scale: float = 0.0
    expert_weights_norm: bool = False
    n_expert_groups: int = 0
    n_group_used: int = 0
    expert_bias: bool = False  # gpt-oss: ffn_*_exps.bias and ffn_gate_inp.bias
    # Attention.
    explicit_head_dim: bool = False  # the HF config has head_dim, so the converter writes key/value_length
    rope_dim: int = 0  # 0: rope over the whole head
    rope_theta: float = 10000.0
    rope_yarn: tuple[float, int] | None = None  # (factor, original context)
    yarn_log_mul: float = 0.0
    rms_eps: float = 1e-6
    sliding_window: int = 0
    attn_bias: bool = False
    qk_norm: bool = False
    q_lora_rank: int = 0  # MLA (deepseek2)
    kv_lora_rank: int = 0
    qk_nope_dim: int = 0
    v_head_dim: int = 0
    # Gated delta net (qwen3next).
    ssm_conv_kernel: int = 0
    ssm_state_size: int = 0
    ssm_group_count: int = 0
    ssm_time_step_rank: int = 0
    full_attention_interval: int = 0
    # Vocabulary.
    tokenizer: str = "llama"  # "llama" (SentencePiece, with scores) or "gpt2" (byte-level BPE, with merges)
    tokenizer_pre: str = ""
    n_merges: int = 0
    bos_id: int = 1
    eos_id: int = 2
    special_from: int = 0  # ids >= this are control tokens (gpt2 vocabularies); 0: none
    # Files.
    shards: int = 1  # what write_model writes when not told otherwise
    seed: int = 0

    @property
    def n_layer_main(self) -> int:
        """Blocks llama.cpp evaluates (NextN blocks excluded)."""
        return self.n_layer - self.n_nextn

    @property
    def n_ff_shared(self) -> int:
        """Width of the shared expert FFN."""
        return self.n_ff_shexp or self.n_ff_exp * self.n_expert_shared

    @property
    def n_rot(self) -> int:
        """Rotary dimensions per head."""
        return self.rope_dim or self.head_dim

    def is_moe_block(self, il: int) -> bool:
        """Whether block ``il`` has routed experts."""
        if not self.n_expert or il < self.n_dense_lead:
            return False
        if self.moe_layer_step:
            return (il + 1) % self.moe_layer_step == 0
        return True

    def is_recurrent_block(self, il: int) -> bool:
        """Whether block ``il`` is a linear-attention (gated delta net) block."""
        if not self.full_attention_interval or il >= self.n_layer_main:
            return False
        return (il + 1) % self.full_attention_interval != 0


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a factory model. ``ne`` is in ggml order (``ne[0]`` is the row length)."""

    name: str
    ne: tuple[int, ...]
    ggml_type: QT
    role: str

    @property
    def shape(self) -> tuple[int, ...]:
        """numpy order, as ``GGUFWriter`` and ``GGUFReader.data`` use it."""
        return tuple(reversed(self.ne))

    @property
    def n_elements(self) -> int:
        """Number of elements."""
        return math.prod(self.ne)

    @property
    def nbytes(self) -> int:
        """Exact data size in bytes (unpadded)."""
        block, size = GGML_QUANT_SIZES[self.ggml_type]
        if self.ne[0] % block:
            raise ValueError(f"{self.name}: a row of {self.ne[0]} is not whole {self.ggml_type.name} blocks")
        return self.n_elements // block * size


@dataclass(frozen=True)
class Expected:
    """What an inspector of a factory model must find."""

    name: str
    arch: str
    n_tensors: int
    total_bytes: int
    n_expert: int
    n_expert_used: int
    n_layer: int  # block_count, NextN blocks included
    n_nextn: int
    n_dense_lead: int
    n_files: int
    bytes_by_role: dict[str, int]
    tensors: tuple[TensorSpec, ...]

    def tensor(self, name: str) -> TensorSpec:
        """The tensor called ``name``."""
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)


# --------------------------------------------------------------------------------------------------------
# Tensor plans, per llama.cpp's load_arch_tensors.


class _Plan:
    """Collects (name, ne, role) in file order; names come from gguf's templates for the arch."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.known = gguf.MODEL_TENSORS[_ARCH_BY_NAME[spec.arch]]
        self.items: list[tuple[str, tuple[int, ...], str]] = []
        self.nextn_from = spec.n_layer_main

    def add(self, kind: MODEL_TENSOR, ne: Sequence[int], role: str, *, bid: int | None = None,
            suffix: str = ".weight") -> None:
        # gguf-py's per-arch table is what the converter may write for this arch: a tensor outside it would
        # be a name no real file of the arch has.
        if kind not in self.known:
            raise ValueError(f"{kind.name} is not a {self.spec.arch} tensor in gguf-py")
        name = gguf.TENSOR_NAMES[kind].format(bid=bid) + suffix
        if bid is not None and bid >= self.nextn_from:
            role = "nextn"
        self.items.append((name, tuple(int(x) for x in ne), role))


def _attention(p: _Plan, il: int) -> None:
    s = p.spec
    E, H, Hkv, D = s.n_embd, s.n_head, s.n_head_kv, s.head_dim
    p.add(MODEL_TENSOR.ATTN_NORM, [E], "norm", bid=il)
    if s.kv_lora_rank:  # MLA, split k_b/v_b as the current converter writes it
        qk = s.qk_nope_dim + s.rope_dim
        if s.q_lora_rank:
            p.add(MODEL_TENSOR.ATTN_Q_A_NORM, [s.q_lora_rank], "norm", bid=il)
        p.add(MODEL_TENSOR.ATTN_KV_A_NORM, [s.kv_lora_rank], "norm", bid=il)
        if s.q_lora_rank:
            p.add(MODEL_TENSOR.ATTN_Q_A, [E, s.q_lora_rank], "attention", bid=il)
            p.add(MODEL_TENSOR.ATTN_Q_B, [s.q_lora_rank, H * qk], "attention", bid=il)
        else:
            p.add(MODEL_TENSOR.ATTN_Q, [E, H * qk], "attention", bid=il)
        p.add(MODEL_TENSOR.ATTN_KV_A_MQA, [E, s.kv_lora_rank + s.rope_dim], "attention", bid=il)
        p.add(MODEL_TENSOR.ATTN_K_B, [s.qk_nope_dim, s.kv_lora_rank, H], "attention", bid=il)
        p.add(MODEL_TENSOR.ATTN_V_B, [s.kv_lora_rank, s.v_head_dim, H], "attention", bid=il)
        p.add(MODEL_TENSOR.ATTN_OUT, [H * s.v_head_dim, E], "attention", bid=il)
        return
    if s.is_recurrent_block(il):
        _gated_delta_net(p, il)
        return
    # qwen3next's full-attention blocks project a gate together with Q.
    n_q = H * D * (2 if s.arch == "qwen3next" else 1)
    p.add(MODEL_TENSOR.ATTN_Q, [E, n_q], "attention", bid=il)
    p.add(MODEL_TENSOR.ATTN_K, [E, Hkv * D], "attention", bid=il)
    p.add(MODEL_TENSOR.ATTN_V, [E, Hkv * D], "attention", bid=il)
    if s.attn_bias:
        p.add(MODEL_TENSOR.ATTN_Q, [H * D], "attention", bid=il, suffix=".bias")
        p.add(MODEL_TENSOR.ATTN_K, [Hkv * D], "attention", bid=il, suffix=".bias")
        p.add(MODEL_TENSOR.ATTN_V, [Hkv * D], "attention", bid=il, suffix=".bias")
    p.add(MODEL_TENSOR.ATTN_OUT, [H * D, E], "attention", bid=il)
    if s.arch == "gpt-oss":
        p.add(MODEL_TENSOR.ATTN_OUT, [E], "attention", bid=il, suffix=".bias")
        p.add(MODEL_TENSOR.ATTN_SINKS, [H], "attention", bid=il)
    if s.qk_norm:
        p.add(MODEL_TENSOR.ATTN_Q_NORM, [D], "norm", bid=il)
        p.add(MODEL_TENSOR.ATTN_K_NORM, [D], "norm", bid=il)


def _gated_delta_net(p: _Plan, il: int) -> None:
    s = p.spec
    E = s.n_embd
    key_dim = s.ssm_state_size * s.ssm_group_count
    value_dim = s.ssm_state_size * s.ssm_time_step_rank
    p.add(MODEL_TENSOR.ATTN_QKV, [E, 2 * key_dim + value_dim], "attention", bid=il)
    p.add(MODEL_TENSOR.ATTN_GATE, [E, value_dim], "attention", bid=il)
    p.add(MODEL_TENSOR.SSM_CONV1D, [s.ssm_conv_kernel, 2 * key_dim + value_dim], "ssm", bid=il)
    p.add(MODEL_TENSOR.SSM_DT, [s.ssm_time_step_rank], "ssm", bid=il, suffix=".bias")
    p.add(MODEL_TENSOR.SSM_A, [s.ssm_time_step_rank], "ssm", bid=il, suffix="")
    p.add(MODEL_TENSOR.SSM_BETA_ALPHA, [E, 2 * s.ssm_time_step_rank], "ssm", bid=il)
    p.add(MODEL_TENSOR.SSM_NORM, [s.ssm_state_size], "norm", bid=il)
    p.add(MODEL_TENSOR.SSM_OUT, [value_dim, E], "ssm", bid=il)


def _ffn(p: _Plan, il: int) -> None:
    s = p.spec
    E = s.n_embd
    # gpt-oss, glm4moe and qwen3next name their pre-FFN norm post_attention_norm.
    if s.arch in ("gpt-oss", "glm4moe", "qwen3next"):
        p.add(MODEL_TENSOR.ATTN_POST_NORM, [E], "norm", bid=il)
    else:
        p.add(MODEL_TENSOR.FFN_NORM, [E], "norm", bid=il)
    if not s.is_moe_block(il):
        p.add(MODEL_TENSOR.FFN_GATE, [E, s.n_ff], "dense_ffn", bid=il)
        p.add(MODEL_TENSOR.FFN_DOWN, [s.n_ff, E], "dense_ffn", bid=il)
        p.add(MODEL_TENSOR.FFN_UP, [E, s.n_ff], "dense_ffn", bid=il)
        return
    X = s.n_expert
    # Mixtral (arch llama) sizes its experts with feed_forward_length.
    F = s.n_ff if s.arch == "llama" else s.n_ff_exp
    p.add(MODEL_TENSOR.FFN_GATE_INP, [E, X], "router", bid=il)
    if s.expert_bias:
        p.add(MODEL_TENSOR.FFN_GATE_INP, [X], "router", bid=il, suffix=".bias")
    if s.arch in ("deepseek2", "glm4moe"):
        p.add(MODEL_TENSOR.FFN_EXP_PROBS_B, [X], "router", bid=il, suffix=".bias")
    p.add(MODEL_TENSOR.FFN_GATE_EXP, [E, F, X], "routed_expert", bid=il)
    p.add(MODEL_TENSOR.FFN_DOWN_EXP, [F, E, X], "routed_expert", bid=il)
    p.add(MODEL_TENSOR.FFN_UP_EXP, [E, F, X], "routed_expert", bid=il)
    if s.expert_bias:
        p.add(MODEL_TENSOR.FFN_GATE_EXP, [F, X], "routed_expert", bid=il, suffix=".bias")
        p.add(MODEL_TENSOR.FFN_DOWN_EXP, [E, X], "routed_expert", bid=il, suffix=".bias")
        p.add(MODEL_TENSOR.FFN_UP_EXP, [F, X], "routed_expert", bid=il, suffix=".bias")
    Fs = s.n_ff_shared
    if s.arch == "llama4":
        Fs = s.n_ff_exp  # llama4 always has one shared expert as wide as a routed one
    if Fs:
        if s.arch == "qwen3next":
            p.add(MODEL_TENSOR.FFN_GATE_INP_SHEXP, [E], "shared_expert", bid=il)
        p.add(MODEL_TENSOR.FFN_GATE_SHEXP, [E, Fs], "shared_expert", bid=il)
        p.add(MODEL_TENSOR.FFN_DOWN_SHEXP, [Fs, E], "shared_expert", bid=il)
        p.add(MODEL_TENSOR.FFN_UP_SHEXP, [E, Fs], "shared_expert", bid=il)


def _nextn(p: _Plan, il: int) -> None:
    s = p.spec
    E, V = s.n_embd, s.n_vocab
    p.add(MODEL_TENSOR.NEXTN_EH_PROJ, [2 * E, E], "nextn", bid=il)
    p.add(MODEL_TENSOR.NEXTN_EMBED_TOKENS, [E, V], "nextn", bid=il)
    p.add(MODEL_TENSOR.NEXTN_ENORM, [E], "nextn", bid=il)
    p.add(MODEL_TENSOR.NEXTN_HNORM, [E], "nextn", bid=il)
    p.add(MODEL_TENSOR.NEXTN_SHARED_HEAD_HEAD, [E, V], "nextn", bid=il)
    p.add(MODEL_TENSOR.NEXTN_SHARED_HEAD_NORM, [E], "nextn", bid=il)


def _raw_plan(spec: ModelSpec) -> list[tuple[str, tuple[int, ...], str]]:
    p = _Plan(spec)
    E, V = spec.n_embd, spec.n_vocab
    p.add(MODEL_TENSOR.TOKEN_EMBD, [E, V], "token_embd")
    for il in range(spec.n_layer):
        _attention(p, il)
        _ffn(p, il)
        if il >= spec.n_layer_main:
            _nextn(p, il)
    p.add(MODEL_TENSOR.OUTPUT_NORM, [E], "output_norm")
    p.add(MODEL_TENSOR.OUTPUT, [E, V], "output")
    return p.items


# --------------------------------------------------------------------------------------------------------
# Tensor types: the converter's F32 rules, then llama-quantize's llama_tensor_get_type for spec.ftype.

_DEFAULT_QTYPE: dict[LlamaFileType, QT] = {
    LlamaFileType.MOSTLY_Q4_K_M: QT.Q4_K,
    LlamaFileType.MOSTLY_Q8_0: QT.Q8_0,
    LlamaFileType.MOSTLY_Q4_0: QT.Q4_0,
    LlamaFileType.MOSTLY_MXFP4_MOE: QT.MXFP4,
}
_K_FALLBACK: dict[QT, QT] = {QT.Q2_K: QT.Q4_0, QT.Q3_K: QT.Q4_0, QT.Q4_K: QT.Q5_0, QT.Q5_K: QT.Q5_1,
                             QT.Q6_K: QT.Q8_0}
_CATEGORIES: tuple[tuple[str, str], ...] = (
    ("attn_qkv.weight", "attn_v"),
    ("attn_kv_b.weight", "attn_v"),
    ("attn_v.weight", "attn_v"),
    ("attn_k.weight", "attn_k"),
    ("attn_q.weight", "attn_q"),
    ("attn_output.weight", "attn_output"),
    ("ffn_up", "ffn_up"),
    ("ffn_gate", "ffn_gate"),
    ("ffn_down", "ffn_down"),
)
_F32_KINDS = ("ffn_gate_inp.weight", "ffn_gate_inp_shexp.weight", "ssm_conv1d.weight")


def _category(name: str) -> str:
    if name == "output.weight":
        return "output"
    if name == "token_embd.weight":
        return "token_embd"
    for needle, cat in _CATEGORIES:
        if needle in name:
            return cat
    return "other"


def _use_more_bits(i_layer: int, n_layer: int) -> bool:
    return i_layer < n_layer // 8 or i_layer >= 7 * n_layer // 8 or (i_layer - n_layer // 8) % 3 == 2


def _fallback(ne0: int, qtype: QT) -> QT:
    """llama-quantize's tensor_type_fallback for rows that are not a whole number of blocks."""
    if ne0 % GGML_QUANT_SIZES[qtype][0] == 0:
        return qtype
    out = _K_FALLBACK.get(qtype, qtype)
    if ne0 % GGML_QUANT_SIZES[out][0]:
        out = QT.F16
    return out


def _assign_types(spec: ModelSpec, raw: list[tuple[str, tuple[int, ...], str]]) -> list[QT]:
    ftype = spec.ftype
    # Checkpoints of these models are bf16, converted as such before llama-quantize.
    source = QT.F16 if ftype == LlamaFileType.MOSTLY_F16 else QT.BF16
    default = _DEFAULT_QTYPE.get(ftype)
    q4km = ftype == LlamaFileType.MOSTLY_Q4_K_M
    tied = not any(name == "output.weight" for name, _, _ in raw)
    n_attention_wv = sum(_category(name) == "attn_v" for name, _, _ in raw)
    i_attention_wv = 0
    i_ffn_down = 0
    out: list[QT] = []
    for name, ne, _ in raw:
        if len(ne) <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight") \
                or name.endswith(_F32_KINDS):
            out.append(QT.F32)
            continue
        if default is None:
            out.append(source)
            continue
        new = default
        cat = _category(name)
        if cat == "output" or (tied and cat == "token_embd"):
            if ftype == LlamaFileType.MOSTLY_MXFP4_MOE or ne[0] % GGML_QUANT_SIZES[new][0]:
                new = QT.Q8_0
            elif new != QT.Q8_0:
                new = QT.Q6_K
        elif ftype == LlamaFileType.MOSTLY_MXFP4_MOE:
            new = QT.MXFP4 if len(ne) > 2 and ne[2] > 1 else QT.Q8_0
        elif cat == "token_embd":
            pass
        elif cat == "attn_v":
            if q4km and _use_more_bits(i_attention_wv, n_attention_wv):
                new = QT.Q6_K
            if spec.n_expert == 8:
                new = QT.Q8_0
            i_attention_wv += 1
        elif cat == "attn_k":
            if spec.n_expert == 8:
                new = QT.Q8_0
        elif cat == "ffn_down":
            # With experts llama-quantize reads the layer from the name; without, it counts ffn_down tensors.
            i_layer = int(name.split(".")[1]) if spec.n_expert > 1 else i_ffn_down
            if q4km and _use_more_bits(i_layer, spec.n_layer):
                new = QT.Q6_K
            i_ffn_down += 1
        elif cat == "attn_output" and q4km and spec.n_expert == 8:
            new = QT.Q5_K
        out.append(_fallback(ne[0], new))
    return out


def tensor_plan(spec: ModelSpec | str) -> tuple[TensorSpec, ...]:
    """Every tensor of the model in file order, with ggml shape, type and role."""
    spec = _spec(spec)
    raw = _raw_plan(spec)
    types = _assign_types(spec, raw)
    return tuple(TensorSpec(name, ne, t, role) for (name, ne, role), t in zip(raw, types))


def expected(spec: ModelSpec | str) -> Expected:
    """What an inspector must find in the files ``write_model(spec, ...)`` writes, computed from the spec."""
    spec = _spec(spec)
    plan = tensor_plan(spec)
    by_role = dict.fromkeys(ROLES, 0)
    for t in plan:
        by_role[t.role] += t.nbytes
    return Expected(
        name=spec.name,
        arch=spec.arch,
        n_tensors=len(plan),
        total_bytes=sum(t.nbytes for t in plan),
        n_expert=spec.n_expert,
        n_expert_used=spec.n_expert_used,
        n_layer=spec.n_layer,
        n_nextn=spec.n_nextn,
        n_dense_lead=spec.n_dense_lead,
        n_files=spec.shards,
        bytes_by_role=by_role,
        tensors=plan,
    )


# --------------------------------------------------------------------------------------------------------
# Metadata, per the converter's set_gguf_parameters.


def _add_hparams(w: gguf.GGUFWriter, s: ModelSpec) -> None:
    w.add_type("model")
    w.add_name(s.name)
    w.add_block_count(s.n_layer)
    w.add_context_length(s.n_ctx)
    w.add_embedding_length(s.n_embd)
    if s.n_ff:
        w.add_feed_forward_length(s.n_ff)
    w.add_head_count(s.n_head)
    w.add_head_count_kv(s.n_head_kv)
    w.add_rope_freq_base(s.rope_theta)
    if s.rope_yarn is not None:
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(s.rope_yarn[0])
        w.add_rope_scaling_orig_ctx_len(s.rope_yarn[1])
    w.add_layer_norm_rms_eps(s.rms_eps)
    if s.n_expert:
        w.add_expert_count(s.n_expert)
        w.add_expert_used_count(s.n_expert_used)
    if s.n_expert_groups:
        w.add_expert_group_count(s.n_expert_groups)
        w.add_expert_group_used_count(s.n_group_used)
    if s.expert_gating is not None:
        w.add_expert_gating_func(s.expert_gating)
    if s.explicit_head_dim:
        w.add_key_length(s.head_dim)
        w.add_value_length(s.head_dim)
    if s.arch in ("llama", "llama4", "deepseek2"):
        w.add_vocab_size(s.n_vocab)
    if s.n_dense_lead or s.arch == "deepseek2":
        w.add_leading_dense_block_count(s.n_dense_lead)
    if s.kv_lora_rank:
        if s.q_lora_rank:
            w.add_q_lora_rank(s.q_lora_rank)
        w.add_kv_lora_rank(s.kv_lora_rank)
        # MLA is stored as MQA with wide heads; the *_mla keys are the decompressed head sizes.
        w.add_key_length(s.kv_lora_rank + s.rope_dim)
        w.add_value_length(s.kv_lora_rank)
        w.add_key_length_mla(s.qk_nope_dim + s.rope_dim)
        w.add_value_length_mla(s.v_head_dim)
    if s.n_ff_exp:
        w.add_expert_feed_forward_length(s.n_ff_exp)
    if s.n_ff_shexp:
        w.add_expert_shared_feed_forward_length(s.n_ff_shexp)
    if s.n_expert_shared:
        w.add_expert_shared_count(s.n_expert_shared)
    if s.expert_weights_scale:
        w.add_expert_weights_scale(s.expert_weights_scale)
    if s.expert_weights_norm:
        w.add_expert_weights_norm(True)
    if s.rope_dim or s.arch in ("llama", "llama4"):
        w.add_rope_dimension_count(s.n_rot)
    if s.yarn_log_mul:
        w.add_rope_scaling_yarn_log_mul(s.yarn_log_mul)
    if s.moe_layer_step:
        w.add_interleave_moe_layer_step(s.moe_layer_step)
    if s.sliding_window:
        w.add_sliding_window(s.sliding_window)
    if s.n_nextn:
        w.add_nextn_predict_layers(s.n_nextn)
    if s.ssm_state_size:
        w.add_ssm_conv_kernel(s.ssm_conv_kernel)
        w.add_ssm_state_size(s.ssm_state_size)
        w.add_ssm_group_count(s.ssm_group_count)
        w.add_ssm_time_step_rank(s.ssm_time_step_rank)
        w.add_ssm_inner_size(s.ssm_state_size * s.ssm_time_step_rank)
        w.add_full_attention_interval(s.full_attention_interval)
    w.add_file_type(s.ftype)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _gpt2_byte_chars() -> list[str]:
    """GPT-2's byte-to-unicode table: byte-level BPE vocabularies hold these 256 one-character tokens, which
    llama.cpp needs to fall back to when a piece is not in the vocabulary."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    chars: dict[int, str] = {b: chr(b) for b in printable}
    n = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + n)
            n += 1
    return [chars[b] for b in range(256)]


_SPM_WORDS = (
    "the", "of", "and", "to", "in", "is", "it", "that", "was", "for", "on", "are", "with", "as", "be", "at",
    "this", "have", "from", "or", "one", "had", "by", "but", "not", "hello", "world", "model", "expert",
    "layer", "token",
)


def _spm_vocab(n_vocab: int) -> tuple[list[str], list[float], list[int]]:
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256))]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL, *([TokenType.BYTE] * 256)]
    pieces = ["\u2581", *"abcdefghijklmnopqrstuvwxyz", *(f"\u2581{c}" for c in "abcdefghijklmnopqrstuvwxyz"),
              *"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?;:'\"-()", *(f"\u2581{w}" for w in _SPM_WORDS)]
    if n_vocab < len(tokens) + len(pieces):
        raise ValueError(f"an SPM vocabulary needs at least {len(tokens) + len(pieces)} tokens")
    # Cheap unique filler keeps full-size vocabularies fast to write.
    pieces += [f"t{i}" for i in range(len(tokens) + len(pieces), n_vocab)]
    scores = [0.0] * len(tokens) + [-float(i) for i in range(len(pieces))]
    return tokens + pieces, scores, [int(t) for t in types] + [int(TokenType.NORMAL)] * len(pieces)


def _add_array(w: gguf.GGUFWriter, key: str, values: Sequence[object], item_type: GGUFValueType) -> None:
    """What ``add_token_list`` & co. write, byte for byte, with the item type named so that ``_Writer`` can
    pack the array in bulk."""
    w.add_key_value(key, values, GGUFValueType.ARRAY, sub_type=item_type)


_NUMPY_ITEM = {GGUFValueType.INT32: "<i4", GGUFValueType.UINT32: "<u4", GGUFValueType.FLOAT32: "<f4"}
_U64 = struct.Struct("<Q").pack


class _Writer(gguf.GGUFWriter):
    """``GGUFWriter`` that packs typed little-endian arrays in bulk.

    The stock writer packs a metadata array item by item (about 2 us each); the full-scale vocabularies have
    up to 650k items, which made writing them the slowest part of the test suite. The bytes are the same (a
    test compares both writers); anything else goes to the stock packer.
    """

    def _pack_val(self, val: Any, vtype: GGUFValueType, add_vtype: bool,
                  sub_type: GGUFValueType | None = None) -> bytes:
        if (vtype is not GGUFValueType.ARRAY or self.endianess is not gguf.GGUFEndian.LITTLE or not val
                or (sub_type is not GGUFValueType.STRING and sub_type not in _NUMPY_ITEM)):
            return super()._pack_val(val, vtype, add_vtype, sub_type)
        head = struct.pack("<IQ", sub_type, len(val))
        if add_vtype:
            head = struct.pack("<I", vtype) + head
        if sub_type is GGUFValueType.STRING:
            items = (v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in val)
            return head + b"".join(itertools.chain.from_iterable((_U64(len(b)), b) for b in items))
        return head + np.asarray(val, dtype=_NUMPY_ITEM[sub_type]).tobytes()


def _add_vocab(w: gguf.GGUFWriter, s: ModelSpec) -> None:
    if s.tokenizer == "llama":
        tokens, scores, types = _spm_vocab(s.n_vocab)
        w.add_tokenizer_model("llama")
        _add_array(w, gguf.Keys.Tokenizer.LIST, tokens, GGUFValueType.STRING)
        _add_array(w, gguf.Keys.Tokenizer.SCORES, scores, GGUFValueType.FLOAT32)
        _add_array(w, gguf.Keys.Tokenizer.TOKEN_TYPE, types, GGUFValueType.INT32)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_unk_token_id(0)
        w.add_add_bos_token(True)
        w.add_add_eos_token(False)
        return
    byte_chars = _gpt2_byte_chars()
    tokens = byte_chars + [f"t{i}" for i in range(len(byte_chars), s.n_vocab)]
    special = s.special_from or s.n_vocab
    types = [int(TokenType.NORMAL)] * special + [int(TokenType.CONTROL)] * (s.n_vocab - special)
    # Merges are never applied by the tools that read these files; only their count (file size) matters.
    merges = [f"t{i} t{i + 1}" for i in range(256, 256 + s.n_merges)]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(s.tokenizer_pre)
    _add_array(w, gguf.Keys.Tokenizer.LIST, tokens, GGUFValueType.STRING)
    _add_array(w, gguf.Keys.Tokenizer.TOKEN_TYPE, types, GGUFValueType.INT32)
    _add_array(w, gguf.Keys.Tokenizer.MERGES, merges, GGUFValueType.STRING)
    w.add_bos_token_id(s.bos_id)
    w.add_eos_token_id(s.eos_id)
    w.add_add_bos_token(False)


# --------------------------------------------------------------------------------------------------------
# Writing.


def _values(spec: ModelSpec, t: TensorSpec) -> np.ndarray:
    """Deterministic values per (spec, tensor) that keep a random model numerically tame."""
    rng = np.random.default_rng([spec.seed, zlib.crc32(f"{spec.name}/{t.name}".encode())])
    x = rng.standard_normal(t.shape, dtype=np.float32)
    base = t.name.removesuffix(".weight")
    if base.endswith("norm"):
        return 1.0 + 0.01 * x
    if t.name.endswith(".ssm_a"):
        return -np.exp(0.1 * x)
    if t.name.endswith(".bias") or base.endswith(("attn_sinks", "ssm_conv1d")):
        return 0.02 * x
    return x / np.float32(math.sqrt(t.ne[0]))


def _encode(spec: ModelSpec, t: TensorSpec) -> np.ndarray:
    if t.ggml_type in _K_QUANTS:
        raise ValueError(f"{spec.name}: {t.name} would be {t.ggml_type.name}, which gguf cannot encode")
    data = gguf.quants.quantize(_values(spec, t), t.ggml_type)
    if data.nbytes != t.nbytes:
        raise AssertionError(f"{t.name}: encoded {data.nbytes} bytes, expected {t.nbytes}")
    return data


def _shard_of(sizes: Sequence[int], n: int) -> list[int]:
    """Shard index per tensor: contiguous, about equal bytes per shard, no shard empty."""
    if n > len(sizes):
        raise ValueError(f"cannot split {len(sizes)} tensors into {n} files")
    total = max(1, sum(sizes))
    out: list[int] = []
    cum = 0
    for i, size in enumerate(sizes):
        want = min(n - 1, cum * n // total)
        want = max(want, n - (len(sizes) - i))  # the tensors left must still fill the shards left
        want = min(want, out[-1] + 1) if out else 0
        out.append(want)
        cum += size
    return out


def _spec(spec: ModelSpec | str) -> ModelSpec:
    if isinstance(spec, ModelSpec):
        return spec
    try:
        return SPECS[spec]
    except KeyError:
        raise KeyError(f"unknown factory model {spec!r}; known: {', '.join(SPECS)}") from None


def write_model(
    spec: ModelSpec | str, path: str | os.PathLike[str], *, split: int | None = None
) -> list[Path]:
    """Writes the model; returns the file paths.

    One file at ``path``, or ``split`` shards named ``<stem>-0000i-of-0000N.gguf`` next to it (``path``'s
    stem is used), split the way ``gguf-split`` does: all metadata in the first shard, ``split.no``,
    ``split.count`` and ``split.tensors.count`` in every shard. ``split=None`` uses ``spec.shards`` (1 for
    all but the split variants). Header-only specs get their data region as a sparse hole of the exact size.
    """
    spec = _spec(spec)
    n_files = spec.shards if split is None else split
    if n_files < 1:
        raise ValueError("split must be >= 1")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    plan = tensor_plan(spec)
    shard = _shard_of([t.nbytes for t in plan], n_files)

    w = _Writer(path, spec.arch)
    _add_hparams(w, spec)
    _add_vocab(w, spec)
    for i, t in enumerate(plan):
        if i and shard[i] != shard[i - 1]:
            w.tensors.append({})  # GGUFWriter fills the last shard dict: this starts the next file
        if spec.header_only:
            w.add_tensor_info(t.name, t.shape, np.dtype(np.float32), t.nbytes, raw_dtype=t.ggml_type)
        else:
            data = _encode(spec, t)
            w.add_tensor(t.name, data, raw_dtype=None if data.dtype != np.uint8 else t.ggml_type)
    paths = w.format_shard_names(path)
    w.write_header_to_file(path)
    w.write_kv_data_to_file()
    if spec.header_only:
        w.write_ti_data_to_file()
        assert w.fout is not None
        align = w.data_alignment
        lengths = [
            w.ggml_pad(f.tell(), align) + sum(w.ggml_pad(ti.nbytes, align) for ti in shard_tensors.values())
            for f, shard_tensors in zip(w.fout, w.tensors)
        ]
        w.close()
        for p, length in zip(paths, lengths):
            os.truncate(p, length)  # extends with a hole: full apparent size, no disk blocks
    else:
        w.write_tensors_to_file()
        w.close()
    return paths


def write_all(directory: str | os.PathLike[str], names: Iterable[str] | None = None) -> dict[str, list[Path]]:
    """Writes factory models (all of them by default) as ``<directory>/<name>.gguf``; returns their paths."""
    directory = Path(directory)
    return {name: write_model(name, directory / f"{name}.gguf") for name in (names or SPECS)}


# --------------------------------------------------------------------------------------------------------
# The models. Full-scale numbers are the HF configs of the real models; quant mixes follow llama-quantize.

_Q4KM = LlamaFileType.MOSTLY_Q4_K_M
_TINY_COMMON = {"n_ctx": 4096, "n_vocab": 400, "header_only": False}

_TINY_SPECS: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="qwen3moe-tiny", arch="qwen3moe", n_layer=2, n_embd=64, n_head=4, n_head_kv=2, head_dim=32,
        n_ff=96, n_expert=8, n_expert_used=2, n_ff_exp=32, explicit_head_dim=True, qk_norm=True,
        rope_theta=1e6, ftype=_Q4KM, **_TINY_COMMON,
    ),
    ModelSpec(
        name="deepseek2-tiny", arch="deepseek2", n_layer=3, n_embd=64, n_head=4, n_head_kv=1, head_dim=24,
        n_ff=96, n_expert=8, n_expert_used=2, n_ff_exp=32, n_expert_shared=1, n_dense_lead=1,
        expert_gating=ExpertGatingFuncType.SIGMOID, expert_weights_scale=2.5, expert_weights_norm=True,
        n_expert_groups=4, n_group_used=2, q_lora_rank=32, kv_lora_rank=32, qk_nope_dim=16, rope_dim=8,
        v_head_dim=16, ftype=_Q4KM, **_TINY_COMMON,
    ),
    ModelSpec(
        name="gpt-oss-tiny", arch="gpt-oss", n_layer=2, n_embd=64, n_head=4, n_head_kv=2, head_dim=16,
        n_ff=64, n_expert=8, n_expert_used=2, n_ff_exp=64, expert_bias=True, explicit_head_dim=True,
        sliding_window=32, attn_bias=True, rope_theta=150000.0, rms_eps=1e-5,
        ftype=LlamaFileType.MOSTLY_MXFP4_MOE, **_TINY_COMMON,
    ),
    ModelSpec(
        name="mixtral-tiny", arch="llama", n_layer=2, n_embd=64, n_head=4, n_head_kv=2, head_dim=16, n_ff=96,
        n_expert=8, n_expert_used=2, rope_theta=1e6, rms_eps=1e-5, ftype=_Q4KM, **_TINY_COMMON,
    ),
    ModelSpec(
        name="glm4moe-tiny", arch="glm4moe", n_layer=4, n_nextn=1, n_embd=64, n_head=4, n_head_kv=2,
        head_dim=16, n_ff=96, n_expert=8, n_expert_used=2, n_ff_exp=32, n_expert_shared=1, n_dense_lead=1,
        expert_gating=ExpertGatingFuncType.SIGMOID, expert_weights_scale=1.0, expert_weights_norm=True,
        n_expert_groups=1, n_group_used=1, explicit_head_dim=True, rope_dim=8, attn_bias=True,
        rope_theta=1e6, rms_eps=1e-5, ftype=LlamaFileType.MOSTLY_Q8_0, **_TINY_COMMON,
    ),
    ModelSpec(
        name="llama-tiny", arch="llama", n_layer=2, n_embd=64, n_head=4, n_head_kv=2, head_dim=16, n_ff=160,
        rope_theta=500000.0, rms_eps=1e-5, ftype=LlamaFileType.MOSTLY_F16, **_TINY_COMMON,
    ),
    ModelSpec(
        name="llama4-tiny", arch="llama4", n_layer=4, n_embd=64, n_head=4, n_head_kv=2, head_dim=16, n_ff=160,
        n_expert=8, n_expert_used=1, n_ff_exp=64, moe_layer_step=2, explicit_head_dim=True,
        rope_theta=500000.0, rms_eps=1e-5, ftype=LlamaFileType.MOSTLY_Q4_0, **_TINY_COMMON,
    ),
    ModelSpec(
        name="qwen3next-tiny", arch="qwen3next", n_layer=4, n_embd=64, n_head=4, n_head_kv=2, head_dim=16,
        n_ff=96, n_expert=8, n_expert_used=2, n_ff_exp=32, n_ff_shexp=32, explicit_head_dim=True,
        qk_norm=True, rope_dim=4, rope_theta=1e7, ssm_conv_kernel=4, ssm_state_size=16, ssm_group_count=2,
        ssm_time_step_rank=4, full_attention_interval=4, ftype=LlamaFileType.MOSTLY_BF16, **_TINY_COMMON,
    ),
)

_QWEN_VOCAB = {"n_vocab": 151936, "tokenizer": "gpt2", "tokenizer_pre": "qwen2", "n_merges": 151387,
               "bos_id": 151643, "eos_id": 151645, "special_from": 151643}

_FULL_SPECS: tuple[ModelSpec, ...] = (
    # Qwen/Qwen3-30B-A3B
    ModelSpec(
        name="qwen3-30b-a3b", arch="qwen3moe", n_layer=48, n_embd=2048, n_head=32, n_head_kv=4, head_dim=128,
        n_ff=6144, n_ctx=40960, n_expert=128, n_expert_used=8, n_ff_exp=768, explicit_head_dim=True,
        qk_norm=True, rope_theta=1e6, ftype=_Q4KM, header_only=True, **_QWEN_VOCAB,
    ),
    # Qwen/Qwen3-235B-A22B
    ModelSpec(
        name="qwen3-235b-a22b", arch="qwen3moe", n_layer=94, n_embd=4096, n_head=64, n_head_kv=4,
        head_dim=128, n_ff=12288, n_ctx=40960, n_expert=128, n_expert_used=8, n_ff_exp=1536,
        explicit_head_dim=True, qk_norm=True, rope_theta=1e6, ftype=_Q4KM, header_only=True, **_QWEN_VOCAB,
    ),
    # deepseek-ai/DeepSeek-V3 (MTP block dropped, as the popular GGUFs do)
    ModelSpec(
        name="deepseek-v3", arch="deepseek2", n_layer=61, n_embd=7168, n_head=128, n_head_kv=1, head_dim=192,
        n_ff=18432, n_ctx=163840, n_expert=256, n_expert_used=8, n_ff_exp=2048, n_expert_shared=1,
        n_dense_lead=3, expert_gating=ExpertGatingFuncType.SIGMOID, expert_weights_scale=2.5,
        expert_weights_norm=True, n_expert_groups=8, n_group_used=4, q_lora_rank=1536, kv_lora_rank=512,
        qk_nope_dim=128, rope_dim=64, v_head_dim=128, rope_yarn=(40.0, 4096), yarn_log_mul=0.1,
        n_vocab=129280, tokenizer="gpt2", tokenizer_pre="deepseek-v3", n_merges=127741, bos_id=0, eos_id=1,
        special_from=128000, ftype=_Q4KM, header_only=True,
    ),
    # openai/gpt-oss-20b (ggml-org's MXFP4 GGUF: experts MXFP4, other matrices Q8_0)
    ModelSpec(
        name="gpt-oss-20b", arch="gpt-oss", n_layer=24, n_embd=2880, n_head=64, n_head_kv=8, head_dim=64,
        n_ff=2880, n_ctx=131072, n_expert=32, n_expert_used=4, n_ff_exp=2880, expert_bias=True,
        explicit_head_dim=True, sliding_window=128, attn_bias=True, rope_theta=150000.0,
        rope_yarn=(32.0, 4096), rms_eps=1e-5, n_vocab=201088, tokenizer="gpt2", tokenizer_pre="gpt-4o",
        n_merges=446189, bos_id=199998, eos_id=200002, special_from=199998,
        ftype=LlamaFileType.MOSTLY_MXFP4_MOE, header_only=True,
    ),
    # openai/gpt-oss-120b (same layout as the 20b: more blocks, 128 experts)
    ModelSpec(
        name="gpt-oss-120b", arch="gpt-oss", n_layer=36, n_embd=2880, n_head=64, n_head_kv=8, head_dim=64,
        n_ff=2880, n_ctx=131072, n_expert=128, n_expert_used=4, n_ff_exp=2880, expert_bias=True,
        explicit_head_dim=True, sliding_window=128, attn_bias=True, rope_theta=150000.0,
        rope_yarn=(32.0, 4096), rms_eps=1e-5, n_vocab=201088, tokenizer="gpt2", tokenizer_pre="gpt-4o",
        n_merges=446189, bos_id=199998, eos_id=200002, special_from=199998,
        ftype=LlamaFileType.MOSTLY_MXFP4_MOE, header_only=True,
    ),
    # mistralai/Mixtral-8x7B-v0.1
    ModelSpec(
        name="mixtral-8x7b", arch="llama", n_layer=32, n_embd=4096, n_head=32, n_head_kv=8, head_dim=128,
        n_ff=14336, n_ctx=32768, n_expert=8, n_expert_used=2, rope_theta=1e6, rms_eps=1e-5, n_vocab=32000,
        ftype=_Q4KM, header_only=True,
    ),
    # zai-org/GLM-4.5-Air (46 blocks + 1 NextN block)
    ModelSpec(
        name="glm-4.5-air", arch="glm4moe", n_layer=47, n_nextn=1, n_embd=4096, n_head=96, n_head_kv=8,
        head_dim=128, n_ff=10944, n_ctx=131072, n_expert=128, n_expert_used=8, n_ff_exp=1408,
        n_expert_shared=1, n_dense_lead=1, expert_gating=ExpertGatingFuncType.SIGMOID,
        expert_weights_scale=1.0, expert_weights_norm=True, n_expert_groups=1, n_group_used=1,
        explicit_head_dim=True, rope_dim=64, attn_bias=True, rope_theta=1e6, rms_eps=1e-5, n_vocab=151552,
        tokenizer="gpt2", tokenizer_pre="glm4", n_merges=318088, bos_id=151329, eos_id=151329,
        special_from=151329, ftype=_Q4KM, header_only=True,
    ),
    # meta-llama/Meta-Llama-3-8B
    ModelSpec(
        name="llama-3-8b", arch="llama", n_layer=32, n_embd=4096, n_head=32, n_head_kv=8, head_dim=128,
        n_ff=14336, n_ctx=8192, rope_theta=500000.0, rms_eps=1e-5, n_vocab=128256, tokenizer="gpt2",
        tokenizer_pre="llama-bpe", n_merges=280147, bos_id=128000, eos_id=128001, special_from=128000,
        ftype=_Q4KM, header_only=True,
    ),
    # Qwen/Qwen3-Next-80B-A3B (hybrid: 3 of 4 blocks gated delta net)
    ModelSpec(
        name="qwen3-next-80b-a3b", arch="qwen3next", n_layer=48, n_embd=2048, n_head=16, n_head_kv=2,
        head_dim=256, n_ff=5120, n_ctx=262144, n_expert=512, n_expert_used=10, n_ff_exp=512, n_ff_shexp=512,
        explicit_head_dim=True, qk_norm=True, rope_dim=64, rope_theta=1e7, ssm_conv_kernel=4,
        ssm_state_size=128, ssm_group_count=16, ssm_time_step_rank=32, full_attention_interval=4,
        ftype=_Q4KM, header_only=True, **_QWEN_VOCAB,
    ),
)

# unsloth ships its DeepSeek-V3 Q4_K_M as 9 shards.
_SPLIT_SPECS: tuple[ModelSpec, ...] = (
    replace(next(s for s in _FULL_SPECS if s.name == "deepseek-v3"), name="deepseek-v3-split", shards=9),
)

SPECS: dict[str, ModelSpec] = {s.name: s for s in (*_TINY_SPECS, *_FULL_SPECS, *_SPLIT_SPECS)}
TINY: tuple[str, ...] = tuple(s.name for s in _TINY_SPECS)
FULL: tuple[str, ...] = tuple(s.name for s in (*_FULL_SPECS, *_SPLIT_SPECS))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m moeplace.testing OUTDIR [names...]``: writes factory models for examples and benchmarks."""
    parser = argparse.ArgumentParser(prog="python -m moeplace.testing", description=main.__doc__)
    parser.add_argument("outdir", nargs="?", type=Path, help="directory to write <name>.gguf files into")
    parser.add_argument("names", nargs="*", help=f"models to write (default: all); tiny: {', '.join(TINY)}; "
                        f"full-scale: {', '.join(FULL)}")
    parser.add_argument("--list", action="store_true", help="list the models with tensor counts and sizes")
    args = parser.parse_args(argv)
    if args.list or args.outdir is None:
        for name in SPECS:
            e = expected(name)
            print(f"{name:22s} {e.arch:10s} {e.n_tensors:6d} tensors {e.total_bytes:>16,d} bytes"
                  f" {e.n_files} file(s)")
        return 0
    unknown = [n for n in args.names if n not in SPECS]
    if unknown:
        parser.error(f"unknown model(s): {', '.join(unknown)}")
    for name, paths in write_all(args.outdir, args.names or None).items():
        print(f"{name}: {', '.join(str(p) for p in paths)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
