"""What-if planning: another quant (llama-quantize's rules), hardware variants, and the least VRAM for a speed."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner
from gguf import LlamaFileType

from moeplace.cli import main
from moeplace.cli.options import devices_from, run_config_from
from moeplace.errors import MoeplaceError
from moeplace.model import ModelDescription, load_model
from moeplace.planner import WORKLOADS, plan
from moeplace.testing import SPECS, write_model
from moeplace.whatif import STEP, as_quant, compare, least_vram, with_gpu_memory


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("whatif")
    base = SPECS["qwen3-30b-a3b"]
    out = {"Q4_K_M": write_model(base, d / "q4km.gguf")[0]}
    for name, ft in (("Q8_0", LlamaFileType.MOSTLY_Q8_0), ("MXFP4_MOE", LlamaFileType.MOSTLY_MXFP4_MOE)):
        out[name] = write_model(replace(base, ftype=ft), d / f"{name}.gguf")[0]
    return out


def _cfg(md: ModelDescription):  # type: ignore[no-untyped-def]
    def config(devs):  # type: ignore[no-untyped-def]
        return run_config_from(md, devs, n_ctx=4096, type_k="f16", type_v="f16", n_batch=2048, n_ubatch=512,
                               flash_attn="auto", n_seq_max=1, kv_unified=False, swa_full=False,
                               no_kv_offload=False, no_op_offload=False)
    return config


@pytest.mark.parametrize("quant", ["Q8_0", "MXFP4_MOE"])
def test_as_quant_matches_the_file_llama_quantize_would_write(models: dict[str, Path], quant: str) -> None:
    projected = as_quant(load_model(models["Q4_K_M"]), quant)
    real = load_model(models[quant])
    assert [(t.name, t.ggml_type, t.nbytes) for t in projected.tensors] == \
        [(t.name, t.ggml_type, t.nbytes) for t in real.tensors]
    assert projected.file_type == real.file_type
    assert abs(projected.file_size - real.file_size) < 1 << 20  # alignment padding only


def test_as_quant_refuses_unported_types(models: dict[str, Path]) -> None:
    with pytest.raises(MoeplaceError, match="Q2_K: moeplace ports llama-quantize's rules for Q4_0, Q4_K_M"):
        as_quant(load_model(models["Q4_K_M"]), "Q2_K")


def test_least_vram_is_the_least(models: dict[str, Path]) -> None:
    md = load_model(models["Q4_K_M"])
    devices = devices_from(("rtx3060",), None, 32 << 30, None)
    config = _cfg(md)
    wl = WORKLOADS["chat"]
    t = least_vram(md, devices, config, 30.0, workload=wl, margin=256 << 20)
    assert t.memory is not None and t.plan is not None and t.plan.chosen.decode_tps >= 30.0
    below = with_gpu_memory(devices, t.memory - STEP)
    try:
        p = plan(md, below, config(below), workload=wl, margin=256 << 20, with_baselines=False)
        assert not p.chosen.fits or p.chosen.decode_tps < 30.0
    except MoeplaceError:
        pass  # nothing fits a step below: also short of the target
    unreachable = least_vram(md, devices, config, t.ceiling * 1.5, workload=wl, margin=256 << 20)
    assert unreachable.memory is None and unreachable.ceiling == pytest.approx(t.ceiling)


def test_compare_first_variant_is_the_plain_plan(models: dict[str, Path]) -> None:
    md = load_model(models["Q4_K_M"])
    one = devices_from(("rtx3060",), None, 32 << 30, None)
    two = devices_from(("rtx3060,rtx3060",), None, 32 << 30, None)
    out = compare(md, [("given", one), ("two", two)], _cfg(md), workload=WORKLOADS["chat"], margin=256 << 20)
    direct = plan(md, one, _cfg(md)(one), workload=WORKLOADS["chat"], margin=256 << 20, with_baselines=False)
    assert out[0].plan is not None and out[0].plan.chosen.decode_tps == direct.chosen.decode_tps
    assert out[1].decode_tps >= out[0].decode_tps  # a second GPU never plans slower


def _run(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(main, list(args))
    if r.exception and not isinstance(r.exception, SystemExit):
        raise r.exception
    return r.exit_code, r.stdout, r.stderr


def test_solve_what_if_options(models: dict[str, Path]) -> None:
    m = str(models["Q4_K_M"])
    code, out, _ = _run("solve", m, "--vram", "12G", "--ram", "32G", "--as-quant", "Q8_0", "--no-scripts")
    assert code == 0 and out.startswith("projection: qwen3-30b-a3b re-typed by llama-quantize's rules as MOSTLY_Q8_0")
    code, out, _ = _run("solve", m, "--gpu", "rtx3060", "--ram", "32G", "--compare", "--gpu rtx3060,rtx3060",
                        "--compare", "--ram 64G", "--json")
    assert code == 0
    doc = json.loads(out)
    assert [v["variant"] for v in doc["variants"]] == ["as given", "--gpu rtx3060,rtx3060", "--ram 64G"]
    assert "+" in doc["variants"][1]["hardware"] and "64.00 GiB" in doc["variants"][2]["hardware"]
    code, out, _ = _run("solve", m, "--gpu", "rtx3060", "--ram", "32G", "--target-tps", "30")
    assert code == 0 and "Least CUDA0 memory for 30 tok/s: " in out
    code, out, _ = _run("solve", m, "--gpu", "rtx3060", "--ram", "32G", "--target-tps", "1000", "--compare",
                        "--gpu rtx3060,rtx3060", "--json")
    assert code == 0 and json.loads(out)["first_variant_reaching_target"] is None
    code, out, _ = _run("solve", m, "--vram", "4G", "--ram", "32G", "--target-tps", "100", "--compare",
                        "--vram 4G,4G", "--compare", "--vram 24G@936")
    assert code == 0 and "First listed variant that reaches 100 tok/s (list them cheapest first): --vram 24G@936" in out
    code, _, err = _run("solve", m, "--vram", "12G", "--compare", "--gpu")
    assert code == 2 and "--compare '--gpu'" in err


def test_compare_detects_the_machine_once(models: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Each --compare variant that leaves the RAM bandwidth out used to run detection (programs, /proc, /sys)
    again; one command detects once."""
    from moeplace import machine

    calls = []
    real = machine.detect

    def counted(**kw: object) -> object:
        calls.append(kw)
        return real(**kw)

    monkeypatch.setattr(machine, "detect", counted)
    code, _, _ = _run("solve", str(models["Q4_K_M"]), "--gpu", "rtx3060", "--ram", "32G", "--compare",
                      "--gpu rtx3060,rtx3060", "--compare", "--ram 64G", "--json")
    assert code == 0 and len(calls) == 1, calls


def test_compare_variants_take_link_and_ram_avail(models: dict[str, Path]) -> None:
    """--link and --ram-avail live in the command's context, not its parameters: a --compare variant giving them
    was accepted and planned as the command line's hardware. Now a narrow link slows the variant's prompts and
    2 GiB of available RAM its decode (the host's experts re-read from disk)."""
    code, out, _ = _run("solve", str(models["Q4_K_M"]), "--gpu", "rtx3060", "--ram", "32G", "--ram-bw",
                        "ddr5-6000x2", "--compare", "--link pcie3x1", "--compare", "--ram-avail 2G", "--json")
    assert code == 0
    given, link, avail = json.loads(out)["variants"]
    assert link["prompt_tokens_per_second"] < given["prompt_tokens_per_second"] / 4
    assert avail["decode_tokens_per_second"] < given["decode_tokens_per_second"] / 2
