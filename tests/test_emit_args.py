"""The llama.cpp argument list (moeplace.emit.args): flags, validation, and that the argv itself, parsed the way
llama.cpp parses it, reproduces the plan."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from pathlib import Path

import pytest

from moeplace import llamacpp as L
from moeplace.emit import RunSettings, SettingsError, build_args
from moeplace.emit.args import parse_ot_args
from moeplace.model import ModelDescription, Role, load_model
from moeplace.placement import HOST, Placement, layer_placement
from moeplace.targets.builds import EngineBuild


@pytest.fixture(scope="module")
def models(model_path: Callable[[str], Path]) -> dict[str, ModelDescription]:
    return {n: load_model(model_path(n)) for n in ("qwen3moe-tiny", "gpt-oss-tiny", "qwen3-30b-a3b", "deepseek-v3")}


def experts_to(m: ModelDescription, p: Placement, blocks: range, device: str) -> Placement:
    moved = {t.name: device for t in m.tensors if t.loaded and t.role is Role.ROUTED_EXPERT and t.block in blocks}
    return Placement(p.layer_devices, p.output_device, {**p.tensor_devices, **moved})


def value(argv: tuple[str, ...], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def reapply(m: ModelDescription, argv: tuple[str, ...], devices: list[str]) -> Placement:
    """What llama.cpp makes of the argv: -ngl, -ts and every -ot item in order."""
    ngl = int(value(argv, "-ngl"))
    split = [float(x) for x in value(argv, "-ts").split(",")] if "-ts" in argv else None
    return L.apply(m, ngl, split, parse_ot_args(argv), devices)


def test_single_gpu_all_layers(models: dict[str, ModelDescription]) -> None:
    m = models["qwen3-30b-a3b"]
    plan = experts_to(m, L.apply(m, -1, None, (), ["CUDA0"]), range(0, 20), HOST)
    args = build_args(m, plan, RunSettings("/m/q.gguf", 32768, ("CUDA0",)))
    a = args.argv
    assert a[:2] == ("-m", "/m/q.gguf")
    assert value(a, "-c") == "32768" and value(a, "-ngl") == str(m.hparams.n_layer + 1)
    assert "-ts" not in a and "--rpc" not in a and "-nkvo" not in a
    assert a.count("-ot") == 1 and value(a, "-ot").endswith("=CPU")
    assert (value(a, "-ctk"), value(a, "-ctv"), value(a, "-fa"), value(a, "-ub"), value(a, "-b"), value(a, "-np")) == (
        "f16", "f16", "on", "512", "2048", "1")
    assert value(a, "--fit") == "off"
    assert reapply(m, a, ["CUDA0"]) == plan


def test_multi_gpu_rpc_and_grouped_overrides(models: dict[str, ModelDescription]) -> None:
    m = models["deepseek-v3"]
    devs = ["RPC[10.0.0.9:50052]", "CUDA0", "CUDA1"]
    plan = L.apply(m, 50, [10, 25, 15], (), devs)
    plan = experts_to(m, plan, range(20, 30), HOST)
    plan = experts_to(m, plan, range(50, 52), "CUDA0")  # blocks 47-60 run on CUDA1
    plan = experts_to(m, plan, range(11, 13), "CUDA1")
    plan = Placement(plan.layer_devices, plan.output_device, {**plan.tensor_devices, "token_embd.weight": "CUDA1"})
    s = RunSettings("/m/ds.gguf", 8192, tuple(devs), cache_type_k="q8_0", cache_type_v="q8_0",
                    n_ubatch=1024, n_batch=4096, n_parallel=4, kv_offload=False, fit_off=False,
                    extra_args=("--no-mmap",))
    a = build_args(m, plan, s).argv
    assert value(a, "-ngl") == "50" and value(a, "-ts") == "10,25,15"
    assert value(a, "--rpc") == "10.0.0.9:50052"
    ot = [a[i + 1] for i, x in enumerate(a) if x == "-ot"]
    assert [v.rsplit("=", 1)[1] for v in ot] == ["CUDA0", "CUDA1", "CPU"]  # one -ot per device, GPUs first
    assert all(item.endswith("=CUDA1") for item in ot[1].split(","))
    assert (value(a, "-ctk"), value(a, "-fa"), value(a, "-ub"), value(a, "-b"), value(a, "-np")) == (
        "q8_0", "on", "1024", "4096", "4")
    assert "-nkvo" in a and "--fit" not in a and a[-1] == "--no-mmap"
    assert reapply(m, a, devs) == plan


def test_cpu_only_plan(models: dict[str, ModelDescription]) -> None:
    m = models["gpt-oss-tiny"]
    plan = L.apply(m, 0)
    a = build_args(m, plan, RunSettings("m.gguf", 4096, flash_attn=False)).argv
    assert value(a, "-ngl") == "0" and "-ot" not in a and "-ts" not in a and value(a, "-fa") == "off"


def test_shell_line_round_trips(models: dict[str, ModelDescription]) -> None:
    m = models["qwen3moe-tiny"]
    plan = experts_to(m, L.apply(m, -1, None, (), ["CUDA0"]), range(1, 2), HOST)
    args = build_args(m, plan, RunSettings("/tmp/a b/it's $(x).gguf", 2048, ("CUDA0",)))
    line = args.shell_line("llama-cli")
    assert shlex.split(line) == ["llama-cli", *args.argv]
    assert args.override_groups() == [(HOST, tuple(o.pattern for o in args.expression.overrides))]


@pytest.mark.parametrize("kwargs,match", [
    ({"cache_type_k": "q4_k"}, "-ctk q4_k"), ({"cache_type_v": "f8"}, "-ctv f8"), ({"n_ctx": 0}, "context"),
    ({"n_ubatch": 4096, "n_batch": 2048}, "-ub 4096 exceeds -b 2048"), ({"n_parallel": 0}, "-np 0"),
    ({"n_ubatch": 0}, "at least 1"), ({"model_path": "a\0b"}, "NUL"), ({"model_path": "bad\udcff.gguf"}, "UTF-8"),
])
def test_settings_validation(models: dict[str, ModelDescription], kwargs: dict[str, object], match: str) -> None:
    m = models["qwen3moe-tiny"]
    base: dict[str, object] = {"model_path": "m.gguf", "n_ctx": 2048}
    base.update(kwargs)
    with pytest.raises(SettingsError, match=match):
        build_args(m, L.apply(m, 0), RunSettings(**base))  # type: ignore[arg-type]


def test_cache_types_llama_cpp_refuses(models: dict[str, ModelDescription]) -> None:
    m = models["qwen3moe-tiny"]
    with pytest.raises(SettingsError, match="needs flash attention"):
        build_args(m, L.apply(m, 0), RunSettings("m.gguf", 2048, cache_type_v="q8_0", flash_attn=False))
    build_args(m, L.apply(m, 0), RunSettings("m.gguf", 2048, cache_type_k="q8_0", cache_type_v="f16"))
    ds = models["deepseek-v3"]  # MLA
    with pytest.raises(SettingsError, match="same K and V"):
        build_args(ds, L.apply(ds, 0), RunSettings("m.gguf", 2048, cache_type_k="q8_0", cache_type_v="f16"))


def test_refuses_an_inexpressible_plan(models: dict[str, ModelDescription]) -> None:
    m = models["qwen3moe-tiny"]
    p = L.apply(m, -1, None, (), ["CUDA0"])
    bad = Placement(("CUDA0",) + (HOST,) * (m.hparams.n_layer - 1), "CUDA0", p.tensor_devices)
    with pytest.raises(L.NotExpressible):
        build_args(m, bad, RunSettings("m.gguf", 2048, ("CUDA0",)))


def test_parse_ot_args_skips_values_and_switches() -> None:
    argv = ["-m", "-ot", "-nkvo", "-ot", r"a=CPU,b=CUDA0", "--override-tensor", "c=CUDA1"]
    assert parse_ot_args(argv) == (L.Override("a", "CPU"), L.Override("b", "CUDA0"), L.Override("c", "CUDA1"))


def test_run_configuration_flags(model_path: Callable[[str], Path]) -> None:
    m = load_model(model_path("qwen3moe-tiny"))
    s = RunSettings(model_path="m.gguf", n_ctx=4096, devices=("CUDA0",), n_parallel=4, kv_unified=True, no_mmap=True,
                    threads=8)
    args = build_args(m, layer_placement(m, ("CUDA0",) * m.hparams.n_layer, "CUDA0"), s)
    argv = list(args.argv)
    assert argv[argv.index("-np") + 1] == "4" and "-kvu" in argv and "--no-mmap" in argv
    assert argv[argv.index("-t") + 1] == "8"
    assert parse_ot_args(argv) == args.expression.overrides  # the new switches take no value
    with pytest.raises(SettingsError, match="-t 0"):
        RunSettings(model_path="m.gguf", n_ctx=4096, threads=0).check()
    flags = frozenset(a for a in argv if a.startswith("-"))
    newer = EngineBuild("llama.cpp", "test", (flags - {"--no-mmap"}) | {"--load-mode"}, "stated")
    argv = list(build_args(m, layer_placement(m, ("CUDA0",) * m.hparams.n_layer, "CUDA0"), s, newer).argv)
    assert "--no-mmap" not in argv and argv[argv.index("--load-mode") + 1] == "none"
    with pytest.raises(SettingsError, match="-kvu"):  # the plan's KV memory assumes one shared buffer
        build_args(m, layer_placement(m, ("CUDA0",) * m.hparams.n_layer, "CUDA0"), s,
                   EngineBuild("llama.cpp", "old", flags - {"-kvu"}, "stated"))
