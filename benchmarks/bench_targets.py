"""Prints, per engine, what it can run of the plan: predicted decode tokens/s of the full plan beside each
target's own configuration (LM Studio's and Ollama's nearest layer settings, KTransformers' per-expert placement),
and the seconds each target's emission takes. The README's `solve --target` table comes from the first row.

    python benchmarks/bench_targets.py

The speeds are predictions of moeplace's bandwidth model (one GPU, dual-channel DDR5-6000, context 32768, no
routing profile), not measurements.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from moeplace.emit.args import RunSettings
from moeplace.hardware import device_set, host_device, parse_gpus
from moeplace.memory import RunConfig
from moeplace.model import load_model
from moeplace.planner import plan
from moeplace.targets.ktransformers import plan_experts
from moeplace.targets.registry import TARGETS, get_target
from moeplace.testing import write_model

CASES = [("qwen3-30b-a3b", "rtx3060", 32), ("qwen3-30b-a3b", "rtx4090", 32), ("gpt-oss-120b", "rtx4090", 128),
         ("glm-4.5-air", "rtx4060ti16g", 128)]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for name, gpu, ram_gib in CASES:
            model = load_model(write_model(name, Path(tmp) / f"{name}.gguf")[0])
            gpus = parse_gpus([gpu])
            devices = device_set(gpus, host_device(ram_gib << 30, "ddr5-6000x2", gpus))
            cfg = RunConfig(n_ctx=32768)
            row = [f"{name} on {gpu} + {ram_gib} GiB"]
            base = plan(model, devices, cfg)
            row.append(f"plan {base.chosen.decode_tps:.1f}")
            for t_name in TARGETS:
                if t_name == "llama.cpp":
                    continue
                target = get_target(t_name)
                t0 = time.perf_counter()
                p = plan(model, devices, cfg, target=target)
                e = target.emit(p, RunSettings(model_path=model.paths[0], n_ctx=32768, devices=(gpus[0].name,)),
                                target.default_build(), Path(tmp))
                dt = time.perf_counter() - t0
                if e.approximation is not None:
                    row.append(f"{t_name} {e.approximation.decode_tps:.1f} ({dt:.1f} s)")
                elif t_name == "ktransformers":
                    ep = plan_experts(p)
                    row.append(f"{t_name} {ep.decode_tps:.1f} vs uniform {ep.uniform_tps:.1f} ({dt:.1f} s)")
                else:
                    row.append(f"{t_name} = plan ({dt:.1f} s)")
            print(" | ".join(row), flush=True)


if __name__ == "__main__":
    main()
