"""Per-expert placement for engines that place single experts: how many of each layer's hottest experts live on
the GPU, as a multiple-choice knapsack (numbers in, counts out; no model in sight).

Layer ``l`` has experts of ``weight[l]`` capacity units each and values ``values[l]`` (seconds per token saved by
holding that expert on the GPU), sorted from the hottest down. Choosing ``k_l`` means its ``k_l`` hottest experts
go to the GPU, worth the sum of the first ``k_l`` values; the total weight must stay within ``capacity``. Two
solvers answer the same question and the tests hold them to the same optimum:

* :func:`solve_dp`: exact dynamic programme over layers and capacity units (max-plus convolution per layer,
  vectorised over capacities);
* :func:`solve_cp_sat`: OR-Tools CP-SAT with one boolean per expert, prefix constraints (an expert only with the
  hotter ones of its layer) and integer values (scaled by ``value_scale``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MAX_UNITS = 1 << 15


@dataclass(frozen=True)
class ExpertSolution:
    counts: tuple[int, ...]  # hottest experts on the GPU, per layer
    value: float  # sum of the chosen values
    weight: int  # capacity units used
    proven: bool = True
    engine: str = "dp"


def _check(values: Sequence[np.ndarray], weights: Sequence[int], capacity: int) -> None:
    if len(values) != len(weights):
        raise ValueError("one weight per layer")
    if capacity < 0 or any(w <= 0 for w in weights):
        raise ValueError("weights must be positive and the capacity >= 0")
    for v in values:
        if len(v) and np.any(np.diff(v) > 1e-12 * max(1.0, float(np.max(np.abs(v))))):
            raise ValueError("each layer's values must be sorted from the hottest expert down")


def solve_dp(values: Sequence[np.ndarray], weights: Sequence[int], capacity: int) -> ExpertSolution:
    """Exact optimum by dynamic programming: ``best[c]`` is the largest value within ``c`` units after each layer."""
    _check(values, weights, capacity)
    neg = -math.inf
    best = np.zeros(capacity + 1)
    choice: list[np.ndarray] = []
    for v, w in zip(values, weights, strict=True):
        prefix = np.concatenate([[0.0], np.cumsum(v)])
        new = best.copy()
        pick = np.zeros(capacity + 1, dtype=np.int32)
        for k in range(1, len(v) + 1):
            shift = k * w
            if shift > capacity:
                break
            cand = np.full(capacity + 1, neg)
            cand[shift:] = best[:capacity + 1 - shift] + prefix[k]
            better = cand > new
            new = np.where(better, cand, new)
            pick = np.where(better, k, pick)
        best = new
        choice.append(pick)
    c = int(np.argmax(best))
    value = float(best[c])
    counts = []
    for pick, w in zip(reversed(choice), reversed(list(weights)), strict=True):
        k = int(pick[c])
        counts.append(k)
        c -= k * w
    counts.reverse()
    return ExpertSolution(tuple(counts), value, sum(k * w for k, w in zip(counts, weights)))


def solve_cp_sat(values: Sequence[np.ndarray], weights: Sequence[int], capacity: int, *, value_scale: float = 1.0,
                 time_limit: float = 10.0, workers: int = 2) -> ExpertSolution:
    """The same problem for OR-Tools CP-SAT. Values are rounded to integers after multiplying by ``value_scale``
    (pass integer values and 1.0 to compare with :func:`solve_dp` exactly)."""
    from ortools.sat.python import cp_model

    _check(values, weights, capacity)
    m = cp_model.CpModel()
    xs: list[list[cp_model.IntVar]] = []
    for il, v in enumerate(values):
        row = [m.NewBoolVar(f"x{il}_{e}") for e in range(len(v))]
        for a, b in itertools.pairwise(row):
            m.AddImplication(b, a)  # an expert only with every hotter one of its layer
        xs.append(row)
    m.Add(sum(w * x for row, w in zip(xs, weights) for x in row) <= capacity)
    m.Maximize(sum(round(float(val) * value_scale) * x for row, v in zip(xs, values) for x, val in zip(row, v)))
    s = cp_model.CpSolver()
    s.parameters.max_time_in_seconds = time_limit
    s.parameters.num_workers = workers
    status = s.Solve(m)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        raise RuntimeError(f"CP-SAT found no solution ({s.StatusName(status)})")
    counts = tuple(sum(int(s.Value(x)) for x in row) for row in xs)
    value = float(sum(np.sum(v[:k]) for v, k in zip(values, counts)))
    return ExpertSolution(counts, value, sum(k * w for k, w in zip(counts, weights)), status == cp_model.OPTIMAL,
                          "cp-sat")


def units(expert_bytes: Sequence[int], budget: int) -> tuple[list[int], int, int]:
    """Capacity units for byte sizes: ``(weights, capacity, unit)`` with at most :data:`MAX_UNITS` units in the
    budget, sizes rounded *up* (so a solution never exceeds the budget) and the budget down."""
    unit = max(1, math.ceil(max(budget, 1) / MAX_UNITS))
    if expert_bytes:
        unit = max(1, min(unit, min(expert_bytes)))
    return [math.ceil(b / unit) for b in expert_bytes], max(budget, 0) // unit, unit


def fill(values: Sequence[np.ndarray], sizes: Sequence[int], budget: int, counts: Sequence[int]) -> tuple[int, ...]:
    """``counts`` grown with the bytes the rounding of :func:`units` left unused: the next hottest expert of
    whichever layer saves most per byte, while it fits in ``budget`` at its true size (sizes never shrink, so the
    result still fits). Only adds; the DP's choice stays inside it."""
    counts = list(counts)
    left = budget - sum(k * b for k, b in zip(counts, sizes))
    while True:
        best, best_gain = -1, 0.0
        for i, (v, b) in enumerate(zip(values, sizes)):
            if counts[i] < len(v) and b <= left and v[counts[i]] / b > best_gain:
                best, best_gain = i, float(v[counts[i]]) / b
        if best < 0:
            return tuple(counts)
        left -= sizes[best]
        counts[best] += 1
