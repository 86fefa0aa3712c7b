"""ik_llama.cpp's rules (moeplace.targets.ik_llama): -ngl without the output slot, --n-cpu-moe from the back,
verified patterns under its rules, and flags only where its build has them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from moeplace.cli.options import devices_from
from moeplace.emit.args import RunSettings
from moeplace.memory import RunConfig
from moeplace.model import load_model
from moeplace.placement import HOST
from moeplace.planner import plan
from moeplace.targets import ik_llama as IK
from moeplace.targets.base import TargetError
from moeplace.targets.builds import EngineBuild
from moeplace.targets.llamacpp_rules import NotExpressible, parse_override_arg
from moeplace.targets.registry import get_target


def test_ngl_counts_blocks_and_the_output_only_beyond_them() -> None:
    # src/llama.cpp: i_gpu_start = max(n_layer - ngl, 0); output on the GPU iff ngl > n_layer
    assert IK.layer_devices(4, 2, ["CUDA0"]) == ((HOST, HOST, "CUDA0", "CUDA0"), HOST)
    assert IK.layer_devices(4, 4, ["CUDA0"]) == (("CUDA0",) * 4, HOST)
    assert IK.layer_devices(4, 5, ["CUDA0"]) == (("CUDA0",) * 4, "CUDA0")
    assert IK.layer_devices(4, -1, ["CUDA0"]) == (("CUDA0",) * 4, "CUDA0")
    with pytest.raises(NotExpressible, match="byte sizes"):
        IK.layer_devices(4, 5, ["CUDA0", "CUDA1"])


def test_n_cpu_moe_takes_the_last_moe_blocks(model_path: Callable[[str], Path]) -> None:
    m = load_model(model_path("glm-4.5-air"))  # 47 blocks: block 0 dense, block 46 NextN
    o = IK.n_cpu_moe_overrides(m, 3)
    assert [x.pattern for x in o] == [rf"blk\.{i}{IK.IK_EXPS}" for i in (45, 44, 43)]
    p = IK.n_cpu_moe_placement(m, 3, ["CUDA0"])
    host_blocks = sorted({t.block for t in m.loaded_tensors if t.n_expert and p.tensor_devices[t.name] == HOST
                          and t.role.name == "ROUTED_EXPERT"})
    assert host_blocks == [43, 44, 45]
    every = IK.n_cpu_moe_overrides(m, 999)
    assert len(every) == 45  # blocks 1..45 have experts; the dense block and the NextN block are skipped


def test_expert_biases_stay_with_their_layer(model_path: Callable[[str], Path]) -> None:
    m = load_model(model_path("gpt-oss-20b"))
    p = IK.n_cpu_moe_placement(m, 1, ["CUDA0"])
    assert p.tensor_devices["blk.23.ffn_down_exps.weight"] == HOST
    assert p.tensor_devices["blk.23.ffn_down_exps.bias"] == "CUDA0"  # ik's pattern ends in \.(weight|scale)


@pytest.fixture(scope="module")
def qwen_plan(model_path: Callable[[str], Path]):
    m = load_model(model_path("qwen3-30b-a3b"))
    devices = devices_from(("12G",), None, 32 << 30, "ddr5-6000x2")
    return plan(m, devices, RunConfig(n_ctx=16384), target=get_target("ik_llama.cpp"))


def _settings(p) -> RunSettings:
    return RunSettings(model_path=p.model.paths[0], n_ctx=p.cfg.n_ctx, devices=("CUDA0",))


def test_emitted_arguments_replay_under_ik_rules(qwen_plan) -> None:
    t = get_target("ik_llama.cpp")
    e = t.emit(qwen_plan, _settings(qwen_plan), t.default_build())
    argv = list(e.argv)
    ngl = int(argv[argv.index("-ngl") + 1])
    overrides = [o for i, a in enumerate(argv) if a == "-ot" for o in parse_override_arg(argv[i + 1])]
    assert IK.apply(qwen_plan.model, ngl, None, overrides, ["CUDA0"]) == qwen_plan.placement
    assert "--fit" not in argv  # an on-switch in ik_llama.cpp: "--fit off" would turn it on
    assert "-fmoe" not in argv  # not a flag of the stored (current) build: fused MoE is its default
    assert "server.sh" in e.files and "llama-server" in e.command


def test_flags_follow_the_build(qwen_plan) -> None:
    t = get_target("ik_llama.cpp")
    stored = t.default_build()
    old = EngineBuild("ik_llama.cpp", "old", stored.flags | {"-fmoe"}, "test")
    argv = t.emit(qwen_plan, _settings(qwen_plan), old).argv
    assert "-fmoe" in argv
    no_rtr = EngineBuild("ik_llama.cpp", "x", stored.flags - {"-rtr"}, "test")
    small_ub = plan(qwen_plan.model, qwen_plan.devices, RunConfig(n_ctx=16384, n_ubatch=256),
                    target=get_target("ik_llama.cpp"))
    assert "-rtr" not in t.emit(small_ub, _settings(small_ub), no_rtr).argv
    assert "-rtr" in t.emit(small_ub, _settings(small_ub), stored).argv  # 32G of RAM hold the host's experts


def test_rtr_is_left_out_where_it_would_keep_prompt_experts_off_the_gpu(qwen_plan) -> None:
    """qwen3-30b-a3b (128 experts, 8 used) at -ub 512: ik_llama.cpp moves host experts to the GPU for prompts
    (512 x 8 >= 32 x 128), which the plan's prediction counts on; repacked Q4_K has no CUDA kernel there, so -rtr
    would keep them on the CPU: it is not written, and the note says why. At -ub 256 they stay on the CPU anyway."""
    t = get_target("ik_llama.cpp")
    assert qwen_plan.cfg.n_ubatch == 512
    assert IK.rtr_stranded_types(qwen_plan)
    e = t.emit(qwen_plan, _settings(qwen_plan), t.default_build())
    assert "-rtr" not in e.argv
    assert any("no -rtr" in n and "-ub 512" in n for n in t.engine_args(qwen_plan, t.default_build())[1])


def test_mla_models_get_mla_3(model_path: Callable[[str], Path]) -> None:
    m = load_model(model_path("deepseek-v3"))
    devices = devices_from(("24G",), None, 512 << 30, "ddr5-6000x2")
    t = get_target("ik_llama.cpp")
    p = plan(m, devices, RunConfig(n_ctx=8192), target=t)
    argv = t.emit(p, RunSettings(model_path=m.paths[0], n_ctx=8192, devices=("CUDA0",)), t.default_build()).argv
    assert argv[argv.index("-mla") + 1] == "3" and "-amb" not in argv
    p = plan(m, devices, RunConfig(n_ctx=8192, flash_attn=False), target=t)
    argv = t.emit(p, RunSettings(model_path=m.paths[0], n_ctx=8192, devices=("CUDA0",), flash_attn=False),
                  t.default_build()).argv
    assert argv[argv.index("-amb") + 1] == "512"  # caps the attention batch where flash attention is off


def test_several_gpus_are_refused(model_path: Callable[[str], Path]) -> None:
    m = load_model(model_path("qwen3-30b-a3b"))
    with pytest.raises(TargetError, match="one GPU"):
        get_target("ik_llama.cpp").check(m, RunConfig(), ["CUDA0", "CUDA1"])


def test_baselines_are_iks_own(qwen_plan) -> None:
    names = [b.name for b in qwen_plan.baselines]
    assert any(n.startswith("ik --n-cpu-moe") for n in names) and "ik --cpu-moe" in names
    assert "--fit" not in names


def test_layer_arguments_round_trip_and_refuse_what_ngl_cannot_say(model_path: Callable[[str], Path]) -> None:
    from moeplace.placement import layer_placement

    m = load_model(model_path("qwen3-30b-a3b"))
    n = m.hparams.n_layer
    host_prefix = layer_placement(m, (HOST,) * 5 + ("CUDA0",) * (n - 5), HOST)
    ngl, split = IK.layer_arguments(host_prefix, ["CUDA0"])
    assert (ngl, split) == (n - 5, None)
    assert IK.apply(m, ngl, None, (), ["CUDA0"]) == host_prefix
    with pytest.raises(NotExpressible, match="output"):
        IK.layer_arguments(layer_placement(m, (HOST,) * 5 + ("CUDA0",) * (n - 5), "CUDA0"), ["CUDA0"])
    every = layer_placement(m, ("CUDA0",) * n, "CUDA0")
    assert IK.layer_arguments(every, ["CUDA0"]) == (n + 1, None)
