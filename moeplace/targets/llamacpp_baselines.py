"""Baselines: the placements mainline llama.cpp's own MoE options give (``--n-cpu-moe N``, ``--cpu-moe``), and the
smallest ``--n-cpu-moe`` that fits. ``--fit`` is :mod:`moeplace.targets.fit`."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from moeplace.model import ModelDescription
from moeplace.placement import Placement
from moeplace.ranges import first_true
from moeplace.targets.llamacpp_rules import Override, apply, cpu_moe_pattern, cpu_moe_patterns


def n_cpu_moe_placement(model: ModelDescription, n: int, devices: Sequence[str] = (), ngl: int = -1,
                        tensor_split: Sequence[float] | None = None,
                        user_overrides: Sequence[Override] = ()) -> Placement:
    """The placement of ``-ngl ngl [-ts ..] [-ot user..] --n-cpu-moe n`` (the user's ``-ot`` given first)."""
    return apply(model, ngl, tensor_split, (*user_overrides, *cpu_moe_patterns(n)), devices)


def cpu_moe_placement(model: ModelDescription, devices: Sequence[str] = (), ngl: int = -1,
                      tensor_split: Sequence[float] | None = None,
                      user_overrides: Sequence[Override] = ()) -> Placement:
    """The placement of ``-ngl ngl [-ts ..] [-ot user..] --cpu-moe`` (the user's ``-ot`` given first)."""
    return apply(model, ngl, tensor_split, (*user_overrides, cpu_moe_pattern()), devices)


def smallest_n_cpu_moe(model: ModelDescription, fits: Callable[[Placement], bool], devices: Sequence[str] = (),
                       ngl: int = -1, tensor_split: Sequence[float] | None = None) -> int | None:
    """The smallest ``--n-cpu-moe`` whose placement ``fits`` (None if not even all blocks on the host fit).
    Moving more blocks' experts to the host only frees device memory, so the search is a bisection."""
    n_layer = model.hparams.n_layer

    def ok(n: int) -> bool:
        return fits(n_cpu_moe_placement(model, n, devices, ngl, tensor_split))

    return first_true(ok, 0, n_layer)
