"""The run configuration chosen with the placement (moeplace.configure): -ub/-b, KV type, slots and pinned memory
decided by the cost model for the workload, and settings the user gave kept."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from moeplace.configure import KV_QUANT_MIN_GAIN, ConfigChoice, choose_config
from moeplace.hardware import device_set, host_device, parse_gpus
from moeplace.memory import RunConfig
from moeplace.model import load_model
from moeplace.planner import WORKLOADS, PlanError, parse_workload


def one_3090(ram: str = "64G") -> dict:
    from moeplace.sizes import parse_size

    gpus = parse_gpus(["rtx3090"])
    return device_set(gpus, host_device(parse_size(ram), "ddr5-6000x2", gpus))


def test_long_prompt_chooses_a_large_ubatch_for_the_reason_the_cost_model_gives(
        model_path: Callable[[str], Path]) -> None:
    """gpt-oss-120b on one 24 GB GPU: experts in RAM are copied over PCIe once per ubatch, so a long-prompt
    workload pays for a larger compute buffer with fewer copies per token. Without op offload nothing is copied,
    and the same search keeps a small ubatch: the choice comes from the cost terms, not from a rule about names."""
    m = load_model(model_path("gpt-oss-120b"))
    devs = one_3090()
    cfg = RunConfig(n_ctx=32768)
    long = choose_config(m, devs, cfg, workload=WORKLOADS["long-prompt"])
    assert long.plan.cfg.n_ubatch >= 2048 and long.plan.cfg.n_batch >= long.plan.cfg.n_ubatch
    by_ub = {p.cfg.n_ubatch: p for p in long.trade if p.cfg.type_k == long.plan.cfg.type_k}
    small, big = by_ub[512], by_ub[long.plan.cfg.n_ubatch]
    per_token = [p.estimate.prefill.transfer_bytes / p.estimate.prefill.n_ubatch for p in (small, big)]
    assert per_token[1] < per_token[0] / 2  # the copies are amortised over more tokens
    assert big.chosen.prefill_tps > 2 * small.chosen.prefill_tps
    assert big.estimate.memory["CUDA0"].compute > small.estimate.memory["CUDA0"].compute  # and that costs VRAM
    assert big.chosen.decode_tps < small.chosen.decode_tps
    assert any(w.startswith(f"-ub {long.plan.cfg.n_ubatch}: prompt") and "copied to CUDA0" in w for w in long.why)
    assert all(p.chosen.fits for p in long.trade)
    no_copy = choose_config(m, devs, cfg.with_(op_offload=False), workload=WORKLOADS["long-prompt"])
    assert no_copy.plan.cfg.n_ubatch <= 1024
    assert not no_copy.plan.cfg.no_mmap  # nothing is copied, so pinned memory would not help
    assert_kv_rule(long)
    chat = choose_config(m, devs, cfg, workload=WORKLOADS["chat"])
    assert chat.plan.cfg.n_ubatch <= long.plan.cfg.n_ubatch


def test_pinned_settings_are_kept(model_path: Callable[[str], Path]) -> None:
    m = load_model(model_path("gpt-oss-120b"))
    c = choose_config(m, one_3090(), RunConfig(n_ctx=32768, n_ubatch=512, type_k="f16", type_v="f16"),
                      pinned=["n_ubatch", "type_k", "type_v", "no_mmap"], workload=WORKLOADS["long-prompt"])
    assert len(c.trade) == 1 and c.plan.cfg.n_ubatch == 512 and not c.plan.cfg.no_mmap
    with pytest.raises(PlanError, match="unknown run settings"):
        choose_config(m, one_3090(), RunConfig(), pinned=["n_threads"])


def assert_kv_rule(c: ConfigChoice) -> None:
    """q8_0 only when it is KV_QUANT_MIN_GAIN faster than the best f16 cache."""
    f16 = min(p.chosen.seconds for p in c.trade if p.cfg.type_k == "f16")
    if c.plan.cfg.type_k == "q8_0":
        assert c.plan.chosen.seconds <= f16 * (1 - KV_QUANT_MIN_GAIN)
    else:
        assert all(p.chosen.seconds > f16 * (1 - KV_QUANT_MIN_GAIN) for p in c.trade)


def test_a_quantized_cache_that_decodes_slower_is_said_so(model_path: Callable[[str], Path]) -> None:
    """On an Ampere card llama.cpp decodes an f16 cache with its GQA-aware kernel and a q8_0 cache with the vector
    kernel, which reads it once per query head (speed.kv_rereads): at a long context q8_0 is slower, and the
    explanation says so instead of calling a loss a small gain."""
    from dataclasses import replace

    m = load_model(model_path("qwen3-30b-a3b"))
    devs = one_3090()
    devs = {n: replace(d, kv_reread_share=0.5) if not d.is_host else d for n, d in devs.items()}
    c = choose_config(m, devs, RunConfig(n_ctx=32768), workload=WORKLOADS["chat"])
    assert c.plan.cfg.type_k == "f16"
    q8 = min(p.chosen.seconds for p in c.trade if p.cfg.type_k == "q8_0")
    assert q8 > c.plan.chosen.seconds
    line = next(w for w in c.why if w.startswith("-ctk/-ctv f16"))
    assert f"{100 * (q8 / c.plan.chosen.seconds - 1):.1f}% slower" in line and "vector attention kernel" in line
    assert_kv_rule(c)


def test_batch_workload_plans_the_slots_it_launches(model_path: Callable[[str], Path]) -> None:
    m = load_model(model_path("qwen3-30b-a3b"))
    c = choose_config(m, one_3090(), RunConfig(n_ctx=32768), workload=WORKLOADS["batch"])
    assert_kv_rule(c)
    assert c.plan.cfg.n_seq_max == WORKLOADS["batch"].batch and c.plan.cfg.kv_unified
    assert c.plan.estimate.decode.batch == WORKLOADS["batch"].batch
    kept = choose_config(m, one_3090(), RunConfig(n_ctx=32768, n_seq_max=2), pinned=["n_seq_max"],
                         workload=parse_workload("batch", 2))
    assert kept.plan.cfg.n_seq_max == 2


def test_no_mmap_only_where_the_host_share_fits(model_path: Callable[[str], Path]) -> None:
    m = load_model(model_path("gpt-oss-120b"))
    fixed = ["n_ubatch", "type_k", "type_v"]
    roomy = choose_config(m, one_3090("64G"), RunConfig(n_ctx=8192), pinned=fixed, workload=WORKLOADS["chat"])
    assert roomy.plan.cfg.no_mmap and roomy.plan.estimate.host.fits
    short = choose_config(m, one_3090("32G"), RunConfig(n_ctx=8192), pinned=fixed, workload=WORKLOADS["chat"])
    assert not short.plan.cfg.no_mmap and not short.plan.estimate.host.fits
    assert any("cannot be paged" in w for w in short.why)
