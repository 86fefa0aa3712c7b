"""``moeplace inspect``: what is in a GGUF model file."""

from __future__ import annotations

import json
from typing import Any

import click

from moeplace.cli import friendly_errors, table
from moeplace.infiles import printable
from moeplace.model import load_model
from moeplace.sizes import format_size
from moeplace.summary import summarize, tensor_rows


def _count(n: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


def render(s: dict[str, Any]) -> list[str]:
    """The human-readable report of :func:`moeplace.summary.summarize`."""
    hp = s["hparams"]
    n_files = len(s["files"])
    out = [
        f"{s['name']}  ({hp['arch']}, {s['file_type'] or 'unknown quantisation'})  "
        f"{n_files} file{'s' if n_files > 1 else ''}, {format_size(s['file_size'])}",
    ]
    kv_heads = sorted(set(hp["n_head_kv"]))
    kv = "/".join(map(str, kv_heads)) if kv_heads else "0"
    out.append(f"  {hp['n_layer']} blocks, n_embd {hp['n_embd']}, {hp['n_head']} heads / {kv} KV heads, "
               f"head dim {hp['head_dim_k']}, vocabulary {hp['n_vocab']}, trained context {hp['n_ctx_train']}")
    if hp["kv_lora_rank"]:
        out.append(f"  MLA attention: kv_lora_rank {hp['kv_lora_rank']}, q_lora_rank {hp['q_lora_rank']}, "
                   f"rope dims {hp['n_rot']}")
    if hp["swa_type"] != "none":
        n_win = sum(hp["swa_layers"])
        out.append(f"  {hp['swa_type']} attention window {hp['n_swa']} on {n_win} of {hp['n_layer']} layers")
    if any(hp["recurrent_layers"]):
        out.append(f"  recurrent (SSM) layers: {sum(hp['recurrent_layers'])} of {hp['n_layer']}")
    if s["is_moe"]:
        moe = sum(1 for r in s["layers"] if r["kind"] == "moe")
        out.append(f"  experts: {hp['n_expert']} routed ({hp['n_expert_used']} used per token), "
                   f"{hp['n_expert_shared']} shared; expert FFN {hp['n_ff_exp']}; {moe} MoE blocks, "
                   f"{hp['n_leading_dense']} leading dense")
    else:
        out.append("  no routed experts: this is a dense model, so there are no experts to place "
                   "(moeplace can still report its memory)")
    if hp["nextn_layers"]:
        out.append(f"  {hp['nextn_layers']} NextN/MTP block(s) at the end: llama.cpp does not load them; "
                   "counted apart below")
    out.append(f"  parameters {_count(s['parameters'])}, active per token {_count(s['active_parameters_per_token'])}")
    out.append("")
    loaded = s["loaded_bytes"]
    rows = [[role, format_size(b), f"{100 * b / loaded:.1f}%" if role != "nextn" else "not loaded"]
            for role, b in s["bytes_by_role"].items() if b]
    out += table(["role", "bytes", "share"], rows, {1, 2})
    out.append("")
    if s["is_moe"]:
        out.append(f"Routed experts are {100 * s['routed_expert_share']:.1f}% of the loaded weights.")
    out.append(f"One token reads {format_size(s['bytes_read_per_token'])} of {format_size(loaded)} loaded "
               "(batch 1, uniform routing): the floor of decode memory traffic.")
    out.append("")
    out += table(["type", "tensors", "bytes"],
                  [[q["type"], q["tensors"], format_size(q["bytes"])] for q in s["quant_mix"]], {1, 2})
    out.append("")
    layer_rows = [[r["block"], r["kind"], r["attention"], r["n_head_kv"],
                   format_size(r["routed_expert_bytes"]) if r["routed_expert_bytes"] else "-",
                   format_size(r["expert_slice_bytes"]) if r["expert_slice_bytes"] else "-",
                   format_size(r["shared_expert_bytes"]) if r["shared_expert_bytes"] else "-",
                   format_size(r["attention_bytes"]), format_size(r["total_bytes"])] for r in s["layers"]]
    out += table(["blk", "kind", "attention", "kv heads", "routed", "per expert", "shared", "attn", "total"],
                  layer_rows, {0, 3, 4, 5, 6, 7, 8})
    return out


@click.command()
@click.argument("model")
@click.option("--tensors", "show_tensors", is_flag=True, help="List every tensor: role, type, shape, bytes.")
@click.option("--json", "as_json", is_flag=True, help="Print everything as JSON for scripts.")
@friendly_errors
def inspect(model: str, show_tensors: bool, as_json: bool) -> None:
    """Show what is in a GGUF model: experts, shared experts, attention, sizes and quant types.

    MODEL is a .gguf file, or the first shard of a split model (name-00001-of-0000N.gguf); the other
    shards are found beside it. Only the header is read, so this takes well under a second even for
    a 400 GB model. MODEL may also be an http(s):// URL, hf://owner/repo/path/file.gguf or
    owner/repo[:QUANT] (as llama.cpp's -hf takes it): only the header is fetched, with range requests,
    and kept in ~/.cache/moeplace/headers.

    \b
    Examples:
      moeplace inspect Qwen3-30B-A3B-Q4_K_M.gguf
      moeplace inspect DeepSeek-V3-Q4_K_M-00001-of-00009.gguf --tensors
      moeplace inspect model.gguf --json | jq .bytes_by_role
      moeplace inspect unsloth/DeepSeek-V3-0324-GGUF:Q2_K_XL
    """
    m = load_model(model)
    s = summarize(m)
    if as_json:
        if show_tensors:
            s["tensors"] = tensor_rows(m)
        click.echo(json.dumps(s, indent=2, allow_nan=False))
        return
    for line in render(s):
        click.echo(line)
    if show_tensors:
        click.echo("")
        rows = [[printable(t["name"]), t["role"], t["type"], "x".join(map(str, t["shape"])), format_size(t["bytes"])]
                for t in tensor_rows(m)]
        for line in table(["tensor", "role", "type", "shape", "bytes"], rows, {4}):
            click.echo(line)
