"""moeplace.solution: the solve as a library call, under one CP-SAT budget."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from moeplace.configure import CONFIG_FIELDS
from moeplace.hardware import device_set, host_device, parse_gpus
from moeplace.memory import RunConfig
from moeplace.model import load_model
from moeplace.sizes import parse_size
from moeplace.solution import solve
from moeplace.targets.registry import get_target


def rig(vram: str, ram: str = "32G") -> dict:
    return device_set(parse_gpus([vram], "cuda"), host_device(parse_size(ram), "ddr5-6000x2"))


def test_one_budget_for_every_stage(model_path: Callable[[str], Path]) -> None:
    """The run configurations, the -c auto ladder and the cache sizes share --time-limit: before, each
    configuration and each cache size had the whole limit (about 14 configurations, 14 times the limit)."""
    m = load_model(model_path("qwen3-30b-a3b"))
    limit = 3.0
    s = solve(m, rig("12G"), RunConfig(), target=get_target("llama.cpp"), solver="cp-sat", time_limit=limit,
              auto_ctx=True, expert_cache=True, cache_sizes=[0, 1024])
    plans = [*s.choice.trade, *s.context_trade, *(o.plan for o in s.cache.options)]
    assert len(s.choice.trade) >= 4 and len(s.context_trade) >= 3 and len(s.cache.options) == 2
    # CP-SAT's share plus the DP's own time per plan (the DP runs before CP-SAT in each)
    assert sum(p.solve_seconds for p in plans) < limit + 0.5 * len(plans)


def test_other_targets_run_the_settings_given(model_path: Callable[[str], Path]) -> None:
    """Only a target that takes llama.cpp's run flags has them chosen; Ollama runs -ub 512 and f16 KV as given."""
    m = load_model(model_path("qwen3-30b-a3b"))
    cfg = RunConfig(n_ctx=8192)
    mine = solve(m, rig("12G"), cfg, target=get_target("ollama"))
    assert mine.choice.pinned == frozenset(CONFIG_FIELDS)
    assert len(mine.choice.trade) == 1 and mine.plan.cfg.n_ubatch == cfg.n_ubatch
    tuned = solve(m, rig("12G"), cfg, target=get_target("llama.cpp"), workload=mine.plan.workload)
    assert len(tuned.choice.trade) > 1
    assert tuned.plan.chosen.seconds <= mine.plan.chosen.seconds
