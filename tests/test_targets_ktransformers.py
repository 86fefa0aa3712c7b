"""KTransformers: per-layer hottest experts from a routing profile, the count table kt-kernel reads, and the replay
of kt-kernel's own selection rule (global top-N of the table) onto the planned experts."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from moeplace.cli.options import devices_from
from moeplace.emit.args import RunSettings
from moeplace.memory import RunConfig
from moeplace.model import load_model
from moeplace.planner import plan
from moeplace.targets.base import TargetError
from moeplace.targets.ktransformers import (
    PLACEMENT_FILE,
    SCRIPT,
    count_flag,
    kt_masks,
    num_gpu_experts,
    plan_experts,
)
from moeplace.targets.registry import get_target


def zipf_profile(model, seed: int = 0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    e, k = model.hparams.n_expert, model.hparams.n_expert_used
    out = {}
    for b in range(model.hparams.n_layer):
        w = rng.permutation(1.0 / np.arange(1, e + 1) ** 0.8)
        out[b] = np.minimum(w / w.sum() * k, 1.0)
    return out


@pytest.fixture(scope="module")
def kt_plan(model_path: Callable[[str], Path]):
    m = load_model(model_path("qwen3-30b-a3b"))
    return plan(m, devices_from(("12G",), None, 32 << 30, "ddr5-6000x2"), RunConfig(n_ctx=16384),
                profile=zipf_profile(m), target=get_target("ktransformers"))


def test_files_parse_and_replay_under_kt_kernels_rule(kt_plan, tmp_path: Path) -> None:
    t = get_target("ktransformers")
    e = t.emit(kt_plan, RunSettings(model_path=kt_plan.model.paths[0], n_ctx=16384, devices=("CUDA0",)),
               t.default_build(), tmp_path)
    doc = json.loads(e.files[PLACEMENT_FILE])
    table = np.asarray(doc["logical_count"], dtype=np.float32)  # what the launch script hands torch.tensor
    m = kt_plan.model
    assert table.shape == (1, m.hparams.n_layer, m.hparams.n_expert)
    flag = tuple(doc["count_flag"])
    n = num_gpu_experts(flag, len(doc["layers"]), m.hparams.n_expert)  # SGLang's arithmetic on the flag
    assert n == doc["total"] == sum(len(x["gpu_experts"]) for x in doc["layers"].values())
    mask = kt_masks(table, n)  # kt-kernel's generate_gpu_experts_masks
    for b, layer in doc["layers"].items():
        assert sorted(np.flatnonzero(mask[int(b)]).tolist()) == sorted(layer["gpu_experts"])
    assert doc["expert_bytes_on_gpu"] <= doc["budget_bytes"]
    assert f"{flag[0]} {flag[1]}" in e.files[SCRIPT]
    (tmp_path / SCRIPT).write_text(e.files[SCRIPT])
    subprocess.run(["sh", "-n", str(tmp_path / SCRIPT)], check=True)


def test_hot_experts_go_first(kt_plan) -> None:
    ep = plan_experts(kt_plan)
    for b in ep.layers:
        chosen = set(ep.gpu_experts[b])
        if chosen and len(chosen) < ep.n_expert:
            coldest_chosen = min(ep.probs[b][list(chosen)])
            others = [ep.probs[b][e] for e in range(ep.n_expert) if e not in chosen]
            assert coldest_chosen >= max(others)
    assert ep.decode_tps > ep.cpu_only_tps
    if ep.uniform_bytes <= ep.budget:
        assert ep.decode_tps >= ep.uniform_tps * (1 - 1e-9)


def test_cp_sat_and_dp_place_the_same(kt_plan) -> None:
    a, b = plan_experts(kt_plan, "dp"), plan_experts(kt_plan, "cp-sat")
    assert a.decode_tps == pytest.approx(b.decode_tps, rel=1e-9)


def test_ties_at_the_cut_are_detected() -> None:
    with pytest.raises(ValueError, match="tie"):
        kt_masks(np.ones((1, 2, 4), dtype=np.float32), 3)


def test_dense_models_are_refused(model_path: Callable[[str], Path]) -> None:
    m = load_model(model_path("llama-3-8b"))
    with pytest.raises(TargetError, match="no experts"):
        get_target("ktransformers").check(m, RunConfig(), ["CUDA0"])


@pytest.mark.parametrize("layers", [1, 3, 26, 45, 58, 60, 92])
def test_count_flag_gives_exactly_n(layers: int) -> None:
    for experts in (8, 128, 160, 256, 384):
        for n in range(0, layers * experts + 1, max(1, layers * experts // 97)):
            assert num_gpu_experts(count_flag(n, layers, experts), layers, experts) == n
