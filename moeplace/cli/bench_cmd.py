"""``moeplace bench``: run placements in a real llama.cpp, print measured tokens/s beside predicted, and write a
calibration file of the effective bandwidths measured."""

from __future__ import annotations

import json
import os
import platform
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from moeplace import engine
from moeplace.calibration import Calibration, CalibrationError, DecodeSample, Measurement, gpu_bandwidths
from moeplace.calibration import host_bandwidth as measured_host_bandwidth
from moeplace.calibration import load as load_calibration
from moeplace.calibration import save as save_calibration
from moeplace.calibration import to_dict as calibration_dict
from moeplace.cli import friendly_errors
from moeplace.cli.options import HARDWARE_HELP, context_options, devices_from, hardware_options, run_config_from
from moeplace.errors import MoeplaceError
from moeplace.hardware import GB, HOST_NAME, Device
from moeplace.llamacpp import Override, express
from moeplace.memory import DEFAULT_MARGIN, RunConfig
from moeplace.model import ModelDescription, load_model
from moeplace.placement import Placement, all_on
from moeplace.planner import PlanError, plan
from moeplace.routing import utc_now
from moeplace.sizes import format_size
from moeplace.speed import Estimate, estimate, kv_read_bytes_per_layer, tensor_costs

# Below this many bytes read per generated token, per-token overheads (graph building, thread synchronisation)
# and CPU caches dominate, and the bandwidth measured says little about a real model.
SMALL_MODEL_BYTES = 256 << 20
# `--plans N` draws the N plans from successively larger safety margins: each more conservative than the last.
PLAN_MARGIN_STEP = 512 << 20


@dataclass(frozen=True)
class Run:
    """One placement, predicted and measured."""

    name: str
    placement: Placement
    predicted: Estimate
    measured: engine.EngineSpeed
    ngl: int
    tensor_split: tuple[int, ...] | None
    overrides: tuple[Override, ...]


def _host_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{socket.gethostname()}, {cpu}, {os.cpu_count()} logical cores, {platform.system()}"


def _candidates(md: ModelDescription, devices: dict[str, Device], cfg: RunConfig, n_plans: int, margin: int
                ) -> list[tuple[str, Placement]]:
    """The best plan at the given margin, up to ``n_plans - 1`` more at larger margins (distinct placements
    only), and the baselines that fit."""
    out: list[tuple[str, Placement]] = []
    first = None
    for k in range(n_plans):
        m = margin + k * PLAN_MARGIN_STEP
        try:
            p = plan(md, devices, cfg, margin=m)
        except PlanError:
            break
        first = first or p
        if not any(p.placement == q for _, q in out):
            out.append((f"plan (margin {format_size(m)})", p.placement))
    if first is None:
        raise MoeplaceError("no plan fits these devices: run moeplace solve with the same options to see why")
    out += [(b.name, b.placement) for b in first.baselines if b.fits]
    return out


def _predict(md: ModelDescription, placement: Placement, cfg: RunConfig, devices: dict[str, Device],
             n_gen: int) -> Estimate:
    # Generation runs from an empty context; its mean KV read is at about half the tokens generated.
    return estimate(md, placement, cfg, devices, batch=1, n_past=n_gen // 2)


def _run(md: ModelDescription, name: str, placement: Placement, gpus: tuple[str, ...], cfg: RunConfig,
         devices: dict[str, Device], n_prompt: int, n_gen: int, repetitions: int, threads: int | None) -> Run:
    expr = express(md, placement, gpus)
    measured = engine.measure_speed(md.paths[0], cfg, expr.overrides, n_prompt, n_gen, n_gpu_layers=expr.ngl,
                                    tensor_split=expr.tensor_split, repetitions=repetitions, n_threads=threads)
    return Run(name, placement, _predict(md, placement, cfg, devices, n_gen), measured, expr.ngl,
               expr.tensor_split, expr.overrides)


def _decode_bytes(md: ModelDescription, cfg: RunConfig, n_gen: int) -> float:
    """Bytes one generated token reads with every weight in one place: the speed model's count (its
    linearisation, :func:`moeplace.speed.tensor_costs`) plus the KV cache at the mean position."""
    return float(tensor_costs(md, cfg).decode_bytes.sum() + kv_read_bytes_per_layer(md, cfg, n_gen // 2).sum())


def _prompt_flops(md: ModelDescription, cfg: RunConfig) -> float:
    """FLOPs per prompt token (weights only; attention over a short prompt is small beside them)."""
    tc = tensor_costs(md, cfg)
    return float(tc.prefill_flops.sum()) / tc.n_ubatch


def _sample(r: Run) -> DecodeSample:
    """A run as the GPU fit sees it: predicted bytes per token per device (weights and KV), measured seconds."""
    d = r.predicted.decode_batch1
    read = dict(d.weight_bytes)
    for name, b in d.kv_bytes.items():
        read[name] = read.get(name, 0.0) + b
    return DecodeSample(read, d.switch_seconds, 1.0 / r.measured.tg_tps)


def _cpu_calibration(md: ModelDescription, cfg: RunConfig, run: Run, host: Device) -> Measurement:
    """The host's measurement from the CPU-only run: bytes per token (speed model) x measured tokens/s."""
    per_token = _decode_bytes(md, cfg, run.measured.n_gen)
    bw = measured_host_bandwidth(per_token, run.measured.tg_tps)
    flops = _prompt_flops(md, cfg) * run.measured.pp_tps
    how = (f"moeplace bench: {md.name} all on the CPU (-ngl 0), {run.measured.n_gen} generated tokens x "
           f"{run.measured.repetitions} runs at {run.measured.tg_tps:.2f} tok/s x {format_size(per_token)} read per "
           f"token; prompt {run.measured.n_prompt} tokens at {run.measured.pp_tps:.1f} tok/s; threads "
           f"{run.measured.n_threads}; {run.measured.engine}")
    notes = []
    if per_token < SMALL_MODEL_BYTES:
        notes.append(f"measured on a small model ({format_size(per_token)} per token): per-token overhead and CPU "
                     "caches dominate, so this understates the RAM bandwidth; calibrate with a model of several GiB")
    return Measurement(bandwidth=bw, flops=flops if flops > 0 else None, label=host.label, measured=utc_now(),
                       where=_host_description(), how=how, notes=tuple(notes))


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
            for r in [headers, *rows]]


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


Timing = tuple[int, int, int, int | None]  # prompt tokens, generated tokens, repetitions, threads


def _bench_gpus(md: ModelDescription, devices: dict[str, Device], cfg: RunConfig, gpu_names: tuple[str, ...],
                build_gpus: tuple[str, ...], n_plans: int, margin: int, timing: Timing
                ) -> tuple[list[Run], dict[str, Measurement], list[str]]:
    """A GPU build with GPUs described: the plans and baselines, and the GPUs' bandwidths fitted to them."""
    missing = [g for g in gpu_names if g not in build_gpus]
    if missing:
        raise MoeplaceError(f"--gpu describes {', '.join(missing)} but this llama.cpp build sees "
                            f"{', '.join(build_gpus)}: describe the GPUs llama.cpp sees, in its order")
    host = devices[HOST_NAME]
    runs = [_run(md, name, placement, gpu_names, cfg, devices, *timing)
            for name, placement in _candidates(md, devices, cfg, n_plans, margin)]
    measured = {
        name: Measurement(bandwidth=bw, label=devices[name].label, measured=utc_now(), where=_host_description(),
                          how=(f"moeplace bench: {md.name}, {len(runs)} placements, one efficiency shared by the "
                               f"GPUs, host at {host.effective_bandwidth / GB:.1f} GB/s effective; "
                               f"{engine.version()}"))
        for name, bw in gpu_bandwidths([_sample(r) for r in runs], devices).items()}
    notes = ["GPU bandwidths assume the host's effective bandwidth shown; calibrate the host first (moeplace "
             "bench without --gpu) and pass --calibration for a measured one"]
    if not measured:
        notes.append("no run left time for the GPUs after the host's share: no GPU bandwidth could be fitted")
    return runs, measured, notes


def _bench_cpu(md: ModelDescription, host: Device, cfg: RunConfig, gpus_given: bool, n_plans: int,
               timing: Timing) -> tuple[list[Run], dict[str, Measurement], list[str]]:
    """A CPU-only build, or no GPU described: everything on the CPU, and the host's bandwidth."""
    notes = []
    if gpus_given:
        notes.append(f"--gpu given, but this llama.cpp build has no GPU backend ({engine.version()}): ran the "
                     "CPU-only placement; GPU figures need a GPU build of llama-cpp-python and a GPU")
    else:
        notes.append("CPU only: GPU figures need a GPU build of llama-cpp-python, a GPU and --gpu")
    if n_plans > 1:
        notes.append("--plans applies to GPU placements; the CPU-only placement was run once")
    run = _run(md, "CPU only (-ngl 0)", all_on(md, HOST_NAME), (), cfg, {HOST_NAME: host}, *timing)
    m = _cpu_calibration(md, cfg, run, host)
    return [run], {HOST_NAME: m}, [*notes, *m.notes]


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
@click.option("-p", "--n-prompt", "n_prompt", type=click.IntRange(min=1), default=512, show_default=True,
              help="Prompt tokens per pp run.")
@click.option("-n", "--n-gen", "n_gen", type=click.IntRange(min=1), default=128, show_default=True,
              help="Generated tokens per tg run.")
@click.option("-r", "--repetitions", type=click.IntRange(1, 100), default=3, show_default=True,
              help="Runs of each test (after one warm-up).")
@click.option("-t", "--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads (default: every core).")
@click.option("-o", "--out", "out_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write (or update) the calibration file.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (schema moeplace.bench/1).")
@friendly_errors
def bench(model: Path, n_plans: int, gpus: tuple[str, ...], backend: str | None, ram: int | None,
          ram_bw: str | None, margin: int | None, calibration: Path | None, n_ctx: int, type_k: str, type_v: str,
          n_batch: int, n_ubatch: int, flash_attn: str, n_seq_max: int, kv_unified: bool, swa_full: bool,
          no_kv_offload: bool, no_op_offload: bool, n_prompt: int, n_gen: int, repetitions: int,
          threads: int | None, out_path: Path | None, as_json: bool) -> None:
    md = load_model(model)
    sparse = engine.sparse_files(md.paths)
    if sparse:
        raise MoeplaceError(f"{sparse[0]} is header-only (a sparse file without its weights): it can be planned "
                            "but not benchmarked; bench a model with real weights")
    if not engine.available():
        raise MoeplaceError(f"bench runs the model in llama.cpp, which is not available: {engine.unavailable_reason()}")
    devices = devices_from(gpus, backend, ram, ram_bw, calibration)
    cfg = run_config_from(md, devices, n_ctx=n_ctx, type_k=type_k, type_v=type_v, n_batch=n_batch,
                          n_ubatch=n_ubatch, flash_attn=flash_attn, n_seq_max=n_seq_max, kv_unified=kv_unified,
                          swa_full=swa_full, no_kv_offload=no_kv_offload, no_op_offload=no_op_offload)
    if out_path is not None and out_path.exists():
        try:  # refuse to overwrite a file that is not a calibration, before running anything
            load_calibration(out_path)
        except CalibrationError as e:
            raise MoeplaceError(f"-o: {e}; it would be overwritten: give another path") from None
    gpu_names = tuple(n for n in devices if n != HOST_NAME)
    build_gpus = engine.gpu_devices()
    timing = (n_prompt, n_gen, repetitions, threads)
    if gpu_names and build_gpus:
        runs, measured, notes = _bench_gpus(md, devices, cfg, gpu_names, build_gpus, n_plans,
                                            DEFAULT_MARGIN if margin is None else margin, timing)
    else:
        runs, measured, notes = _bench_cpu(md, devices[HOST_NAME], cfg, bool(gpu_names), n_plans, timing)

    cal = Calibration(measured)
    if out_path is not None and measured:
        old = load_calibration(out_path) if out_path.exists() else Calibration({})
        save_calibration(old.merged(cal), out_path)

    if as_json:
        doc = {"schema": "moeplace.bench/1", "model": md.name, "path": str(md.paths[0]), "engine": engine.version(),
               "config": vars(cfg), "gpu": bool(gpu_names and build_gpus), "runs": [_run_json(r) for r in runs],
               "calibration": calibration_dict(cal) if measured else None,
               "calibration_file": str(out_path) if out_path is not None and measured else None, "notes": notes}
        click.echo(json.dumps(doc, indent=1))
        return
    out = [f"{md.name} ({md.arch}) in {engine.version()}: context {cfg.n_ctx}, KV {cfg.type_k}/{cfg.type_v}, "
           f"ubatch {cfg.n_ubatch}, flash attention {'on' if cfg.flash_attn else 'off'}, "
           f"threads {runs[0].measured.n_threads}; pp {n_prompt} tokens, tg {n_gen} tokens, {repetitions} runs each",
           ""]
    out += _table(["placement", "pp predicted", "pp measured", "tg predicted", "tg measured", "tg measured/pred"],
                  _rows(runs))
    out.append("")
    for name, m in measured.items():
        out.append(f"calibration: {name} effective bandwidth {m.bandwidth / GB:.2f} GB/s"
                   + (f", {m.flops / 1e9:.1f} GFLOP/s in prompt processing" if m.flops else ""))
    if out_path is not None and measured:
        out.append(f"written to {out_path} (use it with: moeplace solve MODEL --calibration {out_path})")
    for n in notes:
        out.append(f"note: {n}")
    click.echo("\n".join(out))
