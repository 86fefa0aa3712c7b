"""The per-expert knapsack: the dynamic programme and CP-SAT agree on random instances, sizes off the rounding
grid never overflow the byte budget, and the slack fill only adds experts that fit."""

from __future__ import annotations

import numpy as np
import pytest

from moeplace.targets.expert_knapsack import fill, solve_cp_sat, solve_dp, units


def _instance(rng: np.random.Generator) -> tuple[list[np.ndarray], list[int], int]:
    n_layer, n_expert = int(rng.integers(1, 6)), int(rng.integers(1, 10))
    values = [np.sort(rng.integers(0, 1000, n_expert))[::-1].astype(float) for _ in range(n_layer)]
    weights = [int(w) for w in rng.integers(1, 9, n_layer)]
    capacity = int(rng.integers(0, sum(weights) * n_expert + 2))
    return values, weights, capacity


@pytest.mark.parametrize("seed", range(40))
def test_dp_and_cp_sat_find_the_same_optimum(seed: int) -> None:
    values, weights, capacity = _instance(np.random.default_rng(seed))
    dp = solve_dp(values, weights, capacity)
    cp = solve_cp_sat(values, weights, capacity)
    assert cp.proven
    assert dp.value == cp.value
    for sol in (dp, cp):
        assert sol.weight <= capacity
        assert sol.value == sum(float(np.sum(v[:k])) for v, k in zip(values, sol.counts))


def test_dp_beats_per_layer_greedy_where_sizes_differ() -> None:
    # one big valuable expert against two small ones: greedy by value per unit takes the small ones first
    values = [np.array([10.0]), np.array([6.0, 6.0])]
    sol = solve_dp(values, [3, 2], 4)
    assert sol.counts == (0, 2) and sol.value == 12.0
    assert solve_dp(values, [3, 2], 3).counts == (1, 0)


@pytest.mark.parametrize("seed", range(10))
def test_units_and_fill_never_overflow_the_budget(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    n_layer = int(rng.integers(2, 8))
    sizes = [int(s) for s in rng.integers(1_000_000, 3_000_000, n_layer)]  # off any rounding grid
    values = [np.sort(rng.random(16))[::-1] * s for s in sizes]
    budget = int(rng.integers(0, sum(sizes) * 16))
    weights, capacity, _unit = units(sizes, budget)
    sol = solve_dp(values, weights, capacity)
    assert sum(k * s for k, s in zip(sol.counts, sizes)) <= budget
    filled = fill(values, sizes, budget, sol.counts)
    assert all(a >= b for a, b in zip(filled, sol.counts))
    used = sum(k * s for k, s in zip(filled, sizes))
    assert used <= budget
    # nothing left that would still fit
    assert all(k == 16 or s > budget - used for k, s in zip(filled, sizes))


def test_unsorted_values_are_refused() -> None:
    with pytest.raises(ValueError, match="sorted"):
        solve_dp([np.array([1.0, 2.0])], [1], 2)
