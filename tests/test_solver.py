"""The exact DP solver, checked against OR-Tools CP-SAT on instances small enough for CP-SAT to prove optimality."""

from __future__ import annotations

import numpy as np
import pytest

from moeplace.solver import MIN_UNIT, LayerItems, Movable, Problem, solve, solve_cp_sat


def random_problem(seed: int, n_layer: int, n_gpu: int, n_mov: int = 2) -> Problem:
    rng = np.random.default_rng(seed)
    n_dev = 1 + n_gpu
    bw = np.array([50e9, *rng.uniform(300e9, 1000e9, n_gpu)])
    layers = []
    for _ in range(n_layer):
        core = int(rng.integers(1, 6)) * MIN_UNIT
        movs = []
        for k in range(n_mov):
            b = int(rng.integers(2, 30)) * MIN_UNIT
            movs.append(Movable((f"m{k}",), b, tuple(b / 8 / x for x in bw)))
        allowed = tuple(True for _ in range(n_dev))
        layers.append(LayerItems(core, tuple(core / x for x in bw), tuple(movs), allowed))
    total = sum(x.core_bytes + sum(m.nbytes for m in x.movables) for x in layers)
    caps = (0, *(int(total * f) // MIN_UNIT * MIN_UNIT for f in rng.uniform(0.1, 0.45, n_gpu)))
    out = int(rng.integers(1, 4)) * MIN_UNIT
    return Problem(("CPU", *(f"CUDA{i}" for i in range(n_gpu))), caps, tuple(layers), out,
                   tuple(out / x for x in bw), float(rng.uniform(5e-6, 5e-5)))


@pytest.mark.parametrize("seed", range(12))
def test_dp_matches_cp_sat(seed: int) -> None:
    p = random_problem(seed, n_layer=5 + seed % 3, n_gpu=1 + seed % 2)
    sol = solve(p)
    assert sol.unit == MIN_UNIT
    cp = solve_cp_sat(p, time_limit=60)
    assert cp.proven and cp.gap == 0.0
    assert sol.objective == pytest.approx(cp.objective, rel=1e-6, abs=2e-8 * len(p.layers))
    assert all(b <= c for b, c in zip(cp.bytes_per_device[1:], p.capacity[1:]))
    for d in range(1, len(p.devices)):
        assert sol.bytes_per_device[d] <= p.capacity[d]
    # the devices run in llama.cpp's order: host prefix, then GPUs in order, output last
    seq = [*sol.layer_device, sol.output_device]
    assert seq == sorted(seq)


def test_cp_sat_reports_its_gap_when_stopped() -> None:
    """A larger instance with a tight time limit: CP-SAT stops with a feasible placement and says how far its
    bound is; warm-started from the DP, it is never worse than the DP."""
    p = random_problem(99, n_layer=40, n_gpu=2, n_mov=3)
    dp = solve(p)
    cp = solve_cp_sat(p, time_limit=0.5, hint=dp)
    assert cp.engine == "cp-sat"
    assert cp.objective <= dp.objective * (1 + 1e-6) + 1e-6
    assert cp.proven or 0.0 <= cp.gap < 1.0
    for d in range(1, len(p.devices)):
        assert cp.bytes_per_device[d] <= p.capacity[d]


def test_cpu_only_problem_has_no_gpu_budget() -> None:
    """With no GPU every layer runs on the host; the capacity unit must not need a GPU budget to size it
    (``moeplace solve model.gguf`` with no hardware flags on a CPU-only machine once failed here)."""
    p = random_problem(3, n_layer=4, n_gpu=0)
    sol = solve(p)
    assert sol.unit == MIN_UNIT
    assert sol.layer_device == (0, 0, 0, 0) and sol.output_device == 0
    assert all(all(h) for h in sol.on_host)
