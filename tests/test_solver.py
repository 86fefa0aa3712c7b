"""The exact DP solver, checked against OR-Tools CP-SAT on instances small enough for CP-SAT to prove optimality,
and against brute force over every placement on tiny ones, with sizes on and off the rounding grid and with
layers pinned away from some devices."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from moeplace.solver import HOST_INDEX, MIN_UNIT, LayerItems, Movable, Problem, Solution, solve, solve_cp_sat


def random_problem(seed: int, n_layer: int, n_gpu: int, n_mov: int = 2, *, on_grid: bool = True,
                   pinned: bool = False) -> Problem:
    """Sizes are multiples of the rounding unit (``on_grid``) or any byte count; ``pinned`` forbids each layer
    some GPUs at random (what a --pin of a layer's core does), never the host, so a placement always exists."""
    rng = np.random.default_rng(seed)

    def size(lo: int, hi: int) -> int:
        return int(rng.integers(lo, hi)) * MIN_UNIT if on_grid else int(rng.integers(lo * MIN_UNIT, hi * MIN_UNIT))

    bw = np.array([50e9, *rng.uniform(300e9, 1000e9, n_gpu)])
    layers = []
    for _ in range(n_layer):
        core = size(1, 6)
        movs = []
        for k in range(n_mov):
            b = size(2, 30)
            movs.append(Movable((f"m{k}",), b, tuple(b / 8 / x for x in bw)))
        allowed = (True, *(bool(rng.random() > 0.3) if pinned else True for _ in range(n_gpu)))
        layers.append(LayerItems(core, tuple(core / x for x in bw), tuple(movs), allowed))
    total = sum(x.core_bytes + sum(m.nbytes for m in x.movables) for x in layers)
    caps = (0, *(int(total * f) // MIN_UNIT * MIN_UNIT if on_grid else int(total * f)
                 for f in rng.uniform(0.1, 0.45, n_gpu)))
    out = size(1, 4)
    return Problem(("CPU", *(f"CUDA{i}" for i in range(n_gpu))), caps, tuple(layers), out,
                   tuple(out / x for x in bw), float(rng.uniform(5e-6, 5e-5)))


def objective_of(p: Problem, layer_device: tuple[int, ...], output_device: int,
                 on_host: tuple[tuple[bool, ...], ...]) -> float:
    """Seconds per token of a placement, from the problem statement (not from either solver)."""
    total = p.output_time[output_device]
    seq = [*layer_device, output_device]
    total += p.switch_time * sum(a != b for a, b in itertools.pairwise(seq))
    for layer, d, host in zip(p.layers, layer_device, on_host):
        total += layer.core_time[d]
        for m, h in zip(layer.movables, host):
            total += m.time[HOST_INDEX if h or d == HOST_INDEX else d]
        if d != HOST_INDEX and any(host):
            total += 2 * p.switch_time
    return total


def used_bytes(p: Problem, layer_device: tuple[int, ...], output_device: int,
               on_host: tuple[tuple[bool, ...], ...]) -> list[int]:
    used = [0] * len(p.devices)
    used[output_device] += p.output_bytes
    for layer, d, host in zip(p.layers, layer_device, on_host):
        used[d] += layer.core_bytes
        for m, h in zip(layer.movables, host):
            used[HOST_INDEX if h or d == HOST_INDEX else d] += m.nbytes
    return used


def brute_force(p: Problem, capacity: tuple[int, ...] | None = None) -> float:
    """The best objective over every placement llama.cpp can express (devices non-decreasing along the layers,
    output last) that fits ``capacity`` in exact bytes; inf if none does."""
    caps = capacity or p.capacity
    n_dev, n = len(p.devices), len(p.layers)
    best = math.inf
    for seq in itertools.combinations_with_replacement(range(n_dev), n + 1):
        layer_device, output_device = seq[:n], seq[n]
        if not all(layer.allowed[d] for layer, d in zip(p.layers, layer_device)):
            continue
        choices = [[(True,) * len(layer.movables)] if d == HOST_INDEX
                   else list(itertools.product((False, True), repeat=len(layer.movables)))
                   for layer, d in zip(p.layers, layer_device)]
        for on_host in itertools.product(*choices):
            used = used_bytes(p, layer_device, output_device, on_host)
            if all(used[d] <= caps[d] for d in range(1, n_dev)):
                best = min(best, objective_of(p, layer_device, output_device, on_host))
    return best


def check_valid(p: Problem, sol: Solution) -> None:
    """The placement fits every GPU in exact bytes, keeps each layer on an allowed device, runs the devices in
    llama.cpp's order, and its reported objective and bytes are what the problem says they are."""
    used = used_bytes(p, sol.layer_device, sol.output_device, sol.on_host)
    assert list(sol.bytes_per_device) == used
    for d in range(1, len(p.devices)):
        assert used[d] <= p.capacity[d]
    assert all(layer.allowed[d] for layer, d in zip(p.layers, sol.layer_device))
    seq = [*sol.layer_device, sol.output_device]
    assert seq == sorted(seq)
    assert sol.objective == pytest.approx(objective_of(p, sol.layer_device, sol.output_device, sol.on_host),
                                          rel=1e-9, abs=1e-9 * (len(p.layers) + 1))


@pytest.mark.parametrize("pinned", [False, True])
@pytest.mark.parametrize("seed", range(12))
def test_dp_matches_cp_sat(seed: int, pinned: bool) -> None:
    """On the rounding grid both solve the same problem: the same optimum (CP-SAT proves it)."""
    p = random_problem(seed, n_layer=5 + seed % 3, n_gpu=1 + seed % 2, pinned=pinned)
    sol = solve(p)
    assert sol.unit == MIN_UNIT
    cp = solve_cp_sat(p, time_limit=60)
    assert cp.proven and cp.bound == pytest.approx(cp.objective, rel=1e-9)
    assert sol.objective == pytest.approx(cp.objective, rel=1e-6, abs=2e-8 * len(p.layers))
    check_valid(p, sol)
    check_valid(p, cp)


@pytest.mark.parametrize("pinned", [False, True])
@pytest.mark.parametrize("seed", range(8))
def test_off_the_rounding_grid(seed: int, pinned: bool) -> None:
    """Sizes and budgets of any byte count. Both solvers round sizes up, so both placements fit in exact bytes;
    the DP rounds a layer's total once where CP-SAT rounds each item, so the DP's feasible set contains
    CP-SAT's and its optimum is at least as good; and rounding costs at most what a budget smaller by one unit
    per item would: the DP's answer lies between the exact optimum and that."""
    p = random_problem(100 + seed, n_layer=3 + seed % 2, n_gpu=1 + seed % 2, n_mov=2, on_grid=False,
                       pinned=pinned)
    assert any(m.nbytes % MIN_UNIT for layer in p.layers for m in layer.movables)  # really off the grid
    dp = solve(p)
    cp = solve_cp_sat(p, time_limit=60)
    assert cp.proven
    check_valid(p, dp)
    check_valid(p, cp)
    # CP-SAT's costs are whole nanoseconds per term: compare within that rounding.
    terms = sum(2 + len(layer.movables) for layer in p.layers) + 1
    assert dp.objective <= cp.objective + 1e-9 * terms
    exact = brute_force(p)
    items = sum(1 + len(layer.movables) for layer in p.layers) + 1
    slack = tuple(c - items * dp.unit if d else 0 for d, c in enumerate(p.capacity))
    assert exact <= dp.objective * (1 + 1e-9)
    assert dp.objective <= brute_force(p, slack) * (1 + 1e-9)


@pytest.mark.parametrize("seed", range(6))
def test_dp_is_the_brute_force_optimum_on_the_grid(seed: int) -> None:
    """On the grid rounding changes nothing: the DP's objective is the best of every expressible placement."""
    p = random_problem(200 + seed, n_layer=4, n_gpu=1 + seed % 2, n_mov=2, pinned=seed % 3 == 0)
    dp = solve(p)
    check_valid(p, dp)
    assert dp.objective == pytest.approx(brute_force(p), rel=1e-9)


def test_no_placement_fits() -> None:
    """Every layer pinned off the host and the GPU too small even for the output: both solvers say so."""
    p = random_problem(7, n_layer=3, n_gpu=1)
    layers = tuple(LayerItems(x.core_bytes, x.core_time, x.movables, (False, True)) for x in p.layers)
    tiny = Problem(p.devices, (0, MIN_UNIT), layers, p.output_bytes, p.output_time, p.switch_time)
    with pytest.raises(ValueError, match="no placement fits"):
        solve(tiny)
    with pytest.raises(ValueError, match="no placement fits"):
        solve_cp_sat(tiny, time_limit=10)


def test_cp_sat_reports_its_gap_when_stopped() -> None:
    """A larger instance with a tight time limit: CP-SAT stops with a feasible placement and says how far its
    bound is; warm-started from the DP, it is never worse than the DP."""
    p = random_problem(99, n_layer=40, n_gpu=2, n_mov=3)
    dp = solve(p)
    cp = solve_cp_sat(p, time_limit=0.5, hint=dp)
    assert cp.engine == "cp-sat"
    check_valid(p, cp)
    # Warm-started from the DP's (optimal, on the grid) answer: never worse, and so as good, within CP-SAT's
    # whole nanoseconds per term.
    ns = 1e-9 * (sum(2 + len(layer.movables) for layer in p.layers) + 1)
    assert cp.objective == pytest.approx(dp.objective, abs=ns)
    # Its bound is a true lower bound: at most the optimum the DP proved, and the gap is measured against it.
    assert cp.bound is not None and cp.bound <= dp.objective + ns
    if cp.proven:
        assert cp.gap == 0.0
    else:
        assert cp.gap == pytest.approx((cp.objective - cp.bound) / cp.objective)


def test_cpu_only_problem_has_no_gpu_budget() -> None:
    """With no GPU every layer runs on the host; the capacity unit must not need a GPU budget to size it
    (``moeplace solve model.gguf`` with no hardware flags on a CPU-only machine once failed here)."""
    p = random_problem(3, n_layer=4, n_gpu=0)
    sol = solve(p)
    assert sol.unit == MIN_UNIT
    assert sol.layer_device == (0, 0, 0, 0) and sol.output_device == 0
    assert all(all(h) for h in sol.on_host)
