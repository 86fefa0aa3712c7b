"""LM Studio as a target: the nearest configuration its llama.cpp engine can express, as its per-model default
config JSON and an ``lms load`` line, with the predicted cost of the approximation beside the full plan.

LM Studio exposes two placement settings for GGUF models (field names from lmstudio-ai/lmstudio-js,
``kvConfigToLLMLoadModelConfig``): ``llm.load.llama.acceleration.offloadRatio`` (GPU offload, a 0–1 ratio of
the layers) and ``llm.load.numCpuExpertLayersRatio`` (the "number of layers for which to force MoE weights onto
CPU", a 0–1 ratio). Its engine is closed source; moeplace assumes it hands them to llama.cpp as
``-ngl round(ratio × layers)`` and ``--n-cpu-moe round(ratio × blocks)`` (the first blocks' experts, mainline's
rule). Each ratio is written so that ``ratio × count`` is exactly the integer, so any rounding gives it back.

The config file is a KV config, ``{"load": {"fields": [{"key": ..., "value": ...}]}}``, the form LM Studio keeps
per-model defaults in (``~/.lmstudio/.internal/user-concrete-model-default-config/<model path>.json``; copy it
there, or set the same values in the model's load settings). Cache types use LM Studio's checkbox form
``{"checked": true, "value": "q8_0"}``.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moeplace.memory import RunConfig
from moeplace.model import ModelDescription
from moeplace.targets.base import Baseline, BaselineContext, Emission, Granularity, LayerOrder, TargetError
from moeplace.targets.builds import EngineBuild
from moeplace.targets.layer_count import LayerConfig, exact_ratio, nearest
from moeplace.targets.llamacpp import llamacpp_baselines

if TYPE_CHECKING:
    from moeplace.emit.args import RunSettings
    from moeplace.planner import Plan

CONFIG_NAME = "lmstudio-load-config.json"


def load_fields(cfg: LayerConfig, plan: Plan) -> list[dict[str, Any]]:
    """LM Studio load-config fields for a layer configuration and the plan's context settings."""
    c = plan.cfg
    n_layer = plan.model.hparams.n_layer
    return [
        {"key": "llm.load.contextLength", "value": plan.estimate.context.n_ctx},
        {"key": "llm.load.llama.acceleration.offloadRatio", "value": exact_ratio(cfg.k, cfg.n_slots)},
        {"key": "llm.load.numCpuExpertLayersRatio", "value": exact_ratio(cfg.n, n_layer)},
        {"key": "llm.load.offloadKVCacheToGpu", "value": not c.no_kv_offload},
        {"key": "llm.load.llama.flashAttention", "value": c.flash_attn},
        {"key": "llm.load.llama.evalBatchSize", "value": c.n_batch},
        {"key": "llm.load.llama.kCacheQuantizationType", "value": {"checked": c.type_k != "f16", "value": c.type_k}},
        {"key": "llm.load.llama.vCacheQuantizationType", "value": {"checked": c.type_v != "f16", "value": c.type_v}},
    ]


def config_counts(doc: dict[str, Any], n_layer: int) -> tuple[int, int]:
    """``(-ngl, --n-cpu-moe)`` as LM Studio derives them from a config document (moeplace's assumption, see the
    module docstring): the inverse of :func:`load_fields`, used to replay the file."""
    fields = {f["key"]: f["value"] for f in doc["load"]["fields"]}
    return (round(fields["llm.load.llama.acceleration.offloadRatio"] * (n_layer + 1)),
            round(fields["llm.load.numCpuExpertLayersRatio"] * n_layer))


class LMStudio:
    name = "lmstudio"
    granularity = Granularity.LAYERS
    layer_order = LayerOrder.CONTIGUOUS_RUNS
    buffer_names = "one GPU (LM Studio chooses among several itself)"
    tunes_run_settings = False
    expert_cache = False
    launch_scripts = False
    binaries: tuple[str, ...] = ()

    def default_build(self) -> EngineBuild:
        return EngineBuild(self.name, "LM Studio 0.4 (llama.cpp engine)",
                           frozenset({"llm.load.llama.acceleration.offloadRatio", "llm.load.numCpuExpertLayersRatio"}),
                           "load-config fields from lmstudio-ai/lmstudio-js")

    def check(self, model: ModelDescription, cfg: RunConfig, devices: Sequence[str]) -> None:
        if len(devices) != 1:
            raise TargetError("LM Studio splits layers between GPUs by its own strategy: plan for one GPU")

    def baselines(self, ctx: BaselineContext) -> list[Baseline]:
        return llamacpp_baselines(ctx)

    def emit(self, plan: Plan, settings: RunSettings, build: EngineBuild, out_dir: Path | None = None) -> Emission:
        cfg = nearest(plan, True, lambda k, n: f"LM Studio: GPU offload {k}/{plan.model.hparams.n_layer + 1}, "
                                               f"MoE on CPU {n} layers")
        doc = {"preset": "", "operation": {"fields": []}, "load": {"fields": load_fields(cfg, plan)}}
        ident = plan.model.name.replace(" ", "-") or "model"
        # lms load --gpu takes 0-1, off or max (lmstudio.ai/docs/cli/load)
        gpu = "max" if cfg.k == cfg.n_slots else "off" if cfg.k == 0 else repr(exact_ratio(cfg.k, cfg.n_slots))
        command = shlex.join(["lms", "load", str(Path(settings.model_path).resolve()), "--gpu", gpu,
                              "--context-length", str(plan.estimate.context.n_ctx), "--identifier", ident])
        notes = (f"{CONFIG_NAME}: GPU offload {cfg.k} of {cfg.n_slots} layers, experts of the first {cfg.n} blocks on "
                 "the CPU; lms load has no flag for the MoE setting, so the config file (or the load settings) "
                 "carries it",
                 "lms load finds models in LM Studio's models folder: `lms import FILE` brings a file from elsewhere")
        return Emission(self.name, command, {CONFIG_NAME: json.dumps(doc, indent=2) + "\n"}, cfg.candidate, notes,
                        {"k": cfg.k, "n_cpu_expert_layers": cfg.n, "config": doc}, replaceable=(CONFIG_NAME,))


TARGET = LMStudio()
