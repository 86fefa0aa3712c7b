"""moeplace.oracle: driving a real llama.cpp (llama-cpp-python), and working without it.

The tests marked ``llama`` need llama-cpp-python in this interpreter and are skipped with a reason where it is
missing (run them with e.g. ``PYTHONPATH=/tmp/llbuild/lib/python3.11/site-packages .venv/bin/pytest``)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from moeplace import oracle
from moeplace.llamacpp import Override, cpu_moe_pattern
from moeplace.memory import RunConfig, context_shape, kv_bytes
from moeplace.model import Role, load_model

_WITHOUT_LLAMA = r"""
import json, sys
sys.modules["llama_cpp"] = None  # makes `import llama_cpp` raise ImportError, whatever is installed
from moeplace import oracle
from moeplace.memory import RunConfig
out = {"available": oracle.available(), "reason": oracle.unavailable_reason(), "version": oracle.version()}
try:
    oracle.measure_memory(sys.argv[1], RunConfig())
except oracle.EngineError as e:
    out["error"] = str(e)
print(json.dumps(out))
"""


def test_without_llama_cpp_moeplace_still_imports_and_says_how_to_get_it(
        model_path: Callable[[str], Path]) -> None:
    p = subprocess.run([sys.executable, "-c", _WITHOUT_LLAMA, str(model_path("qwen3moe-tiny"))],
                       capture_output=True, text=True, check=True)
    got = json.loads(p.stdout)
    assert got["available"] is False
    assert "pip install 'moeplace[profile]'" in got["reason"] and ".ci/llama-cpp.sh" in got["reason"]
    assert got["version"].startswith("unavailable")
    assert "pip install 'moeplace[profile]'" in got["error"] and "\n" not in got["error"]


def test_the_former_engine_module_still_serves_its_callers() -> None:
    from moeplace import engine

    assert set(oracle.__all__) <= set(dir(engine))
    assert engine.measure_memory is oracle.measure_memory and engine.EngineError is oracle.EngineError


def test_availability_is_consistent() -> None:
    assert oracle.available() == (oracle.unavailable_reason() is None)
    assert oracle.version().startswith("llama-cpp-python ") == oracle.available()


def test_sparse_files_flags_header_only_models(model_path: Callable[[str], Path]) -> None:
    full, tiny = model_path("qwen3-30b-a3b"), model_path("qwen3moe-tiny")
    assert oracle.sparse_files([full, tiny]) == [full]


def test_mib_text_rounds_like_llama_cpp() -> None:
    assert oracle.mib_text(2 << 20) == "2.00" and oracle.mib_text(136192) == "0.13"
    # Above 2^24 bytes float32 keeps 24 significant bits, so the KV lines' single-precision division rounds
    # the byte count first: 2^34 + 5242 bytes is 16384.004999.. MiB, but float32 makes it 16384.005859...
    n = (1 << 34) + 5242
    assert oracle.mib_text(n) == "16384.00"
    assert oracle.mib_text(n, single=True) == "16384.01"


@pytest.mark.llama
@pytest.mark.parametrize("name", ["qwen3moe-tiny", "gpt-oss-tiny"])
def test_measure_memory_reads_every_buffer(model_path: Callable[[str], Path], name: str) -> None:
    path = model_path(name)
    model = load_model(path)
    cfg = RunConfig(n_ctx=5000)
    got = oracle.measure_memory(path, cfg)
    assert got.no_alloc and got.n_ctx == context_shape(model, cfg).n_ctx == 5120
    assert len(got.caches) == (2 if model.hparams.n_swa else 1)  # gpt-oss: a full and a sliding-window cache
    assert all({p[0] for p in c.parts} == {"K", "V"} for c in got.caches)
    assert "CPU" in got.compute_mib and got.compute_mib["CPU"] > 0
    assert got.file_bytes == sum(t.nbytes for t in model.tensors)
    if sys.platform.startswith("linux"):
        assert got.exact is not None
        assert got.kv_bytes == kv_bytes(model, cfg)
        assert f"{got.compute_bytes / (1 << 20):.2f}" == f"{got.compute_mib['CPU']:.2f}"


@pytest.mark.llama
def test_exact_figures_match_a_real_allocation(model_path: Callable[[str], Path]) -> None:
    """The no_alloc breakdown (read from llama_get_memory_breakdown's std::map) equals the buffers a real load
    allocates and prints, so the map is read right."""
    path = model_path("qwen3moe-tiny")
    dry = oracle.measure_memory(path, RunConfig())
    real = oracle.measure_memory(path, RunConfig(), no_alloc=False)
    if dry.exact is None or real.exact is None:
        pytest.skip("llama_get_memory_breakdown is not readable on this platform")
    assert dry.model_mib == {"CPU": 0.0}  # llama.cpp prints its dummy buffers under no_alloc
    assert real.exact["CPU_Mapped"].model == dry.exact["CPU"].model  # the mmap'ed range: every weight
    assert f"{real.exact['CPU_Mapped'].model / (1 << 20):.2f}" == f"{real.model_mib['CPU_Mapped']:.2f}"
    assert real.exact["CPU"].context == dry.exact["CPU"].context
    assert real.exact["CPU"].compute == dry.exact["CPU"].compute


@pytest.mark.llama
def test_a_refusal_carries_llama_cpp_s_reason(model_path: Callable[[str], Path]) -> None:
    with pytest.raises(oracle.EngineError, match="does not divide n_embd_head_k"):
        oracle.measure_memory(model_path("gpt-oss-tiny"), RunConfig(type_k="q8_0", type_v="q8_0"))


@pytest.mark.llama
def test_tensor_buffers_reports_overrides_and_layer_slots(model_path: Callable[[str], Path]) -> None:
    path = model_path("qwen3moe-tiny")
    model = load_model(path)
    got = oracle.tensor_buffers(path, [cpu_moe_pattern()], n_gpu_layers=-1)
    assert set(got.overridden) == {t.name for t in model.tensors if t.role is Role.ROUTED_EXPERT}
    assert all(b.startswith("CPU") for b in got.overridden.values())
    assert len(got.layer_devices) == model.hparams.n_layer + 1


@pytest.mark.llama
def test_buffer_types_of_this_build(model_path: Callable[[str], Path]) -> None:
    bufts = oracle.buffer_types()
    assert "CPU" in bufts
    assert set(oracle.gpu_devices()) <= set(bufts)
    missing = next(f"CUDA{i}" for i in range(64) if f"CUDA{i}" not in bufts)
    with pytest.raises(oracle.EngineError, match=f"buffer type {missing} is not in this llama.cpp build"):
        oracle.tensor_buffers(model_path("qwen3moe-tiny"), [Override(r"ffn_up_exps", missing)])


@pytest.mark.llama
def test_measure_speed_on_a_tiny_model(model_path: Callable[[str], Path]) -> None:
    got = oracle.measure_speed(model_path("mixtral-tiny"), RunConfig(n_ctx=512), n_prompt=64, n_gen=8,
                               repetitions=2, n_threads=1)
    assert got.pp_tps > 0 and got.tg_tps > 0
    assert len(got.pp_runs) == len(got.tg_runs) == 2 and got.n_threads == 1
    assert min(got.tg_runs) <= got.tg_tps <= max(got.tg_runs)


@pytest.mark.llama
def test_measure_speed_refuses_what_it_cannot_measure(model_path: Callable[[str], Path]) -> None:
    with pytest.raises(oracle.EngineError, match="header-only"):
        oracle.measure_speed(model_path("qwen3-30b-a3b"), RunConfig(), n_prompt=8, n_gen=8)
    with pytest.raises(oracle.EngineError, match="exceed the context of 256"):
        oracle.measure_speed(model_path("qwen3moe-tiny"), RunConfig(n_ctx=256), n_prompt=300, n_gen=8)
