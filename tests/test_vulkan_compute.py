"""moeplace.vulkan_compute: the op-level model of llama.cpp's Vulkan compute buffers. Its figures are held against
the real build by tests/test_oracle_gpubuild.py (vulkan-marked) and docs/memory-oracle.md; these tests hold the
rules it replays, on factory models (header-only full-scale files, nothing loaded)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from moeplace.hardware import catalog, host_device, parse_gpus
from moeplace.llamacpp import apply, cpu_moe_pattern
from moeplace.memory import (
    DEFAULT_MARGIN,
    MARGINS,
    VULKAN_WORST_UNDER,
    RunConfig,
    compute_bytes_by_device,
    default_margin,
    output_bytes,
)
from moeplace.model import load_model
from moeplace.placement import HOST, host_fallback
from moeplace.sizes import MIB
from moeplace.vulkan_compute import CHUNK, _Tallocr, block_graph, schedule, vulkan_compute

LAVAPIPE = 128 * MIB


def _gpu(limit: int):  # type: ignore[no-untyped-def]
    return replace(parse_gpus(["vulkan:24G"])[0], name="Vulkan0", max_tensor=limit)


def _setup(model_path: Callable[[str], Path], name: str, limit: int, overrides=(), ngl: int = 999):  # type: ignore[no-untyped-def]
    md = load_model(model_path(name))
    gpu = _gpu(limit)
    placement = host_fallback(md, apply(md, ngl, None, overrides, [gpu.name]), {gpu.name: limit})
    return md, gpu, placement


def _where(md, gpu, placement, cfg, op_name: str) -> set[str]:  # type: ignore[no-untyped-def]
    graph = block_graph(md, cfg)
    sched = schedule(graph, placement, [gpu], cfg)
    return {b for o, b in zip(graph.ops, sched.backends, strict=True) if o.name.startswith(op_name)}


def test_an_op_larger_than_the_device_takes_runs_on_the_host(model_path: Callable[[str], Path]) -> None:
    """ggml_backend_vk_device_supports_op: qwen3-30b's expert outputs at -ub 4096 are 256 MiB, over lavapipe's
    128 MiB: the down projection leaves the device; a real driver's 4 GiB keeps it there."""
    cfg = RunConfig(n_ctx=8192, n_batch=4096, n_ubatch=4096)
    md, gpu, placement = _setup(model_path, "qwen3-30b-a3b", LAVAPIPE)
    assert _where(md, gpu, placement, cfg, "ffn_moe_down") == {HOST}
    assert _where(md, gpu, placement, cfg, "ffn_moe_gate") == {"Vulkan0"}  # 96 MiB: stays
    md, gpu, placement = _setup(model_path, "qwen3-30b-a3b", catalog().max_tensor["vulkan"])
    assert _where(md, gpu, placement, cfg, "ffn_moe_down") == {"Vulkan0"}


def test_host_experts_are_offloaded_from_32_tokens(model_path: Callable[[str], Path]) -> None:
    """Op offload (GGML_OP_OFFLOAD_MIN_BATCH): with --cpu-moe the expert products run on the GPU for a prompt
    batch of 32 or more tokens, their weights copied into its compute buffer; below that, on the host."""
    big = catalog().max_tensor["vulkan"]
    md, gpu, placement = _setup(model_path, "qwen3-30b-a3b", big, (cpu_moe_pattern(),))
    assert _where(md, gpu, placement, RunConfig(n_ubatch=512), "ffn_moe_gate") == {"Vulkan0"}
    assert _where(md, gpu, placement, RunConfig(n_ubatch=16), "ffn_moe_gate") == {HOST}
    # on lavapipe (the output layer on the host, so the logits do not dominate) the copy of a host expert matrix
    # is the device's largest tensor: its buffer holds it (llama.cpp: 172 MiB with --cpu-moe, 88 MiB without)
    md, gpu, placement = _setup(model_path, "qwen3-30b-a3b", LAVAPIPE, (cpu_moe_pattern(),))
    with_copy = vulkan_compute(md, placement, RunConfig(n_ubatch=512), [gpu])["Vulkan0"]
    md_all, _, on_gpu = _setup(model_path, "qwen3-30b-a3b", LAVAPIPE)
    without = vulkan_compute(md_all, on_gpu, RunConfig(n_ubatch=512), [gpu])["Vulkan0"]
    gate = max(t.nbytes for t in md.tensors if t.name.endswith("ffn_gate_exps.weight"))
    assert with_copy >= gate > without


def test_the_logits_of_a_host_output_layer_are_in_the_host_buffer(model_path: Callable[[str], Path]) -> None:
    """lavapipe refuses qwen3-30b's 243 MiB output.weight: the logits (f32, vocabulary x ubatch) are computed in
    the host's buffer, and never freed (a graph output)."""
    md, gpu, placement = _setup(model_path, "qwen3-30b-a3b", LAVAPIPE)
    assert placement.tensor_devices["output.weight"] == HOST
    got = vulkan_compute(md, placement, RunConfig(n_ubatch=512), [gpu])
    assert got[HOST] >= 4 * md.hparams.n_vocab * 512


def test_memory_by_device_uses_it_for_vulkan_and_adds_the_output_buffer(model_path: Callable[[str], Path]) -> None:
    md, gpu, placement = _setup(model_path, "gpt-oss-20b", LAVAPIPE)
    cfg = RunConfig(n_ubatch=2048)
    devices = {gpu.name: gpu, HOST: host_device(1 << 40, 50)}
    ours = compute_bytes_by_device(md, placement, cfg, devices=devices)
    direct = vulkan_compute(md, placement, cfg, [gpu])
    assert ours == {gpu.name: direct[gpu.name], HOST: direct[HOST] + output_bytes(md, cfg)}
    cuda = replace(gpu, backend="cuda")
    assert compute_bytes_by_device(md, placement, cfg, devices={gpu.name: cuda, HOST: devices[HOST]}) != ours


@pytest.mark.parametrize("name", ["qwen3moe-tiny", "deepseek2-tiny", "gpt-oss-tiny", "mixtral-tiny", "glm4moe-tiny",
                                  "llama-tiny", "llama4-tiny", "qwen3next-tiny"])
def test_every_architecture_builds_and_splits(model_path: Callable[[str], Path], name: str) -> None:
    md, gpu, placement = _setup(model_path, name, LAVAPIPE, ngl=2)
    for cfg in (RunConfig(), RunConfig(n_ctx=32768, flash_attn=False)):
        got = vulkan_compute(md, placement, cfg, [gpu])
        assert set(got) == {"Vulkan0", HOST} and all(v > 0 for v in got.values())


def test_the_allocator_reuses_holes_and_opens_a_chunk_for_what_does_not_fit() -> None:
    """ggml_dyn_tallocr: best fit among the free blocks, the last block grows its chunk; a tensor that fits no
    chunk's space opens a new one (CHUNK, or its own size when larger)."""
    a = _Tallocr()
    x = a.alloc(100 * MIB)
    a.alloc(10 * MIB)
    a.free(x, 100 * MIB)
    a.alloc(60 * MIB)  # into the 100 MiB hole
    assert a.size == 110 * MIB
    a.alloc(CHUNK - 50 * MIB)  # does not fit chunk 0's 914 MiB left
    assert len(a.max) == 2 and a.size == 110 * MIB + CHUNK - 50 * MIB


def test_default_margin_per_backend() -> None:
    """Vulkan's margin is derived from its oracle's worst underestimate; the others keep the stated figure, and a
    mixed set keeps the largest."""
    vk, cuda = _gpu(0), replace(_gpu(0), name="CUDA0", backend="cuda")
    assert MARGINS["vulkan"] >= VULKAN_WORST_UNDER and MARGINS["vulkan"] % (32 * MIB) == 0
    assert default_margin({vk.name: vk}) == MARGINS["vulkan"]
    assert default_margin([cuda]) == DEFAULT_MARGIN
    assert default_margin([vk, cuda]) == max(MARGINS["vulkan"], DEFAULT_MARGIN)
    assert default_margin([host_device(1 << 30, 10)]) == DEFAULT_MARGIN


def test_recurrent_states_are_gathered_where_their_cache_lives(model_path: Callable[[str], Path]) -> None:
    """build_rs clears and copies the states in place in the recurrent cache, so the gather runs with the cache: on
    the host for a layer -ngl leaves there, though op offload sends that layer's projections to the device."""
    cfg = RunConfig(n_ctx=4096)
    md, gpu, placement = _setup(model_path, "qwen3-next-80b-a3b", LAVAPIPE, ngl=24)
    graph = block_graph(md, cfg)
    sched = schedule(graph, placement, [gpu], cfg)
    where = {o.srcs[0]: b for o, b in zip(graph.ops, sched.backends, strict=True) if o.op == "GET_ROWS"
             and o.srcs[0].startswith("rs:")}
    assert where["rs:r0"] == where["rs:s0"] == HOST
    assert where["rs:r46"] == where["rs:s46"] == "Vulkan0"
    qkv = {b for o, b in zip(graph.ops, sched.backends, strict=True) if o.name.startswith("blk.0.attn_qkv")}
    assert qkv == {"Vulkan0"}


def test_the_delta_net_output_is_read_through_a_view(model_path: Callable[[str], Path]) -> None:
    """qwen3next reshapes the delta net's projection before the residual add, which ggml-alloc never takes over:
    the sum takes the block input's memory. The fused top-k router keeps its logits to the division."""
    md = load_model(model_path("qwen3-next-80b-a3b"))
    graph = block_graph(md, RunConfig(n_ctx=4096))
    ops = {o.name: o for o in graph.ops}
    add = next(o for o in graph.ops if o.name.startswith("ffn_inp"))
    assert ops[add.srcs[0]].name.startswith("mul_mat") and add.viewed == (add.srcs[0],)
    div = next(o for o in graph.ops if o.op == "DIV")
    assert any(ops[s].name.startswith("blk.0.ffn_gate_inp") for s in div.srcs if s in ops)
