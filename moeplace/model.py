"""The model description every later stage reads: hyper-parameters, layers and classified tensors.

Classification comes from gguf-py's own tables: ``gguf.TENSOR_NAMES`` maps every tensor kind llama.cpp knows
(``MODEL_TENSOR``) to its name template, and a kind's role follows from its name (``FFN_GATE_EXP`` is a routed
expert, ``FFN_UP_SHEXP`` a shared expert, ``ATTN_*`` attention...). A new architecture whose tensors gguf-py
knows therefore needs no change here. Hyper-parameters come from the ``{arch}.*`` keys; the few attention rules
llama.cpp hard-codes per architecture live in ``architectures.json``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from gguf import MODEL_TENSOR, TENSOR_NAMES, GGMLQuantizationType, Keys, LlamaFileType

from moeplace.errors import MoeplaceError
from moeplace.gguf_file import ArrayInfo, GGUFFile
from moeplace.infiles import printable


class ModelError(MoeplaceError):
    """A GGUF file that parses but is not a model moeplace can describe."""


class Role(str, Enum):
    """What a tensor does, which decides how often it is read and where it may live."""

    TOKEN_EMBD = "token_embd"
    OUTPUT = "output"
    OUTPUT_NORM = "output_norm"
    ATTENTION = "attention"
    ROUTER = "router"
    ROUTED_EXPERT = "routed_expert"
    SHARED_EXPERT = "shared_expert"
    DENSE_FFN = "dense_ffn"
    NORM = "norm"
    NEXTN = "nextn"
    SSM = "ssm"
    OTHER = "other"


def role_of_kind(kind: MODEL_TENSOR) -> Role:
    """The role of a gguf tensor kind, from its name in gguf-py's ``MODEL_TENSOR`` enum."""
    name = kind.name
    if kind is MODEL_TENSOR.TOKEN_EMBD:
        return Role.TOKEN_EMBD
    if kind is MODEL_TENSOR.OUTPUT:
        return Role.OUTPUT
    if kind is MODEL_TENSOR.OUTPUT_NORM:
        return Role.OUTPUT_NORM
    if name.startswith("NEXTN_"):
        return Role.NEXTN
    if kind in (MODEL_TENSOR.FFN_GATE_INP, MODEL_TENSOR.FFN_EXP_PROBS_B):
        return Role.ROUTER
    if name.endswith("_SHEXP"):
        return Role.SHARED_EXPERT
    if name.endswith(("_EXP", "_CHEXP")):
        return Role.ROUTED_EXPERT
    if "NORM" in name:
        return Role.NORM
    if "ATTN_" in name:
        return Role.ATTENTION
    if name.startswith("FFN_"):
        return Role.DENSE_FFN
    if name.startswith(("SSM_", "TIME_MIX_", "CHANNEL_MIX_", "SHORTCONV_")):
        return Role.SSM
    return Role.OTHER


@cache
def _templates() -> tuple[dict[str, MODEL_TENSOR], dict[str, MODEL_TENSOR]]:
    """gguf-py's name templates split into per-block ('blk.{bid}.X' -> X) and global names."""
    per_block: dict[str, MODEL_TENSOR] = {}
    top: dict[str, MODEL_TENSOR] = {}
    for kind, template in TENSOR_NAMES.items():
        if template.startswith("blk.{bid}."):
            per_block.setdefault(template[len("blk.{bid}."):], kind)
        elif "{" not in template:
            top.setdefault(template, kind)
    return per_block, top


# llama.cpp's own ceilings (src/llama-hparams.h: LLAMA_MAX_LAYERS 512, LLAMA_MAX_EXPERTS 512 "Qwen3 Next"): a
# model past them does not load, so a profile claiming more is refused before anything is allocated for it.
LLAMA_MAX_LAYERS = 512
LLAMA_MAX_EXPERTS = 512

_BLOCK_NAME = re.compile(r"^blk\.(\d+)\.(.+)$")


def parse_tensor_name(name: str) -> tuple[int | None, MODEL_TENSOR | None]:
    """Block index and gguf tensor kind of a tensor name such as ``blk.7.ffn_up_exps.weight``."""
    per_block, top = _templates()
    m = _BLOCK_NAME.match(name)
    block, rest, table = (int(m.group(1)), m.group(2), per_block) if m else (None, name, top)
    # Strip suffixes (.weight, .bias, .scale...) until a known template matches.
    while True:
        kind = table.get(rest)
        if kind is not None or "." not in rest:
            return block, kind
        rest = rest.rsplit(".", 1)[0]


@dataclass(frozen=True)
class Tensor:
    """One tensor of the model. ``shape`` is in ggml order: ne0 (the row) first, experts outermost."""

    name: str
    block: int | None
    role: Role
    kind: str | None  # gguf MODEL_TENSOR name, None when gguf-py does not know the name
    ggml_type: str
    shape: tuple[int, ...]
    nbytes: int
    shard: int
    offset: int
    n_expert: int = 0  # experts stacked in this tensor (outermost dimension); 0 when not an expert tensor

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)

    @property
    def expert_bytes(self) -> int:
        """Bytes of one expert's slice (experts are the outermost dimension, so each slice is contiguous)."""
        return self.nbytes // self.n_expert if self.n_expert else 0

    @property
    def loaded(self) -> bool:
        """llama.cpp does not load NextN/MTP blocks (TENSOR_SKIP)."""
        return self.role is not Role.NEXTN


@dataclass(frozen=True)
class Layer:
    """One transformer block and the attention it runs."""

    index: int
    moe: bool  # has routed experts
    nextn: bool  # a NextN/MTP block llama.cpp skips
    attention: str  # "full", "swa", "chunked", "mla", "recurrent" or "none"
    has_kv: bool  # holds a KV cache in the main context
    n_head_kv: int


@dataclass(frozen=True)
class HParams:
    """The hyper-parameters that matter for placement, from the ``{arch}.*`` keys."""

    arch: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: tuple[int, ...]  # per layer
    head_dim_k: int
    head_dim_v: int
    n_vocab: int
    n_ctx_train: int
    n_ff: int
    n_expert: int
    n_expert_used: int
    n_expert_shared: int
    n_ff_exp: int
    n_ff_shexp: int
    n_leading_dense: int
    moe_every_n: int
    interleave_moe_step: int
    expert_group_count: int
    expert_group_used: int
    q_lora_rank: int
    kv_lora_rank: int
    n_rot: int
    swa_type: str  # "none", "standard" or "chunked"
    n_swa: int
    swa_layers: tuple[bool, ...]  # per layer: windowed (sliding or chunked)
    recurrent_layers: tuple[bool, ...]  # per layer: recurrent state instead of KV
    ssm_d_conv: int
    ssm_d_inner: int
    ssm_d_state: int
    ssm_n_group: int
    nextn_layers: int

    @property
    def mla(self) -> bool:
        return self.kv_lora_rank > 0


@dataclass(frozen=True)
class ModelDescription:
    """A model as moeplace sees it: read from the GGUF header once, then only read."""

    name: str
    paths: tuple[Path, ...]
    file_size: int
    file_type: str | None  # llama.cpp's quantisation label (general.file_type), e.g. MOSTLY_Q4_K_M
    hparams: HParams
    layers: tuple[Layer, ...]
    tensors: tuple[Tensor, ...]
    metadata: Mapping[str, Any] = field(repr=False, compare=False)

    @property
    def arch(self) -> str:
        return self.hparams.arch

    @property
    def is_moe(self) -> bool:
        return any(t.role is Role.ROUTED_EXPERT for t in self.tensors)

    @property
    def loaded_tensors(self) -> tuple[Tensor, ...]:
        return tuple(t for t in self.tensors if t.loaded)

    def tensor(self, name: str) -> Tensor:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)

    def block_tensors(self, block: int) -> tuple[Tensor, ...]:
        return tuple(t for t in self.tensors if t.block == block)

    def bytes_by_role(self) -> dict[Role, int]:
        """Bytes of every role, NextN included under its own role (it is in the file, though not loaded)."""
        out = dict.fromkeys(Role, 0)
        for t in self.tensors:
            out[t.role] += t.nbytes
        return out

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def loaded_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors if t.loaded)

    def fingerprint(self) -> str:
        """Identifies the network, not its quantisation: the same model at Q4 and Q8 shares a fingerprint,
        so a routing profile measured on one applies to the other."""
        h = hashlib.sha256(self.arch.encode())
        for t in sorted(self.tensors, key=lambda t: t.name):
            h.update(f"\n{t.name}:{'x'.join(map(str, t.shape))}".encode())
        return h.hexdigest()[:16]


def tensor_bytes_per_token(t: Tensor, hp: HParams) -> float:
    """Bytes of ``t`` one decoded token reads, with uniform routing: all of a dense tensor, one row of the
    token embedding, ``n_expert_used / n_expert`` of a routed-expert tensor."""
    if not t.loaded:
        return 0.0
    if t.role is Role.TOKEN_EMBD:
        rows = t.shape[1] if len(t.shape) > 1 else 1
        return t.nbytes / rows
    if t.role is Role.ROUTED_EXPERT and t.n_expert:
        return t.nbytes * min(hp.n_expert_used, t.n_expert) / t.n_expert
    return float(t.nbytes)


def bytes_read_per_token(model: ModelDescription) -> float:
    """What one token reads at batch 1 with uniform routing: the floor of decode memory traffic."""
    return sum(tensor_bytes_per_token(t, model.hparams) for t in model.tensors)


# --- building the description -------------------------------------------------------------------------------


@cache
def architecture_rules() -> dict[str, dict[str, Any]]:
    """The attention rules llama.cpp hard-codes per architecture (see architectures.json)."""
    text = resources.files("moeplace").joinpath("architectures.json").read_text()
    return {k: v for k, v in json.loads(text).items() if not k.startswith("_")}


class _Meta:
    """Typed, checked access to ``{arch}.*`` keys."""

    def __init__(self, metadata: Mapping[str, Any], arch: str, path: Path) -> None:
        self.m, self.arch, self.path = metadata, arch, path

    def raw(self, template: str) -> Any:
        return self.m.get(template.format(arch=self.arch))

    def int(self, template: str, default: int = 0, *, limit: int = 1 << 40) -> int:
        key = template.format(arch=self.arch)
        v = self.m.get(key, default)
        if isinstance(v, list):  # some keys may be per-layer arrays; the placement-relevant value is the max
            v = max(v, default=default)
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= limit:
            raise ModelError(f"{self.path}: metadata key '{key}' has an invalid value {v!r}")
        return v

    def per_layer(self, template: str, n_layer: int, default: int) -> tuple[int, ...]:
        key = template.format(arch=self.arch)
        v = self.m.get(key, default)
        if isinstance(v, list):
            if len(v) != n_layer or not all(isinstance(x, int) and x >= 0 for x in v):
                raise ModelError(f"{self.path}: metadata key '{key}' must hold {n_layer} non-negative integers")
            return tuple(v)
        return (self.int(template, default),) * n_layer


def _swa_layers(meta: _Meta, n_layer: int) -> tuple[str, int, tuple[bool, ...]]:
    rule = architecture_rules().get(meta.arch, {})
    n_swa = meta.int(Keys.Attention.SLIDING_WINDOW, rule.get("window", 0))
    swa_type = rule.get("swa", "standard") if n_swa else "none"
    pattern = meta.raw(Keys.Attention.SLIDING_WINDOW_PATTERN)
    if isinstance(pattern, list):
        if len(pattern) != n_layer:
            raise ModelError(f"{meta.path}: sliding_window_pattern has {len(pattern)} entries for {n_layer} layers")
        return swa_type, n_swa, tuple(bool(x) for x in pattern)
    if swa_type == "none":
        return "none", 0, (False,) * n_layer
    period = pattern if isinstance(pattern, int) and not isinstance(pattern, bool) else rule.get("period", 0)
    dense_first = bool(rule.get("dense_first", False))
    # llama.cpp's set_swa_pattern: period 0 means every layer is windowed.
    if dense_first:
        layers = tuple(period == 0 or il % period != 0 for il in range(n_layer))
    else:
        layers = tuple(period == 0 or il % period < period - 1 for il in range(n_layer))
    return swa_type, n_swa, layers


def _vocab_size(meta: _Meta, tensors: Iterable[Any]) -> int:
    v = meta.raw(Keys.LLM.VOCAB_SIZE)
    if isinstance(v, int) and v > 0:
        return v
    tokens = meta.m.get(Keys.Tokenizer.LIST)
    if isinstance(tokens, ArrayInfo | list):
        return len(tokens)
    for t in tensors:
        if t.name == "token_embd.weight" and len(t.shape) > 1:
            return int(t.shape[1])
    return 0


def describe(gf: GGUFFile) -> ModelDescription:
    """Builds the model description from a parsed GGUF header."""
    path = gf.paths[0]
    md = gf.metadata
    kind = md.get(Keys.General.TYPE)
    if kind == "imatrix":
        raise ModelError(f"{path}: this is an importance-matrix (imatrix) file, not a model; "
                         "use it with 'moeplace profile import'")
    arch = md.get(Keys.General.ARCHITECTURE)
    if not isinstance(arch, str) or not arch:
        raise ModelError(f"{path}: no general.architecture key, so this is not a llama.cpp model file")
    if not gf.tensors:
        raise ModelError(f"{path}: the file holds no tensors (a vocabulary-only GGUF?); pass the model itself")
    meta = _Meta(md, arch, path)

    parsed = [(t, *parse_tensor_name(t.name)) for t in gf.tensors]
    max_block = max((b for _, b, _ in parsed if b is not None), default=-1)
    n_layer = meta.int(Keys.LLM.BLOCK_COUNT, max_block + 1, limit=100_000)
    if max_block >= n_layer:
        raise ModelError(f"{path}: tensors reach block {max_block} but {arch}.block_count is {n_layer}")
    n_embd = meta.int(Keys.LLM.EMBEDDING_LENGTH)
    n_head = meta.int(Keys.Attention.HEAD_COUNT)
    n_head_kv = meta.per_layer(Keys.Attention.HEAD_COUNT_KV, n_layer, n_head)
    n_expert = meta.int(Keys.LLM.EXPERT_COUNT, limit=1 << 20)
    n_expert_used = meta.int(Keys.LLM.EXPERT_USED_COUNT, limit=1 << 20)
    if n_expert_used > n_expert:
        raise ModelError(f"{path}: {arch}.expert_used_count {n_expert_used} exceeds expert_count {n_expert}")
    nextn = meta.int(Keys.LLM.NEXTN_PREDICT_LAYERS, limit=n_layer)
    head_dim = n_embd // n_head if n_head else 0
    swa_type, n_swa, swa_layers = _swa_layers(meta, n_layer)

    # Hybrid models mark recurrent layers either with a per-layer head_count_kv of 0 or a full-attention interval.
    interval = meta.int(Keys.LLM.FULL_ATTENTION_INTERVAL)
    has_ssm = any(k is not None and role_of_kind(k) is Role.SSM for _, _, k in parsed)
    if interval:
        recurrent = tuple((il + 1) % interval != 0 for il in range(n_layer))
    elif has_ssm:
        recurrent = tuple(h == 0 for h in n_head_kv)
    else:
        recurrent = (False,) * n_layer

    hp = HParams(
        arch=arch,
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim_k=meta.int(Keys.Attention.KEY_LENGTH, head_dim),
        head_dim_v=meta.int(Keys.Attention.VALUE_LENGTH, head_dim),
        n_vocab=_vocab_size(meta, gf.tensors),
        n_ctx_train=meta.int(Keys.LLM.CONTEXT_LENGTH),
        n_ff=meta.int(Keys.LLM.FEED_FORWARD_LENGTH),
        n_expert=n_expert,
        n_expert_used=n_expert_used,
        n_expert_shared=meta.int(Keys.LLM.EXPERT_SHARED_COUNT),
        n_ff_exp=meta.int(Keys.LLM.EXPERT_FEED_FORWARD_LENGTH),
        n_ff_shexp=meta.int(Keys.LLM.EXPERT_SHARED_FEED_FORWARD_LENGTH),
        n_leading_dense=meta.int(Keys.LLM.LEADING_DENSE_BLOCK_COUNT),
        moe_every_n=meta.int(Keys.LLM.MOE_EVERY_N_LAYERS),
        interleave_moe_step=meta.int(Keys.LLM.INTERLEAVE_MOE_LAYER_STEP),
        expert_group_count=meta.int(Keys.LLM.EXPERT_GROUP_COUNT),
        expert_group_used=meta.int(Keys.LLM.EXPERT_GROUP_USED_COUNT),
        q_lora_rank=meta.int(Keys.Attention.Q_LORA_RANK),
        kv_lora_rank=meta.int(Keys.Attention.KV_LORA_RANK),
        n_rot=meta.int(Keys.Rope.DIMENSION_COUNT, head_dim),
        swa_type=swa_type,
        n_swa=n_swa,
        swa_layers=swa_layers,
        recurrent_layers=recurrent,
        ssm_d_conv=meta.int(Keys.SSM.CONV_KERNEL),
        ssm_d_inner=meta.int(Keys.SSM.INNER_SIZE),
        ssm_d_state=meta.int(Keys.SSM.STATE_SIZE),
        ssm_n_group=meta.int(Keys.SSM.GROUP_COUNT),
        nextn_layers=nextn,
    )

    first_nextn = n_layer - nextn
    tensors = []
    for t, block, kind in parsed:
        role = role_of_kind(kind) if kind is not None else Role.OTHER
        if block is not None and block >= first_nextn:
            role = Role.NEXTN
        stacked = t.shape[-1] if role is Role.ROUTED_EXPERT and len(t.shape) >= 2 else 0
        tensors.append(Tensor(
            name=t.name, block=block, role=role, kind=kind.name if kind is not None else None,
            ggml_type=GGMLQuantizationType(t.ggml_type).name, shape=t.shape, nbytes=t.nbytes,
            shard=t.shard, offset=t.offset,
            n_expert=stacked if stacked and (stacked == n_expert or not n_expert) else 0,
        ))

    moe_blocks = {t.block for t in tensors if t.role is Role.ROUTED_EXPERT}
    layers = []
    for il in range(n_layer):
        is_nextn = il >= first_nextn
        if recurrent[il]:
            attention = "recurrent"
        elif not n_head:
            attention = "none"
        elif hp.mla:
            attention = "mla"
        elif swa_layers[il]:
            attention = "swa" if swa_type == "standard" else "chunked"
        else:
            attention = "full"
        layers.append(Layer(
            index=il, moe=il in moe_blocks, nextn=is_nextn, attention=attention,
            has_kv=not is_nextn and attention not in ("recurrent", "none"), n_head_kv=n_head_kv[il],
        ))

    file_type = md.get(Keys.General.FILE_TYPE)
    try:
        ft_name = LlamaFileType(file_type).name if isinstance(file_type, int) else None
    except ValueError:
        ft_name = None
    name = md.get(Keys.General.NAME)
    return ModelDescription(
        # Printed and written into scripts: a name carrying terminal escape sequences is shown escaped.
        name=printable(name if isinstance(name, str) and name else path.name.removesuffix(".gguf")),
        paths=gf.paths,
        file_size=gf.total_size,
        file_type=ft_name,
        hparams=hp,
        layers=tuple(layers),
        tensors=tuple(tensors),
        metadata=md,
    )


def load_model(path: str | os.PathLike[str]) -> ModelDescription:
    """Reads a GGUF model (the first shard of a split one) and describes it. Never reads tensor data.

    ``path`` may also be a URL or a Hugging Face reference (moeplace.remote): then only the header is fetched."""
    from moeplace.remote import read_model_file

    return describe(read_model_file(path))
