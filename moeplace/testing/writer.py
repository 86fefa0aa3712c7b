"""Writing factory models as GGUF files: metadata per the converter's ``set_gguf_parameters``, a
minimal vocabulary, deterministic weights (or a sparse hole for header-only models), shards as ``gguf-split``
writes them; and ``python -m moeplace.testing``."""

from __future__ import annotations

import argparse
import itertools
import math
import os
import struct
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf import GGUFValueType, TokenType

from moeplace.testing.specs import FULL, K_QUANTS, SPECS, TINY, ModelSpec, TensorSpec, resolve
from moeplace.testing.tensors import expected, tensor_plan

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
    if t.ggml_type in K_QUANTS:
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



def write_model(
    spec: ModelSpec | str, path: str | os.PathLike[str], *, split: int | None = None
) -> list[Path]:
    """Writes the model; returns the file paths.

    One file at ``path``, or ``split`` shards named ``<stem>-0000i-of-0000N.gguf`` next to it (``path``'s
    stem is used), split the way ``gguf-split`` does: all metadata in the first shard, ``split.no``,
    ``split.count`` and ``split.tensors.count`` in every shard. ``split=None`` uses ``spec.shards`` (1 for
    all but the split variants). Header-only specs get their data region as a sparse hole of the exact size.
    """
    spec = resolve(spec)
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


