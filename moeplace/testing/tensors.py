"""The tensors of a factory model, per llama.cpp's ``load_arch_tensors`` (names from gguf-py's
templates, shapes from ``src/models/<arch>.cpp``), and what an inspector must find in it."""

from __future__ import annotations

from collections.abc import Sequence

import gguf
from gguf import MODEL_TENSOR, ExpertGatingFuncType

from moeplace.testing.quant import assign_types
from moeplace.testing.specs import ROLES, Expected, ModelSpec, TensorSpec, resolve

# --------------------------------------------------------------------------------------------------------
# Tensor plans, per llama.cpp's load_arch_tensors.


_ARCH_BY_NAME: dict[str, gguf.MODEL_ARCH] = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}


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
    # The score-correction bias belongs to sigmoid routing (DeepSeek-V3, GLM-4.5); DeepSeek-V2's softmax routing
    # has none.
    if s.arch in ("deepseek2", "glm4moe") and s.expert_gating == ExpertGatingFuncType.SIGMOID:
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




def tensor_plan(spec: ModelSpec | str) -> tuple[TensorSpec, ...]:
    """Every tensor of the model in file order, with ggml shape, type and role."""
    spec = resolve(spec)
    raw = _raw_plan(spec)
    types = assign_types(spec, raw)
    return tuple(TensorSpec(name, ne, t, role) for (name, ne, role), t in zip(raw, types))


def expected(spec: ModelSpec | str) -> Expected:
    """What an inspector must find in the files ``write_model(spec, ...)`` writes, computed from the spec."""
    spec = resolve(spec)
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


