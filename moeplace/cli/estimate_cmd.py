"""``moeplace estimate``: what a llama.cpp placement costs in memory per device and in time per token."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from moeplace.cli import INT32_MAX, FiniteFloat, friendly_errors, table
from moeplace.cli.options import (
    HARDWARE_HELP,
    context_options,
    devices_from,
    hardware_options,
    report_detected,
    run_config_from,
)
from moeplace.errors import MoeplaceError
from moeplace.hardware import Device
from moeplace.llamacpp import (
    Override,
    apply,
    cpu_moe_placement,
    n_cpu_moe_placement,
)
from moeplace.llamacpp_cli import LlamaCommand, looks_like_command, parse_command, split_ts
from moeplace.memory import (
    RunConfig,
    context_ladder,
    default_margin,
    kv_bytes,
    validate,
)
from moeplace.model import ModelDescription, load_model
from moeplace.placement import HOST, Placement, host_fallback
from moeplace.remote.refs import parse_ref
from moeplace.sizes import format_size
from moeplace.speed import Estimate, TensorTable
from moeplace.speed import estimate as estimate_placement


def build_placement(model: ModelDescription, gpus: Sequence[Device], n_gpu_layers: int | None, cpu_moe: bool,
                    n_cpu_moe: int, tensor_split: Sequence[float] | None = None,
                    overrides: Sequence[Override] | None = None) -> Placement:
    """The placement llama.cpp makes of ``-ngl``, ``-ts`` and ``--cpu-moe``/``--n-cpu-moe`` (llama.cpp's own rules,
    :mod:`moeplace.llamacpp`), or of ``overrides``, the whole ``-ot``/``--cpu-moe``/``--n-cpu-moe`` list in
    command-line order, when given; either way with the weights a GPU's backend refuses kept on the host, as
    llama.cpp's loader keeps them. ``n_gpu_layers`` None
    means all layers, llama.cpp's default with a GPU; without ``-ts`` several GPUs split by memory, as llama.cpp
    splits by free memory."""
    names = [g.name for g in gpus]
    ngl = -1 if n_gpu_layers is None else n_gpu_layers
    if tensor_split is not None and len(tensor_split) < len(gpus):
        tensor_split = [*tensor_split, *[0.0] * (len(gpus) - len(tensor_split))]
    split = tensor_split or ([float(g.memory) for g in gpus] if len(gpus) > 1 else None)
    if tensor_split is not None and len(tensor_split) != len(gpus):
        raise MoeplaceError(f"--tensor-split has {len(tensor_split)} proportions for {len(gpus)} GPUs: give one per "
                            "GPU (--gpu)")
    if overrides is not None:
        known = {*names, HOST}
        unknown = sorted({o.buffer for o in overrides} - known)
        if unknown:
            raise MoeplaceError(f"-ot names {', '.join(unknown)} but the GPUs given are {', '.join(names) or 'none'}:"
                                " give a --gpu for each device the command uses")
        placement = apply(model, ngl, split, tuple(overrides), names)
    elif cpu_moe:
        placement = cpu_moe_placement(model, names, ngl, split)
    else:
        placement = n_cpu_moe_placement(model, n_cpu_moe, names, ngl, split)
    return host_fallback(model, placement, {g.name: g.max_tensor for g in gpus})


def context_table(model: ModelDescription, placement: Placement, cfg: RunConfig, devices: dict[str, Device],
                  table: TensorTable, margin: int, types: Sequence[str] = ("f16", "q8_0", "q4_0")
                  ) -> list[dict[str, Any]]:
    """KV memory and decode tokens/s at a full context for each context length and cache type (K = V type)."""
    rows = []
    for n_ctx in context_ladder(model.hparams.n_ctx_train):
        row: dict[str, Any] = {"n_ctx": n_ctx}
        for t in types:
            c = cfg.with_(n_ctx=n_ctx, type_k=t, type_v=t)
            try:
                validate(model, c)
            except MoeplaceError:
                row[t] = None
                continue
            e = estimate_placement(model, placement, c, devices, table=table, margin=margin, batch=1)
            row[t] = {"kv_bytes": kv_bytes(model, c), "tokens_per_second": e.tokens_per_second,
                      "fits": e.all_fit and e.host.fits}
        rows.append(row)
    return rows


def _placement_text(model: ModelDescription, placement: Placement) -> str:
    n = model.hparams.n_layer
    on_gpu = sum(1 for d in placement.layer_devices if d != HOST)
    host_experts = sum(1 for t in model.tensors if t.loaded and placement.tensor_devices.get(t.name) == HOST
                       and t.block is not None and placement.layer_devices[t.block] != HOST)
    parts = [f"{on_gpu} of {n} blocks on GPU", f"output on {placement.output_device}"]
    if host_experts:
        parts.append(f"{host_experts} expert tensors of GPU blocks kept in RAM")
    return ", ".join(parts)


def estimate_to_json(model: ModelDescription, placement: Placement, cfg: RunConfig, devices: dict[str, Device],
                     e: Estimate, rows: list[dict[str, Any]], price: float, api_price: float | None
                     ) -> dict[str, Any]:
    """Everything the command prints, JSON-ready."""
    return {
        "model": model.name,
        "config": vars(cfg),
        "context": vars(e.context),
        "devices": {n: {"label": d.label, "memory": d.memory, "bandwidth": d.bandwidth,
                        "efficiency": d.efficiency, "power": d.power, "notes": list(d.notes)}
                    for n, d in devices.items()},
        "placement": {"layer_devices": list(placement.layer_devices), "output_device": placement.output_device,
                      "tensor_devices": dict(placement.tensor_devices)},
        "memory": {n: {**b.as_dict(), "fits": e.fits[n].fits if n in e.fits else e.host.fits,
                       "free": e.fits[n].free if n in e.fits else e.host.ram - e.host.needed}
                   for n, b in e.memory.items()},
        "host": {"ram": e.host.ram, "needed": e.host.needed, "paged": e.host.paged, "fits": e.host.fits},
        "decode": {"batch": e.decode.batch, "n_past": e.decode.n_past,
                   "tokens_per_second": e.decode.tokens_per_second,
                   "tokens_per_second_batch1": e.tokens_per_second,
                   "weight_seconds": dict(e.decode_batch1.weight_seconds),
                   "kv_seconds": dict(e.decode_batch1.kv_seconds),
                   "weight_bytes": dict(e.decode_batch1.weight_bytes),
                   "kv_bytes": dict(e.decode_batch1.kv_bytes),
                   "kv_reread_bytes": dict(e.decode_batch1.kv_reread_bytes),
                   "switches": e.decode_batch1.switches, "switch_seconds": e.decode_batch1.switch_seconds,
                   "paging_seconds": e.decode_batch1.paging_seconds},
        "prefill": {"n_ubatch": e.prefill.n_ubatch, "n_tokens": e.prefill.n_tokens or e.prefill.n_ubatch,
                    "depth": e.prefill.depth, "tokens_per_second": e.prefill.tokens_per_second,
                    "transfer_bytes": e.prefill.transfer_bytes, "transfer_seconds": e.prefill.transfer_seconds},
        "energy": {"joules_per_token": e.energy.joules_per_token, "watts": e.energy.watts,
                   "price_per_kwh": price, "cost_per_million_tokens": e.energy.cost_per_million(price),
                   "api_price_per_million_tokens": api_price},
        "context_table": rows,
        "notes": list(e.notes),
    }


def render(model: ModelDescription, placement: Placement, cfg: RunConfig, devices: dict[str, Device], e: Estimate,
           rows: list[dict[str, Any]], price: float, api_price: float | None, margin: int) -> list[str]:
    """The human-readable report."""
    hp = model.hparams
    out = [f"{model.name}  ({hp.arch}, {model.file_type or 'unknown quantisation'}, "
           f"{format_size(model.loaded_bytes)} loaded)"]
    for d in devices.values():
        out.append(f"  {d.name:8s} {d.label}: {format_size(d.memory)}, {d.peak_text()} x "
                   f"{d.efficiency:.2f} = {d.effective_bandwidth / 1e9:.0f} GB/s effective")
    ctx = e.context
    out.append(f"  placement: {_placement_text(model, placement)}")
    out.append(f"  context: -c {ctx.n_ctx} ({ctx.n_ctx_seq} cells x {ctx.n_stream} stream(s)), -b {ctx.n_batch} "
               f"-ub {ctx.n_ubatch}, -fa {'on' if cfg.flash_attn else 'off'}, K {cfg.type_k}, V {cfg.type_v}"
               f"{', -nkvo' if cfg.no_kv_offload else ''}{', --swa-full' if cfg.swa_full else ''}")
    out.append("")
    mem_rows = []
    for n, b in e.memory.items():
        if n in e.fits:
            f = e.fits[n]
            avail, free, ok = format_size(f.available), format_size(f.free), "yes" if f.fits else "NO"
        else:
            h = e.host
            avail, free = format_size(h.ram), format_size(h.ram - h.needed)
            ok = "yes" if h.fits else ("paged" if h.possible else "NO")
        mem_rows.append([n, format_size(b.weights), format_size(b.kv), format_size(b.compute),
                         format_size(b.overhead), format_size(b.total), avail, free, ok])
    out += table(["memory", "weights", "KV", "compute", "overhead", "total", "has", "free", "fits"], mem_rows)
    out.append(f"  (GPU free space is after a --margin of {format_size(margin)}; compute buffers are estimates)")
    for n, f in e.fits.items():
        if not f.fits:
            out.append(f"  {n} is {format_size(-f.free)} short: keep more experts in RAM (--n-cpu-moe, --cpu-moe), "
                       "lower -ngl or -c, or quantize the KV cache (-ctk/-ctv q8_0)")
    if not e.host.fits and e.host.possible:
        out.append(f"  RAM is {format_size(e.host.needed - e.host.ram)} short: llama.cpp maps the model file, so "
                   f"{format_size(e.host.paged)} of weights ({100 * e.host.paged_fraction:.0f}% of those in RAM) "
                   "will be read from disk again on the tokens that need them")
    out.append("")
    d1 = e.decode_batch1
    out.append(f"decode at depth {d1.n_past} (tokens of context): {e.tokens_per_second:.1f} tokens/s (batch 1)"
               + (f", {e.decode.tokens_per_second:.1f} tokens/s total at batch {e.decode.batch}"
                  if e.decode.batch > 1 else ""))
    for n in devices:
        if n in d1.weight_seconds or n in d1.kv_seconds:
            again = d1.kv_reread_bytes.get(n, 0)
            out.append(f"  {n:8s} reads {format_size(d1.weight_bytes.get(n, 0))} of weights "
                       f"+ {format_size(d1.kv_bytes.get(n, 0))} of KV per token"
                       + (f" (+ {format_size(again)} read again: llama.cpp's vector attention kernel reads the "
                          "cache once per query head)" if again else "")
                       + f": {1e3 * d1.busy_seconds(n):.2f} ms")
    if d1.switches:
        out.append(f"  {d1.switches} device switches along the layers: {1e3 * d1.switch_seconds:.2f} ms")
    if d1.paging_seconds:
        out.append(f"  reading paged-out weights from disk: {1e3 * d1.paging_seconds:.1f} ms")
    p = e.prefill
    n_tok = p.n_tokens or p.n_ubatch
    out.append(f"prefill of {n_tok} tokens at depth {p.depth}: {p.tokens_per_second:.0f} tokens/s "
               f"(ubatches of {p.n_ubatch}, {1e3 * p.seconds:.1f} ms"
               + (f"; {format_size(p.transfer_bytes)} of RAM-resident weights copied to the GPU in "
                  f"{1e3 * p.transfer_seconds:.1f} ms)" if p.transfer_bytes else ")"))
    cost = e.energy.cost_per_million(price)
    line = (f"energy: {e.energy.joules_per_token:.2f} J/token at {e.energy.watts:.0f} W; electricity at "
            f"{price:g}/kWh: {cost:.3f} per million tokens")
    if api_price is not None:
        line += f" (API: {api_price:g}, {api_price / cost:.0f}x)" if cost > 0 else f" (API: {api_price:g})"
    out.append(line)
    out.append("")
    types = [t for t in ("f16", "q8_0", "q4_0") if any(r.get(t) for r in rows)]
    head = ["context"] + [f"KV {t}" for t in types] + [f"tok/s {t}" for t in types]
    trows = []
    for r in rows:
        label = f"{r['n_ctx']}" + (" (trained)" if r["n_ctx"] == hp.n_ctx_train else "")
        cells = [label]
        cells += [format_size(r[t]["kv_bytes"]) + ("" if r[t]["fits"] else "*") if r.get(t) else "-" for t in types]
        cells += [f"{r[t]['tokens_per_second']:.1f}" if r.get(t) else "-" for t in types]
        trows.append(cells)
    out.append("context length against KV memory and decode speed at a full context, same placement:")
    out += table(head, trows)
    out.append("  * does not fit on this hardware with this placement")
    if e.notes:
        out.append("")
        out += [f"note: {n}" for n in e.notes]
    return out


_HELP = f"""Estimate what running MODEL under llama.cpp costs: memory on each device and tokens per second.

\b
The placement is the one llama.cpp makes of its own flags:
  -ngl N          the last N layer slots go to the GPUs (the output layer is the last slot); default all
  -ot REGEX=BUF   tensors matching REGEX go to buffer BUF (CPU, CUDA0, ...); repeatable, comma lists
  --n-cpu-moe N   routed experts of blocks 0..N-1 stay in RAM (what most people tune by hand)
  --cpu-moe       every block's routed experts stay in RAM
-ot, --cpu-moe and --n-cpu-moe append to one list in command-line order and the first match wins, as in
llama.cpp. Context flags mean what they mean to llama.cpp (-c, -ctk, -ctv, -ub, -b, -fa, -np, -kvu,
--swa-full, -nkvo); -t is llama.cpp's thread count, -d the depth (tokens already in the context, as
llama-bench's -d) that decode and the -p token prompt are estimated at.

\b
Or paste the command you run after --, and moeplace reads it with llama.cpp's own rules (llama-server,
llama-cli, llama-bench); an unknown or malformed flag is an error naming it:
  moeplace estimate --gpu rtx3090 --ram 64G -- llama-server -m model.gguf -ngl 99 -ot exps=CPU -c 32768

{HARDWARE_HELP}

\b
Host decode is limited by memory bandwidth and by compute (threads x the per-quant CPU cost); GPU decode by
bandwidth; prompts by compute, and by the host link (--link pcie4x8, one per GPU) for weights in RAM.
The table at the end shows what a longer context costs in KV memory and in speed.

\b
Examples:
  moeplace estimate qwen3-30b-a3b.gguf --gpu rtx3090 --ram 64G --ram-bw ddr5-6000x2 -c 32768
  moeplace estimate deepseek-v3.gguf --gpu 24G@936,24G@936 --ram 512G --ram-bw epyc-9004 --cpu-moe -t 32
"""

_ORDERED = {"-ot": True, "--override-tensor": True, "--cpu-moe": False, "-cmoe": False, "--n-cpu-moe": True,
            "-ncmoe": True}


class _OrderedCommand(click.Command):
    """Keeps the raw arguments so that -ot, --cpu-moe and --n-cpu-moe can be applied in command-line order
    (click groups each option's values, llama.cpp appends them to one list as it reads them)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["moeplace.raw_args"] = list(args)
        return super().parse_args(ctx, args)


def ordered_overrides(raw: Sequence[str]) -> list[Override]:
    """The override list of moeplace's own -ot/--cpu-moe/--n-cpu-moe options, in command-line order (up to a
    ``--``; click has checked the values already), read by the pasted-command parser so both follow one rule."""
    words: list[str] = []
    i = 0
    while i < len(raw) and raw[i] != "--":
        flag, _, inline = raw[i].partition("=") if raw[i].startswith("--") else (raw[i], "", "")
        if flag in _ORDERED:
            words.append(flag)
            if _ORDERED[flag]:
                if not inline:
                    i += 1
                words.append(inline or (raw[i] if i < len(raw) else ""))
        i += 1
    return list(parse_command(["llama-server", *words]).overrides)


def _split_words(words: Sequence[str]) -> tuple[str | None, LlamaCommand | None]:
    """MODEL and/or a pasted llama.cpp command from the positional words."""
    if not words:
        raise MoeplaceError("give MODEL, or the llama.cpp command you run after -- (moeplace estimate --gpu ... -- "
                            "llama-server -m model.gguf ...)")
    if len(words) == 1:
        return words[0], None
    if looks_like_command(words[0]):
        return None, parse_command(words)
    if words[1].startswith("-") and parse_ref(words[0]) is None and not os.path.exists(words[0]) \
            and not words[0].lower().endswith(".gguf"):
        # neither a model nor a llama.cpp program: say so, rather than fault the flags that follow it
        raise MoeplaceError(f"'{words[0]}' is neither a model file nor a llama.cpp program: paste a line that runs "
                            "llama-server, llama-cli or llama-bench, or give MODEL before --")
    return words[0], parse_command(words[1:])


# moeplace option -> the LlamaCommand field that a pasted line may set instead.
_PASTED_FIELDS = {"n_ctx": "n_ctx", "n_batch": "n_batch", "n_ubatch": "n_ubatch", "type_k": "type_k",
                  "type_v": "type_v", "flash_attn": "flash_attn", "n_seq_max": "n_seq_max", "threads": "threads",
                  "n_gpu_layers": "n_gpu_layers", "tensor_split": "tensor_split", "depth": "depth",
                  "n_prompt": "n_prompt"}


def _merge(ctx: click.Context, values: dict[str, Any], cmd: LlamaCommand) -> dict[str, Any]:
    """The pasted command's settings over moeplace's defaults; the same setting given both ways is an error."""
    out = dict(values)
    for opt, fld in _PASTED_FIELDS.items():
        pasted = getattr(cmd, fld)
        if pasted is None:
            continue
        if ctx.get_parameter_source(opt) is ParameterSource.COMMANDLINE:
            raise MoeplaceError(f"{opt.replace('_', '-')} is given both to moeplace and in the pasted command: keep "
                                "one")
        out[opt] = pasted
    for flag in ("kv_unified", "swa_full", "no_kv_offload", "no_op_offload"):
        out[flag] = out[flag] or getattr(cmd, flag)
    if cmd.bench and cmd.n_ctx is None and ctx.get_parameter_source("n_ctx") is not ParameterSource.COMMANDLINE:
        # llama-bench sizes its context to the test: prompt + generated + depth.
        out["n_ctx"] = (cmd.n_prompt or 512) + (cmd.n_gen or 128) + (cmd.depth or 0)
    if cmd.bench and cmd.n_prompt is None and ctx.get_parameter_source("n_prompt") is not ParameterSource.COMMANDLINE:
        out["n_prompt"] = 512
    return out


@click.command("estimate", cls=_OrderedCommand, help=_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("words", nargs=-1, type=click.UNPROCESSED, metavar="[MODEL] [-- LLAMA.CPP COMMAND]")
@hardware_options
@context_options()
@click.option("-ngl", "--n-gpu-layers", "--gpu-layers", "n_gpu_layers", type=click.IntRange(-INT32_MAX, INT32_MAX),
              default=None,
              help="Layer slots on GPU (default: all when a GPU is given).")
@click.option("-ts", "--tensor-split", default=None, metavar="N,N,...",
              help="Proportions of layers per GPU (default: by GPU memory).")
@click.option("-ot", "--override-tensor", "override_tensor", multiple=True, metavar="REGEX=BUFFER[,...]",
              help="llama.cpp's tensor override; repeatable, comma lists; in order with --cpu-moe/--n-cpu-moe.")
@click.option("--n-cpu-moe", "-ncmoe", type=click.IntRange(min=0, max=INT32_MAX), default=None,
              help="Keep routed experts of blocks 0..N-1 in RAM (N past the last block means all).")
@click.option("--cpu-moe", "-cmoe", is_flag=True, help="Keep all routed experts in RAM.")
@click.option("-t", "--threads", type=click.IntRange(min=1), default=None,
              help="llama.cpp threads (default: the cores given with --cores, else 8, stated).")
@click.option("-d", "--depth", type=click.IntRange(min=0), default=0, show_default=True,
              help="Tokens already in the context when decoding and prompting (llama-bench -d).")
@click.option("-p", "--n-prompt", "n_prompt", type=click.IntRange(min=1), default=None,
              help="Prompt length for the prompt-processing estimate (default: one ubatch, -ub).")
@click.option("--price", type=FiniteFloat(min=0), default=0.16, show_default=True,
              help="Electricity price per kWh.")
@click.option("--api-price", type=FiniteFloat(min=0), default=None,
              help="An API's price per million output tokens, to compare with.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.pass_context
@friendly_errors
def estimate(ctx: click.Context, words: tuple[str, ...], gpus: tuple[str, ...], backend: str | None,
             ram: int | None, ram_bw: str | None, margin: int | None, calibration: Path | None, n_ctx: int,
             type_k: str, type_v: str, n_batch: int, n_ubatch: int, flash_attn: str, n_seq_max: int,
             kv_unified: bool, swa_full: bool, no_kv_offload: bool, no_op_offload: bool, n_gpu_layers: int | None,
             tensor_split: str | None, override_tensor: tuple[str, ...], n_cpu_moe: int | None, cpu_moe: bool,
             threads: int | None,
             depth: int, n_prompt: int | None, price: float, api_price: float | None,
             as_json: bool) -> None:
    model, pasted = _split_words(words)
    split = list(split_ts("--tensor-split", tensor_split)) if tensor_split else None
    v: dict[str, Any] = {"n_ctx": n_ctx, "type_k": type_k, "type_v": type_v, "n_batch": n_batch,
                         "n_ubatch": n_ubatch, "flash_attn": flash_attn, "n_seq_max": n_seq_max,
                         "kv_unified": kv_unified, "swa_full": swa_full, "no_kv_offload": no_kv_offload,
                         "no_op_offload": no_op_offload, "threads": threads, "n_gpu_layers": n_gpu_layers,
                         "tensor_split": split, "depth": depth, "n_prompt": n_prompt}
    overrides: list[Override] | None = ordered_overrides(ctx.meta.get("moeplace.raw_args", []))
    notes: list[str] = []
    if pasted is not None:
        if overrides:
            raise MoeplaceError("-ot/--cpu-moe/--n-cpu-moe are given both to moeplace and in the pasted command: "
                                "keep the pasted ones")
        v = _merge(ctx, v, pasted)
        overrides = list(pasted.overrides)
        model = model or pasted.model
        if model is None:
            raise MoeplaceError("the pasted command has no -m MODEL: add it, or give MODEL before --")
        notes.extend(f"pasted command: {n}" for n in pasted.notes)
    assert model is not None
    md = load_model(model)
    devices = devices_from(gpus, backend, ram, ram_bw, calibration, threads=v["threads"])
    gpu_devs = [d for d in devices.values() if not d.is_host]
    fa = v["flash_attn"]
    cfg = run_config_from(md, devices, n_ctx=v["n_ctx"], type_k=v["type_k"], type_v=v["type_v"],
                          n_batch=v["n_batch"], n_ubatch=min(v["n_ubatch"], v["n_batch"]), flash_attn=fa,
                          n_seq_max=v["n_seq_max"], kv_unified=v["kv_unified"], swa_full=v["swa_full"],
                          no_kv_offload=v["no_kv_offload"], no_op_offload=v["no_op_offload"])
    placement = build_placement(md, gpu_devs, v["n_gpu_layers"], False, 0, v["tensor_split"], overrides)
    margin_b = default_margin(devices, margin)
    table = TensorTable.build(md)
    e = estimate_placement(md, placement, cfg, devices, table=table, margin=margin_b, depth=v["depth"],
                           n_prompt=v["n_prompt"])
    e = replace(e, notes=(*notes, *e.notes))
    rows = context_table(md, placement, cfg, devices, table, margin_b)
    report_detected()
    if as_json:
        doc = estimate_to_json(md, placement, cfg, devices, e, rows, price, api_price)
        click.echo(json.dumps(doc, indent=1, allow_nan=False))
        return
    click.echo("\n".join(render(md, placement, cfg, devices, e, rows, price, api_price, margin_b)))
