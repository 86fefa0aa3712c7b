"""The factory's model specifications: what a model is (:class:`ModelSpec`), what one tensor is
(:class:`TensorSpec`), what an inspector must find (:class:`Expected`), and the models themselves (``SPECS``,
``TINY``, ``FULL``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from gguf import GGML_QUANT_SIZES, ExpertGatingFuncType, LlamaFileType
from gguf import GGMLQuantizationType as QT

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

# K-quants cannot be produced with data (gguf.quants has no K-quant encoder); tiny models must avoid them.
K_QUANTS = frozenset({QT.Q2_K, QT.Q3_K, QT.Q4_K, QT.Q5_K, QT.Q6_K, QT.Q8_K})


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
    # meta-llama/Llama-2-7b (dense, multi-head attention: 32 KV heads; SentencePiece vocabulary of 32000). The
    # llama.cpp scoreboards' model: llama-2-7b.Q4_0.gguf, which llama-bench prints as 3.56 GiB, 6.74 B parameters;
    # this spec at Q4_0 (output Q6_K, as llama-quantize makes it) is 6,738,415,616 parameters, 3.56 GiB.
    ModelSpec(
        name="llama-2-7b", arch="llama", n_layer=32, n_embd=4096, n_head=32, n_head_kv=32, head_dim=128,
        n_ff=11008, n_ctx=4096, rope_theta=10000.0, rms_eps=1e-5, n_vocab=32000, tokenizer="llama",
        ftype=LlamaFileType.MOSTLY_Q4_0, header_only=True,
    ),
    # Qwen/Qwen3-Next-80B-A3B (hybrid: 3 of 4 blocks gated delta net)
    ModelSpec(
        name="qwen3-next-80b-a3b", arch="qwen3next", n_layer=48, n_embd=2048, n_head=16, n_head_kv=2,
        head_dim=256, n_ff=5120, n_ctx=262144, n_expert=512, n_expert_used=10, n_ff_exp=512, n_ff_shexp=512,
        explicit_head_dim=True, qk_norm=True, rope_dim=64, rope_theta=1e7, ssm_conv_kernel=4,
        ssm_state_size=128, ssm_group_count=16, ssm_time_step_rank=32, full_attention_interval=4,
        ftype=_Q4KM, header_only=True, **_QWEN_VOCAB,
    ),
    # Qwen/Qwen3-14B (dense; the factory writes llama.cpp's qwen3 architecture: gguf-py's qwen3 tensor table).
    # Sizes: the config.json copy in github.com/citsjtu2020/LLM-Prof sglang/Model_Config.md.
    ModelSpec(
        name="qwen3-14b", arch="qwen3", n_layer=40, n_embd=5120, n_head=40, n_head_kv=8, head_dim=128,
        n_ff=17408, n_ctx=40960, explicit_head_dim=True, qk_norm=True, rope_theta=1e6, ftype=_Q4KM,
        header_only=True, **_QWEN_VOCAB,
    ),
    # Qwen/Qwen2.5-14B (dense, QKV bias; vocabulary padded to 152064 rows, same tokenizer as Qwen3).
    # Sizes: the config.json copy in github.com/citsjtu2020/LLM-Prof sglang/Model_Config.md.
    ModelSpec(
        name="qwen2.5-14b", arch="qwen2", n_layer=48, n_embd=5120, n_head=40, n_head_kv=8, head_dim=128,
        n_ff=13824, n_ctx=131072, attn_bias=True, rope_theta=1e6, rms_eps=1e-5, ftype=_Q4KM, header_only=True,
        **{**_QWEN_VOCAB, "n_vocab": 152064},
    ),
    # Qwen/Qwen2.5-Coder-32B-Instruct (dense, QKV bias). Layers, heads and the 32768 context: its model card
    # (github.com/ZHUI/paddlenlp_model_readme Qwen/Qwen2.5-Coder-32B-Instruct/index.md); width, FFN and vocabulary
    # are Qwen2.5-32B's config.json (LLM-Prof sglang/Model_Config.md): no stored copy of the Coder's own config found.
    ModelSpec(
        name="qwen2.5-coder-32b", arch="qwen2", n_layer=64, n_embd=5120, n_head=40, n_head_kv=8, head_dim=128,
        n_ff=27648, n_ctx=32768, attn_bias=True, rope_theta=1e6, ftype=_Q4KM, header_only=True,
        **{**_QWEN_VOCAB, "n_vocab": 152064},
    ),
    # mistralai/Mistral-Small-24B-2501 (dense; MistralForCausalLM converts to llama; head_dim 128 is not
    # n_embd / n_head). Tekken vocabulary: 131072 tokens, 269443 merges as llama.cpp's loader lists them.
    # Sizes: the Instruct-2501 config.json copy in github.com/OpenMOSE/RWKV-LM-RLHF main/tokenizer/mistralsmall3/.
    ModelSpec(
        name="mistral-small-24b", arch="llama", n_layer=40, n_embd=5120, n_head=32, n_head_kv=8, head_dim=128,
        n_ff=32768, n_ctx=32768, explicit_head_dim=True, rope_theta=1e8, rms_eps=1e-5, n_vocab=131072,
        tokenizer="gpt2", tokenizer_pre="tekken", n_merges=269443, bos_id=1, eos_id=2, ftype=_Q4KM, header_only=True,
    ),
    # deepseek-ai/DeepSeek-Coder-V2-Lite-Instruct (16B-A2.4B: MLA without a query LoRA, softmax routing with no
    # score-correction bias, 2 shared experts, 1 leading dense block); 99757 merges as llama.cpp lists them for
    # the DeepSeek-V2-Lite vocabulary. Sizes: the GGUF header of DeepSeek-Coder-V2-Lite-Instruct that
    # github.com/ggml-org/llama.cpp/issues/7979 dumps (27 blocks, 2048, 10944, 16 heads, 163840), and the V2-Lite
    # config.json it shares (64 experts of 1408, 6 used, 2 shared, 1 dense lead, MLA 512/128/64/128, YaRN 40/4096).
    ModelSpec(
        name="deepseek-coder-v2-lite", arch="deepseek2", n_layer=27, n_embd=2048, n_head=16, n_head_kv=1,
        head_dim=192, n_ff=10944, n_ctx=163840, n_expert=64, n_expert_used=6, n_ff_exp=1408, n_expert_shared=2,
        n_dense_lead=1, expert_gating=ExpertGatingFuncType.SOFTMAX, expert_weights_scale=1.0, kv_lora_rank=512,
        qk_nope_dim=128, rope_dim=64, v_head_dim=128, rope_yarn=(40.0, 4096), yarn_log_mul=0.0707,
        n_vocab=102400, tokenizer="gpt2", tokenizer_pre="deepseek-llm", n_merges=99757, bos_id=100000,
        eos_id=100001, special_from=100000, ftype=_Q4KM, header_only=True,
    ),
    # mistral-community/Mixtral-8x22B-v0.1 (WizardLM-2-8x22B is a fine-tune of it: same shape, 32000 tokens).
    # Sizes: the config.json copy in github.com/scaleapi/llm-engine
    # model-engine/tests/unit/domain/test_llm_use_cases.py.
    ModelSpec(
        name="mixtral-8x22b", arch="llama", n_layer=56, n_embd=6144, n_head=48, n_head_kv=8, head_dim=128,
        n_ff=16384, n_ctx=65536, n_expert=8, n_expert_used=2, rope_theta=1e6, rms_eps=1e-5, n_vocab=32000,
        ftype=_Q4KM, header_only=True,
    ),
)

# unsloth ships its DeepSeek-V3 Q4_K_M as 9 shards.
_SPLIT_SPECS: tuple[ModelSpec, ...] = (
    replace(next(s for s in _FULL_SPECS if s.name == "deepseek-v3"), name="deepseek-v3-split", shards=9),
)

SPECS: dict[str, ModelSpec] = {s.name: s for s in (*_TINY_SPECS, *_FULL_SPECS, *_SPLIT_SPECS)}
TINY: tuple[str, ...] = tuple(s.name for s in _TINY_SPECS)
FULL: tuple[str, ...] = tuple(s.name for s in (*_FULL_SPECS, *_SPLIT_SPECS))




def resolve(spec: ModelSpec | str) -> ModelSpec:
    """A spec, or the spec of that name."""
    if isinstance(spec, ModelSpec):
        return spec
    try:
        return SPECS[spec]
    except KeyError:
        raise KeyError(f"unknown factory model {spec!r}; known: {', '.join(SPECS)}") from None


