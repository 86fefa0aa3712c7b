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


# --- the user's own llama-bench ----------------------------------------------------------------------------------
# No llama-bench can be built here cheaply (its common/ library is most of a llama.cpp build), so a real executable
# stands in for it: it records its arguments and prints llama-bench's -o json shape.

_STAND_IN = """#!{python}
import json, sys
from pathlib import Path
args = sys.argv[1:]
with open({log!r}, "a") as f:
    f.write(json.dumps(args) + "\\n")
mode = {mode!r}
if mode == "fail":
    print("error: failed to load model", file=sys.stderr)
    sys.exit(1)
if mode == "text":
    print("| model | size | params | backend | ngl | test | t/s |")
    sys.exit(0)
def value(flag):
    return args[args.index(flag) + 1]
common = {{"build_commit": "abc1234", "build_number": 6000, "backends": "CUDA", "n_threads": 8,
          "n_depth": int(value("-d"))}}
print(json.dumps([
    {{**common, "n_prompt": int(value("-p")), "n_gen": 0, "avg_ts": 900.5, "samples_ts": [900.0, 901.0]}},
    {{**common, "n_prompt": 0, "n_gen": int(value("-n")), "avg_ts": 45.6, "samples_ts": [45.5, 45.7]}},
]))
"""


def _stand_in(tmp_path: Path, mode: str = "json") -> tuple[Path, Path]:
    exe, log = tmp_path / f"llama-bench-{mode}", tmp_path / f"args-{mode}.jsonl"
    exe.write_text(_STAND_IN.format(python=sys.executable, log=str(log), mode=mode))
    exe.chmod(0o755)
    return exe, log


def test_llama_bench_runs_the_plans_at_the_depth_and_writes_rows(model_path: Callable[[str], Path],
                                                                 tmp_path: Path) -> None:
    exe, log = _stand_in(tmp_path)
    cal_path = tmp_path / "cal.json"
    code, out, err = run(str(model_path("qwen3moe-tiny")), "--gpu", "24G@1000", "--ram", "64G", "--ram-bw", "50",
                         "--llama-bench", str(exe), "-d", "4096", "-p", "512", "-n", "64", "-r", "2", "-c", "8192",
                         "-o", str(cal_path), "--json")
    assert code == 0, err
    doc = json.loads(out)
    calls = [json.loads(x) for x in log.read_text().splitlines()]
    assert len(calls) == len(doc["runs"]) >= 2  # the plan and the baselines, one llama-bench run each
    for args, r in zip(calls, doc["runs"]):
        assert args[args.index("-d") + 1] == "4096" and args[args.index("-o") + 1] == "json"
        assert args[args.index("-ngl") + 1] == str(r["args"]["n_gpu_layers"])
        ot = r["args"]["override_tensor"]
        assert (args[args.index("-ot") + 1] == ";".join(ot)) if ot else "-ot" not in args
        assert r["measured"]["decode_tokens_per_second"] == 45.6 and r["measured"]["prompt_runs"] == [900.0, 901.0]
    assert "CUDA0" in C.load(cal_path).devices
    row = doc["dataset_rows"][0]
    assert row["test"] == {"tool": "llama-bench", "pp_tokens": 512, "tg_tokens": 64, "depth": 4096}
    assert row["tg_tps"] == 45.6 and row["pp_tps"] == 900.5 and row["gpus"][0]["backend"] == "CUDA"
    assert row["build"].startswith("llama-bench build 6000 (abc1234)")
    published = json.loads((Path(__file__).parent.parent / "benchmarks" / "published" /
                            "measurements.jsonl").read_text().splitlines()[0])
    assert set(row) == set(published) and set(row["flags"]) == set(published["flags"])


@pytest.mark.parametrize(("mode", "says"), [("fail", "exited with code 1: error: failed to load model"),
                                            ("text", "not valid JSON at line 1")])
def test_llama_bench_failures_are_one_line_errors(model_path: Callable[[str], Path], tmp_path: Path, mode: str,
                                                  says: str) -> None:
    exe, _ = _stand_in(tmp_path, mode)
    code, _, err = run(str(model_path("qwen3moe-tiny")), "--llama-bench", str(exe), "-c", "1024")
    assert code == 2 and err.count("\n") == 1 and says in err, err


def test_depth_without_llama_bench_is_refused(model_path: Callable[[str], Path]) -> None:
    code, _, err = run(str(model_path("qwen3moe-tiny")), "-d", "512")
    assert code == 2 and "--llama-bench" in err


def test_a_forks_llama_bench_json_without_backends_names_its_build_only() -> None:
    """ik_llama.cpp's llama-bench lists no backends: the build reads 'build N (commit)', not '..., ?'."""
    from moeplace.bench import parse_llama_bench_json

    common = {"build_commit": "8337e4cd3", "build_number": 4840, "n_threads": 1}
    text = json.dumps([{**common, "n_prompt": 512, "n_gen": 0, "avg_ts": 4470.0, "samples_ts": [4460.0, 4480.0]},
                       {**common, "n_prompt": 0, "n_gen": 128, "avg_ts": 987.8, "samples_ts": [987.0, 988.6]}])
    s = parse_llama_bench_json(text)
    assert s.engine == "llama-bench build 4840 (8337e4cd3)"
    assert (s.tg_runs, s.pp_runs) == ((987.0, 988.6), (4460.0, 4480.0))
    with_backends = parse_llama_bench_json(text.replace('"n_threads"', '"backends": "CPU", "n_threads"'))
    assert with_backends.engine == "llama-bench build 4840 (8337e4cd3), CPU"
