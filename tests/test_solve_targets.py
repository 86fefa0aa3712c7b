"""``moeplace solve --target``: every engine gets a plan, its files and a command, and bad requests get one line."""

from __future__ import annotations

import configparser
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from moeplace import hardware
from moeplace.cli import main

FILES = {
    "llama.cpp": ("server.sh", "cli.sh", "server.ps1", "cli.ps1", "llama-swap.yaml", "plan.json"),
    "ik_llama.cpp": ("server.sh", "server.ps1", "plan.json"),
    "llama-server-preset": ("models-preset.ini", "plan.json"),
    "lmstudio": ("lmstudio-load-config.json", "plan.json"),
    "ollama": ("Modelfile", "plan.json"),
    "ktransformers": ("kt-server.sh", "kt-placement.json", "plan.json"),
}
COMMAND = {"llama.cpp": "llama-server -m", "ik_llama.cpp": "llama-server -m",
           "llama-server-preset": "llama-server --models-preset", "lmstudio": "lms load", "ollama": "ollama create",
           "ktransformers": "kt-server.sh"}


def run(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(main, list(args))
    return r.exit_code, r.stdout, r.stderr


@pytest.mark.parametrize("target", list(FILES))
def test_each_target_plans_writes_and_prints_a_command(target: str, model_path: Callable[[str], Path],
                                                       tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "keep").mkdir(parents=True)
    (out / "keep" / "mine.txt").write_text("not moeplace's")
    code, text, err = run("solve", str(model_path("qwen3-30b-a3b")), "--vram", "12G", "--ram", "32G",
                          "-c", "8192", "--target", target, "-o", str(out))
    assert code == 0, err
    assert COMMAND[target] in text
    for f in FILES[target]:
        assert (out / f).is_file(), f
    assert (out / "keep" / "mine.txt").read_text() == "not moeplace's"
    plan_doc = json.loads((out / "plan.json").read_text())
    assert plan_doc.get("target", "llama.cpp") == target or "llama_cpp" in plan_doc
    if target in ("lmstudio", "ollama"):
        assert f"{target} can get" in text and "of the plan's" in text
        assert plan_doc["approximation"]["fits"] is True
    if target == "llama-server-preset":
        ini = configparser.ConfigParser(interpolation=None)
        ini.read_string((out / "models-preset.ini").read_text())
        assert len(ini.sections()) == 1
    if target == "lmstudio":
        json.loads((out / "lmstudio-load-config.json").read_text())
    if target == "ktransformers":
        assert np.asarray(json.loads((out / "kt-placement.json").read_text())["logical_count"]).ndim == 3


def test_preset_runs_merge(model_path: Callable[[str], Path], tmp_path: Path) -> None:
    ini_path = tmp_path / "models-preset.ini"
    ini_path.write_text("[mine]\nctx-size = 4096\n")
    for name in ("qwen3-30b-a3b", "gpt-oss-20b", "qwen3-30b-a3b"):
        code, _, err = run("solve", str(model_path(name)), "--vram", "24G", "--ram", "64G", "-c", "8192",
                           "--target", "llama-server-preset", "-o", str(tmp_path))
        assert code == 0, err
    ini = configparser.ConfigParser(interpolation=None)
    ini.read_string(ini_path.read_text())
    assert ini.sections() == ["mine", "qwen3-30b-a3b-moeplace", "gpt-oss-20b-moeplace"]
    assert ini["mine"]["ctx-size"] == "4096"


def test_unknown_target_and_bad_engine_bin_are_one_line_errors(model_path: Callable[[str], Path],
                                                               tmp_path: Path) -> None:
    code, _, err = run("solve", str(model_path("qwen3-30b-a3b")), "--vram", "12G", "--target", "vllm")
    assert code == 2 and "vllm" in err and "Traceback" not in err
    bad = tmp_path / "llama-server"
    bad.write_text("not a program")
    code, _, err = run("solve", str(model_path("qwen3-30b-a3b")), "--vram", "12G", "--engine-bin", str(bad),
                       "--no-scripts")
    assert code == 2 and err.startswith("Error:") and len(err.strip().splitlines()) == 1
    code, _, err = run("solve", str(model_path("qwen3-30b-a3b")), "--vram", "12G,12G", "--target", "ollama",
                       "--no-scripts")
    assert code == 2 and "one GPU" in err and len(err.strip().splitlines()) == 1


def test_ik_llama_target_runs_the_host_at_its_engine_factor(model_path: Callable[[str], Path], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """solve --target ik_llama.cpp predicts with the host rates the accuracy report fits for that engine
    (engine_cpu_factor, hardware.for_engine): a CPU-only prompt, compute-bound, runs that factor faster (its
    measured per-type factors set aside here: test_hardware checks them)."""
    shipped = hardware.speed_params()
    monkeypatch.setattr(hardware, "speed_params", lambda: replace(
        shipped, engine_cpu_factor={"ik_llama.cpp": 2.0}, engine_cpu_quant_factor={}, engine_cpu_prefill_factor={}))
    tps = {}
    for target in ("llama.cpp", "ik_llama.cpp"):
        code, text, err = run("solve", str(model_path("qwen3-30b-a3b")), "--gpu", "none", "--ram", "64G", "--ram-bw",
                              "400", "-t", "2", "-c", "4096", "--target", target, "--json", "-o",
                              str(tmp_path / target))
        assert code == 0, err
        tps[target] = json.loads(text)["prediction"]["plan"]["prompt_tokens_per_second"]
    assert tps["ik_llama.cpp"] == pytest.approx(2.0 * tps["llama.cpp"], rel=0.01)
