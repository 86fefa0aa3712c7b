"""Solving a model for a machine, as ``moeplace solve`` does: the run configuration with the placement
(:func:`moeplace.configure.choose_config`), then the context of ``-c auto`` (:func:`moeplace.planner.auto_context`),
then the expert cache (:func:`moeplace.expert_cache.choose_cache`), under one time budget for CP-SAT.

The CLI is a view of :class:`Solution`; scripts call :func:`solve` the same way::

    from moeplace.solution import solve
    s = solve(model, devices, RunConfig(n_ctx=32768), target=get_target("llama.cpp"))
    s.plan.placement, s.plan.chosen.decode_tps
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from moeplace.configure import CONFIG_FIELDS, ConfigChoice, choose_config
from moeplace.expert_cache import CacheChoice, choose_cache
from moeplace.hardware import Device, for_engine
from moeplace.memory import RunConfig, default_margin
from moeplace.model import ModelDescription
from moeplace.pins import Pin
from moeplace.planner import WORKLOADS, Budget, Plan, Workload, auto_context
from moeplace.speed import ExpertProbs
from moeplace.targets.base import Target


@dataclass(frozen=True)
class Solution:
    """What to run (``plan``, whose ``cfg`` is the run configuration), how it was chosen, and the extra engine
    arguments it needs (the expert cache's size)."""

    plan: Plan
    choice: ConfigChoice  # every run configuration tried, with the placement, and why the winner won
    context_trade: tuple[Plan, ...]  # -c auto: each context planned (empty without it)
    cache: CacheChoice | None  # --moe-cache-mib: each size tried (None without it)
    extra_args: tuple[str, ...]


def solve(model: ModelDescription, devices: Mapping[str, Device], cfg: RunConfig, *, target: Target,
          pinned: Sequence[str] = (), workload: Workload = WORKLOADS["chat"], margin: int | None = None,
          pins: Sequence[Pin] = (), profile: ExpertProbs | None = None,
          trace: Mapping[int, np.ndarray] | None = None, auto_ctx: bool = False, expert_cache: bool = False,
          cache_sizes: Sequence[int] | None = None, solver: str = "dp", time_limit: float = 10.0) -> Solution:
    """The plan to run: the run settings not in ``pinned`` are chosen with the placement (only for a target that
    takes llama.cpp's run flags; others run ``cfg`` as given), then with ``auto_ctx`` the largest context that
    costs little decode speed, then with ``expert_cache`` the cache size (``cache_sizes`` in MiB, default a
    ladder) that decodes fastest. ``time_limit`` is CP-SAT's budget for all of it."""
    budget = Budget(time_limit)
    devices = for_engine(devices, target.name)  # the engine's CPU kernels run at their own rate
    margin = default_margin(devices, margin)
    if not target.tunes_run_settings:
        pinned = CONFIG_FIELDS
    choice = choose_config(model, devices, cfg, pinned=pinned, workload=workload, margin=margin, pins=pins,
                           profile=profile, solver=solver, time_limit=budget.share(), target=target)
    chosen, trade = choice.plan, ()
    if auto_ctx:
        best, ladder = auto_context(model, devices, chosen.cfg, workload=workload, margin=margin, pins=pins,
                                    profile=profile, solver=solver, time_limit=budget.share(), target=target)
        chosen, trade = best, tuple(ladder)
    cache, extra = None, ()
    if expert_cache:
        cache = choose_cache(model, devices, chosen.cfg, workload=workload, margin=margin, pins=pins,
                             profile=profile, trace=trace, sizes=cache_sizes, solver=solver,
                             time_limit=budget.share(), target=target)
        if cache.best.mib:
            chosen, extra = cache.best.plan, ("--moe-cache-mib", str(cache.best.mib))
    return Solution(chosen, choice, trade, cache, extra)
