"""Mainline llama.cpp as a target: ``-ngl``/``-ts``/``-ot`` at tensor granularity, contiguous layer runs, baselines
``--n-cpu-moe``, ``--cpu-moe`` and ``--fit``, and the launch scripts of :mod:`moeplace.emit.scripts`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from moeplace.memory import RunConfig
from moeplace.model import ModelDescription
from moeplace.targets.base import Baseline, BaselineContext, Emission, Granularity, LayerOrder
from moeplace.targets.builds import EngineBuild, stored_build
from moeplace.targets.fit import fit_placement
from moeplace.targets.llamacpp_baselines import cpu_moe_placement, n_cpu_moe_placement, smallest_n_cpu_moe
from moeplace.targets.llamacpp_rules import BUFFER_FORMS

if TYPE_CHECKING:
    from moeplace.emit.args import RunSettings
    from moeplace.planner import Plan

# The help text of the llama.cpp that llama-cpp-python 0.3.36 vendors (ggml-org/llama.cpp@0c1e57098).
DEFAULT_HELP = "llama-server-0c1e570.txt"


def llamacpp_baselines(ctx: BaselineContext) -> list[Baseline]:
    """The smallest ``--n-cpu-moe`` that fits, ``--cpu-moe``, and ``--fit`` (its 1 GiB margin, host RAM
    unlimited), each as llama.cpp places it with every layer offloaded."""
    model, gpus, split = ctx.model, list(ctx.gpus), ctx.split
    if not gpus:
        return []
    out = []
    if model.is_moe:
        n = smallest_n_cpu_moe(model, ctx.fits, gpus, -1, split)
        if n is not None:
            out.append(Baseline(f"--n-cpu-moe {n}", n_cpu_moe_placement(model, n, gpus, -1, split),
                                "smallest N that fits"))
        out.append(Baseline("--cpu-moe", cpu_moe_placement(model, gpus, -1, split), "every routed expert on the host"))
    fr = fit_placement(model, gpus, {g: ctx.devices[g].memory for g in gpus}, ctx.memory)
    note = "llama.cpp --fit (1 GiB margin)"
    if fr.over_target:
        note += f"; overfills {', '.join(fr.over_target)} (fit.cpp re-checks only the device it converts)"
    out.append(Baseline("--fit", fr.placement, note))
    return out


class LlamaCpp:
    name = "llama.cpp"
    granularity = Granularity.TENSOR
    layer_order = LayerOrder.CONTIGUOUS_RUNS
    buffer_names = BUFFER_FORMS
    binaries = ("llama-server", "llama-cli")
    tunes_run_settings = True
    expert_cache = True
    launch_scripts = True

    def default_build(self) -> EngineBuild:
        return stored_build(self.name, DEFAULT_HELP)

    def check(self, model: ModelDescription, cfg: RunConfig, devices: Sequence[str]) -> None:
        """llama.cpp's KV rules are checked where the arguments are built (:func:`moeplace.emit.args.build_args`)."""

    def baselines(self, ctx: BaselineContext) -> list[Baseline]:
        return llamacpp_baselines(ctx)

    def emit(self, plan: Plan, settings: RunSettings, build: EngineBuild,
             out_dir: Path | None = None) -> Emission:
        from moeplace.emit.args import build_args
        from moeplace.emit.scripts import script_texts

        args = build_args(plan.model, plan.placement, settings, build)
        files = script_texts(plan, args)
        return Emission(self.name, args.shell_line("llama-server"), files, argv=args.argv,
                        document={"build": build.describe()})


TARGET = LlamaCpp()
