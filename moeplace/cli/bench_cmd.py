"""``moeplace bench``: run placements in a real llama.cpp, print measured tokens/s beside predicted, and write a
calibration file of the effective bandwidths measured."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from moeplace import oracle
from moeplace.bench import Run, Timing, dataset_row, run_bench
from moeplace.calibration import Calibration, CalibrationError
from moeplace.calibration import load as load_calibration
from moeplace.calibration import save as save_calibration
from moeplace.calibration import to_dict as calibration_dict
from moeplace.cli import INT32_MAX, friendly_errors, table
from moeplace.cli.options import (
    HARDWARE_HELP,
    context_options,
    devices_from,
    hardware_options,
    report_detected,
    run_config_from,
)
from moeplace.errors import MoeplaceError
from moeplace.hardware import GB
from moeplace.memory import default_margin
from moeplace.model import load_model


def _rows(runs: list[Run]) -> list[list[str]]:
    out = []
    for r in runs:
        pp_p, tg_p = r.predicted.prefill.tokens_per_second, r.predicted.tokens_per_second
        out.append([r.name, f"{pp_p:.1f}", f"{r.measured.pp_tps:.1f}", f"{tg_p:.2f}", f"{r.measured.tg_tps:.2f}",
                    f"{r.measured.tg_tps / tg_p:.2f}" if tg_p > 0 else "-"])
    return out


def _run_json(r: Run) -> dict[str, Any]:
    return {
        "name": r.name,
        "args": {"n_gpu_layers": r.ngl, "tensor_split": list(r.tensor_split) if r.tensor_split else None,
                 "override_tensor": [o.arg() for o in r.overrides]},
        "predicted": {"prompt_tokens_per_second": r.predicted.prefill.tokens_per_second,
                      "decode_tokens_per_second": r.predicted.tokens_per_second},
        "measured": {"prompt_tokens_per_second": r.measured.pp_tps, "decode_tokens_per_second": r.measured.tg_tps,
                     "prompt_runs": list(r.measured.pp_runs), "decode_runs": list(r.measured.tg_runs),
                     "n_prompt": r.measured.n_prompt, "n_gen": r.measured.n_gen, "threads": r.measured.n_threads},
    }


_HELP = f"""Run MODEL in llama.cpp and print the measured tokens/s beside moeplace's prediction; write the measured
bandwidths as a calibration file for solve/estimate --calibration.

\b
With a GPU build of llama.cpp and --gpu: runs the best --plans N plans (the plan at --margin, then at
successively larger margins) and the baselines that fit (--n-cpu-moe N, --cpu-moe, --fit) for prompt
processing (pp) and generation (tg), and calibrates the GPUs' effective bandwidth. On a CPU-only build
(llama-cpp-python's default) or without --gpu: runs everything on the CPU and calibrates the host; GPU
figures need a GPU build and a GPU. The model needs real weights (header-only files cannot run), and
llama.cpp through llama-cpp-python: pip install 'moeplace[profile]'.

{HARDWARE_HELP}

\b
Examples:
  moeplace bench Qwen3-30B-A3B-Q4_K_M.gguf -o calibration.json
  moeplace solve Qwen3-30B-A3B-Q4_K_M.gguf --vram 12G --calibration calibration.json
  moeplace bench Qwen3-30B-A3B-Q4_K_M.gguf --gpu rtx4090 --plans 3 --json
"""


@click.command("bench", help=_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--plans", "n_plans", type=click.IntRange(1, 10), default=1, show_default=True,
              help="How many plans to run (GPU builds), besides the baselines.")
@hardware_options
@context_options()
@click.option("-p", "--n-prompt", "n_prompt", type=click.IntRange(min=1, max=INT32_MAX), default=512, show_default=True,
              help="Prompt tokens per pp run.")
@click.option("-n", "--n-gen", "n_gen", type=click.IntRange(min=1, max=INT32_MAX), default=128, show_default=True,
              help="Generated tokens per tg run.")
@click.option("-r", "--repetitions", type=click.IntRange(1, 100), default=3, show_default=True,
              help="Runs of each test (after one warm-up).")
@click.option("-t", "--threads", type=click.IntRange(min=1, max=INT32_MAX), default=None,
              help="CPU threads (default: every core).")
@click.option("-d", "--depth", type=click.IntRange(min=0), default=0, show_default=True,
              help="Tokens already in the context for each test (llama-bench -d; needs --llama-bench).")
@click.option("--llama-bench", "llama_bench", type=click.Path(path_type=Path, dir_okay=False), default=None,
              metavar="PATH", help="Measure with your own llama-bench binary (any backend it was built with) "
                                   "instead of llama-cpp-python, with the flags moeplace emits.")
@click.option("-o", "--out", "out_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write (or update) the calibration file.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (schema moeplace.bench/1).")
@friendly_errors
def bench(model: Path, n_plans: int, gpus: tuple[str, ...], backend: str | None, ram: int | None,
          ram_bw: str | None, margin: int | None, calibration: Path | None, n_ctx: int, type_k: str, type_v: str,
          n_batch: int, n_ubatch: int, flash_attn: str, n_seq_max: int, kv_unified: bool, swa_full: bool,
          no_kv_offload: bool, no_op_offload: bool, n_prompt: int, n_gen: int, repetitions: int,
          threads: int | None, depth: int, llama_bench: Path | None, out_path: Path | None, as_json: bool) -> None:
    md = load_model(model)
    devices = devices_from(gpus, backend, ram, ram_bw, calibration, threads=threads)
    cfg = run_config_from(md, devices, n_ctx=n_ctx, type_k=type_k, type_v=type_v, n_batch=n_batch,
                          n_ubatch=n_ubatch, flash_attn=flash_attn, n_seq_max=n_seq_max, kv_unified=kv_unified,
                          swa_full=swa_full, no_kv_offload=no_kv_offload, no_op_offload=no_op_offload)
    if out_path is not None and out_path.exists():
        try:  # refuse to overwrite a file that is not a calibration, before running anything
            load_calibration(out_path)
        except CalibrationError as e:
            raise MoeplaceError(f"-o: {e}; it would be overwritten: give another path") from None
    timing = Timing(n_prompt, n_gen, repetitions, threads, depth, llama_bench)
    runs, measured, notes = run_bench(md, devices, cfg, n_plans=n_plans,
                                      margin=default_margin(devices, margin),
                                      timing=timing)
    on_gpu = len(devices) > 1 and (llama_bench is not None or bool(oracle.gpu_devices()))
    rows = [dataset_row(r, md, devices, cfg, timing) for r in runs]

    cal = Calibration(measured)
    if out_path is not None and measured:
        old = load_calibration(out_path) if out_path.exists() else Calibration({})
        save_calibration(old.merged(cal), out_path)

    report_detected()
    if as_json:
        doc = {"schema": "moeplace.bench/1", "model": md.name, "path": str(md.paths[0]), "engine": oracle.version(),
               "config": vars(cfg), "gpu": on_gpu, "runs": [_run_json(r) for r in runs],
               "calibration": calibration_dict(cal) if measured else None,
               "calibration_file": str(out_path) if out_path is not None and measured else None, "notes": notes,
               "dataset_rows": rows}
        click.echo(json.dumps(doc, indent=1, allow_nan=False))
        return
    out = [f"{md.name} ({md.arch}) in {runs[0].measured.engine}: context {cfg.n_ctx}, KV {cfg.type_k}/{cfg.type_v}, "
           f"ubatch {cfg.n_ubatch}, flash attention {'on' if cfg.flash_attn else 'off'}, "
           f"threads {runs[0].measured.n_threads}; pp {n_prompt} tokens, tg {n_gen} tokens at depth {depth}, "
           f"{repetitions} runs each", ""]
    out += table(["placement", "pp predicted", "pp measured", "tg predicted", "tg measured", "tg measured/pred"],
                  _rows(runs))
    out.append("")
    for name, m in measured.items():
        out.append(f"calibration: {name} effective bandwidth {m.bandwidth / GB:.2f} GB/s"
                   + (f", {m.flops / 1e9:.1f} GFLOP/s in prompt processing" if m.flops else ""))
    if out_path is not None and measured:
        out.append(f"written to {out_path} (use it with: moeplace solve MODEL --calibration {out_path})")
    for n in notes:
        out.append(f"note: {n}")
    out += ["", "rows in benchmarks/published/measurements.jsonl's format (add source_url where you publish them, "
                "and the RAM and PCIe facts moeplace was not told):"]
    out += [json.dumps(r) for r in rows]
    click.echo("\n".join(out))
