"""Times `moeplace solve` on the DeepSeek-V3 shape (9 header-only shards) and prints predicted decode tokens/s of
the plan against each baseline for a grid of VRAM sizes and models.

    python benchmarks/bench_solve.py

Goal: solve < 1 s of work beyond interpreter start-up. The speeds are predictions of moeplace's bandwidth model
(RAM: dual-channel DDR5-6000, 128 GiB; context 8192), not measurements.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from moeplace.hardware import device_set, host_device, parse_gpus
from moeplace.memory import RunConfig
from moeplace.model import load_model
from moeplace.planner import plan
from moeplace.testing import write_model

GRID = [["8G"], ["12G"], ["16G"], ["24G"], ["24G", "24G"], ["24G", "12G"]]
MODELS = ["qwen3-30b-a3b", "gpt-oss-120b", "glm-4.5-air", "deepseek-v3-split"]


def wall(cmd: list[str], repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        paths = {name: write_model(name, Path(d) / f"{name}.gguf")[0] for name in MODELS}
        ds = str(paths["deepseek-v3-split"])
        base = wall([sys.executable, "-c", "import moeplace.cli"])
        full = wall([sys.executable, "-m", "moeplace.cli", "solve", ds, "--vram", "24G", "--ram", "512G",
                     "--no-scripts"])
        print(f"solve DeepSeek-V3 (9 shards) on 24G: {full:.2f} s wall, interpreter + imports {base:.2f} s, "
              f"work beyond start-up {full - base:.2f} s (goal < 1 s)\n")
        print(f"{'model':18s} {'VRAM':10s} {'plan':>7s} {'n-cpu-moe':>14s} {'cpu-moe':>8s} {'fit':>14s}  solve ms")
        for name in MODELS:
            m = load_model(paths[name])
            for specs in GRID:
                gpus = parse_gpus(specs)
                devs = device_set(gpus, host_device(128 << 30, "ddr5-6000x2", gpus))
                t = time.perf_counter()
                p = plan(m, devs, RunConfig(n_ctx=8192))
                ms = 1000 * (time.perf_counter() - t)
                cells = {b.name.split()[0]: (b.name, b) for b in p.baselines}

                def cell(key: str, width: int, cells: dict = cells) -> str:
                    if key not in cells:
                        return "-".rjust(width)
                    label, b = cells[key]
                    n = label.split()[1] if " " in label else ""
                    text = f"{b.decode_tps:.2f}{'' if b.fits else '!'}" + (f" (N={n})" if n else "")
                    return text.rjust(width)

                print(f"{name:18s} {'+'.join(specs):10s} {p.chosen.decode_tps:7.2f} {cell('--n-cpu-moe', 14)} "
                      f"{cell('--cpu-moe', 8)} {cell('--fit', 14)}  {ms:6.0f}")
        print("\n! = does not fit (over a GPU's memory less the margin); tokens/s are predicted decode speeds")


if __name__ == "__main__":
    main()
