"""The exact DP solver, checked against OR-Tools CP-SAT on instances small enough for CP-SAT to prove optimality."""

from __future__ import annotations

import numpy as np
import pytest
from ortools.sat.python import cp_model

from moeplace.solver import HOST_INDEX, MIN_UNIT, LayerItems, Movable, Problem, solve


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


def cp_sat_optimum(p: Problem) -> float:
    """The same problem stated directly for CP-SAT: one-hot layer devices in non-decreasing device order
    (output slot last), movables on the layer's device or the host, a switch cost per device change."""
    scale = 1e9  # nanoseconds
    n_dev, n = len(p.devices), len(p.layers)
    m = cp_model.CpModel()
    x = [[m.new_bool_var(f"x{i}_{d}") for d in range(n_dev)] for i in range(n + 1)]  # slot n = output
    for row in x:
        m.add_exactly_one(row)
    z = [sum(d * v for d, v in enumerate(row)) for row in x]
    for i in range(n):
        m.add(z[i] <= z[i + 1])
    obj = []
    load = [[] for _ in range(n_dev)]
    for i, layer in enumerate(p.layers):
        split = m.new_bool_var(f"split{i}")
        for d in range(n_dev):
            obj.append(round(layer.core_time[d] * scale) * x[i][d])
            load[d].append(layer.core_bytes // MIN_UNIT * x[i][d])
        for k, mv in enumerate(layer.movables):
            # a[d]: movable k of layer i lives on GPU d (with its layer); otherwise it is on the host.
            a = [m.new_bool_var(f"a{i}_{k}_{d}") for d in range(n_dev)]
            host = m.new_bool_var(f"h{i}_{k}")
            m.add_exactly_one([host, *a[1:]])
            m.add(a[0] == 0)
            for d in range(1, n_dev):
                m.add(a[d] <= x[i][d])
                load[d].append(mv.nbytes // MIN_UNIT * a[d])
                obj.append(round(mv.time[d] * scale) * a[d])
            obj.append(round(mv.time[HOST_INDEX] * scale) * host)
            m.add(split >= host - x[i][HOST_INDEX])
        obj.append(round(2 * p.switch_time * scale) * split)
    for d in range(n_dev):
        obj.append(round(p.output_time[d] * scale) * x[n][d])
        load[d].append(p.output_bytes // MIN_UNIT * x[n][d])
    for i in range(n):
        change = m.new_bool_var(f"c{i}")
        m.add(z[i + 1] - z[i] <= (n_dev - 1) * change)
        obj.append(round(p.switch_time * scale) * change)
    for d in range(1, n_dev):
        m.add(sum(load[d]) <= p.capacity[d] // MIN_UNIT)
    m.minimize(sum(obj))
    s = cp_model.CpSolver()
    s.parameters.num_workers = 2
    s.parameters.max_time_in_seconds = 60
    assert s.solve(m) == cp_model.OPTIMAL
    return s.objective_value / scale


@pytest.mark.parametrize("seed", range(12))
def test_dp_matches_cp_sat(seed: int) -> None:
    p = random_problem(seed, n_layer=5 + seed % 3, n_gpu=1 + seed % 2)
    sol = solve(p)
    assert sol.unit == MIN_UNIT
    assert sol.objective == pytest.approx(cp_sat_optimum(p), rel=1e-6, abs=2e-8 * len(p.layers))
    for d in range(1, len(p.devices)):
        assert sol.bytes_per_device[d] <= p.capacity[d]
    # the devices run in llama.cpp's order: host prefix, then GPUs in order, output last
    seq = [*sol.layer_device, sol.output_device]
    assert seq == sorted(seq)
