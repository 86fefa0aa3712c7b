"""Run placements in a real llama.cpp and compare measured tokens/s with moeplace's prediction; turn the
measurements into calibration (effective bandwidths per device). ``moeplace bench`` prints what this returns."""

from __future__ import annotations

import os
import platform
import socket
from dataclasses import dataclass
from pathlib import Path

from moeplace import oracle
from moeplace.calibration import DecodeSample, Measurement, gpu_bandwidths
from moeplace.calibration import host_bandwidth as measured_host_bandwidth
from moeplace.errors import MoeplaceError
from moeplace.hardware import GB, Device
from moeplace.llamacpp import Override, express
from moeplace.memory import RunConfig
from moeplace.model import ModelDescription
from moeplace.placement import HOST, Placement, all_on
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
    measured: oracle.EngineSpeed
    ngl: int
    tensor_split: tuple[int, ...] | None
    overrides: tuple[Override, ...]


def host_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{socket.gethostname()}, {cpu}, {os.cpu_count()} logical cores, {platform.system()}"


def candidates(md: ModelDescription, devices: dict[str, Device], cfg: RunConfig, n_plans: int, margin: int
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


def run_placement(md: ModelDescription, name: str, placement: Placement, gpus: tuple[str, ...], cfg: RunConfig,
         devices: dict[str, Device], n_prompt: int, n_gen: int, repetitions: int, threads: int | None) -> Run:
    expr = express(md, placement, gpus)
    measured = oracle.measure_speed(md.paths[0], cfg, expr.overrides, n_prompt, n_gen, n_gpu_layers=expr.ngl,
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
                       where=host_description(), how=how, notes=tuple(notes))


Timing = tuple[int, int, int, int | None]  # prompt tokens, generated tokens, repetitions, threads


def bench_gpus(md: ModelDescription, devices: dict[str, Device], cfg: RunConfig, gpu_names: tuple[str, ...],
                build_gpus: tuple[str, ...], n_plans: int, margin: int, timing: Timing
                ) -> tuple[list[Run], dict[str, Measurement], list[str]]:
    """A GPU build with GPUs described: the plans and baselines, and the GPUs' bandwidths fitted to them."""
    missing = [g for g in gpu_names if g not in build_gpus]
    if missing:
        raise MoeplaceError(f"--gpu describes {', '.join(missing)} but this llama.cpp build sees "
                            f"{', '.join(build_gpus)}: describe the GPUs llama.cpp sees, in its order")
    host = devices[HOST]
    runs = [run_placement(md, name, placement, gpu_names, cfg, devices, *timing)
            for name, placement in candidates(md, devices, cfg, n_plans, margin)]
    measured = {
        name: Measurement(bandwidth=bw, label=devices[name].label, measured=utc_now(), where=host_description(),
                          how=(f"moeplace bench: {md.name}, {len(runs)} placements, one efficiency shared by the "
                               f"GPUs, host at {host.effective_bandwidth / GB:.1f} GB/s effective; "
                               f"{oracle.version()}"))
        for name, bw in gpu_bandwidths([_sample(r) for r in runs], devices).items()}
    notes = ["GPU bandwidths assume the host's effective bandwidth shown; calibrate the host first (moeplace "
             "bench without --gpu) and pass --calibration for a measured one"]
    if not measured:
        notes.append("no run left time for the GPUs after the host's share: no GPU bandwidth could be fitted")
    return runs, measured, notes


def bench_cpu(md: ModelDescription, host: Device, cfg: RunConfig, gpus_given: bool, n_plans: int,
               timing: Timing) -> tuple[list[Run], dict[str, Measurement], list[str]]:
    """A CPU-only build, or no GPU described: everything on the CPU, and the host's bandwidth."""
    notes = []
    if gpus_given:
        notes.append(f"--gpu given, but this llama.cpp build has no GPU backend ({oracle.version()}): ran the "
                     "CPU-only placement; GPU figures need a GPU build of llama-cpp-python and a GPU")
    else:
        notes.append("CPU only: GPU figures need a GPU build of llama-cpp-python, a GPU and --gpu")
    if n_plans > 1:
        notes.append("--plans applies to GPU placements; the CPU-only placement was run once")
    run = run_placement(md, "CPU only (-ngl 0)", all_on(md, HOST), (), cfg, {HOST: host}, *timing)
    m = _cpu_calibration(md, cfg, run, host)
    return [run], {HOST: m}, [*notes, *m.notes]


def run_bench(md: ModelDescription, devices: dict[str, Device], cfg: RunConfig, *, n_plans: int = 1,
              margin: int, timing: Timing) -> tuple[list[Run], dict[str, Measurement], list[str]]:
    """Benchmarks ``md`` in llama.cpp: with a GPU build and GPUs described, the plans and baselines (and fitted
    GPU bandwidths); otherwise the CPU-only placement (and the host's bandwidth). Returns the runs, the
    measurements for a calibration file, and notes for the user."""
    sparse = oracle.sparse_files(md.paths)
    if sparse:
        raise MoeplaceError(f"{sparse[0]} is header-only (a sparse file without its weights): it can be planned "
                            "but not benchmarked; bench a model with real weights")
    if not oracle.available():
        raise MoeplaceError(f"bench runs the model in llama.cpp, which is not available: {oracle.unavailable_reason()}")
    gpu_names = tuple(n for n in devices if n != HOST)
    build_gpus = oracle.gpu_devices()
    if gpu_names and build_gpus:
        return bench_gpus(md, devices, cfg, gpu_names, build_gpus, n_plans, margin, timing)
    return bench_cpu(md, devices[HOST], cfg, bool(gpu_names), n_plans, timing)
