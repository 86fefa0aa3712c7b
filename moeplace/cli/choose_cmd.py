"""``moeplace choose``: which quant of a Hugging Face repository to download for this machine."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from moeplace.choose import Choice, rank
from moeplace.cli import friendly_errors, table
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
from moeplace.cli.solve_cmd import engine_build
from moeplace.memory import default_margin
from moeplace.model import ModelDescription
from moeplace.planner import parse_workload
from moeplace.remote import HfRef, ReadStats, parse_ref
from moeplace.sizes import format_size
from moeplace.targets.registry import get_target


def choice_json(c: Choice) -> dict[str, object]:
    p = c.plan
    return {"quant": c.quant.label, "files": list(c.quant.files), "bytes": c.quant.size, "fits": c.fits,
            "decode_tokens_per_second": p.chosen.decode_tps if p else None,
            "prompt_tokens_per_second": p.chosen.prefill_tps if p else None,
            "seconds_per_generated_token": p.chosen.seconds if p else None,
            "n_ctx": p.estimate.context.n_ctx if p else None,
            "command": c.command or None, "download": c.download, "problem": c.problem or None}


_HELP = f"""Rank every GGUF quant of a Hugging Face repository for this machine, before downloading any.

\b
REPO is owner/repo (hf://owner/repo also works). Each quant's header is read with HTTP range requests
(a few MiB even for a 400 GB model; cached in ~/.cache/moeplace/headers, so a second run is offline),
planned with the same solver as 'moeplace solve', and listed with its size, whether it fits, the predicted
prompt and decode speed at the given context and workload, the llama-server command of the best plan and
the command that downloads it. Quants that fit come first, fastest first. HF_TOKEN is used for gated
repositories; HF_ENDPOINT for another Hub.

{HARDWARE_HELP}

\b
Examples:
  moeplace choose unsloth/DeepSeek-V3-0324-GGUF --gpu rtx3090 --ram 256G --ram-bw ddr5-4800x8 -c 16384
  moeplace choose bartowski/Qwen_Qwen3-30B-A3B-GGUF --vram 12G --ram 32G --json
"""


@click.command("choose", help=_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("repo")
@hardware_options
@context_options()
@click.option("--workload", default="chat", show_default=True, metavar="chat|long-prompt|batch|P:G",
              help="What to optimise: the mix of prompt and generated tokens.")
@click.option("--revision", default="main", show_default=True, help="Branch, tag or commit of the repository.")
@click.option("--commands", "show_commands", is_flag=True, help="Print each quant's llama-server command too.")
@click.option("--json", "as_json", is_flag=True, help="Print the ranking as JSON (schema moeplace.choose/1).")
@friendly_errors
def choose(repo: str, gpus: tuple[str, ...], backend: str | None, ram: int | None, ram_bw: str | None,
           margin: int | None, calibration: Path | None, n_ctx: int, type_k: str, type_v: str, n_batch: int,
           n_ubatch: int, flash_attn: str, n_seq_max: int, kv_unified: bool, swa_full: bool, no_kv_offload: bool,
           no_op_offload: bool, workload: str, revision: str, show_commands: bool, as_json: bool) -> None:
    ref = parse_ref(repo.removeprefix("hf://").rstrip("/"))
    if not isinstance(ref, HfRef) or ref.path or ref.tag:
        raise click.UsageError(f"'{repo}' is not a repository: give owner/repo")
    devices = devices_from(gpus, backend, ram, ram_bw, calibration)

    def config(md: ModelDescription):  # type: ignore[no-untyped-def]
        return run_config_from(md, devices, n_ctx=n_ctx, type_k=type_k, type_v=type_v, n_batch=n_batch,
                               n_ubatch=n_ubatch, flash_attn=flash_attn, n_seq_max=n_seq_max, kv_unified=kv_unified,
                               swa_full=swa_full, no_kv_offload=no_kv_offload, no_op_offload=no_op_offload)

    stats = ReadStats()
    start = time.perf_counter()
    found = detected_machine()
    # The same run-configuration search, threads and build as 'moeplace solve', so the commands agree.
    choices = rank(ref.repo, devices, config, workload=parse_workload(workload, n_seq_max),
                   margin=default_margin(devices, margin), revision=revision, stats=stats,
                   pinned=given_run_settings(), threads=found.cores if found is not None else None,
                   build=engine_build(get_target("llama.cpp"), None))
    report_detected()
    seconds = time.perf_counter() - start
    if as_json:
        click.echo(json.dumps({"schema": "moeplace.choose/1", "repo": ref.repo, "revision": revision,
                               "quants": [choice_json(c) for c in choices],
                               "read": {"bytes": stats.bytes_fetched, "shards_from_network": stats.from_network,
                                        "shards_from_cache": stats.from_cache}, "seconds": round(seconds, 3)},
                              indent=1))
        return
    hw = " + ".join(f"{n} {format_size(d.memory)}" for n, d in devices.items())
    click.echo(f"{ref.repo}: {len(choices)} quants on {hw}, context {n_ctx}, workload {workload}")
    click.echo("")
    rows = []
    for c in choices:
        p = c.plan
        rows.append([c.quant.label, format_size(c.quant.size), str(len(c.quant.files)), "yes" if c.fits else "no",
                     f"{p.chosen.decode_tps:.2f}" if p else "-", f"{p.chosen.prefill_tps:.0f}" if p else "-",
                     c.problem if len(c.problem) < 70 else c.problem[:67] + "..."])
    for line in table(["quant", "size", "files", "fits", "decode tok/s", "prompt tok/s", "note"], rows, {1, 2, 4, 5}):
        click.echo(line)
    best = next((c for c in choices if c.fits), None)
    click.echo("")
    if best is None:
        click.echo("No quant fits this machine: give more memory (--gpu, --ram) or a shorter context (-c).")
    else:
        click.echo(f"Fastest that fits: {best.quant.label} ({format_size(best.quant.size)})")
        click.echo(f"  download: {best.download}")
        click.echo(f"  run:      {best.command}")
    if show_commands:
        for c in choices:
            if c.command:
                click.echo(f"\n{c.quant.label}:\n  {c.download}\n  {c.command}")
    click.echo(f"\nread {stats.from_network} shard headers from the network ({format_size(stats.bytes_fetched)}), "
               f"{stats.from_cache} from the cache, in {seconds:.1f} s; speeds are predictions (see README)")
