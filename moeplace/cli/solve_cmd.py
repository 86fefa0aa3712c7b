"""``moeplace solve``: the fastest placement that fits, as llama.cpp arguments and launch scripts."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

from moeplace.cli import INT32_MAX, FiniteFloat, friendly_errors, table
from moeplace.cli.options import (
    HARDWARE_HELP,
    context_options,
    detected_machine,
    devices_from,
    given_run_settings,
    hardware_options,
    report_detected,
    run_config_from,
)
from moeplace.cli.whatif_view import whatif_report
from moeplace.configure import CONFIG_FIELDS, ConfigChoice
from moeplace.emit.args import LlamaArgs, RunSettings, build_args
from moeplace.emit.scripts import plan_document, prediction, write_script_set
from moeplace.errors import MoeplaceError
from moeplace.expert_cache import CacheChoice
from moeplace.hardware import Device
from moeplace.memory import RunConfig, default_margin
from moeplace.model import load_model
from moeplace.outfiles import output_path
from moeplace.pins import parse_pin
from moeplace.placement import HOST
from moeplace.planner import Plan, parse_workload
from moeplace.plot import placement_grid, write_grid
from moeplace.ranges import format_ranges
from moeplace.routing import check_profile, expert_probs
from moeplace.routing_file import load_profile
from moeplace.sizes import format_size
from moeplace.solution import solve as solve_model
from moeplace.targets.base import Emission, Target
from moeplace.targets.builds import EngineBuild, find_binary, read_build
from moeplace.targets.files import write_files
from moeplace.targets.registry import TARGETS, get_target
from moeplace.whatif import as_quant


def _config_label(p: Plan) -> list[str]:
    c = p.cfg
    kv = c.type_k if c.type_k == c.type_v else f"{c.type_k}/{c.type_v}"
    return [str(c.n_ubatch), str(c.n_batch), kv, "no" if c.no_mmap else "yes", str(c.n_seq_max)]


def _config_row_json(p: Plan) -> dict[str, Any]:
    c = p.cfg
    return {"n_ubatch": c.n_ubatch, "n_batch": c.n_batch, "type_k": c.type_k, "type_v": c.type_v,
            "no_mmap": c.no_mmap, "n_parallel": c.n_seq_max, "kv_unified": c.kv_unified, "fits": p.chosen.fits,
            "prompt_tokens_per_second": p.chosen.prefill_tps, "decode_tokens_per_second": p.chosen.decode_tps,
            "seconds_per_generated_token": p.chosen.seconds,
            "gpu_bytes": sum(b.total for n, b in p.estimate.memory.items() if n != HOST)}


CONFIG_ROWS = 6  # alternatives shown beside the winner


def config_trade(choice: ConfigChoice) -> list[str]:
    """The trade table of the run configuration (like -c auto's): the fastest alternatives and llama.cpp's
    defaults, with predicted prompt and decode speed and GPU memory, then why the winner won."""
    rows, shown = [], []
    default = next((p for p in choice.trade if p.cfg.n_ubatch == 512 and p.cfg.type_k == "f16"), None)
    for p in choice.trade:
        if len(shown) < CONFIG_ROWS or p is choice.plan or p is default:
            shown.append(p)
    for p in shown:
        gpu = sum(b.total for n, b in p.estimate.memory.items() if n != HOST)
        note = "chosen" if p is choice.plan else ("llama.cpp default -ub/-ctk" if p is default else "")
        note += "" if p.chosen.fits else " (does not fit)"
        rows.append([*_config_label(p), f"{p.chosen.prefill_tps:.0f}", f"{p.chosen.decode_tps:.2f}",
                     format_size(gpu) if gpu else "-", f"{p.chosen.seconds * 1e3:.1f}", note.strip()])
    out = table(["-ub", "-b", "KV", "mmap", "-np", "prompt tok/s", "decode tok/s", "GPU memory", "ms/gen token",
                 "note"], rows, {0, 1, 4, 5, 6, 7, 8})
    if len(choice.trade) > len(shown):
        out.append(f"({len(choice.trade) - len(shown)} slower configurations not shown)")
    kept = [f for f in CONFIG_FIELDS if f in choice.pinned]
    if kept:
        out.append("given on the command line, kept: " + ", ".join(kept))
    out += [f"  {w}" for w in choice.why]
    return out


def _cache_sizes(value: str | None) -> list[int] | None:
    """--moe-cache-mib: None for auto (the ladder), else the one size given."""
    if value is None or value.strip().lower() == "auto":
        return None
    if not value.strip().isdigit():
        raise MoeplaceError(f"--moe-cache-mib '{value}': give auto, or a size in MiB such as 4096 (0 for none)")
    return [int(value)]


def _check_cache_flag(target: Target, build: EngineBuild, notes: list[str]) -> None:
    """--moe-cache-mib needs llama.cpp with the expert cache: a binary that lacks it is refused; with no binary the
    flag itself says the target build has it."""
    if not target.expert_cache:
        raise MoeplaceError(f"--moe-cache-mib is llama.cpp's expert cache; --target {target.name} has none: drop it")
    if not build.has("--moe-cache-mib"):
        if build.source.startswith("binary"):
            raise MoeplaceError(f"{build.describe()} has no --moe-cache-mib: drop the option, or give --engine-bin a "
                                "build with the expert cache (llama.cpp PR 29887)")
        notes.append(f"note: {build.describe()} does not list --moe-cache-mib; planning as --moe-cache-mib says: the "
                     "build you run has the expert cache (llama.cpp PR 29887)")


def expert_cache_table(cache: CacheChoice) -> list[str]:
    """Each cache size tried: the static placement around it, the hit rate, and decode with the cache."""
    rows = [[str(o.mib), str(o.slots), f"{100 * o.hit_rate:.0f}%", f"{o.static_decode_tps:.2f}",
             f"{o.decode_tps:.2f}", f"{o.seconds * 1e3:.1f}", "chosen" if o is cache.best else ""]
            for o in cache.options]
    out = table(["MiB", "slots/layer", "hit rate", "decode, static only", "decode with cache", "ms/gen token",
                 "note"], rows, {0, 1, 2, 3, 4, 5})
    out.append(f"  hit rates: {cache.method}")
    b, none = cache.best, next((o for o in cache.options if o.mib == 0), None)
    if b.mib and none is not None:
        out.append(f"  {b.mib} MiB: decode {b.decode_tps:.2f} tok/s with the cache ({100 * b.hit_rate:.0f}% of host "
                   f"experts served from VRAM) against {none.decode_tps:.2f} with static placement alone; "
                   f"{cache.device}'s memory in the plan above is what the cache leaves")
    elif none is not None and len(cache.options) > 1:
        out.append("  no cache: every miss crosses the GPU's link, which at these hit rates costs more than reading "
                   "the experts from RAM where they are")
    out += [f"  note: {n}" for n in cache.notes]
    return out


class ContextType(click.ParamType):
    """A context size in tokens, or ``auto``."""

    name = "N|auto"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int | str:
        if isinstance(value, int) or value == "auto":
            return value
        try:
            n = int(value)
        except ValueError:
            self.fail(f"'{value}' is not a number of tokens or 'auto'", param, ctx)
        if not 0 <= n <= INT32_MAX:
            self.fail(f"the context must be 0 (the trained context), a positive number up to {INT32_MAX}, or auto",
                      param, ctx)
        return n


def render(p: Plan, args: LlamaArgs | None, script_dir: Path | None, explain: bool,
           emission: Emission | None = None) -> list[str]:
    """The plan for a person: where things go, memory per device, speed beside the baselines, the command."""
    m, e, cfg = p.model, p.estimate, p.cfg
    gpus = [n for n in p.devices if n != HOST]
    hw = " + ".join(f"{n} {format_size(p.devices[n].memory)}" for n in gpus) or "no GPU"
    out = [f"{m.name} ({m.arch}) on {hw} + {format_size(p.devices[HOST].memory)} RAM, context "
           f"{e.context.n_ctx}, KV {cfg.type_k}/{cfg.type_v}, workload {p.workload.name} "
           f"({p.workload.prompt_per_generated:g} prompt tokens per generated, decode batch {p.workload.batch})", ""]
    by_dev: dict[str, list[int]] = {}
    for il, d in enumerate(p.placement.layer_devices):
        by_dev.setdefault(d, []).append(il)
    for d, layers in by_dev.items():
        host_exp = sorted({t.block for t in m.loaded_tensors if t.block in layers and t.n_expert
                           and p.placement.tensor_devices[t.name] == HOST and d != HOST})
        line = f"  blocks {format_ranges(layers)} run on {d}"
        if host_exp:
            line += f"; routed experts of blocks {format_ranges(host_exp)} in RAM"
        out.append(line)
    out.append(f"  output layer on {p.placement.output_device}; token embeddings in RAM")
    out.append("")
    rows = []
    for name, b in e.memory.items():
        fit = e.fits.get(name)
        avail = f"{format_size(fit.available)}" if fit else format_size(e.host.ram)
        free = format_size(fit.free) if fit else ("fits" if e.host.fits else f"short {format_size(e.host.paged)}")
        rows.append([name, format_size(b.weights), format_size(b.kv), format_size(b.compute),
                     format_size(b.overhead), format_size(b.total), avail, free])
    out += table(["device", "weights", "KV", "compute", "overhead", "total", "memory", "free after margin"],
                  rows, {1, 2, 3, 4, 5, 6, 7})
    out.append("")
    base = p.chosen
    rows = [["moeplace plan", f"{base.decode_tps:.2f}", f"{base.prefill_tps:.0f}", "yes" if base.fits else "NO", "",
             base.note]]
    for b in p.baselines:
        delta = (base.seconds / b.seconds - 1) * -100 if b.seconds else 0.0
        rows.append([b.name, f"{b.decode_tps:.2f}", f"{b.prefill_tps:.0f}", "yes" if b.fits else "NO",
                     f"{delta:+.1f}%", b.note])
    out += table(["placement", "decode tok/s", "prompt tok/s", "fits", "plan vs it", "note"], rows, {1, 2})
    pre = base.estimate.prefill
    where = "the full context: its slowest point" if p.workload.depth is None else "as -d gives"
    out.append(f"  (decode at depth {base.estimate.decode_batch1.n_past}, {where}; prompt: "
               f"{pre.n_tokens or pre.n_ubatch} tokens at depth {pre.depth})")
    out.append("")
    out.append(f"solver: {p.optimality}, {p.solve_seconds * 1000:.0f} ms")
    out.append("")
    if emission is not None and emission.approximation is not None:
        a = emission.approximation
        out.append(f"{emission.target} can get {a.decode_tps:.1f} tok/s of the plan's {base.decode_tps:.1f} "
                   f"({a.name}; prompt {a.prefill_tps:.0f} tok/s{'' if a.fits else ', does NOT fit'})")
        out.append("")
    out.append("command:" if emission is None else f"command ({emission.target}):")
    out.append("  " + (emission.command if emission is not None or args is None else args.shell_line("llama-server")))
    if script_dir is not None:
        names = ", ".join(emission.files) if emission is not None else \
            "server.sh, server.ps1, cli.sh, cli.ps1, llama-swap.yaml, plan.json"
        out.append(f"scripts: {script_dir}/ ({names})")
    for n in emission.notes if emission is not None else ():
        out.append(f"note: {n}")
    for w in p.warnings:
        out.append(f"warning: {w}")
    for n in e.notes:
        out.append(f"note: {n}")
    if explain:
        out.append("")
        out.append("Why each block's experts went where they did:")
        out += table(["blk", "device", "core (attn+KV)", "experts", "on device", "reason"],
                      [[str(r.block), r.device, format_size(r.core_bytes), format_size(r.expert_bytes),
                        f"{len(r.experts_on_device)}/{len(r.experts_on_device) + len(r.experts_on_host)}", r.text]
                       for r in p.reasons], {0, 2, 3})
    return out


_HELP = f"""Find the placement of MODEL's tensors that gives the best predicted speed and fits every GPU, and print
the llama.cpp command that runs it.

\b
How: the solver (an exact dynamic programme over the layer sequence) decides which GPU runs each layer
(-ngl/-ts: attention, KV cache, shared experts) and which routed-expert tensors stay with their layer or
go to RAM (-ot), minimising the predicted time per token of your workload from the bytes each token reads
and each device's bandwidth. Beside the plan it shows what llama.cpp gives by itself: the smallest
--n-cpu-moe that fits, --cpu-moe, and --fit. The emitted -ot patterns are re-applied to the model's
tensor list with llama.cpp's rules before anything is printed.

{HARDWARE_HELP}

\b
Workload: chat (2 prompt tokens per generated token), long-prompt (20:1), batch (decode 8 sequences at
once), or a ratio such as 8:1. --pin REGEX=DEVICE forces tensors (llama.cpp -ot semantics, first pin
wins); --profile uses measured routing (moeplace profile). -c auto tries contexts from 4096 up to the
trained one and takes the largest within 10% of the speed at 4096.

\b
Examples:
  moeplace solve Qwen3-30B-A3B-Q4_K_M.gguf --vram 12G --ram 32G
  moeplace solve gpt-oss-120b.gguf --gpu rtx4090 --ram 128G --ram-bw ddr5-6000x2 -c 32768 --explain
  moeplace solve DeepSeek-V3-00001-of-00009.gguf --vram 24G,24G --ram 512G -ctk q8_0 -ctv q8_0 --json
"""


@click.command("solve", help=_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model")
@hardware_options
@context_options(ctx_help="Context size in tokens (0 = trained context; auto = largest within 10% of the "
                          "speed at 4096).", ctx_type=ContextType(), ctx_default=4096)
@click.option("--workload", default="chat", show_default=True, metavar="chat|long-prompt|batch|P:G",
              help="What to optimise: the mix of prompt and generated tokens.")
@click.option("-d", "--depth", type=click.IntRange(min=0, max=2**31 - 1), default=None, metavar="N",
              help="Tokens already in the context when the workload's tokens come (llama-bench's -d): decode is "
                   "timed there and prompts after it [default: decode at the full context, its slowest point; "
                   "prompts from position 0].")
@click.option("--mmap/--no-mmap", "mmap", default=None,
              help="Keep llama.cpp's memory-mapped weights, or load them into pinned RAM (default: --no-mmap "
                   "where the host's share fits in RAM and a GPU copies experts from it).")
@click.option("--moe-cache-mib", "moe_cache", default=None, metavar="auto|N",
              help="The target llama.cpp has the expert cache (--moe-cache-mib, PR 29887): auto sizes it against "
                   "static placement (hit rates from the --profile's routing trace), N plans with N MiB.")
@click.option("-t", "--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads for llama.cpp (default: the physical cores detected here; left to llama.cpp "
                   "when the hardware was given by flags).")
@click.option("--pin", "pins", multiple=True, metavar="REGEX=DEVICE", help="Force matching tensors onto a device.")
@click.option("--profile", "profile_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="A routing profile of this model (moeplace profile run/import).")
@click.option("--solver", type=click.Choice(["dp", "cp-sat"]), default="dp", show_default=True,
              help="dp: exact dynamic programme; cp-sat: OR-Tools CP-SAT from the DP's answer, with its gap.")
@click.option("--time-limit", type=FiniteFloat(min=0.1, max=86400), default=10.0, show_default=True,
              help="Seconds CP-SAT may search, in all: the run configurations, -c auto's contexts and the cache "
                   "sizes share them.")
@click.option("--explain", is_flag=True, help="Show why each block's experts went where they did.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON (schema moeplace.plan/1).")
@click.option("-o", "--out", "out_dir", default=None, metavar="DIR",
              help="Folder for the launch scripts (default: moeplace-<model>/ in the current folder); created if "
                   "missing. Only moeplace's own six files are written there: a same-named file moeplace did not "
                   "write stops the run, and nothing else in the folder is touched.")
@click.option("--no-scripts", is_flag=True, help="Print the plan only; write no files.")
@click.option("--map", "map_path", default=None, metavar="FILE",
              help="Draw where every block's tensors live (.svg, or .png with matplotlib).")
@click.option("--target", "target_name", type=click.Choice(list(TARGETS)), default="llama.cpp", show_default=True,
              help="The engine to plan for: its placement rules, baselines, flags and files.")
@click.option("--engine-bin", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="The engine's binary: its --help decides which flags are written (default: the one on PATH, "
                   "else a stated default build).")
@click.option("--as-quant", "as_quant_type", default=None, metavar="TYPE",
              help="Plan the model re-typed by llama-quantize's rules for TYPE (Q4_0, Q4_K_M, Q8_0, MXFP4_MOE, F16, "
                   "BF16): a projection of a file you do not have.")
@click.option("--compare", "variants", multiple=True, metavar="'HW OPTIONS'",
              help="Also plan on a hardware variant, written as hardware options ('--gpu rtx3090,rtx3090', "
                   "'--ram 256G --ram-bw ddr5-6000x2'); repeat for several. Prints the variants side by side.")
@click.option("--target-tps", type=click.FloatRange(min=0, min_open=True), default=None, metavar="N",
              help="The least VRAM of the first GPU whose plan decodes N tokens/s (exact solver, bisection); "
                   "with --compare, which variants reach N.")
@click.option("--host", default="127.0.0.1", show_default=True, help="llama-server address in the scripts.")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True,
              help="llama-server port in the scripts.")
@friendly_errors
def solve(model: str, gpus: tuple[str, ...], backend: str | None, ram: int | None, ram_bw: str | None,
          margin: int | None, calibration: Path | None, n_ctx: int | str, type_k: str, type_v: str, n_batch: int,
          n_ubatch: int, flash_attn: str, n_seq_max: int, kv_unified: bool, swa_full: bool, no_kv_offload: bool,
          no_op_offload: bool, workload: str, depth: int | None, mmap: bool | None, moe_cache: str | None,
          threads: int | None,
          pins: tuple[str, ...],
          profile_path: Path | None, solver: str,
          time_limit: float, explain: bool,
          as_json: bool, out_dir: str | None, no_scripts: bool, map_path: str | None, target_name: str,
          engine_bin: Path | None, as_quant_type: str | None, variants: tuple[str, ...], target_tps: float | None,
          host: str, port: int) -> None:
    md = load_model(model)
    projection = None
    if as_quant_type:
        original = md
        md = as_quant(md, as_quant_type)
        projection = (f"projection: {original.name} re-typed by llama-quantize's rules as {md.file_type}: "
                      f"{format_size(md.file_size)} (the file is {original.file_type}, "
                      f"{format_size(original.file_size)}); no such file was read")
        if not as_json:
            click.echo(projection)
    devices = devices_from(gpus, backend, ram, ram_bw, calibration, threads=threads)
    if variants or target_tps is not None:
        def config(devs: Mapping[str, Device]) -> RunConfig:
            return run_config_from(md, devs, n_ctx=4096 if n_ctx == "auto" else int(n_ctx), type_k=type_k,
                                   type_v=type_v, n_batch=n_batch, n_ubatch=n_ubatch, flash_attn=flash_attn,
                                   n_seq_max=n_seq_max, kv_unified=kv_unified, swa_full=swa_full,
                                   no_kv_offload=no_kv_offload, no_op_offload=no_op_offload)
        base = {"gpus": gpus, "backend": backend, "ram": ram, "ram_bw": ram_bw, "calibration": calibration}
        whatif_report(md, devices, base, variants, target_tps, config, parse_workload(workload, n_seq_max, depth),
                      default_margin(devices, margin), as_json, projection)
        return
    notes = []  # printed with the plan, after what was detected: an error stays one line
    if len(devices) == 1:
        notes.append("note: no GPU (none detected or given): planning for the CPU alone")
    if not md.is_moe:
        notes.append(f"note: {md.name} is a dense model: there are no experts to place, so the plan only splits "
                     "layers")
    ctx_auto = n_ctx == "auto"
    cfg = run_config_from(md, devices, n_ctx=4096 if ctx_auto else int(n_ctx), type_k=type_k, type_v=type_v,
                          n_batch=n_batch, n_ubatch=n_ubatch, flash_attn=flash_attn, n_seq_max=n_seq_max,
                          kv_unified=kv_unified, swa_full=swa_full, no_kv_offload=no_kv_offload,
                          no_op_offload=no_op_offload)
    target = get_target(target_name)
    target.check(md, cfg, [n for n in devices if n != HOST])
    build = engine_build(target, engine_bin)
    # a target whose rules depend on the build (ik_llama.cpp's --n-cpu-moe) is bound to it
    target = target.for_build(build) if hasattr(target, "for_build") else target
    wl = parse_workload(workload, n_seq_max, depth)
    pin_list = [parse_pin(x, list(devices)) for x in pins]
    profile = prof = None
    cache_sizes = _cache_sizes(moe_cache)
    if profile_path is not None:
        prof = load_profile(profile_path)
        check_profile(prof, md, origin=str(profile_path))
        profile = expert_probs(prof)
    margin_b = default_margin(devices, margin)
    if mmap is not None:
        cfg = cfg.with_(no_mmap=not mmap)
    if moe_cache is not None:
        _check_cache_flag(target, build, notes)
    sol = solve_model(md, devices, cfg, target=target, pinned=given_run_settings(mmap is not None), workload=wl,
                      margin=margin_b, pins=pin_list, profile=profile, trace=prof.trace if prof is not None else None,
                      auto_ctx=ctx_auto, expert_cache=moe_cache is not None, cache_sizes=cache_sizes, solver=solver,
                      time_limit=time_limit)
    choice, chosen, run_cfg, trade, cache = sol.choice, sol.plan, sol.plan.cfg, list(sol.context_trade), sol.cache
    found = detected_machine()
    if threads is None and found is not None and target.tunes_run_settings:
        threads = found.cores
    gpu_names = tuple(n for n in devices if n != HOST)
    # Absolute, so the scripts, llama-swap entry and plan.json work from any folder.
    settings = RunSettings.of(run_cfg, md.paths[0].absolute(), chosen.estimate.context.n_ctx, gpu_names, threads,
                              sol.extra_args)
    default_dir = "moeplace-" + re.sub(r"[^A-Za-z0-9._-]+", "-", md.name).strip("-.")
    directory = default_dir if out_dir is None else out_dir
    if not target.launch_scripts:
        emission = target.emit(chosen, settings, build, output_path(directory, "output folder"))
        report_detected()
        for n in notes:
            click.echo(n, err=True)
        emit_target(md, chosen, emission, directory, no_scripts, map_path, as_json, explain, trade)
        return
    args = build_args(md, chosen.placement, settings, build)
    script_dir = None
    if not no_scripts:
        script_dir = write_script_set(directory, chosen, args, host, port)
    if map_path is not None:
        write_grid(placement_grid(md, chosen.placement), output_path(map_path, "--map"))
    report_detected()
    for n in notes:
        click.echo(n, err=True)
    if as_json:
        doc = plan_document(md, chosen.placement, args, prediction(chosen))
        doc["build"] = build.describe()
        doc["config_trade"] = [_config_row_json(t) for t in choice.trade]
        doc["config_why"] = list(choice.why)
        if cache is not None:
            doc["expert_cache"] = {
                "device": cache.device, "method": cache.method, "notes": list(cache.notes), "mib": cache.best.mib,
                "options": [{"mib": o.mib, "slots_per_layer": o.slots, "hit_rate": o.hit_rate,
                             "static_decode_tokens_per_second": o.static_decode_tps,
                             "decode_tokens_per_second": o.decode_tps, "seconds_per_generated_token": o.seconds}
                            for o in cache.options]}
        if projection:
            doc["projection"] = projection
        if trade:
            doc["context_trade"] = [{"n_ctx": t.estimate.context.n_ctx, "decode_tokens_per_second": t.chosen.decode_tps,
                                     "kv_bytes": sum(b.kv for b in t.estimate.memory.values())} for t in trade]
        if script_dir is not None:
            doc["scripts"] = str(script_dir)
        click.echo(json.dumps(doc, indent=1, allow_nan=False))
        return
    lines = render(chosen, args, script_dir, explain)
    lines.append(f"flags for: {build.describe()}")
    lines += ["", "Run configuration trade (what was chosen with the placement):"]
    lines += config_trade(choice)
    if cache is not None:
        lines += ["", f"Expert cache (--moe-cache-mib on {cache.device}; needs a llama.cpp build that has it):"]
        lines += expert_cache_table(cache)
    if threads is not None and found is not None:
        lines.append(f"  -t {threads}: the physical cores detected (decode is bound by memory bandwidth, which one "
                     "thread per core saturates; hyper-threads add contention)")
    click.echo("\n".join(lines + trade_lines(trade)))


def trade_lines(trade: list[Plan]) -> list[str]:
    """The context trade of ``-c auto`` as a table (nothing without it)."""
    if not trade:
        return []
    return ["", "Context trade (-c auto):", *table(
        ["context", "KV total", "decode tok/s", "prompt tok/s"],
        [[str(t.estimate.context.n_ctx), format_size(sum(b.kv for b in t.estimate.memory.values())),
          f"{t.chosen.decode_tps:.2f}", f"{t.chosen.prefill_tps:.0f}"] for t in trade], {0, 1, 2, 3})]




def engine_build(target: Target, engine_bin: Path | None) -> EngineBuild:
    """The build whose flags are written: ``--engine-bin``, else the target's binary on PATH, else its default."""
    if engine_bin is not None:
        return read_build(target.name, engine_bin)
    found = find_binary(target.binaries)
    return read_build(target.name, found) if found else target.default_build()


def emit_target(md: Any, chosen: Plan, emission: Emission, out_dir: str, no_scripts: bool, map_path: str | None,
                as_json: bool, explain: bool, trade: list[Plan]) -> None:
    """Prints and writes another engine's plan: its command, its files, and its approximation's cost."""
    doc: dict[str, Any] = {"generator": "Generated by moeplace", "schema": "moeplace.target-plan/1",
                           "target": emission.target, "command": emission.command,
                           "argv": list(emission.argv), "files": sorted(emission.files), "notes": list(emission.notes),
                           "engine": dict(emission.document), "prediction": prediction(chosen)}
    if emission.approximation is not None:
        a = emission.approximation
        doc["approximation"] = {"name": a.name, "decode_tokens_per_second": a.decode_tps,
                                "prompt_tokens_per_second": a.prefill_tps, "fits": a.fits, "note": a.note}
    if trade:
        doc["context_trade"] = [{"n_ctx": t.estimate.context.n_ctx, "decode_tokens_per_second": t.chosen.decode_tps}
                                for t in trade]
    files = dict(emission.files)
    files.setdefault("plan.json", json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    script_dir = None if no_scripts else write_files(out_dir, files, emission.replaceable)
    if map_path is not None:
        write_grid(placement_grid(md, chosen.placement), output_path(map_path, "--map"))
    if as_json:
        if script_dir is not None:
            doc["scripts"] = str(script_dir)
        click.echo(json.dumps(doc, indent=1))
        return
    lines = render(chosen, None, script_dir, explain, Emission(emission.target, emission.command, files,
                                                                emission.approximation, emission.notes))
    click.echo("\n".join(lines + trade_lines(trade)))
