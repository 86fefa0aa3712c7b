"""Which ggml type each tensor of a factory model gets: the converter's F32 rules, then a port of
llama-quantize's ``llama_tensor_get_type`` (``src/llama-quant.cpp``) for the spec's ``ftype``, so a "Q4_K_M"
spec has the per-layer Q6_K ``ffn_down``/``attn_v`` mix a real Q4_K_M file has."""

from __future__ import annotations

from gguf import GGML_QUANT_SIZES, LlamaFileType
from gguf import GGMLQuantizationType as QT

from moeplace.testing.specs import ModelSpec

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


def assign_types(spec: ModelSpec, raw: list[tuple[str, tuple[int, ...], str]]) -> list[QT]:
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


