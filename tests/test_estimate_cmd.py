"""``moeplace estimate`` through click's CliRunner, on the factory's full-scale Qwen3-30B-A3B and DeepSeek-V3."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from gguf import LlamaFileType

from moeplace.cli.estimate_cmd import build_placement, estimate
from moeplace.hardware import parse_gpus
from moeplace.memory import RunConfig, kv_bytes
from moeplace.model import Role, load_model
from moeplace.placement import HOST
from moeplace.sizes import GIB
from moeplace.testing import SPECS, write_model


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    return {n: write_model(n, d / f"{n}.gguf")[0] for n in ("qwen3-30b-a3b", "deepseek-v3", "glm4moe-tiny")}


def run(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(estimate, list(args))
    return r.exit_code, r.output


def test_qwen3_report(paths: dict[str, Path]) -> None:
    code, out = run(str(paths["qwen3-30b-a3b"]), "--gpu", "rtx3090", "--ram", "64G", "--ram-bw", "ddr5-6000x2",
                    "-c", "16384", "-d", "16384", "--n-cpu-moe", "8", "--api-price", "0.6")
    assert code == 0, out
    for text in ("CUDA0", "NVIDIA GeForce RTX 3090", "memory", "weights", "decode at depth 16384",
                 "tokens/s", "prefill", "J/token", "per million tokens", "(API: 0.6"):
        assert text in out
    # the context table runs from 4K to the trained context, doubling
    trained = SPECS["qwen3-30b-a3b"].n_ctx
    for c in (4096, 8192, 16384, 32768):
        assert f"\n{c} " in out
    assert f"{trained} (trained)" in out


def test_kv_read_again_is_shown(paths: dict[str, Path]) -> None:
    """A q8_0 cache on CUDA at depth: the step's KV line names the bytes llama.cpp's vector attention kernel reads
    again, and --json carries them beside the cache's own bytes; with f16 on an Ampere card there are none."""
    args = [str(paths["qwen3-30b-a3b"]), "--gpu", "rtx3090", "--ram", "64G", "--ram-bw", "ddr5-6000x2", "-ngl", "99",
            "-c", "32768", "-d", "16384"]
    code, out = run(*args, "-ctk", "q8_0", "-ctv", "q8_0")
    assert code == 0, out
    assert "read again: llama.cpp's vector attention kernel" in out
    code, out = run(*args, "-ctk", "q8_0", "-ctv", "q8_0", "--json")
    d = json.loads(out)["decode"]
    assert d["kv_reread_bytes"]["CUDA0"] > d["kv_bytes"]["CUDA0"] > 0
    code, out = run(*args, "--json")
    assert json.loads(out)["decode"]["kv_reread_bytes"] == {}


def test_deepseek_json(paths: dict[str, Path]) -> None:
    code, out = run(str(paths["deepseek-v3"]), "--gpu", "24G@936,24G@936", "--ram", "512G", "--ram-bw",
                    "epyc-9004", "--cpu-moe", "-c", "32768", "-ctk", "q8_0", "-ctv", "q8_0", "--json")
    assert code == 0, out
    j = json.loads(out)
    m = load_model(paths["deepseek-v3"])
    assert set(j["memory"]) == {"CUDA0", "CUDA1", "CPU"}
    # every routed expert in RAM, the token embedding too; everything else on the two GPUs
    host = sum(t.nbytes for t in m.tensors if t.loaded and t.role in (Role.ROUTED_EXPERT, Role.TOKEN_EMBD))
    assert j["memory"]["CPU"]["weights"] == host
    assert j["memory"]["CUDA0"]["weights"] + j["memory"]["CUDA1"]["weights"] == m.loaded_bytes - host
    cfg = RunConfig(n_ctx=32768, type_k="q8_0", type_v="q8_0")
    assert j["memory"]["CUDA0"]["kv"] + j["memory"]["CUDA1"]["kv"] == kv_bytes(m, cfg)
    assert j["decode"]["tokens_per_second"] > 0 and j["prefill"]["transfer_bytes"] > 0
    assert [r["n_ctx"] for r in j["context_table"]][-1] == SPECS["deepseek-v3"].n_ctx
    # DeepSeek needs K and V of one type, so each column has both
    assert all(r["f16"] and r["q8_0"] for r in j["context_table"])


def test_no_gpu_runs_on_cpu(paths: dict[str, Path]) -> None:
    code, out = run(str(paths["qwen3-30b-a3b"]), "--gpu", "none", "--ram", "32G", "--ram-bw", "80", "--json")
    assert code == 0, out
    j = json.loads(out)
    assert set(j["memory"]) == {"CPU"} and j["decode"]["switches"] == 0


def test_ram_shortage_is_reported(paths: dict[str, Path]) -> None:
    code, out = run(str(paths["qwen3-30b-a3b"]), "--gpu", "rtx3060", "--cpu-moe", "--ram", "8G", "--ram-bw", "50")
    assert code == 0, out
    assert "short" in out and "read from disk" in out


@pytest.mark.parametrize(("args", "message"), [
    (["--gpu", "rtx9999"], "unknown GPU"),
    (["-ctv", "q8_0", "-fa", "off"], "flash attention"),
    (["--ram-bw", "fast"], "RAM bandwidth"),
    (["--gpu", "24G", "-ts", "1,x"], "tensor-split"),
])
def test_user_errors_are_one_line(paths: dict[str, Path], args: list[str], message: str) -> None:
    code, out = run(str(paths["qwen3-30b-a3b"]), *args)
    assert code == 2
    assert message in out and "Traceback" not in out


def test_list_gpus_needs_no_model() -> None:
    code, out = run("--list-gpus")
    assert code == 0 and "rtx3090" in out and "epyc-9004" in out


def test_help_teaches() -> None:
    code, out = run("--help")
    assert code == 0
    for flag in ("-ngl", "--n-cpu-moe", "-ctk", "-ub", "-fa", "-np", "--kv-unified", "--swa-full", "-nkvo", "--gpu",
                 "--ram-bw", "--margin", "--price"):
        assert flag in out


# --- llama.cpp's placement rules ------------------------------------------------------------------------------------


def _layers(m: Any, gpus: Any, ngl: int | None, split: Any = None) -> tuple[tuple[str, ...], str]:
    p = build_placement(m, gpus, ngl, False, 0, split)
    return p.layer_devices, p.output_device


def test_ngl_takes_the_last_slots(paths: dict[str, Path]) -> None:
    m = load_model(paths["qwen3-30b-a3b"])
    n = m.hparams.n_layer
    gpus = parse_gpus(["rtx3090"])
    # n_layer + 1 slots, the output layer last
    assert _layers(m, gpus, 0) == ((HOST,) * n, HOST)
    assert _layers(m, gpus, 1) == ((HOST,) * n, "CUDA0")
    assert _layers(m, gpus, 11) == ((HOST,) * (n - 10) + ("CUDA0",) * 10, "CUDA0")
    assert _layers(m, gpus, n + 1) == (("CUDA0",) * n, "CUDA0")
    assert _layers(m, gpus, 999) == (("CUDA0",) * n, "CUDA0")
    assert _layers(m, (), 999) == ((HOST,) * n, HOST)


def test_layers_split_by_memory(paths: dict[str, Path]) -> None:
    m = load_model(paths["qwen3-30b-a3b"])
    n = m.hparams.n_layer
    gpus = parse_gpus(["24G", "8G"])
    layers, out = _layers(m, gpus, n + 1)
    # cumulative split points 0.75, 1.0: slot i goes to the first GPU whose point exceeds i / (n + 1)
    expected = tuple("CUDA0" if i / (n + 1) < 0.75 else "CUDA1" for i in range(n))
    assert layers == expected and out == "CUDA1"
    layers, _ = _layers(m, gpus, n + 1, [1, 1])
    assert layers.count("CUDA0") == sum(1 for i in range(n) if i / (n + 1) < 0.5)


def test_cpu_moe_patterns(paths: dict[str, Path]) -> None:
    m = load_model(paths["glm4moe-tiny"])
    gpus = parse_gpus(["rtx3090"])
    every = {n for n, d in build_placement(m, gpus, None, True, 0).tensor_devices.items()
             if d == HOST and n != "token_embd.weight"}
    assert every and all(m.tensor(n).role is Role.ROUTED_EXPERT for n in every)
    # shared experts and NextN tensors are untouched
    assert not any("shexp" in n for n in every)
    first = SPECS["glm4moe-tiny"].n_dense_lead  # block 0 is dense: --n-cpu-moe counts it all the same
    some = {n for n, d in build_placement(m, gpus, None, False, first + 1).tensor_devices.items()
            if d == HOST and n != "token_embd.weight"}
    assert some and all(n.startswith(f"blk.{first}.") for n in some)


def test_build_placement_combines_flags(paths: dict[str, Path]) -> None:
    m = load_model(paths["qwen3-30b-a3b"])
    gpus = parse_gpus(["rtx3090"])
    p = build_placement(m, gpus, None, False, 4)
    assert set(p.layer_devices) == {"CUDA0"}
    on_host = {n for n, d in p.tensor_devices.items() if d == HOST}
    assert on_host == {"token_embd.weight"} | {t.name for t in m.tensors if t.role is Role.ROUTED_EXPERT
                                               and t.block is not None and t.block < 4}
    assert sum(m.tensor(n).nbytes for n in on_host) < 4 * GIB


# --- what users already run: -ot, -t, -d, --link, a pasted llama.cpp command ----------------------------------


def _json(*args: str) -> dict[str, Any]:
    r = CliRunner().invoke(estimate, ["--json", *args])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)  # what was detected of this machine goes to stderr


def test_ot_and_cpu_moe_apply_in_command_line_order(paths: dict[str, Path]) -> None:
    m = str(paths["qwen3-30b-a3b"])
    hw = ["--gpu", "rtx3090", "--ram", "64G", "--ram-bw", "ddr5-6000x2"]
    up5 = "blk.5.ffn_up_exps.weight"
    # -ot first: block 5's up experts stay on the GPU although --cpu-moe sends every expert to RAM.
    first = _json(m, *hw, "-ot", r"blk\.5\.ffn_up_exps=CUDA0", "--cpu-moe")
    assert first["placement"]["tensor_devices"][up5] == "CUDA0"
    last = _json(m, *hw, "--cpu-moe", "-ot", r"blk\.5\.ffn_up_exps=CUDA0")
    assert last["placement"]["tensor_devices"][up5] == "CPU"
    # comma lists and repeats add items; the same placement as --n-cpu-moe 2
    ot = _json(m, *hw, "-ot", r"blk\.0\.ffn_.*_exps=CPU,blk\.1\.ffn_.*_exps=CPU")
    assert ot["placement"] == _json(m, *hw, "--n-cpu-moe", "2")["placement"]


def test_pasted_command_is_what_the_flags_say(paths: dict[str, Path]) -> None:
    m = str(paths["qwen3-30b-a3b"])
    hw = ["--gpu", "rtx3090", "--ram", "64G", "--ram-bw", "ddr5-6000x2", "--ram-avail", "60G"]
    own = _json(m, *hw, "-c", "16384", "-ctk", "q8_0", "-ctv", "q8_0", "-t", "6", "--n-cpu-moe", "20")
    pasted = _json(*hw, "--", "llama-server", "-m", m, "-ngl", "99", "-c", "16384", "-fa", "on", "-ctk", "q8_0",
                   "-ctv", "q8_0", "-t", "6", "--n-cpu-moe", "20", "--host", "0.0.0.0", "--jinja")
    assert pasted["placement"] == own["placement"] and pasted["memory"] == own["memory"]
    assert pasted["decode"]["tokens_per_second"] == own["decode"]["tokens_per_second"]
    assert any("--jinja" in n for n in pasted["notes"])


def test_pasted_llama_bench_sets_depth_prompt_and_context(paths: dict[str, Path]) -> None:
    m = str(paths["qwen3-30b-a3b"])
    hw = ["--gpu", "rtx3090", "--ram", "64G", "--ram-bw", "ddr5-6000x2"]
    j = _json(*hw, "--", "llama-bench", "-m", m, "-ngl", "99", "-p", "2048", "-n", "128", "-d", "8192", "-ub",
              "1024", "-fa", "1")
    assert j["context"]["n_ctx"] >= 2048 + 128 + 8192
    assert j["decode"]["n_past"] == 8192
    assert (j["prefill"]["n_tokens"], j["prefill"]["depth"], j["prefill"]["n_ubatch"]) == (2048, 8192, 1024)
    shallow = _json(*hw, "--", "llama-bench", "-m", m, "-ngl", "99", "-p", "2048", "-n", "128", "-d", "0",
                    "-ub", "1024", "-fa", "1")
    # attention over 8K tokens of context makes both decode and the prompt slower
    assert shallow["decode"]["tokens_per_second"] > j["decode"]["tokens_per_second"]
    assert shallow["prefill"]["tokens_per_second"] > j["prefill"]["tokens_per_second"]


@pytest.mark.parametrize(("extra", "named"), [
    (["--", "llama-server", "-m", "MODEL", "--frobnicate"], "--frobnicate"),
    (["--", "llama-server", "-m", "MODEL", "-ngl", "x"], "-ngl"),
    (["-c", "8192", "--", "llama-server", "-m", "MODEL", "-c", "4096"], "given both"),
    (["--", "llama-server", "-m", "MODEL", "-ot", "exps=CUDA1"], "CUDA1"),
    (["--link", "pcie9x16"], "pcie9x16"),
])
def test_bad_pasted_lines_are_one_line_errors(paths: dict[str, Path], extra: list[str], named: str) -> None:
    m = str(paths["qwen3-30b-a3b"])
    args = [m if x == "MODEL" else x for x in extra]
    if "--" not in args:
        args = [m, *args]
    code, out = run("--gpu", "rtx3090", "--ram", "64G", *args)
    assert code == 2 and named in out and out.strip().count("\n") == 0, out


def test_link_threads_and_available_ram_change_the_figures(paths: dict[str, Path]) -> None:
    m = str(paths["qwen3-30b-a3b"])
    hw = [m, "--gpu", "rtx3090", "--ram", "64G", "--ram-bw", "ddr5-6000x2", "--cpu-moe", "-p", "512"]
    x16 = _json(*hw, "--link", "pcie4x16")
    x4 = _json(*hw, "--link", "pcie4x4")
    assert x4["prefill"]["transfer_seconds"] == pytest.approx(4 * x16["prefill"]["transfer_seconds"])
    assert not any("--link" in n for n in x16["notes"])
    assert any("--link" in n for n in _json(*hw)["notes"])  # assumed, and said
    few = _json(*hw, "-t", "1", "--cores", "16")
    many = _json(*hw, "-t", "16", "--cores", "16")
    assert few["decode"]["tokens_per_second"] < many["decode"]["tokens_per_second"]
    fits = _json(*hw, "--ram-avail", "60G")
    short = _json(*hw, "--ram-avail", "8G")
    assert short["decode"]["paging_seconds"] > 0 and fits["decode"]["paging_seconds"] == 0
    assert short["decode"]["tokens_per_second"] < fits["decode"]["tokens_per_second"] / 3


def test_ccds_cap_a_chiplet_hosts_decode(paths: dict[str, Path]) -> None:
    """--ccds: an EPYC 9115's two core dies read less than its 12 channels could deliver, so a CPU-only decode is
    slower by the ratio, and the note says why; 0 lifts the limit."""
    from moeplace.hardware import speed_params

    base = [str(paths["qwen3-30b-a3b"]), "--gpu", "none", "--ram", "256G", "--ram-bw", "ddr5-6000x12", "-t", "16",
            "--cores", "16"]
    free, two, none = (_json(*base, *extra) for extra in ([], ["--ccds", "2"], ["--ccds", "0"]))
    ratio = 2 * speed_params().ccd_gbs / (6000 * 8 * 12 / 1000)
    assert two["decode"]["tokens_per_second"] < free["decode"]["tokens_per_second"] * (ratio + 1) / 2
    assert none["decode"] == free["decode"]
    assert any("2 CCDs" in n for n in two["notes"]) and not any("CCD" in n for n in free["notes"])
    r = CliRunner().invoke(estimate, [*base, "--ccds", "-1"])
    assert r.exit_code == 2 and "--ccds" in r.output


def test_estimate_reproduces_a_published_row_from_its_command_line(tmp_path: Path) -> None:
    """benchmarks/published row lc21024-3090vk-llama8b-q4_0: llama-bench of a Llama-3-8B Q4_0 on an RTX 3090 with
    the Vulkan backend, pasted as it was run (the factory's llama-3-8b written as Q4_0 is that file's shape)."""
    rows = (Path(__file__).resolve().parent.parent / "benchmarks" / "published" / "measurements.jsonl")
    row = next(json.loads(x) for x in rows.read_text().splitlines() if '"lc21024-3090vk-llama8b-q4_0"' in x)
    spec = replace(SPECS["llama-3-8b"], name="llama-3-8b-q4_0", ftype=LlamaFileType.MOSTLY_Q4_0)
    model = write_model(spec, tmp_path / "Meta-Llama-3-8B-Q4_0.gguf")[0]
    f = row["flags"]
    j = _json("--gpu", "vulkan:rtx3090", "--", "llama-bench", "-m", str(model), "-ngl", str(f["ngl"]),
              "-fa", str(f["fa"]), "-mmp", str(f["mmap"]), "-p", str(row["test"]["pp_tokens"]),
              "-n", str(row["test"]["tg_tokens"]))
    assert j["decode"]["n_past"] == row["test"]["depth"] == 0
    assert j["decode"]["tokens_per_second"] == pytest.approx(row["tg_tps"], rel=0.2)
    assert j["prefill"]["n_tokens"] == row["test"]["pp_tokens"]
    assert j["prefill"]["tokens_per_second"] == pytest.approx(row["pp_tps"], rel=0.3)


def test_weights_a_backend_refuses_stay_on_the_host(paths: dict[str, Path]) -> None:
    """lavapipe takes no tensor over 128 MiB (llama.cpp's loader keeps such weights in RAM at any -ngl): the
    estimate keeps them on the host whether or not -ot/--cpu-moe were given, and a 4 GiB-limit GPU keeps none."""
    from moeplace.model import load_model
    from moeplace.sizes import MIB

    m = paths["qwen3-30b-a3b"]
    big = sum(t.nbytes for t in load_model(m).loaded_tensors if t.nbytes > 128 * MIB and t.name != "token_embd.weight")
    assert big > 0
    soft = _json(str(m), "--gpu", "lavapipe", "--ram", "64G")["memory"]
    real = _json(str(m), "--gpu", "16G", "--backend", "vulkan", "--ram", "64G")["memory"]
    assert soft["CPU"]["weights"] - real["CPU"]["weights"] == big
    assert real["Vulkan0"]["weights"] - soft["Vulkan0"]["weights"] == big


@pytest.mark.parametrize("words", [["rm", "-rf", "/"], ["python", "-c", "1"]])
def test_a_pasted_line_that_runs_no_llama_cpp_program_is_named(words: list[str]) -> None:
    """The first word is neither a model nor a llama.cpp program: the error names it, not a flag after it."""
    code, out = run("--vram", "8G", "--", *words)
    assert code == 2 and f"'{words[0]}' is neither a model file nor a llama.cpp program" in out, out


def test_cpu_class_sets_the_host_prompt_rate(paths: dict[str, Path]) -> None:
    """--cpu-class states the vector class of a host that is not this machine: CPU-only prompts scale by the
    class's factor (compute-bound at 16 threads on a fast memory), decode does not change."""
    from moeplace.hardware import speed_params

    base = [str(paths["qwen3-30b-a3b"]), "--gpu", "none", "--ram", "64G", "--ram-bw", "ddr5-6000x12", "-t", "16",
            "--cores", "16"]
    ref, avx2 = (_json(*base, "--cpu-class", c) for c in ("avx512-vnni", "avx2"))
    factor = speed_params().cpu_simd_factor["avx2"]
    assert avx2["prefill"]["tokens_per_second"] == pytest.approx(ref["prefill"]["tokens_per_second"] * factor,
                                                                  rel=0.02)
    assert avx2["decode"]["tokens_per_second"] == ref["decode"]["tokens_per_second"]
    r = CliRunner().invoke(estimate, [*base, "--cpu-class", "sse2"])
    assert r.exit_code == 2 and "sse2" in r.output
