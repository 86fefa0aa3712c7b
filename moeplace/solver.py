"""The optimisation: which device runs each layer, and which routed-expert tensors stay with it or go to the host.

The problem as llama.cpp lets us state it:

* ``-ngl``/``-ts`` give each GPU a contiguous run of layers, in device order, after a prefix of host layers;
  the output layer sits on the last GPU used. A layer's *core* (attention, norms, router, shared experts,
  dense FFN, its KV cache) lives on its device.
* ``-ot`` moves single tensors. A layer's routed-expert tensors (``ffn_up_exps``...) either stay on the
  layer's device or go to the host; a layer split this way pays two device switches per token.
* Every device has a byte budget; the objective is predicted time per token, linear in where each item is.

Given that structure the problem is a multiple-choice knapsack along the layer sequence, solved here exactly by
dynamic programming from the last layer to the first, with one capacity dimension for the GPU being filled
(a GPU's budget is closed once the sequence moves on to the previous device). Sizes are rounded *up* to a unit
of at most 1/65536 of the largest budget, so a plan never exceeds a budget; the rounding is reported.

The same problem stated directly for OR-Tools CP-SAT is :func:`solve_cp_sat` (``solve --solver cp-sat``). On a
DeepSeek-V3-size instance (174 expert tensors, 3 devices, 2 cores) CP-SAT was still 2.5% from its bound after
20 s, because same-size expert tensors make its search symmetric, so the DP is the default; the tests check the
two against each other on instances small enough for CP-SAT to prove optimality.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from itertools import product
from typing import Any

import numpy as np

HOST_INDEX = 0
MAX_STATES = 1 << 16
MIN_UNIT = 64 << 10


@dataclass(frozen=True)
class Movable:
    """A group of tensors that moves as one (a weight and its bias): bytes, and time per token on each device."""

    names: tuple[str, ...]
    nbytes: int
    time: tuple[float, ...]  # seconds per token, indexed like Problem.devices


@dataclass(frozen=True)
class LayerItems:
    """One layer: the core that lives on the layer's device and the routed-expert groups that may leave it."""

    core_bytes: int  # weights + KV cache held on the layer's device
    core_time: tuple[float, ...]
    movables: tuple[Movable, ...]
    allowed: tuple[bool, ...]  # devices this layer may run on (pins can forbid some)


@dataclass(frozen=True)
class Problem:
    """Devices are indexed 0 = host, then the GPUs in llama.cpp's order."""

    devices: tuple[str, ...]
    capacity: tuple[int, ...]  # bytes available for layers on each GPU (index 0, the host, is checked apart)
    layers: tuple[LayerItems, ...]
    output_bytes: int
    output_time: tuple[float, ...]
    switch_time: float  # seconds per token for each activation hop between devices


@dataclass(frozen=True)
class Solution:
    layer_device: tuple[int, ...]
    output_device: int
    on_host: tuple[tuple[bool, ...], ...]  # per layer, per movable: sent to the host
    objective: float  # predicted seconds per token
    bytes_per_device: tuple[int, ...]
    unit: int  # bytes per capacity unit sizes were rounded up to
    states: int  # DP states (0 for CP-SAT)
    proven: bool = True  # the objective is proven optimal for the problem
    bound: float | None = None  # CP-SAT's lower bound on the objective, when it stopped without a proof
    engine: str = "dp"

    @property
    def gap(self) -> float:
        """Relative distance to the best bound (0 when proven optimal)."""
        if self.proven or self.bound is None or self.objective <= 0:
            return 0.0
        return max(0.0, (self.objective - self.bound) / self.objective)


def _options(layer: LayerItems, device: int,
             switch_time: float) -> tuple[np.ndarray, np.ndarray, list[tuple[bool, ...]]]:
    """Every way to split a layer's movables between ``device`` and the host: (bytes on device, cost, choice)."""
    if device == HOST_INDEX:
        cost = layer.core_time[HOST_INDEX] + sum(m.time[HOST_INDEX] for m in layer.movables)
        return np.array([0]), np.array([cost]), [(True,) * len(layer.movables)]
    sizes, costs, choices = [], [], []
    for choice in product((False, True), repeat=len(layer.movables)):
        sizes.append(layer.core_bytes + sum(m.nbytes for m, host in zip(layer.movables, choice) if not host))
        cost = layer.core_time[device] + sum(m.time[HOST_INDEX if host else device]
                                             for m, host in zip(layer.movables, choice))
        # Experts on the host while the layer runs on a GPU: activations go out and come back every token.
        costs.append(cost + (2 * switch_time if any(choice) else 0.0))
        choices.append(choice)
    return np.array(sizes, dtype=np.int64), np.array(costs), choices


def _unit(problem: Problem) -> int:
    """Bytes per capacity unit: at most MAX_STATES units for the largest GPU budget, never below MIN_UNIT."""
    return max(MIN_UNIT, math.ceil(max((*problem.capacity[1:], 1)) / (MAX_STATES - 1)))  # (1,): no GPU


def solve(problem: Problem) -> Solution:
    """The placement that minimises predicted time per token within every GPU budget (exact, see module doc).

    Raises ValueError when nothing fits (the caller explains why in the user's terms).
    """
    n_dev = len(problem.devices)
    n_layer = len(problem.layers)
    unit = _unit(problem)
    size = [max(problem.capacity[d], 0) // unit + 1 if d else 1 for d in range(n_dev)]
    inf = math.inf

    opts = []
    for layer in problem.layers:
        row = []
        for d in range(n_dev):
            if not layer.allowed[d]:
                row.append(None)
                continue
            sizes, costs, choices = _options(layer, d, problem.switch_time)
            row.append((-(-sizes // unit), costs, choices))
        opts.append(row)

    # cost[d][c]: best time of the layers after the current one plus the output slot, given that the current run
    # of layers is on device d and has used c units of it. The host has one state: its budget is checked apart.
    cost = []
    for d in range(n_dev):
        v = np.full(size[d], inf)
        w = -(-problem.output_bytes // unit) if d else 0
        if w < size[d]:
            v[w] = problem.output_time[d]
        cost.append(v)

    back_opt: list[list[np.ndarray]] = [[] for _ in range(n_layer)]
    back_from: list[list[np.ndarray]] = [[] for _ in range(n_layer)]
    closed_state: list[list[int]] = [[] for _ in range(n_layer)]
    for il in range(n_layer - 1, -1, -1):
        # A later device's run is closed when the sequence moves to an earlier device: only its best total counts.
        closed = [float(np.min(c)) for c in cost]
        closed_state[il] = [int(np.argmin(c)) for c in cost]
        new_cost = []
        for d in range(n_dev):
            nc = np.full(size[d], inf)
            no = np.full(size[d], -1, dtype=np.int32)
            nf = np.full(size[d], -1, dtype=np.int8)
            entry = opts[il][d]
            if entry is not None:
                later = [(closed[q], q) for q in range(d + 1, n_dev) if math.isfinite(closed[q])]
                best_val, best_q = min(later) if later else (inf, -1)
                units, costs, _ = entry
                for o, (w, c) in enumerate(zip(units.tolist(), costs.tolist())):
                    if w >= size[d]:
                        continue
                    # states below w cannot take this option: compare only the shifted slice (views of nc/no/nf)
                    cand = cost[d][: size[d] - w] + c
                    tail_c, tail_o, tail_f = nc[w:], no[w:], nf[w:]
                    better = cand < tail_c
                    tail_c[better], tail_o[better], tail_f[better] = cand[better], o, -1
                    if best_q >= 0 and best_val + c + problem.switch_time < nc[w]:
                        nc[w], no[w], nf[w] = best_val + c + problem.switch_time, o, best_q
            back_opt[il].append(no)
            back_from[il].append(nf)
            new_cost.append(nc)
        cost = new_cost

    objective, d = min((float(np.min(c)), d) for d, c in enumerate(cost))
    if not math.isfinite(objective):
        raise ValueError("no placement fits the budgets")

    layer_device: list[int] = []
    on_host: list[tuple[bool, ...]] = []
    state = int(np.argmin(cost[d]))
    for il in range(n_layer):
        o = int(back_opt[il][d][state])
        src = int(back_from[il][d][state])
        units, _, choices = opts[il][d]
        layer_device.append(d)
        on_host.append(choices[o])
        if src >= 0:
            d, state = src, closed_state[il][src]
        else:
            state -= int(units[o])
    output_device = d

    used = _bytes_used(problem, layer_device, output_device, on_host)
    return Solution(tuple(layer_device), output_device, tuple(on_host), objective, used, unit, sum(size))


def _bytes_used(problem: Problem, layer_device: list[int] | tuple[int, ...], output_device: int,
                on_host: list[tuple[bool, ...]] | tuple[tuple[bool, ...], ...]) -> tuple[int, ...]:
    used = [0] * len(problem.devices)
    for il, (dev, host) in enumerate(zip(layer_device, on_host)):
        layer = problem.layers[il]
        used[dev] += layer.core_bytes
        for m, h in zip(layer.movables, host):
            used[HOST_INDEX if h or dev == HOST_INDEX else dev] += m.nbytes
    used[output_device] += problem.output_bytes
    return tuple(used)


def _solve_interruptibly(solver: Any, model: Any) -> Any:
    """Runs CP-SAT so that Ctrl-C stops the run instead of ending the search early with a plan.

    OR-Tools catches SIGINT itself by default (``catch_sigint_signal``) and then *returns* its best solution, so
    an interrupted ``solve`` would carry on and write scripts. Here the solver leaves SIGINT to Python and runs
    in a worker thread; the main thread waits where Python can deliver KeyboardInterrupt, stops the search
    (``stop_search`` is thread-safe) and re-raises, so the command exits 130."""
    solver.parameters.catch_sigint_signal = False
    result: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            result.append(solver.solve(model))
        except BaseException as e:  # handed to the main thread
            errors.append(e)

    worker = threading.Thread(target=run, name="cp-sat", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(0.05)
    except KeyboardInterrupt:
        while worker.is_alive():  # the search may not have started yet when the first stop is sent
            solver.stop_search()
            worker.join(0.05)
        raise
    if errors:
        raise errors[0]
    return result[0]


def solve_cp_sat(problem: Problem, *, time_limit: float = 10.0, workers: int = 2, hint: Solution | None = None
                 ) -> Solution:
    """The same problem stated directly for OR-Tools CP-SAT: one-hot layer devices in non-decreasing device order
    (the output slot last), each movable on its layer's GPU or the host, a switch cost per device change and two
    per split layer. Sizes are rounded up per item to the DP's unit, times to nanoseconds. It proves optimality
    on small models; on large ones it stops at ``time_limit`` and reports its bound (``Solution.gap``).
    ``hint`` (e.g. the DP's solution) starts the search from a known placement."""
    from ortools.sat.python import cp_model  # imported here: OR-Tools takes a second to load

    scale = 1e9
    n_dev, n = len(problem.devices), len(problem.layers)
    unit = _unit(problem)

    def units(b: int) -> int:
        return -(-b // unit)

    def ns(t: float) -> int:
        return round(t * scale)

    m = cp_model.CpModel()
    x = [[m.new_bool_var(f"x{i}_{d}") for d in range(n_dev)] for i in range(n + 1)]  # slot n = output
    for i, row in enumerate(x):
        m.add_exactly_one(row)
        if i < n:
            for d in range(n_dev):
                if not problem.layers[i].allowed[d]:
                    m.add(row[d] == 0)
    z = [sum(d * v for d, v in enumerate(row)) for row in x]
    for i in range(n):
        m.add(z[i] <= z[i + 1])
    obj: list[cp_model.LinearExprT] = []
    load: list[list[cp_model.LinearExprT]] = [[] for _ in range(n_dev)]
    host_vars: list[list[cp_model.IntVar]] = []
    for i, layer in enumerate(problem.layers):
        split = m.new_bool_var(f"split{i}")
        hv = []
        for d in range(n_dev):
            obj.append(ns(layer.core_time[d]) * x[i][d])
            load[d].append(units(layer.core_bytes) * x[i][d])
        for k, mv in enumerate(layer.movables):
            on = [m.new_bool_var(f"a{i}_{k}_{d}") for d in range(1, n_dev)]  # with its layer on GPU d
            host = m.new_bool_var(f"h{i}_{k}")
            m.add_exactly_one([host, *on])
            for d, a in enumerate(on, start=1):
                m.add(a <= x[i][d])
                load[d].append(units(mv.nbytes) * a)
                obj.append(ns(mv.time[d]) * a)
            obj.append(ns(mv.time[HOST_INDEX]) * host)
            m.add(split >= host - x[i][HOST_INDEX])
            hv.append(host)
        host_vars.append(hv)
        obj.append(ns(2 * problem.switch_time) * split)
    for d in range(n_dev):
        obj.append(ns(problem.output_time[d]) * x[n][d])
        load[d].append(units(problem.output_bytes) * x[n][d])
    for i in range(n):
        change = m.new_bool_var(f"c{i}")
        m.add(z[i + 1] - z[i] <= (n_dev - 1) * change)
        obj.append(ns(problem.switch_time) * change)
    for d in range(1, n_dev):
        m.add(sum(load[d]) <= max(problem.capacity[d], 0) // unit)
    m.minimize(sum(obj))
    if hint is not None:
        for i, d in enumerate([*hint.layer_device, hint.output_device]):
            for e in range(n_dev):
                m.add_hint(x[i][e], e == d)
        for i, hv in enumerate(host_vars):
            for v, h in zip(hv, hint.on_host[i]):
                m.add_hint(v, h or hint.layer_device[i] == HOST_INDEX)
    solver = cp_model.CpSolver()
    solver.parameters.num_workers = workers
    solver.parameters.max_time_in_seconds = time_limit
    status = _solve_interruptibly(solver, m)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        raise ValueError("no placement fits the budgets" if status == cp_model.INFEASIBLE
                         else f"CP-SAT found no placement within {time_limit:g} s")
    layer_device = [next(d for d in range(n_dev) if solver.value(x[i][d])) for i in range(n)]
    output_device = next(d for d in range(n_dev) if solver.value(x[n][d]))
    on_host = [tuple(bool(solver.value(v)) for v in hv) for hv in host_vars]
    objective = solver.objective_value / scale
    return Solution(tuple(layer_device), output_device, tuple(on_host), objective,
                    _bytes_used(problem, layer_device, output_device, on_host), unit, 0,
                    proven=status == cp_model.OPTIMAL, bound=solver.best_objective_bound / scale, engine="cp-sat")

