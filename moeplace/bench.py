"""Run placements in a real llama.cpp and compare measured tokens/s with moeplace's prediction; turn the
measurements into calibration (effective bandwidths per device). ``moeplace bench`` prints what this returns."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moeplace import oracle
from moeplace.calibration import DecodeSample, Measurement, gpu_bandwidths
from moeplace.calibration import host_bandwidth as measured_host_bandwidth
from moeplace.errors import MoeplaceError
from moeplace.hardware import GB, Device
from moeplace.infiles import parse_json
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
             n_gen: int, n_prompt: int | None = None, depth: int = 0) -> Estimate:
    # Generation runs from the depth; its mean KV read is at about half the tokens generated past it.
    return estimate(md, placement, cfg, devices, batch=1, n_past=depth + n_gen // 2, n_prompt=n_prompt, depth=depth)


# --- the user's own llama-bench ------------------------------------------------------------------------------


def llama_bench_args(binary: str | os.PathLike[str], model: str | os.PathLike[str], cfg: RunConfig, ngl: int,
                     tensor_split: Sequence[int] | None, overrides: Sequence[Override], *, n_prompt: int, n_gen: int,
                     depth: int, repetitions: int, threads: int | None) -> list[str]:
    """The llama-bench command that measures a placement with moeplace's flags: one configuration, ``-ot``
    items joined with ``;`` (llama-bench separates configurations with ``,``), JSON output."""
    args = [str(binary), "-m", str(model), "-ngl", str(ngl), "-p", str(n_prompt), "-n", str(n_gen), "-d", str(depth),
            "-b", str(cfg.n_batch), "-ub", str(cfg.n_ubatch), "-ctk", cfg.type_k, "-ctv", cfg.type_v,
            "-fa", "1" if cfg.flash_attn else "0", "-r", str(repetitions), "-o", "json"]
    if tensor_split:
        args += ["-ts", "/".join(str(x) for x in tensor_split)]
    if overrides:
        args += ["-ot", ";".join(o.arg() for o in overrides)]
    if cfg.no_kv_offload:
        args += ["-nkvo", "1"]
    if not cfg.op_offload:
        args += ["-nopo", "1"]
    if threads:
        args += ["-t", str(threads)]
    return args


def parse_llama_bench_json(text: str, origin: str = "llama-bench") -> oracle.EngineSpeed:
    """The pp and tg results of one llama-bench configuration (``-o json``: one object per test, ``avg_ts`` and
    ``samples_ts`` in tokens/s; a pp test has ``n_gen`` 0, a tg test ``n_prompt`` 0)."""
    tests = parse_json(text, origin, MoeplaceError, "was it run with -o json?")
    if not isinstance(tests, list) or not all(isinstance(t, dict) for t in tests):
        raise MoeplaceError(f"{origin} printed JSON that is not a list of tests")
    pp = [t for t in tests if t.get("n_prompt", 0) > 0 and t.get("n_gen", 0) == 0]
    tg = [t for t in tests if t.get("n_gen", 0) > 0 and t.get("n_prompt", 0) == 0]
    if len(pp) != 1 or len(tg) != 1:
        raise MoeplaceError(f"{origin} printed {len(pp)} prompt and {len(tg)} generation tests; expected one each")
    p, g = pp[0], tg[0]
    try:
        build = f"llama-bench build {g.get('build_number', '?')} ({g.get('build_commit', '?')})"
        if g.get("backends"):  # forks' llama-bench (ik_llama.cpp's) do not list them
            build += f", {g['backends']}"
        return oracle.EngineSpeed(
            pp_tps=float(p["avg_ts"]), tg_tps=float(g["avg_ts"]), n_prompt=int(p["n_prompt"]), n_gen=int(g["n_gen"]),
            repetitions=len(g.get("samples_ts") or [0]), n_threads=int(g.get("n_threads", 0)),
            pp_runs=tuple(float(x) for x in p.get("samples_ts") or [p["avg_ts"]]),
            tg_runs=tuple(float(x) for x in g.get("samples_ts") or [g["avg_ts"]]), engine=build)
    except (KeyError, TypeError, ValueError) as e:
        raise MoeplaceError(f"{origin} printed a test without {e}: not llama-bench's JSON") from None


def run_llama_bench(args: Sequence[str], timeout: float = 3600) -> oracle.EngineSpeed:
    """Runs a llama-bench command and reads its JSON."""
    try:
        done = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise MoeplaceError(f"--llama-bench {args[0]}: no such program") from None
    except PermissionError:
        raise MoeplaceError(f"--llama-bench {args[0]}: not executable") from None
    except subprocess.TimeoutExpired:
        raise MoeplaceError(f"{args[0]} ran longer than {timeout:.0f} s") from None
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise MoeplaceError(f"{args[0]} exited with code {done.returncode}: {tail[0]}")
    return parse_llama_bench_json(done.stdout, str(args[0]))


@dataclass(frozen=True)
class Timing:
    """What each placement is measured with."""

    n_prompt: int
    n_gen: int
    repetitions: int
    threads: int | None
    depth: int = 0
    llama_bench: Path | None = None  # the user's llama-bench; None: llama-cpp-python in this process


def run_placement(md: ModelDescription, name: str, placement: Placement, gpus: tuple[str, ...], cfg: RunConfig,
                  devices: dict[str, Device], timing: Timing) -> Run:
    expr = express(md, placement, gpus)
    if timing.llama_bench is not None:
        measured = run_llama_bench(llama_bench_args(
            timing.llama_bench, md.paths[0], cfg, expr.ngl, expr.tensor_split, expr.overrides,
            n_prompt=timing.n_prompt, n_gen=timing.n_gen, depth=timing.depth, repetitions=timing.repetitions,
            threads=timing.threads))
    else:
        measured = oracle.measure_speed(md.paths[0], cfg, expr.overrides, timing.n_prompt, timing.n_gen,
                                        n_gpu_layers=expr.ngl, tensor_split=expr.tensor_split,
                                        repetitions=timing.repetitions, n_threads=timing.threads)
    return Run(name, placement, _predict(md, placement, cfg, devices, timing.n_gen, timing.n_prompt, timing.depth),
               measured, expr.ngl, expr.tensor_split, expr.overrides)


def dataset_row(r: Run, md: ModelDescription, devices: dict[str, Device], cfg: RunConfig, timing: Timing
                ) -> dict[str, Any]:
    """A measurement in benchmarks/published/measurements.jsonl's format, ready to contribute (the source URL is
    where the user publishes it; hardware fields moeplace was not told stay null)."""
    host = devices[HOST]
    used = set(r.placement.tensor_devices.values())
    gpus = [d for d in devices.values() if not d.is_host and d.name in used]
    return {
        "id": f"{md.name}-{r.name}".lower().replace(" ", "-"), "source_url": None, "source_date": utc_now()[:10],
        "source_kind": "other", "engine": "llama.cpp", "build": r.measured.engine, "model": md.name,
        "quant": (md.file_type or "").removeprefix("MOSTLY_") or None,
        "file_gib": round(sum(t.nbytes for t in md.tensors) / 2**30, 2),
        "flags": {"ngl": r.ngl, "ot": [o.arg() for o in r.overrides], "n_cpu_moe": None, "cpu_moe": None,
                  "ts": ",".join(str(x) for x in r.tensor_split) if r.tensor_split else None, "ctx": None,
                  "ub": cfg.n_ubatch, "b": cfg.n_batch, "ctk": cfg.type_k, "ctv": cfg.type_v,
                  "fa": 1 if cfg.flash_attn else 0, "threads": r.measured.n_threads or timing.threads,
                  "mmap": None, "mlock": None, "other": []},
        "gpus": [{"name": g.label, "vram_gib": round(g.memory / 2**30, 1), "pcie_gen": None, "pcie_lanes": None,
                  "backend": g.backend.upper() if g.backend != "rocm" else "ROCm"} for g in gpus],
        "cpu": host_description(), "cpu_cores": host.cores or None, "numa_nodes": None, "ram_type": None,
        "ram_mts": None, "ram_channels": None, "ram_gib": round(host.memory / 2**30, 1),
        "test": {"tool": "llama-bench" if timing.llama_bench else "other", "pp_tokens": r.measured.n_prompt,
                 "tg_tokens": r.measured.n_gen, "depth": timing.depth},
        "pp_tps": round(r.measured.pp_tps, 2), "tg_tps": round(r.measured.tg_tps, 2), "pair_id": None,
        "varied": None, "confidence": "high",
        "note": f"moeplace bench, placement '{r.name}'; predicted pp {r.predicted.prefill.tokens_per_second:.1f}, "
                f"tg {r.predicted.tokens_per_second:.2f}",
    }


def _decode_bytes(md: ModelDescription, cfg: RunConfig, n_gen: int) -> float:
    """Bytes one generated token reads with every weight in one place: the speed model's count (its
    linearisation, :func:`moeplace.speed.tensor_costs`) plus the KV cache at the mean position."""
    return float(tensor_costs(md, cfg).decode_bytes.sum() + kv_read_bytes_per_layer(md, cfg, n_gen // 2).sum())


def _prompt_flops(md: ModelDescription, cfg: RunConfig) -> float:
    """FLOPs per prompt token (weights only; attention over a short prompt is small beside them)."""
    tc = tensor_costs(md, cfg)
    return float(tc.prefill_flops.sum()) / tc.n_ubatch


def _sample(r: Run, devices: dict[str, Device]) -> DecodeSample:
    """A run as the GPU fit sees it: predicted bytes per token per device (weights and KV), measured seconds, and
    as fixed seconds everything the prediction has beyond those bytes at each device's bandwidth (device
    switches, per-block overheads, a host's compute beyond its reading). A GPU's weights count as the bytes its
    kernels' costs make them (per type, routed experts at the expert efficiency), so the time they take scales
    with the one unknown, its bandwidth."""
    d = r.predicted.decode_batch1
    read = {n: b if devices[n].is_host else d.weight_seconds[n] * devices[n].effective_bandwidth
            for n, b in d.weight_bytes.items()}
    for name, b in d.kv_bytes.items():
        read[name] = read.get(name, 0.0) + b
    streaming = sum(b / devices[n].effective_bandwidth for n, b in read.items())
    return DecodeSample(read, d.seconds - streaming, 1.0 / r.measured.tg_tps)


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


def bench_gpus(md: ModelDescription, devices: dict[str, Device], cfg: RunConfig, gpu_names: tuple[str, ...],
                build_gpus: tuple[str, ...], n_plans: int, margin: int, timing: Timing
                ) -> tuple[list[Run], dict[str, Measurement], list[str]]:
    """A GPU build with GPUs described: the plans and baselines, and the GPUs' bandwidths fitted to them."""
    missing = [g for g in gpu_names if g not in build_gpus]
    if missing:
        raise MoeplaceError(f"--gpu describes {', '.join(missing)} but this llama.cpp build sees "
                            f"{', '.join(build_gpus)}: describe the GPUs llama.cpp sees, in its order")
    host = devices[HOST]
    runs = [run_placement(md, name, placement, gpu_names, cfg, devices, timing)
            for name, placement in candidates(md, devices, cfg, n_plans, margin)]
    measured = {
        name: Measurement(bandwidth=bw, label=devices[name].label, measured=utc_now(), where=host_description(),
                          how=(f"moeplace bench: {md.name}, {len(runs)} placements, one efficiency shared by the "
                               f"GPUs, host at {host.effective_bandwidth / GB:.1f} GB/s effective; "
                               f"{runs[0].measured.engine}"))
        for name, bw in gpu_bandwidths([_sample(r, devices) for r in runs], devices).items()}
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
                     "CPU-only placement; GPU figures need a GPU build (or --llama-bench with one) and a GPU")
    else:
        notes.append("CPU only: GPU figures need a GPU build of llama-cpp-python, a GPU and --gpu")
    if n_plans > 1:
        notes.append("--plans applies to GPU placements; the CPU-only placement was run once")
    run = run_placement(md, "CPU only (-ngl 0)", all_on(md, HOST), (), cfg, {HOST: host}, timing)
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
    gpu_names = tuple(n for n in devices if n != HOST)
    if timing.llama_bench is not None:
        # The user's binary: trust --gpu to describe what it sees (llama-bench --list-devices shows it).
        if gpu_names:
            return bench_gpus(md, devices, cfg, gpu_names, gpu_names, n_plans, margin, timing)
        return bench_cpu(md, devices[HOST], cfg, False, n_plans, timing)
    if timing.depth:
        raise MoeplaceError("-d/--depth needs --llama-bench: llama-cpp-python measures from an empty context")
    if not oracle.available():
        raise MoeplaceError(f"bench runs the model in llama.cpp, which is not available: {oracle.unavailable_reason()}"
                            "; or give your own llama-bench with --llama-bench PATH")
    build_gpus = oracle.gpu_devices()
    if gpu_names and build_gpus:
        return bench_gpus(md, devices, cfg, gpu_names, build_gpus, n_plans, margin, timing)
    return bench_cpu(md, devices[HOST], cfg, bool(gpu_names), n_plans, timing)
