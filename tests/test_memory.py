"""KV cache bytes against llama.cpp's formulas, written out by hand here; compute buffers against what llama.cpp
printed; the per-device split and the host-RAM check."""

from __future__ import annotations

from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import pytest

from moeplace.errors import MoeplaceError
from moeplace.hardware import device_set, host_device, parse_gpus
from moeplace.memory import (
    CACHE_TYPES,
    MemoryBreakdown,
    MemoryConfigError,
    RunConfig,
    compute_bytes,
    context_shape,
    gpu_fits,
    host_check,
    kv_bytes,
    kv_bytes_per_layer,
    memory_by_device,
    resolve_flash_attn,
    validate,
)
from moeplace.model import ModelDescription, Role, load_model
from moeplace.placement import all_on, layer_placement
from moeplace.sizes import GIB
from moeplace.testing import SPECS, write_model

MODELS = ("qwen3moe-tiny", "mixtral-tiny", "llama-tiny", "deepseek2-tiny", "gpt-oss-tiny", "llama4-tiny",
          "glm4moe-tiny", "qwen3next-tiny", "deepseek-v3", "qwen3-30b-a3b", "gpt-oss-20b", "llama-3-8b")

# Bytes per element of each cache type as ggml lays the blocks out (ggml-common.h): q8_0 = 32 int8 + an fp16
# scale = 34 bytes per 32; q4_0 and iq4_nl = 16 bytes of nibbles + scale = 18; q4_1 adds a min (20); q5_0 adds
# 4 bytes of high bits (22); q5_1 both (24).
BYTES = {"f32": Fraction(4), "f16": Fraction(2), "bf16": Fraction(2), "q8_0": Fraction(34, 32),
         "q4_0": Fraction(18, 32), "q4_1": Fraction(20, 32), "iq4_nl": Fraction(18, 32),
         "q5_0": Fraction(22, 32), "q5_1": Fraction(24, 32)}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModelDescription]:
    d: Path = tmp_path_factory.mktemp("models")
    return {n: load_model(write_model(n, d / f"{n}.gguf")[0]) for n in MODELS}


def pad256(n: int) -> int:
    return -(-n // 256) * 256


def row(t: str, n: int) -> int:
    b = BYTES[t] * n
    assert b.denominator == 1
    return int(b)


def test_byte_table_matches_the_cache_types() -> None:
    assert set(BYTES) == set(CACHE_TYPES)


# --- full attention (GQA) -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["qwen3moe-tiny", "mixtral-tiny", "llama-tiny", "qwen3-30b-a3b", "llama-3-8b"])
@pytest.mark.parametrize("n_ctx", [1000, 4096, 5000])
@pytest.mark.parametrize("ctype", ["f16", "q8_0", "q4_0", "f32", "iq4_nl"])
def test_gqa(models: dict[str, ModelDescription], name: str, n_ctx: int, ctype: str) -> None:
    s = SPECS[name]
    cells = pad256(n_ctx)  # llama-context.cpp pads n_ctx to 256
    per_layer = row(ctype, s.head_dim * s.n_head_kv) * cells  # K; V the same size
    cfg = RunConfig(n_ctx=n_ctx, type_k=ctype, type_v=ctype)
    if ctype not in ("f16", "f32") and s.head_dim % 32:
        # llama-context.cpp refuses a quantized cache whose 32-value blocks do not divide the head size
        with pytest.raises(MemoryConfigError, match="do not divide"):
            kv_bytes(models[name], cfg)
        return
    assert kv_bytes(models[name], cfg) == s.n_layer * 2 * per_layer
    layers = kv_bytes_per_layer(models[name], cfg)
    assert all(x.k_bytes == x.v_bytes == per_layer and x.cells == cells for x in layers)


def test_k_and_v_types_apart(models: dict[str, ModelDescription]) -> None:
    s = SPECS["qwen3-30b-a3b"]
    cfg = RunConfig(n_ctx=32768, type_k="q8_0", type_v="q4_0")
    n = s.head_dim * s.n_head_kv
    assert kv_bytes(models["qwen3-30b-a3b"], cfg) == s.n_layer * 32768 * (row("q8_0", n) + row("q4_0", n))


def test_parallel_sequences(models: dict[str, ModelDescription]) -> None:
    s = SPECS["llama-tiny"]
    n = s.head_dim * s.n_head_kv
    # per-sequence streams: n_ctx_seq = pad(n_ctx / n_seq, 256), one stream per sequence
    cfg = RunConfig(n_ctx=4096, n_seq_max=3)
    assert kv_bytes(models["llama-tiny"], cfg) == s.n_layer * 2 * row("f16", n) * pad256(4096 // 3) * 3
    sh = context_shape(models["llama-tiny"], cfg)
    assert (sh.n_ctx_seq, sh.n_stream, sh.n_ctx) == (pad256(4096 // 3), 3, pad256(4096 // 3) * 3)
    # unified: one stream of n_ctx cells
    cfg = RunConfig(n_ctx=4096, n_seq_max=3, kv_unified=True)
    assert kv_bytes(models["llama-tiny"], cfg) == s.n_layer * 2 * row("f16", n) * 4096


def test_context_zero_means_trained(models: dict[str, ModelDescription]) -> None:
    s = SPECS["qwen3-30b-a3b"]
    assert context_shape(models["qwen3-30b-a3b"], RunConfig(n_ctx=0)).n_ctx == s.n_ctx


def test_batch_limits(models: dict[str, ModelDescription]) -> None:
    # llama-context.cpp: n_batch = min(n_ctx, n_batch); n_ubatch = min(n_batch, n_ubatch)
    sh = context_shape(models["llama-tiny"], RunConfig(n_ctx=300, n_batch=2048, n_ubatch=512))
    assert (sh.n_batch, sh.n_ubatch, sh.n_ctx) == (300, 300, 512)
    sh = context_shape(models["llama-tiny"], RunConfig(n_ctx=4096, n_batch=1024, n_ubatch=2048))
    assert (sh.n_batch, sh.n_ubatch) == (1024, 1024)


# --- MLA ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_ctx", [4096, 20000, 163840])
@pytest.mark.parametrize("ctype", ["f16", "q8_0", "q4_0", "bf16"])
def test_mla(models: dict[str, ModelDescription], n_ctx: int, ctype: str) -> None:
    s = SPECS["deepseek-v3"]
    # One K row of kv_lora_rank + rope dims per layer and cell, no V cache (PR 19067).
    per_layer = row(ctype, s.kv_lora_rank + s.rope_dim) * pad256(n_ctx)
    layers = kv_bytes_per_layer(models["deepseek-v3"], RunConfig(n_ctx=n_ctx, type_k=ctype, type_v=ctype))
    assert [x.v_bytes for x in layers] == [0] * s.n_layer
    assert sum(x.k_bytes for x in layers) == s.n_layer * per_layer


def test_mla_tiny_and_its_limits(models: dict[str, ModelDescription]) -> None:
    s = SPECS["deepseek2-tiny"]
    m = models["deepseek2-tiny"]
    assert kv_bytes(m, RunConfig(n_ctx=4096)) == s.n_layer * row("f16", s.kv_lora_rank + s.rope_dim) * 4096
    # 32 + 8 = 40 elements per row is not a whole number of 32-element q8_0 blocks
    with pytest.raises(MemoryConfigError, match=r"blocks of 32 values, which do not divide .* head size \[40\]"):
        kv_bytes(m, RunConfig(type_k="q8_0", type_v="q8_0"))
    with pytest.raises(MemoryConfigError, match="same K and V"):
        validate(models["deepseek-v3"], RunConfig(type_k="q8_0", type_v="f16"))


# --- sliding window, chunked --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n_ctx", "n_ubatch", "n_seq", "unified", "swa_full"), [
    (4096, 512, 1, False, False),
    (4096, 128, 1, False, False),
    (100, 512, 1, False, False),
    (4096, 512, 4, True, False),
    (4096, 512, 4, False, False),
    (4096, 512, 1, False, True),
])
def test_sliding_window(models: dict[str, ModelDescription], n_ctx: int, n_ubatch: int, n_seq: int,
                        unified: bool, swa_full: bool) -> None:
    s = SPECS["gpt-oss-tiny"]
    cfg = RunConfig(n_ctx=n_ctx, n_ubatch=n_ubatch, n_seq_max=n_seq, kv_unified=unified, swa_full=swa_full)
    n_ctx_pad = pad256(n_ctx)
    kv_size = n_ctx_pad if unified else pad256(n_ctx_pad // n_seq)
    n_ub = min(n_ubatch, min(n_ctx, 2048))
    streams = 1 if unified else n_seq
    # llama-kv-cache-iswa.cpp
    swa_cells = kv_size if swa_full else pad256(min(kv_size, s.sliding_window * (n_seq if unified else 1) + n_ub))
    r = row("f16", s.head_dim * s.n_head_kv)
    layers = kv_bytes_per_layer(models["gpt-oss-tiny"], cfg)
    # gpt-oss: even layers windowed, odd layers full (period 2)
    assert [x.kind for x in layers] == ["swa", "full"]
    assert layers[0].total == 2 * r * swa_cells * streams
    assert layers[1].total == 2 * r * kv_size * streams


def test_gpt_oss_full_scale(models: dict[str, ModelDescription]) -> None:
    s = SPECS["gpt-oss-20b"]
    r = row("f16", s.head_dim * s.n_head_kv)
    half = s.n_layer // 2
    expected = half * 2 * r * 8192 + half * 2 * r * pad256(s.sliding_window + 512)
    assert kv_bytes(models["gpt-oss-20b"], RunConfig(n_ctx=8192)) == expected


@pytest.mark.parametrize("n_ctx", [4096, 16384, 65536])
def test_chunked(models: dict[str, ModelDescription], n_ctx: int) -> None:
    s = SPECS["llama4-tiny"]
    chunk = 8192  # llama4's attention chunk size, hard-coded in llama.cpp (architectures.json)
    r = row("f16", s.head_dim * s.n_head_kv)
    chunked_cells = pad256(min(n_ctx, chunk + 512))
    layers = kv_bytes_per_layer(models["llama4-tiny"], RunConfig(n_ctx=n_ctx))
    # three chunked layers out of every four
    assert [x.kind for x in layers] == ["chunked", "chunked", "chunked", "full"]
    assert sum(x.total for x in layers) == 3 * 2 * r * chunked_cells + 2 * r * n_ctx


# --- NextN, hybrid ------------------------------------------------------------------------------------------------


def test_nextn_block_has_no_kv(models: dict[str, ModelDescription]) -> None:
    s = SPECS["glm4moe-tiny"]
    ctype = "q8_0" if s.head_dim % 32 == 0 else "f16"  # llama.cpp needs whole q8_0 blocks per head
    r = row(ctype, s.head_dim * s.n_head_kv)
    cfg = RunConfig(n_ctx=8192, type_k=ctype, type_v=ctype)
    layers = kv_bytes_per_layer(models["glm4moe-tiny"], cfg)
    assert layers[-1].total == 0
    assert kv_bytes(models["glm4moe-tiny"], cfg) == (s.n_layer - s.n_nextn) * 2 * r * 8192


@pytest.mark.parametrize("n_seq", [1, 3])
@pytest.mark.parametrize("n_ctx", [4096, 65536])
def test_hybrid_recurrent(models: dict[str, ModelDescription], n_seq: int, n_ctx: int) -> None:
    s = SPECS["qwen3next-tiny"]
    d_inner = s.ssm_state_size * s.ssm_time_step_rank  # what the converter writes as ssm.inner_size
    # llama-hparams.cpp: n_embd_r = (d_conv - 1) (d_inner + 2 n_group d_state); n_embd_s = d_state d_inner; F32
    r_state = (s.ssm_conv_kernel - 1) * (d_inner + 2 * s.ssm_group_count * s.ssm_state_size) * 4 * n_seq
    s_state = s.ssm_state_size * d_inner * 4 * n_seq
    attn = 2 * row("f16", s.head_dim * s.n_head_kv) * pad256(n_ctx // n_seq) * n_seq
    layers = kv_bytes_per_layer(models["qwen3next-tiny"], RunConfig(n_ctx=n_ctx, n_seq_max=n_seq))
    assert [x.kind for x in layers] == ["recurrent", "recurrent", "recurrent", "full"]
    for x in layers[:3]:
        assert (x.k_bytes, x.v_bytes) == (r_state, s_state)
    assert layers[3].total == attn


def test_v_padded_when_transposed(models: dict[str, ModelDescription]) -> None:
    # Without flash attention V is stored transposed and every layer's V row is n_embd_v_gqa_max().
    m = models["llama-tiny"]
    hp = replace(m.hparams, n_head_kv=(2, 1))
    m2 = replace(m, hparams=hp, layers=tuple(replace(x, n_head_kv=h) for x, h in zip(m.layers, (2, 1), strict=True)))
    hd = SPECS["llama-tiny"].head_dim
    fa_on = kv_bytes_per_layer(m2, RunConfig(n_ctx=4096, flash_attn=True))
    fa_off = kv_bytes_per_layer(m2, RunConfig(n_ctx=4096, flash_attn=False))
    assert fa_on[1].v_bytes == row("f16", hd * 1) * 4096
    assert fa_off[1].v_bytes == row("f16", hd * 2) * 4096
    assert fa_on[1].k_bytes == fa_off[1].k_bytes == row("f16", hd * 1) * 4096


# --- validation ---------------------------------------------------------------------------------------------------


def test_quantized_v_needs_flash_attention(models: dict[str, ModelDescription]) -> None:
    with pytest.raises(MemoryConfigError, match="flash attention"):
        validate(models["llama-tiny"], RunConfig(type_v="q8_0", flash_attn=False))
    validate(models["llama-tiny"], RunConfig(type_k="q8_0", flash_attn=False))  # a quantized K is fine


def test_unknown_cache_type(models: dict[str, ModelDescription]) -> None:
    with pytest.raises(MoeplaceError, match="cache type"):
        validate(models["llama-tiny"], RunConfig(type_k="q3_k"))


def test_flash_attn_setting() -> None:
    assert resolve_flash_attn("on") and resolve_flash_attn("auto") and not resolve_flash_attn("off")
    with pytest.raises(MoeplaceError):
        resolve_flash_attn("sometimes")


# --- compute buffers ----------------------------------------------------------------------------------------------

# What llama.cpp (llama-cpp-python 0.3.36, CPU backend, no_alloc) printed as "CPU compute buffer size", MiB.
MEASURED = [
    # model, n_ctx, n_ubatch, flash attention, MiB
    ("qwen3-30b-a3b", 4096, 512, True, 304.75),
    ("qwen3-30b-a3b", 65536, 512, False, 4254.01),
    ("qwen3-30b-a3b", 16384, 2048, True, 1219.01),
    ("deepseek-v3", 4096, 512, True, 412.01),
    ("deepseek-v3", 65536, 128, True, 118.0),
    ("deepseek-v3", 16384, 512, False, 4536.01),
    ("gpt-oss-20b", 4096, 2048, True, 1731.09),
    ("gpt-oss-20b", 16384, 512, False, 2118.39),
    ("llama-3-8b", 65536, 2048, False, 17072.04),
]


@pytest.mark.parametrize(("name", "n_ctx", "n_ubatch", "fa", "mib"), MEASURED)
def test_compute_estimate_against_llama_cpp(models: dict[str, ModelDescription], name: str, n_ctx: int,
                                            n_ubatch: int, fa: bool, mib: float) -> None:
    est = compute_bytes(models[name], RunConfig(n_ctx=n_ctx, n_ubatch=n_ubatch, flash_attn=fa)) / 2**20
    assert -0.06 <= (est - mib) / mib <= 0.25


def test_compute_logits_law(models: dict[str, ModelDescription]) -> None:
    # Flash attention on, short context: the logits phase, n_ubatch x (4 n_vocab + 8 n_embd) plus the f16 mask.
    s = SPECS["llama-3-8b"]
    expected = 512 * (4 * s.n_vocab + 8 * s.n_embd + 2 * 4096)
    assert compute_bytes(models["llama-3-8b"], RunConfig(n_ctx=4096, n_ubatch=512)) == expected


def test_compute_grows_with_context_without_flash_attention(models: dict[str, ModelDescription]) -> None:
    m = models["qwen3-30b-a3b"]
    short = compute_bytes(m, RunConfig(n_ctx=16384, flash_attn=False))
    long = compute_bytes(m, RunConfig(n_ctx=32768, flash_attn=False))
    s = SPECS["qwen3-30b-a3b"]
    # scores (4 bytes x heads) and the f32 mask (4 bytes) per cell and ubatch token
    assert long - short == 512 * 16384 * (4 * s.n_head + 4)


# --- per device ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def devices() -> dict:
    return device_set(parse_gpus(["rtx3090", "rtx3060"]), host_device(64 * GIB, 80))


def test_all_on_one_gpu(models: dict[str, ModelDescription], devices: dict) -> None:
    m = models["qwen3-30b-a3b"]
    cfg = RunConfig(n_ctx=8192)
    b = memory_by_device(m, all_on(m, "CUDA0"), cfg, devices)
    embd = sum(t.nbytes for t in m.tensors if t.role is Role.TOKEN_EMBD)
    assert b["CUDA0"].weights == m.loaded_bytes - embd  # token embeddings stay on the host
    assert b["CPU"].weights == embd
    assert b["CUDA0"].kv == kv_bytes(m, cfg) and b["CPU"].kv == 0
    assert b["CUDA0"].overhead > 0 and b["CPU"].overhead == 0
    # the host holds the output buffer: one row of logits per sequence
    assert b["CPU"].compute >= 4 * SPECS["qwen3-30b-a3b"].n_vocab


def test_kv_follows_layers_and_nkvo(models: dict[str, ModelDescription], devices: dict) -> None:
    m = models["qwen3-30b-a3b"]
    n = m.hparams.n_layer
    layers = ("CUDA0",) * 20 + ("CUDA1",) * 20 + ("CPU",) * (n - 40)
    p = layer_placement(m, layers, "CUDA1")
    cfg = RunConfig(n_ctx=8192)
    per_layer = kv_bytes(m, cfg) // n
    b = memory_by_device(m, p, cfg, devices)
    assert (b["CUDA0"].kv, b["CUDA1"].kv, b["CPU"].kv) == (20 * per_layer, 20 * per_layer, (n - 40) * per_layer)
    b = memory_by_device(m, p, replace(cfg, no_kv_offload=True), devices)
    assert b["CPU"].kv == n * per_layer and b["CUDA0"].kv == 0
    assert sum(x.weights for x in b.values()) == m.loaded_bytes


def test_unknown_device(models: dict[str, ModelDescription], devices: dict) -> None:
    m = models["llama-tiny"]
    with pytest.raises(MoeplaceError, match="CUDA7"):
        memory_by_device(m, all_on(m, "CUDA7"), RunConfig(), devices)


def test_gpu_fit_uses_margin() -> None:
    gpus = parse_gpus(["12G@360"])
    devs = device_set(gpus, host_device(GIB, 50))
    b = {"CUDA0": MemoryBreakdown(weights=11 * GIB), "CPU": MemoryBreakdown()}
    assert gpu_fits(b, devs, margin=0)["CUDA0"].fits
    f = gpu_fits(b, devs, margin=2 * GIB)["CUDA0"]
    assert not f.fits and f.free == -GIB


def test_host_check_paging() -> None:
    devs = device_set((), host_device(10 * GIB, 50))
    b = {"CPU": MemoryBreakdown(weights=12 * GIB, kv=GIB, compute=GIB)}
    h = host_check(b, devs)
    assert not h.fits and h.possible
    assert h.paged == 14 * GIB - 10 * GIB and h.paged_fraction == 4 / 12
    b = {"CPU": MemoryBreakdown(weights=GIB, kv=11 * GIB)}
    assert not host_check(b, devs).possible  # the KV cache cannot be paged from the model file


def test_unified_memory_counts_the_gpu() -> None:
    gpus = parse_gpus(["m4-pro-64g"])
    devs = device_set(gpus, host_device(gpus=gpus))
    b = {"MTL0": MemoryBreakdown(weights=40 * GIB), "CPU": MemoryBreakdown(weights=30 * GIB)}
    h = host_check(b, devs)
    assert h.needed == 70 * GIB and h.ram == 64 * GIB and h.paged == 6 * GIB


# --- against a real llama.cpp ------------------------------------------------------------------------------------

_PROBE = r"""
import sys, llama_cpp as L
L.llama_backend_init()
mp = L.llama_model_default_params()
m = L.llama_model_load_from_file(sys.argv[1].encode(), mp)
cp = L.llama_context_default_params()
cp.n_ctx, cp.n_ubatch, cp.n_seq_max, cp.swa_full, cp.n_threads = int(sys.argv[2]), 512, int(sys.argv[3]), False, 1
print("CTX_OK", bool(L.llama_init_from_model(m, cp)), file=sys.stderr)
"""


@pytest.mark.llama
@pytest.mark.parametrize("name", ["qwen3moe-tiny", "deepseek2-tiny", "gpt-oss-tiny", "llama4-tiny", "glm4moe-tiny",
                                  "qwen3next-tiny"])
@pytest.mark.parametrize(("n_ctx", "n_seq"), [(5000, 1), (16384, 3)])
def test_kv_matches_llama_cpp(models: dict[str, ModelDescription], name: str, n_ctx: int, n_seq: int) -> None:
    import re
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-c", _PROBE, str(models[name].paths[0]), str(n_ctx), str(n_seq)],
                       capture_output=True, text=True, timeout=300)
    assert "CTX_OK True" in p.stderr, p.stderr[-2000:]
    sizes = [float(x) for x in re.findall(r"size =\s+([\d.]+) MiB \(\s*\d+ cells", p.stderr)]
    ours = kv_bytes(models[name], RunConfig(n_ctx=n_ctx, n_seq_max=n_seq)) / 2**20
    # llama.cpp prints each cache's MiB with two decimals
    assert ours == pytest.approx(sum(sizes), abs=0.0051 * len(sizes))


def test_quantized_cache_needs_head_size_in_whole_blocks(models: dict[str, ModelDescription]) -> None:
    # llama-context.cpp refuses a quantized K/V cache with flash attention when a block (32 values for q8_0)
    # does not divide the head size; llama-tiny has 16-value heads, Qwen3 128.
    assert models["llama-tiny"].hparams.head_dim_k % 32 != 0
    with pytest.raises(MemoryConfigError, match="do not divide this model's head size"):
        validate(models["llama-tiny"], RunConfig(type_k="q8_0", type_v="f16"))
    validate(models["llama-tiny"], RunConfig(type_k="q8_0", flash_attn=False))  # without flash attention: allowed
    validate(models["qwen3-30b-a3b"], RunConfig(type_k="q4_0", type_v="q4_0"))
