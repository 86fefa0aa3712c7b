"""How fast the memory and speed model is.

    python benchmarks/bench_estimate.py                  estimate() calls per second on DeepSeek-V3

It writes the factory's full-scale (header-only, sparse) DeepSeek-V3 to a temporary directory and
times ``estimate`` the way a solver calls it: a TensorTable built once, a routing matrix normalised once.

How close its memory figures are to llama.cpp's is benchmarks/memory_oracle.py's job (docs/memory-oracle.md).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from moeplace.cli.estimate_cmd import build_placement
from moeplace.hardware import device_set, host_device, parse_gpus
from moeplace.memory import RunConfig, memory_by_device
from moeplace.model import load_model
from moeplace.sizes import GIB
from moeplace.speed import TensorTable, estimate, routing_matrix, tensor_costs
from moeplace.testing import write_model


def _rate(fn, seconds: float = 1.5) -> float:
    """Calls per second of ``fn`` over about ``seconds``."""
    fn()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return n / (time.perf_counter() - t0)


def bench_speed(workdir: Path) -> None:
    path = write_model("deepseek-v3", workdir / "deepseek-v3.gguf")[0]
    model = load_model(path)
    gpus = parse_gpus(["rtx4090", "rtx4090"])
    devices = device_set(gpus, host_device(512 * GIB, "epyc-9004"))
    placement = build_placement(model, gpus, None, False, 40)
    cfg = RunConfig(n_ctx=32768)
    t0 = time.perf_counter()
    table = TensorTable.build(model)
    build_ms = 1e3 * (time.perf_counter() - t0)
    rng = np.random.default_rng(0)
    skew = {layer.index: rng.zipf(1.5, model.hparams.n_expert).astype(float) for layer in model.layers if layer.moe}
    matrix = routing_matrix(model, skew)
    print(f"deepseek-v3: {len(table.names)} loaded tensors, {model.hparams.n_layer} blocks, "
          f"{model.hparams.n_expert} experts; TensorTable.build {build_ms:.1f} ms")
    rows = [
        ("estimate(), table + uniform routing", lambda: estimate(model, placement, cfg, devices, table=table)),
        ("estimate(), table + routing matrix", lambda: estimate(model, placement, cfg, devices, matrix, table=table)),
        ("estimate(), batch 8", lambda: estimate(model, placement, cfg, devices, table=table, batch=8)),
        ("estimate(), no table (rebuilt each call)", lambda: estimate(model, placement, cfg, devices)),
        ("tensor_costs() (the solver's linearisation)", lambda: tensor_costs(model, cfg, matrix, 1, table)),
        ("memory_by_device()", lambda: memory_by_device(model, placement, cfg, devices)),
    ]
    for label, fn in rows:
        print(f"  {label:46s} {_rate(fn):9.0f} calls/s")


def main() -> int:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    with tempfile.TemporaryDirectory() as d:
        bench_speed(Path(d))
    return 0


if __name__ == "__main__":
    sys.exit(main())
