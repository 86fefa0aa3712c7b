"""The memory oracle, live: moeplace.memory against a real llama.cpp (llama-cpp-python, CPU backend, no_alloc) on a
representative subset of benchmarks/memory_oracle.py's grid (docs/memory-oracle.md has the whole table).

Weights: equal to llama.cpp's printed precision (MiB, two decimals), and to the byte up to ggml's 32-byte tensor
alignment. KV: every cache's printed total and K/V (R/S) parts equal as strings, and the total bytes equal. Compute:
within oracle.COMPUTE_TOLERANCE_MIB (64 MiB) under llama.cpp's figure, and over it by at most that plus the
estimate's attention-mask term. The output buffer (logits) equal to the printed precision. Skipped with a reason
where llama_cpp cannot be imported."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from moeplace import oracle
from moeplace.memory import MemoryConfigError, RunConfig, validate
from moeplace.model import load_model

pytestmark = pytest.mark.llama

TENSOR_ALIGNMENT = 32  # ggml-backend's CPU buffer alignment: each tensor's size is padded to it

CASES: dict[str, list[RunConfig]] = {
    "qwen3moe-tiny": [RunConfig(), RunConfig(n_ctx=32768, flash_attn=False),
                      RunConfig(n_ctx=16384, n_ubatch=2048, type_k="q8_0", type_v="q8_0")],
    "deepseek2-tiny": [RunConfig(), RunConfig(n_ctx=32768, flash_attn=False)],  # MLA: no V cache
    "gpt-oss-tiny": [RunConfig(), RunConfig(n_ctx=16384, swa_full=True), RunConfig(n_ctx=8192, n_seq_max=4)],
    "llama4-tiny": [RunConfig(), RunConfig(n_ctx=8192, n_seq_max=4, kv_unified=True, n_ubatch=1024)],  # chunked
    "glm4moe-tiny": [RunConfig()],  # NextN block: not loaded, no KV
    "qwen3next-tiny": [RunConfig(), RunConfig(n_ctx=8192, n_seq_max=4)],  # hybrid: KV + recurrent state
    "deepseek-v3": [RunConfig(n_ctx=16384, n_ubatch=2048, type_k="q8_0", type_v="q8_0"), RunConfig(n_ctx=131072)],
    "gpt-oss-20b": [RunConfig(), RunConfig(n_ctx=16384, n_ubatch=2048, flash_attn=False),
                    RunConfig(n_ctx=16384, swa_full=True)],
    "glm-4.5-air": [RunConfig(n_ctx=65536, n_ubatch=128, type_k="q4_0", type_v="q4_0")],
    "qwen3-next-80b-a3b": [RunConfig(n_ctx=8192, n_seq_max=4), RunConfig(n_ctx=16384, n_ubatch=2048,
                                                                         flash_attn=False)],
    "qwen3-30b-a3b": [RunConfig(n_ctx=131072), RunConfig(n_ctx=32768, flash_attn=False)],
    "mixtral-8x7b": [RunConfig(n_ctx=8192, n_seq_max=4, kv_unified=True, n_ubatch=1024)],
    "deepseek-v3-split": [RunConfig()],  # 9 shards
}


@pytest.mark.parametrize("name", list(CASES))
def test_memory_model_agrees_with_llama_cpp(model_path: Callable[[str], Path], name: str) -> None:
    path = model_path(name)
    model = load_model(path)
    n_loaded = sum(1 for t in model.tensors if t.loaded)
    for cfg in CASES[name]:
        got = oracle.compare_memory(model, cfg, oracle.measure_memory(path, cfg))
        where = f"{name} {cfg}"
        assert got.kv_match, f"{where}: KV caches {got.caches_ours} vs llama.cpp {got.caches_llama}"
        assert got.caches_llama, where
        assert got.output_match, f"{where}: output {got.output_ours} B vs {got.output_llama_mib} MiB"
        assert got.compute_within, (f"{where}: compute {got.compute_ours / 2**20:.2f} MiB vs llama.cpp "
                                    f"{got.compute_llama / 2**20:.2f} MiB")
        if got.weights_llama is None:  # llama_get_memory_breakdown unreadable here (not Linux/libstdc++)
            continue
        assert got.weights_match, f"{where}: weights {got.weights_ours} vs {got.weights_llama}"
        assert 0 <= got.weights_llama - got.weights_ours < TENSOR_ALIGNMENT * n_loaded, where
        assert got.kv_llama == got.kv_ours, where


def test_mla_cache_type_refusals_agree(model_path: Callable[[str], Path]) -> None:
    """llama.cpp refuses different K and V types for MLA models, and so does moeplace's validate."""
    path = model_path("deepseek-v3")
    cfg = RunConfig(type_k="q8_0", type_v="f16")
    with pytest.raises(MemoryConfigError):
        validate(load_model(path), cfg)
    with pytest.raises(oracle.EngineError, match="does not support different K"):
        oracle.measure_memory(path, cfg)
