"""A short speed comparison on a real GPU: moeplace's plan against llama.cpp's own options, measured.

    python benchmarks/gpu_oracle.py [--model qwen3-30b-a3b] [--vram 12G] [--out docs/gpu-oracle.md]

Run it with the interpreter of a GPU build of llama-cpp-python (``benchmarks/gpu_oracle.sh`` builds one and runs
this). It writes the factory's full-scale model at its real size with random weights (the header-only file,
then its data region filled with random bytes below 0x3C, so every f16/f32 value in it is finite), then plans it
for the first GPU of the build with ``--vram`` as the budget (default: the GPU's free memory less 1 GiB, at most
12 GiB so that placement matters on large cards), and measures in llama.cpp, timed like llama-bench (pp512, tg64,
best of the repetitions): the plan, ``--fit`` (moeplace's port of fit.cpp), ``--cpu-moe`` and a sweep of
``--n-cpu-moe`` from the smallest count that fits. The table (measured beside predicted tokens/s) is written into
``--out``'s section for the device. Nothing here is measured until someone runs it on a GPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from moeplace import oracle
from moeplace.gguf_file import read_gguf
from moeplace.hardware import BACKEND_PREFIX, device_set, host_device, parse_gpus
from moeplace.llamacpp import cpu_moe_placement, express, n_cpu_moe_placement
from moeplace.memory import RunConfig, gpu_fits, memory_by_device
from moeplace.model import load_model
from moeplace.placement import Placement
from moeplace.planner import plan
from moeplace.sizes import GIB, format_size, parse_size
from moeplace.speed import estimate
from moeplace.testing import FULL, TINY, write_model

ROOT = Path(__file__).resolve().parent.parent

SECTION = "<!-- gpu_oracle.py: {device} -->"


def write_random(name: str, path: Path) -> Path:
    """The factory model ``name`` with data: a tiny one as the factory writes it; a full-scale one as its
    header-only file with the data region filled with random bytes (fast: nothing is quantised)."""
    first = write_model(name, path)[0]
    if name in TINY:
        return first
    start = min(t.offset for t in read_gguf(first).tensors)
    left = first.stat().st_size - start
    rng = np.random.default_rng(0)
    with open(first, "r+b") as f:
        f.seek(start)
        while left > 0:
            n = min(64 << 20, left)
            f.write(rng.integers(0, 0x3C, size=n, dtype=np.uint8).tobytes())
            left -= n
    return first


def device_of_build() -> tuple[str, str, int]:
    """The first GPU of this build: its buffer name, its description and its free memory."""
    found = oracle.device_info()
    if not found:
        sys.exit(f"gpu_oracle: this llama.cpp build sees no GPU ({oracle.version()})")
    d = found[0]
    return d.name, d.description, d.memory_free


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen3-30b-a3b", choices=[*TINY, *FULL])
    ap.add_argument("--vram", default=None, help="the budget to plan for (default: free memory less 1 GiB, <= 12G)")
    ap.add_argument("--ram-bw", default="ddr5-4800x2", help="the host's RAM bandwidth for the predictions")
    ap.add_argument("--sweep", type=int, default=3, help="--n-cpu-moe values measured from the smallest that fits")
    ap.add_argument("-r", "--repetitions", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "gpu-oracle.md")
    ap.add_argument("--stdout", action="store_true")
    args = ap.parse_args()
    if not oracle.available():
        sys.exit(f"gpu_oracle: {oracle.unavailable_reason()}")
    name, description, free = device_of_build()
    prefix = name.rstrip("0123456789")
    backend = next((b for b, p in BACKEND_PREFIX.items() if p == prefix), "cuda")
    budget = parse_size(args.vram) if args.vram else max(GIB, min(12 * GIB, free - GIB))
    gpu = replace(parse_gpus([f"{backend}:{budget / GIB:.3f}G"])[0], name=name, label=description)
    if backend == "vulkan":  # ask the device, not the preset, for the largest tensor it takes
        gpu = replace(gpu, max_tensor=oracle.device_info()[0].largest_tensor or 0)
    devices = device_set([gpu], host_device(None, args.ram_bw))
    cfg = RunConfig(n_ctx=4096)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=os.environ.get("MOEPLACE_TMP")) as d:
        path = write_random(args.model, Path(d) / f"{args.model}.gguf")
        model = load_model(path)
        print(f"gpu_oracle: wrote {args.model} with random weights ({format_size(model.loaded_bytes)}) in "
              f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)
        p = plan(model, devices, cfg)
        runs: list[tuple[str, Placement]] = [("moeplace plan", p.placement)]
        runs += [(b.name, b.placement) for b in p.baselines if b.name in ("--fit", "--cpu-moe")]

        def fits(pl: Placement) -> bool:
            return all(f.fits for f in gpu_fits(memory_by_device(model, pl, cfg, devices), devices).values())

        if model.is_moe:
            n0 = next((n for n in range(model.hparams.n_layer + 1)
                       if fits(n_cpu_moe_placement(model, n, [name]))), model.hparams.n_layer)
            step = max(1, model.hparams.n_layer // 12)
            runs += [(f"--n-cpu-moe {n}", n_cpu_moe_placement(model, n, [name]))
                     for n in range(n0, min(model.hparams.n_layer, n0 + step * args.sweep) + 1, step)][: args.sweep]
            if not any(label == "--cpu-moe" for label, _ in runs):
                runs.append(("--cpu-moe", cpu_moe_placement(model, [name])))
        rows = []
        for label, placement in runs:
            expr = express(model, placement, [name])
            predicted = estimate(model, placement, cfg, devices, batch=1, n_past=32)
            try:
                got = oracle.measure_speed(path, cfg, expr.overrides, 512, 64, n_gpu_layers=expr.ngl,
                                           repetitions=args.repetitions)
                measured = (max(got.pp_runs), max(got.tg_runs))
            except oracle.EngineError as e:
                measured = None
                print(f"gpu_oracle: {label}: {e}", file=sys.stderr)
            # a placement may leave the GPU empty (a tiny model plans faster on the host: per-block GPU costs)
            used = predicted.memory[name].total if name in predicted.memory else 0
            rows.append((label, predicted.tokens_per_second, predicted.prefill.tokens_per_second, measured, used))
            print(f"gpu_oracle: {label}: {measured}", file=sys.stderr)
    lines = [SECTION.format(device=name), "", f"## {name}: {description}", "",
             f"{args.model} with random weights, `-c 4096 -fa on`, planned for {format_size(budget)} of "
             f"{name} and a host at {args.ram_bw}; measured with {oracle.version()} (pp512 and tg64, best of "
             f"{args.repetitions}); predicted figures are moeplace's speed model. Run by `benchmarks/gpu_oracle.py`.",
             "", "| placement | predicted tg tok/s | measured tg tok/s | predicted pp tok/s | measured pp tok/s | "
             f"{name} memory (moeplace) |", "|---|---:|---:|---:|---:|---:|"]
    for label, tg_p, pp_p, m, mem in rows:
        tg_m, pp_m = (f"{m[1]:.2f}", f"{m[0]:.1f}") if m else ("failed", "failed")
        lines.append(f"| {label} | {tg_p:.2f} | {tg_m} | {pp_p:.1f} | {pp_m} | {format_size(mem)} |")
    text = "\n".join(lines) + "\n"
    if args.stdout:
        print(text)
        return 0
    old = args.out.read_text(encoding="utf-8") if args.out.exists() else "# Speed on a real GPU\n"
    marker = SECTION.format(device=name)
    head, _, rest = old.partition(marker)
    tail = rest[rest.find("<!-- gpu_oracle.py:"):] if "<!-- gpu_oracle.py:" in rest else ""
    args.out.write_text(head.rstrip("\n") + "\n\n" + text + ("\n" + tail if tail else ""), encoding="utf-8")
    print(f"wrote {args.out} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

