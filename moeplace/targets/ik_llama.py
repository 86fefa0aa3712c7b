"""ik_llama.cpp (ikawrakow/ik_llama.cpp), a llama.cpp fork tuned for MoE on CPU+GPU, as a target.

Its placement rules, read from ikawrakow/ik_llama.cpp@8337e4cd3861 (2026-08-15):

* ``-ngl N`` (``src/llama.cpp``, ``llm_load_tensors``): ``i_gpu_start = max(n_layer - N, 0)``: the last N
  *blocks* go to the GPU; the output layer goes there only when ``N > n_layer``. Unlike mainline, the output
  is not a slot counted by N, so a plan with host blocks and the output on the GPU has no ``-ngl``.
* With several GPUs in layer split mode, ik_llama.cpp assigns layers by their byte sizes (``get_layer_sizes``,
  ``default_layer_device``) rather than by ``-ts`` slot counts; moeplace models only its single-GPU layout and
  refuses several GPUs for this target.
* ``-ot`` (``common/common.cpp``, ``parse_buft_overrides``): split on ``,``, then on the first ``=``; matched with
  ``std::regex_search``, the first match wins (``src/llama-load-tensors.cpp``, ``get_context_for_tensor``) —
  the same rule as mainline, so the same compact patterns verify.
* ``--n-cpu-moe N`` on one GPU (``create_tensors_helper``): since PR 2262 (commit da2293ded, build 4797), walking
  from the last non-NextN block *backwards*, the first N blocks that have ``ffn_down_exps`` get
  ``blk\\.i\\.ffn_(up|down|gate|gate_up)_exps\\.(weight|scale)`` → CPU, appended after the user's ``-ot`` items: the
  **last** N MoE blocks (the help text still says "first"). Older builds add the same pattern for blocks
  ``0..N-1``, like mainline; the build number from ``--version`` decides which rule a baseline uses (the
  ik-llama-cpp-python 0.1.5 wheel is such an older build, and its log shows the first-N rule). ``--cpu-moe`` is
  ``ncmoe = 999``, every MoE block. Expert biases (gpt-oss) and chunked ``_chexps`` tensors are not matched by
  these patterns, so they stay with their layer.
* ``-fmoe`` (fused MoE) is on by default and no longer a flag in current builds; older builds that list it get it.
* ``-rtr`` repacks tensors at load time and turns mmap off: the host's weights are read into RAM, so it is only
  written when host RAM holds them without paging. Its CUDA backend multiplies only some repacked types
  (``ggml-cuda.cu`` supports_op: the IQ*_K family, IQ1_S, IQ1_M); a host tensor repacked to another type is never
  moved to the GPU for prompts, so ``-rtr`` is also left out where the plan's prompts move such tensors (its CUDA
  backend moves a host expert tensor when ``-ub`` x experts used >= 32 x experts: ``hardware.for_engine``).
* ``-mla 3`` (the default) caches MLA models' compressed KV (``kv_lora_rank + n_rot`` per token for K, no V),
  which is what moeplace's memory model counts; it is written explicitly for MLA models. ``-amb`` caps the
  attention batch when flash attention is off and is written for MLA models then (``-amb 512``).
* ``--fit`` is a switch here (off unless given) and refuses ``-ot``/``--n-cpu-moe``; moeplace does not port
  ik_llama.cpp's fitting, so it is not a baseline.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from moeplace.memory import RunConfig
from moeplace.model import ModelDescription
from moeplace.placement import HOST, Placement
from moeplace.ranges import first_true
from moeplace.targets.base import Baseline, BaselineContext, Emission, Granularity, LayerOrder, TargetError
from moeplace.targets.builds import EngineBuild, stored_build
from moeplace.targets.llamacpp_rules import (
    BUFFER_FORMS,
    LayerRules,
    NotExpressible,
    Override,
    check_device_order,
    is_host,
    place_tensors,
)

if TYPE_CHECKING:
    from moeplace.emit.args import RunSettings
    from moeplace.planner import Plan

DEFAULT_HELP = "ik-llama-server-8337e4c.txt"
# Types whose -rtr repacked form (_R4) ik_llama.cpp's CUDA backend still multiplies (ggml-cuda.cu supports_op at
# 8337e4cd3861); other repacked types stay on the CPU for prompts at any ubatch.
RTR_CUDA_TYPES = frozenset({"IQ1_S", "IQ1_M", "IQ2_K", "IQ3_K", "IQ4_K", "IQ4_KS", "IQ5_K", "IQ5_KS"})
IK_EXPS = r"\.ffn_(up|down|gate|gate_up)_exps\.(weight|scale)"


def rtr_stranded_types(plan: Plan) -> list[str]:
    """The types of host tensors the plan's prompts move to the GPU (ik_llama.cpp's offload rule) that, repacked by
    -rtr, its CUDA backend could no longer multiply (not in RTR_CUDA_TYPES)."""
    from moeplace.hardware import for_engine
    from moeplace.memory import context_shape
    from moeplace.speed import TensorTable, offloaded

    devices = for_engine(plan.devices, "ik_llama.cpp")
    gpu = next((d for d in devices.values() if not d.is_host), None)
    hp = plan.model.hparams
    table = TensorTable.build(plan.model)
    moved = offloaded(table, plan.cfg, context_shape(plan.model, plan.cfg).n_ubatch, gpu, hp.n_expert_used,
                      hp.n_expert)
    return sorted({t.ggml_type.upper() for t, m in zip(plan.model.loaded_tensors, moved)
                   if m and is_host(plan.placement.tensor_devices[t.name])} - RTR_CUDA_TYPES)


def layer_devices(n_layer: int, ngl: int, devices: Sequence[str]) -> tuple[tuple[str, ...], str]:
    """Block devices and the output device for ``-ngl`` on one GPU (ik_llama.cpp counts blocks only)."""
    if len(devices) > 1:
        raise NotExpressible("ik_llama.cpp splits layers between GPUs by their byte sizes; moeplace models its "
                             "single-GPU layout only")
    if ngl < 0:
        ngl = n_layer + 1
    if not devices or ngl == 0:
        return (HOST,) * n_layer, HOST
    start = max(n_layer - ngl, 0)
    return tuple(HOST if il < start else devices[0] for il in range(n_layer)), devices[0] if ngl > n_layer else HOST


def apply(model: ModelDescription, ngl: int, tensor_split: Sequence[float] | None = None,
          overrides: Sequence[Override] = (), devices: Sequence[str] = ()) -> Placement:
    """The placement ik_llama.cpp makes of ``-ngl`` and the ordered override list (first match wins)."""
    layer_devs, output_device = layer_devices(model.hparams.n_layer, ngl, devices)
    return place_tensors(model, layer_devs, output_device, overrides)


def layer_arguments(placement: Placement, devices: Sequence[str]) -> tuple[int, tuple[int, ...] | None]:
    """``-ngl`` reproducing the placement's layer layout on one GPU (no ``-ts``)."""
    devices = check_device_order(devices)
    if len(devices) > 1:
        layer_devices(0, 0, devices)  # raises with the reason
    blocks = placement.layer_devices
    gpu = [i for i, d in enumerate(blocks) if not is_host(d)]
    if not gpu:
        if not is_host(placement.output_device):
            raise NotExpressible("ik_llama.cpp puts the output layer on the GPU only with every block there")
        return 0, None
    if any(is_host(d) for d in blocks[gpu[0]:]):
        raise NotExpressible("host blocks after GPU blocks: -ngl offloads only the last blocks")
    if is_host(placement.output_device):
        return len(blocks) - gpu[0], None
    if gpu[0] != 0:
        raise NotExpressible(f"blocks 0-{gpu[0] - 1} on the host with the output layer on the GPU: ik_llama.cpp "
                             "offloads the output only when -ngl exceeds the block count")
    return len(blocks) + 1, None


RULES = LayerRules("ik_llama.cpp", apply, layer_arguments)


# ik_llama.cpp's build number (git rev-list --count) of da2293ded, "Better placement of MoE tensors with -ncmoe and
# 1 GPU (#2262)": from it on, --n-cpu-moe counts MoE blocks from the back.
LAST_N_SINCE_BUILD = 4797


def counts_from_back(build: EngineBuild | None) -> bool:
    """Whether ``build``'s ``--n-cpu-moe`` takes the last MoE blocks (True for an unknown build number)."""
    m = re.search(r"version: (\d+)", build.version) if build is not None else None
    return m is None or int(m.group(1)) >= LAST_N_SINCE_BUILD


def n_cpu_moe_overrides(model: ModelDescription, n: int, from_back: bool = True) -> tuple[Override, ...]:
    """What ``--n-cpu-moe n`` appends on one GPU: the last ``n`` blocks with ``ffn_down_exps``, backwards; with
    ``from_back`` False (builds before 4797), blocks ``0..n-1`` whatever they hold."""
    if not from_back:
        return tuple(Override(rf"blk\.{il}{IK_EXPS}", HOST) for il in range(min(n, model.hparams.n_layer)))
    last = model.hparams.n_layer - model.hparams.nextn_layers
    names = {t.name for t in model.tensors}
    out: list[Override] = []
    for il in range(last - 1, -1, -1):
        if len(out) == n:
            break
        if f"blk.{il}.ffn_down_exps.weight" in names:
            out.append(Override(rf"blk\.{il}{IK_EXPS}", HOST))
    return tuple(out)


def n_cpu_moe_placement(model: ModelDescription, n: int, devices: Sequence[str], from_back: bool = True) -> Placement:
    return apply(model, -1, None, n_cpu_moe_overrides(model, n, from_back), devices)


def smallest_n_cpu_moe(model: ModelDescription, fits: Callable[[Placement], bool], devices: Sequence[str],
                       from_back: bool = True) -> int | None:
    """Bisection, as for mainline: more blocks' experts on the host only frees GPU memory."""
    n_top = len(n_cpu_moe_overrides(model, model.hparams.n_layer)) if from_back else model.hparams.n_layer
    return first_true(lambda n: fits(n_cpu_moe_placement(model, n, devices, from_back)), 0, n_top)


class IkLlamaCpp:
    name = "ik_llama.cpp"
    granularity = Granularity.TENSOR
    layer_order = LayerOrder.CONTIGUOUS_RUNS
    buffer_names = BUFFER_FORMS
    binaries = ("llama-server",)
    tunes_run_settings = False
    expert_cache = False
    launch_scripts = False

    def __init__(self, build: EngineBuild | None = None) -> None:
        self.build = build

    def for_build(self, build: EngineBuild) -> IkLlamaCpp:
        """This target for a given build (its --n-cpu-moe rule depends on the build number)."""
        return IkLlamaCpp(build)

    def default_build(self) -> EngineBuild:
        return stored_build(self.name, DEFAULT_HELP)

    def check(self, model: ModelDescription, cfg: RunConfig, devices: Sequence[str]) -> None:
        if len(devices) > 1:
            raise TargetError("ik_llama.cpp splits layers between GPUs by their byte sizes, which moeplace does not "
                              "model: plan for one GPU (--vram SIZE) or use --target llama.cpp")

    def baselines(self, ctx: BaselineContext) -> list[Baseline]:
        model, gpus = ctx.model, list(ctx.gpus)
        if not gpus or not model.is_moe or len(gpus) > 1:
            return []
        out = []
        back = counts_from_back(self.build)
        n = smallest_n_cpu_moe(model, ctx.fits, gpus, back)
        if n is not None:
            which = "the last N MoE blocks" if back else "blocks 0..N-1 (a build before 4797)"
            out.append(Baseline(f"ik --n-cpu-moe {n}", n_cpu_moe_placement(model, n, gpus, back),
                                f"smallest N that fits (ik_llama.cpp: {which})"))
        out.append(Baseline("ik --cpu-moe", apply(model, -1, None, n_cpu_moe_overrides(model, model.hparams.n_layer),
                                                  gpus), "every routed expert on the host"))
        return out

    def engine_args(self, plan: Plan, build: EngineBuild) -> tuple[list[str], list[str]]:
        """ik-specific flags for this plan, and notes saying why."""
        args: list[str] = []
        notes: list[str] = []
        if build.has("-fmoe"):
            args.append("-fmoe")
        if plan.model.hparams.mla:
            args += ["-mla", "3"]
            if not plan.cfg.flash_attn:
                args += ["-amb", "512"]
        host_weights = any(is_host(d) for d in plan.placement.tensor_devices.values())
        stranded = rtr_stranded_types(plan)
        if host_weights and plan.estimate.host.fits and build.has("-rtr") and not stranded:
            args.append("-rtr")
            notes.append("-rtr repacks the host's weights for ik_llama.cpp's CPU kernels and turns mmap off: they "
                         "are read into RAM at start (they fit, so nothing pages)")
        elif host_weights and stranded:
            notes.append(f"no -rtr: the plan's prompts copy host experts to the GPU at -ub {plan.cfg.n_ubatch}, and "
                         f"ik_llama.cpp has no CUDA kernels for repacked {', '.join(stranded)}, so they would be "
                         "computed on the CPU instead")
        elif host_weights:
            notes.append("no -rtr: it turns mmap off, and host RAM does not hold the host's weights")
        return args, notes

    def emit(self, plan: Plan, settings: RunSettings, build: EngineBuild,
             out_dir: Path | None = None) -> Emission:
        from dataclasses import replace

        from moeplace.emit.args import build_args
        from moeplace.emit.scripts import powershell_script, sh_script

        extra, notes = self.engine_args(plan, build)
        # --fit is an on-switch in ik_llama.cpp: "--fit off" would be read as --fit plus a stray "off"
        args = build_args(plan.model, plan.placement, replace(settings, fit_off=False), build, RULES, tuple(extra))
        name = plan.model.name
        files = {"server.sh": sh_script(args, server=True, model_name=name),
                 "server.ps1": powershell_script(args, server=True, model_name=name)}
        doc = {"build": build.describe(), "argv": list(args.argv), "ngl": args.expression.ngl,
               "overrides": [{"pattern": o.pattern, "buffer": o.buffer} for o in args.expression.overrides],
               "verified_with": "ik_llama.cpp rules (moeplace.targets.ik_llama.apply)"}
        return Emission(self.name, args.shell_line("llama-server"), files, notes=tuple(notes), document=doc,
                        argv=args.argv)


TARGET = IkLlamaCpp()
