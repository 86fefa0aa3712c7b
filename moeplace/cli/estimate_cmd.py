"""``moeplace estimate``: what a llama.cpp placement costs in memory per device and in time per token."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

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
from moeplace.llamacpp import cpu_moe_placement, n_cpu_moe_placement
from moeplace.memory import (
    DEFAULT_MARGIN,
    RunConfig,
    context_ladder,
    kv_bytes,
    validate,
)
from moeplace.model import ModelDescription, load_model
from moeplace.placement import HOST, Placement, host_fallback
from moeplace.sizes import format_size
from moeplace.speed import Estimate, TensorTable
from moeplace.speed import estimate as estimate_placement


def parse_tensor_split(text: str) -> list[float]:
    """``-ts 3,1`` (or ``3/1``): finite non-negative proportions, not all zero."""
    try:
        split = [float(x) for x in re.split(r"[,/]", text)]
    except ValueError:
        raise MoeplaceError(f"--tensor-split '{text}' must be numbers like 3,1") from None
    if not all(math.isfinite(x) and x >= 0 for x in split) or not any(x > 0 for x in split):
        raise MoeplaceError(f"--tensor-split '{text}': give non-negative proportions, at least one above zero, "
                            "like 3,1")
    return split


def build_placement(model: ModelDescription, gpus: Sequence[Device], n_gpu_layers: int | None, cpu_moe: bool,
                    n_cpu_moe: int, tensor_split: Sequence[float] | None = None) -> Placement:
    """The placement llama.cpp makes of ``-ngl``, ``-ts`` and ``--cpu-moe``/``--n-cpu-moe`` (llama.cpp's own rules,
    :mod:`moeplace.llamacpp`), with the weights a GPU's backend refuses kept on the host. ``n_gpu_layers`` None
    means all layers, llama.cpp's default with a GPU; without ``-ts`` several GPUs split by memory, as llama.cpp
    splits by free memory."""
    names = [g.name for g in gpus]
    ngl = -1 if n_gpu_layers is None else n_gpu_layers
    split = tensor_split or ([float(g.memory) for g in gpus] if len(gpus) > 1 else None)
    if tensor_split is not None and len(tensor_split) != len(gpus):
        raise MoeplaceError(f"--tensor-split needs {len(gpus)} proportions, one per GPU")
    if cpu_moe:
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
                   "switches": e.decode_batch1.switches, "switch_seconds": e.decode_batch1.switch_seconds,
                   "paging_seconds": e.decode_batch1.paging_seconds},
        "prefill": {"n_ubatch": e.prefill.n_ubatch, "tokens_per_second": e.prefill.tokens_per_second,
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
        out.append(f"  {d.name:8s} {d.label}: {format_size(d.memory)}, {d.bandwidth / 1e9:.0f} GB/s peak x "
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
    out.append(f"decode at {d1.n_past} tokens of context: {e.tokens_per_second:.1f} tokens/s (batch 1)"
               + (f", {e.decode.tokens_per_second:.1f} tokens/s total at batch {e.decode.batch}"
                  if e.decode.batch > 1 else ""))
    for n in devices:
        if n in d1.weight_seconds or n in d1.kv_seconds:
            out.append(f"  {n:8s} reads {format_size(d1.weight_bytes.get(n, 0))} of weights "
                       f"+ {format_size(d1.kv_bytes.get(n, 0))} of KV per token: "
                       f"{1e3 * d1.busy_seconds(n):.2f} ms")
    if d1.switches:
        out.append(f"  {d1.switches} device switches along the layers: {1e3 * d1.switch_seconds:.2f} ms")
    if d1.paging_seconds:
        out.append(f"  reading paged-out weights from disk: {1e3 * d1.paging_seconds:.1f} ms")
    p = e.prefill
    out.append(f"prefill: {p.tokens_per_second:.0f} tokens/s (a {p.n_ubatch}-token ubatch in "
               f"{1e3 * p.seconds:.1f} ms" + (f", {format_size(p.transfer_bytes)} of RAM-resident weights copied "
                                              f"to the GPU in {1e3 * p.transfer_seconds:.1f} ms)" if p.transfer_bytes
                                              else ")"))
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
  --n-cpu-moe N   routed experts of blocks 0..N-1 stay in RAM (what most people tune by hand)
  --cpu-moe       every block's routed experts stay in RAM
Context flags mean what they mean to llama.cpp (-c, -ctk, -ctv, -ub, -b, -fa, -np, -kvu, --swa-full, -nkvo).

{HARDWARE_HELP}

\b
Decode speed is memory bandwidth: the bytes each token reads on each device over that device's effective
bandwidth, plus a cost per switch between devices. The table at the end shows what a longer context costs
in KV memory and in speed.

\b
Examples:
  moeplace estimate qwen3-30b-a3b.gguf --gpu rtx3090 --ram 64G --ram-bw ddr5-6000x2 -c 32768
  moeplace estimate deepseek-v3.gguf --gpu 24G@936,24G@936 --ram 512G --ram-bw epyc-9004 --cpu-moe
"""


@click.command("estimate", help=_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model")
@hardware_options
@context_options()
@click.option("-ngl", "--n-gpu-layers", "--gpu-layers", "n_gpu_layers", type=click.IntRange(-INT32_MAX, INT32_MAX),
              default=None,
              help="Layer slots on GPU (default: all when a GPU is given).")
@click.option("-ts", "--tensor-split", default=None, metavar="N,N,...",
              help="Proportions of layers per GPU (default: by GPU memory).")
@click.option("--n-cpu-moe", "-ncmoe", type=click.IntRange(min=0, max=INT32_MAX), default=0,
              help="Keep routed experts of blocks 0..N-1 in RAM (N past the last block means all).")
@click.option("--cpu-moe", "-cmoe", is_flag=True, help="Keep all routed experts in RAM.")
@click.option("--price", type=FiniteFloat(min=0), default=0.16, show_default=True,
              help="Electricity price per kWh.")
@click.option("--api-price", type=FiniteFloat(min=0), default=None,
              help="An API's price per million output tokens, to compare with.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@friendly_errors
def estimate(model: str, gpus: tuple[str, ...], backend: str | None, ram: int | None, ram_bw: str | None,
             margin: int | None, calibration: Path | None, n_ctx: int, type_k: str, type_v: str, n_batch: int,
             n_ubatch: int, flash_attn: str, n_seq_max: int, kv_unified: bool, swa_full: bool, no_kv_offload: bool,
             no_op_offload: bool, n_gpu_layers: int | None, tensor_split: str | None, n_cpu_moe: int,
             cpu_moe: bool, price: float, api_price: float | None, as_json: bool) -> None:
    md = load_model(model)
    devices = devices_from(gpus, backend, ram, ram_bw, calibration)
    gpu_devs = [d for d in devices.values() if not d.is_host]
    cfg = run_config_from(md, devices, n_ctx=n_ctx, type_k=type_k, type_v=type_v, n_batch=n_batch,
                          n_ubatch=n_ubatch, flash_attn=flash_attn, n_seq_max=n_seq_max, kv_unified=kv_unified,
                          swa_full=swa_full, no_kv_offload=no_kv_offload, no_op_offload=no_op_offload)
    split = parse_tensor_split(tensor_split) if tensor_split else None
    # Blocks past the last are no blocks: llama.cpp's --n-cpu-moe N writes N patterns, so N is clamped first.
    n_cpu_moe = min(n_cpu_moe, md.hparams.n_layer)
    placement = build_placement(md, gpu_devs, n_gpu_layers, cpu_moe, n_cpu_moe, split)
    margin_b = DEFAULT_MARGIN if margin is None else margin
    table = TensorTable.build(md)
    e = estimate_placement(md, placement, cfg, devices, table=table, margin=margin_b)
    rows = context_table(md, placement, cfg, devices, table, margin_b)
    report_detected()
    if as_json:
        doc = estimate_to_json(md, placement, cfg, devices, e, rows, price, api_price)
        click.echo(json.dumps(doc, indent=1, allow_nan=False))
        return
    click.echo("\n".join(render(md, placement, cfg, devices, e, rows, price, api_price, margin_b)))

