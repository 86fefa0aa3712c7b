"""The planner on every full-scale factory architecture and the hardware the issue names: budgets respected,
patterns verified, never slower than a baseline, optimality reported; pins, profiles and too-small budgets."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from moeplace.emit.args import RunSettings, build_args, parse_ot_args
from moeplace.hardware import device_set, host_device, parse_gpus
from moeplace.llamacpp import apply
from moeplace.memory import RunConfig
from moeplace.model import Role, load_model
from moeplace.pins import parse_pin
from moeplace.placement import HOST
from moeplace.planner import WORKLOADS, PlanError, auto_context, parse_workload, plan

MODELS = ["qwen3-30b-a3b", "qwen3-235b-a22b", "deepseek-v3", "gpt-oss-20b", "gpt-oss-120b", "mixtral-8x7b",
          "glm-4.5-air", "qwen3-next-80b-a3b", "llama-3-8b"]
HARDWARE = [["8G"], ["12G"], ["16G"], ["24G"], ["24G", "24G"], ["24G", "12G"]]


def devices(specs: list[str], ram: str = "512G") -> dict:
    gpus = parse_gpus(specs)
    from moeplace.sizes import parse_size

    return device_set(gpus, host_device(parse_size(ram), "80", gpus))


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("workload", ["chat", "batch"])
def test_every_architecture_and_budget(model_path: Callable[[str], Path], name: str, workload: str) -> None:
    m = load_model(model_path(name))
    for specs in HARDWARE:
        devs = devices(specs)
        p = plan(m, devs, RunConfig(n_ctx=8192), workload=parse_workload(workload))
        e = p.estimate
        # every GPU within its memory less the margin, per the full memory model
        for gpu, fit in e.fits.items():
            assert fit.free >= 0, (name, specs, gpu, fit)
        assert p.chosen.fits
        # The solver's own placement is the plan: the planner did not have to swap in a baseline (it would, if the
        # full estimate ranked one higher, which would make the next assertion hold by construction).
        assert p.fallback == "", (name, specs, workload, p.warnings)
        # ... and it is never predicted slower than what llama.cpp's own options give, where they fit
        for b in p.baselines:
            if b.fits:
                assert p.chosen.seconds <= b.seconds * (1 + 1e-9), (name, specs, b.name)
        assert p.optimality.startswith("optimal")
        # the emitted arguments reproduce the plan under llama.cpp's rules (parsed back, applied afresh)
        gpus = tuple(n for n in devs if n != HOST)
        args = build_args(m, p.placement, RunSettings(m.paths[0], 8192, gpus))
        argv = list(args.argv)
        ngl = int(argv[argv.index("-ngl") + 1])
        ts = [float(x) for x in argv[argv.index("-ts") + 1].split(",")] if "-ts" in argv else None
        again = apply(m, ngl, ts, parse_ot_args(argv), gpus)
        assert dict(again.tensor_devices) == dict(p.placement.tensor_devices)
        assert again.layer_devices == p.placement.layer_devices


def test_more_vram_is_never_slower(model_path: Callable[[str], Path]) -> None:
    m = load_model(model_path("qwen3-30b-a3b"))
    speeds = [plan(m, devices([f"{g}G"]), RunConfig()).chosen.decode_tps for g in (6, 8, 12, 16, 24)]
    assert speeds == sorted(speeds)


def test_skewed_profile_moves_skewed_layers_to_ram_first(model_path: Callable[[str], Path]) -> None:
    """At decode batch 8, a layer whose tokens all go to the same few experts reads far fewer expert bytes per
    step than a uniform one, so its experts gain less from the GPU and are the first sent to RAM."""
    m = load_model(model_path("qwen3-30b-a3b"))
    hp = m.hparams
    skewed = set(range(24, 48))
    probs = {}
    for il in range(hp.n_layer):
        p = np.full(hp.n_expert, 1e-6)
        if il in skewed:
            p[: hp.n_expert_used] = 1.0  # always the same 8 experts
        else:
            p[:] = 1.0
        probs[il] = p / p.sum() * hp.n_expert_used
    devs = devices(["12G"])
    wl = WORKLOADS["batch"]
    with_profile = plan(m, devs, RunConfig(n_seq_max=8), workload=wl, profile=probs)
    without = plan(m, devs, RunConfig(n_seq_max=8), workload=wl)

    def host_blocks(p) -> set[int]:
        return {t.block for t in m.tensors if t.role is Role.ROUTED_EXPERT
                and p.placement.tensor_devices[t.name] == HOST}

    hb = host_blocks(with_profile)
    assert hb and hb <= skewed  # only skewed layers' experts go to RAM
    assert host_blocks(without) != hb  # the profile changed the plan
    assert with_profile.chosen.decode_tps > 0


def test_pins_are_honoured(model_path: Callable[[str], Path]) -> None:
    m = load_model(model_path("qwen3-30b-a3b"))
    devs = devices(["24G"])
    pins = [parse_pin(r"blk\.4[0-7]\.ffn_.*_exps=CPU", list(devs)), parse_pin(r"^output\.weight$=CPU", list(devs))]
    p = plan(m, devs, RunConfig(), pins=pins)
    for t in m.loaded_tensors:
        if t.role is Role.ROUTED_EXPERT and t.block is not None and t.block >= 40:
            assert p.placement.tensor_devices[t.name] == HOST
    assert p.placement.tensor_devices["output.weight"] == HOST
    # the room the pins freed goes to other layers' experts
    assert any(p.placement.tensor_devices[t.name] == "CUDA0" for t in m.tensors
               if t.role is Role.ROUTED_EXPERT and t.block is not None and t.block < 40)


def test_no_tensor_larger_than_a_vulkan_device_takes_is_planned_there(model_path: Callable[[str], Path]) -> None:
    """lavapipe takes tensors of at most 128 MiB: qwen3-30b-a3b's Q6_K ffn_down_exps (157.5 MiB) and its output
    layer must stay on the host, as llama.cpp's loader keeps them, while a 4 GiB limit lets them go to the GPU."""
    m = load_model(model_path("qwen3-30b-a3b"))
    soft = device_set(parse_gpus(["lavapipe"]), host_device(64 << 30, "5"))  # a slower host: the GPU pays
    limit = soft["Vulkan0"].max_tensor
    big = {t.name for t in m.loaded_tensors if t.nbytes > limit}
    assert limit == 128 << 20 and any("ffn_down_exps" in n for n in big) and "output.weight" in big
    p = plan(m, soft, RunConfig())
    assert all(p.placement.tensor_devices[n] == HOST for n in big)
    assert any(d == "Vulkan0" for d in p.placement.tensor_devices.values())
    real = device_set(parse_gpus(["vulkan:rtx3090"]), host_device(64 << 30, "ddr5-6000x2"))
    assert any(plan(m, real, RunConfig()).placement.tensor_devices[n] == "Vulkan0" for n in big)
    with pytest.raises(PlanError, match=r"takes tensors of at most 128.00 MiB.*pin it to CPU"):
        plan(m, soft, RunConfig(), pins=[parse_pin(r"blk\.0\.ffn_down_exps=Vulkan0", list(soft))])


def test_budget_too_small_names_the_minimum(model_path: Callable[[str], Path]) -> None:
    m = load_model(model_path("deepseek-v3"))
    with pytest.raises(PlanError, match=r"no GPU has room for any layer: .* need [0-9.]+ [MG]iB"):
        plan(m, devices(["512M"]), RunConfig())


def test_small_gpu_runs_some_layers_on_the_host(model_path: Callable[[str], Path]) -> None:
    m = load_model(model_path("deepseek-v3"))
    p = plan(m, devices(["8G"]), RunConfig(n_ctx=8192))
    assert HOST in p.placement.layer_devices and "CUDA0" in p.placement.layer_devices
    assert any("run entirely on the host" in w for w in p.warnings)


def test_auto_context_trades_speed_for_context(model_path: Callable[[str], Path]) -> None:
    m = load_model(model_path("qwen3-30b-a3b"))
    best, trade = auto_context(m, devices(["24G"]), RunConfig())
    ctxs = [t.cfg.n_ctx for t in trade]
    assert ctxs[0] == 4096 and ctxs == sorted(ctxs)
    assert best.chosen.decode_tps >= trade[0].chosen.decode_tps * 0.9
    assert all(t.chosen.decode_tps <= trade[0].chosen.decode_tps * 1.0001 for t in trade)


def test_workloads() -> None:
    assert parse_workload("chat").prompt_per_generated == 2
    assert parse_workload("8:1").prompt_per_generated == 8
    assert parse_workload("batch", 4).batch == 8
    with pytest.raises(PlanError, match="workload"):
        parse_workload("fast")


def test_deterministic(model_path: Callable[[str], Path]) -> None:
    m = load_model(model_path("gpt-oss-20b"))
    a = plan(m, devices(["12G"]), RunConfig())
    b = plan(m, devices(["12G"]), RunConfig())
    assert a.placement == b.placement


# What the DP's rounding of sizes up to its unit (a budget / 65535, per tensor group) may cost against a
# placement packed to the byte.
ROUNDING_RTOL = 1e-3


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(["qwen3-30b-a3b", "gpt-oss-20b", "glm-4.5-air", "deepseek-v3", "mixtral-8x7b",
                             "qwen3moe-tiny", "gpt-oss-tiny", "deepseek2-tiny"]),
       vram=st.lists(st.integers(min_value=4, max_value=48), min_size=1, max_size=3),
       n_ctx=st.sampled_from([2048, 8192, 32768]), workload=st.sampled_from(["chat", "batch", "long-prompt", "8:1"]))
@example(name="glm-4.5-air", vram=[42], n_ctx=32768, workload="chat")  # a baseline wins by the rounding
def test_property_emitted_patterns_reproduce_random_plans(model_path: Callable[[str], Path], name: str,
                                                          vram: list[int], n_ctx: int, workload: str) -> None:
    """Random models and budgets: the arguments emitted for the plan, parsed back and applied with llama.cpp's
    semantics (regex search, first match wins, -ngl/-ts for the rest), give exactly the planned placement."""
    m = load_model(model_path(name))
    devs = devices([f"{g}G" for g in vram])
    cfg = RunConfig(n_ctx=n_ctx)
    try:
        p = plan(m, devs, cfg, workload=parse_workload(workload))
    except PlanError:
        return  # a budget too small for anything is refused, with its own message
    # The solver's own placement stands, or a baseline beats it only by what the DP's size rounding leaves
    # unused (glm-4.5-air on 42G at 32K: --n-cpu-moe 23 packs the card 46 MiB fuller, 0.008% faster).
    assert not p.fallback or p.solver_seconds <= p.chosen.seconds * (1 + ROUNDING_RTOL), p.warnings
    gpus = tuple(n for n in devs if n != HOST)
    argv = list(build_args(m, p.placement, RunSettings(m.paths[0], n_ctx, gpus)).argv)
    ngl = int(argv[argv.index("-ngl") + 1])
    ts = [float(x) for x in argv[argv.index("-ts") + 1].split(",")] if "-ts" in argv else None
    assert apply(m, ngl, ts, parse_ot_args(argv), gpus) == p.placement
    for fit in p.estimate.fits.values():
        assert fit.free >= 0


def test_time_limit_is_the_whole_runs(model_path: Callable[[str], Path]) -> None:
    """-c auto with CP-SAT: the contexts share one --time-limit (they each had their own: five contexts, five
    times the limit), split evenly so the last context gets CP-SAT too. CP-SAT does not prove this size optimal
    within seconds, so each run uses what it is given."""
    m = load_model(model_path("qwen3-30b-a3b"))
    # 2 s per context: the DP's time and CP-SAT's overruns of its own limit count against the contexts after it;
    # at 1 s a loaded 2-core CI machine left the last context under CP-SAT's minimum (clean-clone run of 2af1d36)
    limit = 10.0
    _, trade = auto_context(m, devices(["12G"], "32G"), RunConfig(), solver="cp-sat", time_limit=limit)
    assert len(trade) >= 3
    assert sum(p.solve_seconds for p in trade) < limit + 0.5 * len(trade)  # CP-SAT's share plus the DP's runs
    assert not any("CP-SAT not run" in p.optimality for p in trade), [p.optimality for p in trade]


# --- the run configuration ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("gpu", ["vulkan:rtx3060", "vulkan:12G,vulkan:12G"])
def test_backend_compute_rules_are_budgeted(model_path: Callable[[str], Path], gpu: str) -> None:
    """The solver's budgets reserve the CPU-fitted compute phases; on Vulkan at -ub 2048 the op-offload copies
    need more, and the plan overfilled the card by 343 MiB (one RTX 3060) with only a warning. The planner now
    solves again with the overfill taken off that GPU's budget: every GPU fits."""
    m = load_model(model_path("qwen3-30b-a3b"))
    p = plan(m, devices([gpu], "64G"), RunConfig(n_ctx=32768, n_ubatch=2048, n_batch=2048))
    assert p.chosen.fits and all(f.fits for f in p.estimate.fits.values()), p.warnings
    assert not any("over budget" in w for w in p.warnings)
