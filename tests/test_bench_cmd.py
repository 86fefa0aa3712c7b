"""``moeplace bench`` through click's CliRunner: a tiny factory model in the real llama.cpp (CPU build), the
calibration it writes, and the one-line refusals; the GPU path against a simulated GPU build. The runs that need
llama_cpp are marked ``llama`` and skipped with a reason where it is missing."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from moeplace import calibration as C
from moeplace import oracle
from moeplace.cli.bench_cmd import bench
from moeplace.cli.options import devices_from
from moeplace.llamacpp import apply
from moeplace.memory import RunConfig
from moeplace.model import load_model
from moeplace.speed import decode_time

QUICK = ["-p", "32", "-n", "8", "-r", "1", "-t", "1", "-c", "512", "--ram-bw", "50"]


def run(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(bench, list(args))
    return r.exit_code, r.stdout, r.stderr


@pytest.mark.llama
def test_bench_writes_a_calibration_that_predicts_what_was_measured(model_path: Callable[[str], Path],
                                                                     tmp_path: Path) -> None:
    model = str(model_path("qwen3moe-tiny"))
    cal_path = tmp_path / "cal.json"
    code, out, err = run(model, *QUICK, "-o", str(cal_path), "--json")
    assert code == 0, err
    first = json.loads(out)
    assert first["schema"] == "moeplace.bench/1" and first["gpu"] is False
    assert first["calibration_file"] == str(cal_path)
    # a tiny model's bandwidth is not a RAM bandwidth, and the output says so
    assert any("measured on a small model" in n for n in first["notes"])
    cal = C.load(cal_path)
    cpu = cal.devices["CPU"]
    assert cpu.bandwidth > 0 and cpu.flops and cpu.flops > 0
    assert cpu.measured and cpu.where and "moeplace bench" in cpu.how and cpu.notes
    assert cpu.bandwidth == first["calibration"]["devices"]["CPU"]["bandwidth"]

    # With the calibration the speed model predicts the generation speed that was measured: the same bytes per
    # token at the measured bandwidth (CPU only: no device switches).
    code, out, err = run(model, *QUICK, "--json", "--calibration", str(cal_path))
    assert code == 0, err
    second = json.loads(out)
    predicted = second["runs"][0]["predicted"]["decode_tokens_per_second"]
    assert predicted == pytest.approx(first["runs"][0]["measured"]["decode_tokens_per_second"], rel=1e-6)
    assert predicted != pytest.approx(first["runs"][0]["predicted"]["decode_tokens_per_second"], rel=0.01)


@pytest.mark.llama
def test_bench_with_gpus_on_a_cpu_build_says_so(model_path: Callable[[str], Path]) -> None:
    if oracle.gpu_devices():
        pytest.skip("this llama.cpp build has a GPU backend")
    code, out, err = run(str(model_path("mixtral-tiny")), *QUICK, "--gpu", "rtx4090", "--plans", "3")
    assert code == 0, err
    assert "this llama.cpp build has no GPU backend" in out and "--plans applies to GPU placements" in out
    assert "CPU only (-ngl 0)" in out and "calibration: CPU effective bandwidth" in out
    assert "written to" not in out  # no -o, no file


@pytest.mark.llama
def test_bench_will_not_overwrite_a_file_that_is_not_a_calibration(model_path: Callable[[str], Path],
                                                                   tmp_path: Path) -> None:
    precious = tmp_path / "notes.json"
    precious.write_text('{"mine": true}')
    code, _, err = run(str(model_path("qwen3moe-tiny")), *QUICK, "-o", str(precious))
    assert code == 2 and err.count("\n") == 1 and "not a moeplace calibration" in err
    assert precious.read_text() == '{"mine": true}'


def test_header_only_models_are_refused(model_path: Callable[[str], Path]) -> None:
    code, _, err = run(str(model_path("qwen3-30b-a3b")))
    assert code == 2 and err.count("\n") == 1
    assert "header-only" in err and "cannot" not in err.lower().split("header-only")[0]


_WITHOUT_LLAMA = r"""
import sys
sys.modules["llama_cpp"] = None  # makes `import llama_cpp` raise ImportError, whatever is installed
from click.testing import CliRunner
from moeplace.cli.bench_cmd import bench
from moeplace.cli.options import devices_from
from moeplace.llamacpp import apply
from moeplace.memory import RunConfig
from moeplace.model import load_model
from moeplace.speed import decode_time
r = CliRunner().invoke(bench, [sys.argv[1]])
print(r.exit_code)
print(r.stderr, end="")
"""


def test_without_llama_cpp_bench_says_how_to_get_it(model_path: Callable[[str], Path]) -> None:
    p = subprocess.run([sys.executable, "-c", _WITHOUT_LLAMA, str(model_path("qwen3moe-tiny"))],
                       capture_output=True, text=True, check=True)
    code, err = p.stdout.split("\n", 1)
    assert code == "2" and err.count("\n") == 1
    assert "pip install 'moeplace[profile]'" in err and ".ci/llama-cpp.sh" in err


def test_gpu_path_fits_the_gpu_bandwidth(model_path: Callable[[str], Path], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A GPU build is simulated: llama.cpp's timings come from the speed model itself with the GPU at a known
    efficiency, applied to the placement llama.cpp would make of the arguments bench passes. bench must run the
    plan and the baselines and recover that GPU's bandwidth."""
    true = devices_from(("24G@1000",), None, 64 << 30, "50")
    true["CUDA0"] = replace(true["CUDA0"], efficiency=0.5)
    calls = []

    def fake_speed(path: Path, cfg: RunConfig, overrides: tuple, n_prompt: int, n_gen: int, *, n_gpu_layers: int,
                   tensor_split: object, repetitions: int, n_threads: object) -> oracle.EngineSpeed:
        md = load_model(path)
        placement = apply(md, n_gpu_layers, tensor_split, overrides, ["CUDA0"])  # what llama.cpp would do
        calls.append((n_gpu_layers, len(overrides)))
        tg = 1.0 / decode_time(md, placement, cfg, true, batch=1, n_past=n_gen // 2).seconds
        return oracle.EngineSpeed(100.0, tg, n_prompt, n_gen, repetitions, 1, (100.0,), (tg,), "simulated")

    monkeypatch.setattr(oracle, "available", lambda: True)
    monkeypatch.setattr(oracle, "gpu_devices", lambda: ("CUDA0",))
    monkeypatch.setattr(oracle, "measure_speed", fake_speed)
    cal_path = tmp_path / "cal.json"
    code, out, err = run(str(model_path("qwen3moe-tiny")), "--gpu", "24G@1000", "--ram", "64G", "--ram-bw", "50",
                         "--plans", "2", "-o", str(cal_path), "--json")
    assert code == 0, err
    doc = json.loads(out)
    names = [r["name"] for r in doc["runs"]]
    assert doc["gpu"] is True and names[0].startswith("plan") and "--cpu-moe" in names
    assert len(calls) == len(names) and any(n_over > 0 for _, n_over in calls)  # --cpu-moe moves experts
    got = C.load(cal_path).devices
    assert set(got) == {"CUDA0"}
    assert got["CUDA0"].bandwidth == pytest.approx(true["CUDA0"].effective_bandwidth, rel=1e-6)
