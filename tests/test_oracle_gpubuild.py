"""The oracle on a GPU backend, live: llama.cpp's Vulkan build (its own virtualenv, .ci/llama-cpp-vulkan.sh; on a
machine without a GPU, Mesa's software device lavapipe) through moeplace.oracle.gpubuild.

Memory: a quick subset of benchmarks/memory_oracle.py --backend gpu (docs/memory-oracle.md has the whole grid):
every buffer of every device within 64 MiB of llama.cpp's, weights per device equal up to ggml's tensor
alignment, KV per device equal. Patterns: a plan's emitted -ngl/-ot, replayed by the build, put every tensor and
every layer slot where the plan says, under the device's real buffer names. Skipped with one reason where the
build or a device is missing (tests/conftest.py)."""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from moeplace import oracle
from moeplace.hardware import BACKEND_PREFIX, catalog, device_set, host_device, parse_gpus
from moeplace.llamacpp import apply, cpu_moe_pattern, cpu_moe_patterns, express
from moeplace.memory import VULKAN_WORST_UNDER, RunConfig, default_margin
from moeplace.model import Role, load_model
from moeplace.oracle import gpubuild
from moeplace.placement import HOST, Placement, host_fallback
from moeplace.planner import plan
from moeplace.sizes import MIB

TOLERANCE = 64 * MIB
_HOST_BUFFER = re.compile(r"^(CPU\w*|\w+_Host)$")


def _gpu() -> tuple[str, int]:
    d = gpubuild.devices()[0]
    return d.name, d.largest_tensor or 0


@pytest.mark.vulkan
def test_the_device_states_the_largest_tensor_it_takes() -> None:
    d = gpubuild.devices()[0]
    assert d.name.startswith(("Vulkan", "CUDA", "ROCm")) and d.memory_total > 0
    if "llvmpipe" in d.description:  # the software device: the preset holds what it states
        assert d.largest_tensor == catalog().preset("lavapipe").max_tensor == 128 * MIB


# (model, -ngl, overrides as llama.cpp options, contexts): full and partial offload, experts on the host, ubatches
# 512 to 4096, 128K, and the loads where the software device's 128 MiB limit sends single ops to the host (expert
# outputs at -ub 4096, MLA's absorbed query, the logits of a host output layer, a 32K score matrix without flash
# attention). docs/memory-oracle.md has the whole grid.
CASES = [
    ("qwen3-30b-a3b", 999, (), [RunConfig(), RunConfig(n_ubatch=2048), RunConfig(n_ctx=131072),
                                RunConfig(n_ctx=8192, n_batch=4096, n_ubatch=4096)]),
    ("qwen3-30b-a3b", 999, (cpu_moe_pattern(),), [RunConfig(), RunConfig(n_ubatch=2048)]),
    ("qwen3-30b-a3b", 999, cpu_moe_patterns(24), [RunConfig(n_ctx=32768, flash_attn=False)]),
    ("qwen3-30b-a3b", 24, (), [RunConfig()]),
    ("deepseek-v3", 30, (), [RunConfig(n_ctx=8192, n_batch=4096, n_ubatch=4096)]),
    ("deepseek-v3", 999, (cpu_moe_pattern(),), [RunConfig(n_ctx=16384), RunConfig(n_ctx=32768, flash_attn=False)]),
    ("llama-3-8b", 16, (), [RunConfig(n_ctx=8192, n_batch=4096, n_ubatch=4096)]),
    ("qwen3moe-tiny", 999, (), [RunConfig()]),  # real allocation
    ("gpt-oss-tiny", 3, (), [RunConfig()]),
]


@pytest.mark.vulkan
def test_every_buffer_of_every_device_within_64_mib(model_path: Callable[[str], Path]) -> None:
    name, limit = _gpu()
    backend = next(b for b, prefix in BACKEND_PREFIX.items() if name.rstrip("0123456789") == prefix)
    devices = {name: replace(parse_gpus([f"{backend}:24G"])[0], name=name, max_tensor=limit),
               HOST: host_device(1 << 40, 50)}
    todo = []
    for model, ngl, overrides, cfgs in CASES:
        path = model_path(model)
        md = load_model(path)
        placement = host_fallback(md, apply(md, ngl, None, overrides, [name]), {name: limit})
        todo += [(md, cfg, placement, gpubuild.MemoryRequest(str(path), cfg, overrides, ngl,
                                                             no_alloc="tiny" not in model)) for cfg in cfgs]
    got = gpubuild.measure_memory_many([r for *_, r in todo])
    problems = []
    worst = 0.0
    for (md, cfg, placement, req), m in zip(todo, got):
        assert not isinstance(m, oracle.EngineError), f"{md.name} {req}: {m}"
        c = oracle.compare_devices(md, cfg, placement, devices, m)
        for f in c.figures:
            assert f.llama is not None, f"{md.name}: llama_get_memory_breakdown unreadable"
            slack = 32 * len(md.tensors) if f.buffer == "weights" else 0  # ggml's tensor alignment
            if f.buffer in ("weights", "kv") and not 0 <= f.llama - f.ours <= slack:
                problems.append(f"{md.name} ngl {req.n_gpu_layers} {cfg}: {f}")
            if abs(f.ours - f.llama) > TOLERANCE:
                problems.append(f"{md.name} ngl {req.n_gpu_layers} ot {len(req.overrides)} {cfg}: {f}")
            if f.device == name:
                worst = min(worst, f.ours - f.llama)
    assert not problems, "\n".join(problems)
    # the derived default margin rests on the stated worst underestimate of a GPU buffer
    if backend == "vulkan":
        assert -worst <= VULKAN_WORST_UNDER < default_margin([devices[name]])


def _device_of(buffer: str) -> str:
    return HOST if _HOST_BUFFER.match(buffer) else buffer


def _replay(path: Path, planned: Placement, name: str) -> None:
    md = load_model(path)
    expr = express(md, planned, [name])
    got = gpubuild.tensor_buffers(gpubuild.MemoryRequest(str(path), RunConfig(), expr.overrides, expr.ngl))
    matched = {t.name for t in md.loaded_tensors if any(re.search(o.pattern, t.name) for o in expr.overrides)}
    assert set(got.overridden) == matched
    for tensor, buffer in got.overridden.items():
        assert _device_of(buffer) == planned.tensor_devices[tensor], (tensor, buffer)
    slots = got.layer_devices
    assert [_device_of(d) for d in slots[:-1]] == list(planned.layer_devices)
    assert _device_of(slots[-1]) == planned.output_device


@pytest.mark.vulkan
def test_a_plan_replayed_on_the_device(model_path: Callable[[str], Path]) -> None:
    """The planner's own placement for a 9 GiB share of the device: experts split between it and the host, the
    tensors it refuses (lavapipe: over 128 MiB) pinned to the host."""
    name, limit = _gpu()
    path = model_path("qwen3-30b-a3b")
    md = load_model(path)
    gpu = replace(parse_gpus(["vulkan:9G@900"])[0], name=name, max_tensor=limit)
    p = plan(md, device_set([gpu], host_device(64 << 30, "5")), RunConfig())
    assert {HOST, name} <= set(p.placement.tensor_devices.values())
    _replay(path, p.placement, name)


@pytest.mark.vulkan
@pytest.mark.parametrize("model", ["qwen3moe-tiny", "gpt-oss-tiny", "deepseek2-tiny"])
def test_random_placements_replayed_on_the_device(model_path: Callable[[str], Path], model: str) -> None:
    name, _ = _gpu()
    path = model_path(model)
    md = load_model(path)
    rng = random.Random(f"gpubuild-{model}")
    experts = [t.name for t in md.loaded_tensors if t.role is Role.ROUTED_EXPERT]
    for _ in range(3):
        base = apply(md, rng.randint(1, md.hparams.n_layer + 1), None, (), [name])
        moved = {n: rng.choice([HOST, name]) for n in rng.sample(experts, rng.randint(1, len(experts)))}
        _replay(path, Placement(base.layer_devices, base.output_device, {**base.tensor_devices, **moved}), name)


def test_the_worker_sees_moeplace_and_not_the_callers_llama_cpp(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Installed with pip, moeplace sits in a site-packages beside the CPU llama_cpp: the GPU worker's
    PYTHONPATH must name a folder with moeplace alone, or the CPU build shadows the GPU one (no device)."""
    site = tmp_path / "site-packages"
    (site / "llama_cpp").mkdir(parents=True)
    (site / "moeplace").mkdir()
    package = gpubuild._PACKAGE
    monkeypatch.setattr(gpubuild, "_PACKAGE", site / "moeplace")
    gpubuild._package_path.cache_clear()
    try:
        folder = Path(gpubuild._package_path())
        assert sorted(p.name for p in folder.iterdir()) == ["moeplace"]
        assert (folder / "moeplace").resolve() == (site / "moeplace").resolve()
    finally:
        monkeypatch.setattr(gpubuild, "_PACKAGE", package)
        gpubuild._package_path.cache_clear()
    checkout = Path(gpubuild.__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file():  # run from a checkout: the checkout itself
        assert gpubuild._package_path() == str(checkout)
