"""``moeplace solve``: the fastest placement that fits, as llama.cpp arguments and launch scripts."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import click

from moeplace.cli import friendly_errors, table
from moeplace.cli.options import HARDWARE_HELP, context_options, devices_from, hardware_options, run_config_from
from moeplace.emit.args import LlamaArgs, RunSettings, build_args
from moeplace.emit.scripts import plan_document, prediction, write_script_set
from moeplace.hardware import HOST_NAME
from moeplace.memory import DEFAULT_MARGIN
from moeplace.model import load_model
from moeplace.outfiles import output_path
from moeplace.planner import Plan, auto_context, parse_pin, parse_workload, plan
from moeplace.plot import placement_grid, write_grid
from moeplace.ranges import format_ranges
from moeplace.routing import check_profile, expert_probs, load_profile
from moeplace.sizes import format_size


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
        if n < 0:
            self.fail("the context must be 0 (the trained context), a positive number, or auto", param, ctx)
        return n


def render(p: Plan, args: LlamaArgs, script_dir: Path | None, explain: bool) -> list[str]:
    """The plan for a person: where things go, memory per device, speed beside the baselines, the command."""
    m, e, cfg = p.model, p.estimate, p.cfg
    gpus = [n for n in p.devices if n != HOST_NAME]
    hw = " + ".join(f"{n} {format_size(p.devices[n].memory)}" for n in gpus) or "no GPU"
    out = [f"{m.name} ({m.arch}) on {hw} + {format_size(p.devices[HOST_NAME].memory)} RAM, context "
           f"{e.context.n_ctx}, KV {cfg.type_k}/{cfg.type_v}, workload {p.workload.name} "
           f"({p.workload.prompt_per_generated:g} prompt tokens per generated, decode batch {p.workload.batch})", ""]
    by_dev: dict[str, list[int]] = {}
    for il, d in enumerate(p.placement.layer_devices):
        by_dev.setdefault(d, []).append(il)
    for d, layers in by_dev.items():
        host_exp = sorted({t.block for t in m.loaded_tensors if t.block in layers and t.n_expert
                           and p.placement.tensor_devices[t.name] == HOST_NAME and d != HOST_NAME})
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
    out.append("")
    out.append(f"solver: {p.optimality}, {p.solve_seconds * 1000:.0f} ms")
    out.append("")
    out.append("command:")
    out.append("  " + args.shell_line("llama-server"))
    if script_dir is not None:
        out.append(f"scripts: {script_dir}/ (server.sh, server.ps1, cli.sh, cli.ps1, llama-swap.yaml, plan.json)")
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
@click.argument("model", type=click.Path(path_type=Path, dir_okay=False))
@hardware_options
@context_options(ctx_help="Context size in tokens (0 = trained context; auto = largest within 10% of the "
                          "speed at 4096).", ctx_type=ContextType(), ctx_default=4096)
@click.option("--workload", default="chat", show_default=True, metavar="chat|long-prompt|batch|P:G",
              help="What to optimise: the mix of prompt and generated tokens.")
@click.option("--pin", "pins", multiple=True, metavar="REGEX=DEVICE", help="Force matching tensors onto a device.")
@click.option("--profile", "profile_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="A routing profile of this model (moeplace profile run/import).")
@click.option("--solver", type=click.Choice(["dp", "cp-sat"]), default="dp", show_default=True,
              help="dp: exact dynamic programme; cp-sat: OR-Tools CP-SAT from the DP's answer, with its gap.")
@click.option("--time-limit", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
              help="Seconds CP-SAT may search.")
@click.option("--explain", is_flag=True, help="Show why each block's experts went where they did.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON (schema moeplace.plan/1).")
@click.option("-o", "--out", "out_dir", default=None, metavar="DIR",
              help="Folder for the launch scripts (default: moeplace-<model>/ in the current folder); created if "
                   "missing. Only moeplace's own six files are written there: a same-named file moeplace did not "
                   "write stops the run, and nothing else in the folder is touched.")
@click.option("--no-scripts", is_flag=True, help="Print the plan only; write no files.")
@click.option("--map", "map_path", default=None, metavar="FILE",
              help="Draw where every block's tensors live (.svg, or .png with matplotlib).")
@click.option("--host", default="127.0.0.1", show_default=True, help="llama-server address in the scripts.")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True,
              help="llama-server port in the scripts.")
@friendly_errors
def solve(model: Path, gpus: tuple[str, ...], backend: str | None, ram: int | None, ram_bw: str | None,
          margin: int | None, calibration: Path | None, n_ctx: int | str, type_k: str, type_v: str, n_batch: int,
          n_ubatch: int, flash_attn: str, n_seq_max: int, kv_unified: bool, swa_full: bool, no_kv_offload: bool,
          no_op_offload: bool, workload: str, pins: tuple[str, ...], profile_path: Path | None, solver: str,
          time_limit: float, explain: bool,
          as_json: bool, out_dir: str | None, no_scripts: bool, map_path: str | None, host: str, port: int) -> None:
    md = load_model(model)
    devices = devices_from(gpus, backend, ram, ram_bw, calibration)
    if len(devices) == 1:
        click.echo("note: no GPU given (--gpu/--vram): planning for the CPU alone", err=True)
    if not md.is_moe:
        click.echo(f"note: {md.name} is a dense model: there are no experts to place, so the plan only splits "
                   "layers", err=True)
    ctx_auto = n_ctx == "auto"
    cfg = run_config_from(md, devices, n_ctx=4096 if ctx_auto else int(n_ctx), type_k=type_k, type_v=type_v,
                          n_batch=n_batch, n_ubatch=n_ubatch, flash_attn=flash_attn, n_seq_max=n_seq_max,
                          kv_unified=kv_unified, swa_full=swa_full, no_kv_offload=no_kv_offload,
                          no_op_offload=no_op_offload)
    wl = parse_workload(workload, n_seq_max)
    pin_list = [parse_pin(x, list(devices)) for x in pins]
    profile = None
    if profile_path is not None:
        prof = load_profile(profile_path)
        check_profile(prof, md, origin=str(profile_path))
        profile = expert_probs(prof)
    margin_b = DEFAULT_MARGIN if margin is None else margin
    trade: list[Plan] = []
    if ctx_auto:
        chosen, trade = auto_context(md, devices, cfg, workload=wl, margin=margin_b, pins=pin_list, profile=profile,
                                     solver=solver, time_limit=time_limit)
    else:
        chosen = plan(md, devices, cfg, workload=wl, margin=margin_b, pins=pin_list, profile=profile, solver=solver,
                      time_limit=time_limit)
    gpu_names = tuple(n for n in devices if n != HOST_NAME)
    # Absolute, so the scripts, llama-swap entry and plan.json work from any folder.
    settings = RunSettings(model_path=md.paths[0].absolute(), n_ctx=chosen.estimate.context.n_ctx, devices=gpu_names,
                           cache_type_k=type_k, cache_type_v=type_v, flash_attn=chosen.cfg.flash_attn,
                           n_ubatch=n_ubatch, n_batch=n_batch, n_parallel=n_seq_max, kv_offload=not no_kv_offload)
    args = build_args(md, chosen.placement, settings)
    script_dir = None
    if not no_scripts:
        default_dir = "moeplace-" + re.sub(r"[^A-Za-z0-9._-]+", "-", md.name).strip("-.")
        script_dir = write_script_set(default_dir if out_dir is None else out_dir, chosen, args, host, port)
    if map_path is not None:
        write_grid(placement_grid(md, chosen.placement), output_path(map_path, "--map"))
    if as_json:
        doc = plan_document(md, chosen.placement, args, prediction(chosen))
        if trade:
            doc["context_trade"] = [{"n_ctx": t.estimate.context.n_ctx, "decode_tokens_per_second": t.chosen.decode_tps,
                                     "kv_bytes": sum(b.kv for b in t.estimate.memory.values())} for t in trade]
        if script_dir is not None:
            doc["scripts"] = str(script_dir)
        click.echo(json.dumps(doc, indent=1))
        return
    lines = render(chosen, args, script_dir, explain)
    if trade:
        lines += ["", "Context trade (-c auto):"]
        lines += table(["context", "KV total", "decode tok/s", "prompt tok/s"],
                        [[str(t.estimate.context.n_ctx), format_size(sum(b.kv for b in t.estimate.memory.values())),
                          f"{t.chosen.decode_tps:.2f}", f"{t.chosen.prefill_tps:.0f}"] for t in trade], {0, 1, 2, 3})
    click.echo("\n".join(lines))


