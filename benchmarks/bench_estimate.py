"""How fast the memory and speed model is, and how close its memory figures are to llama.cpp's.

    python benchmarks/bench_estimate.py                  estimate() calls per second on DeepSeek-V3
    PYTHONPATH=<site-packages with llama_cpp> \\
        python benchmarks/bench_estimate.py --vs-llama   KV and compute buffers against llama.cpp

The speed part writes the factory's full-scale (header-only, sparse) DeepSeek-V3 to a temporary directory and
times ``estimate`` the way a solver calls it: a TensorTable built once, a routing matrix normalised once.

The comparison part runs llama.cpp (moeplace.engine.measure_memory: llama-cpp-python's low-level API, CPU
backend) on the factory's full-scale models with ``no_alloc`` (header-only files, no data read) and prints the
KV caches and compute buffers it reports next to moeplace's figures. It needs llama_cpp importable
(``pip install 'moeplace[profile]'``). benchmarks/memory_oracle.py is the fuller comparison (weights too, every
architecture, written to docs/memory-oracle.md).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from moeplace import engine
from moeplace.cli.estimate_cmd import build_placement
from moeplace.hardware import GIB, device_set, host_device, parse_gpus
from moeplace.memory import RunConfig, compute_bytes, kv_bytes, memory_by_device
from moeplace.model import load_model
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


# --- against llama.cpp -------------------------------------------------------------------------------------------

GRID = [
    # model, n_ctx, n_ubatch, flash attention, parallel sequences, cache type
    ("qwen3-30b-a3b", 4096, 512, True, 1, "f16"),
    ("qwen3-30b-a3b", 32768, 512, False, 1, "f16"),
    ("qwen3-30b-a3b", 16384, 2048, True, 4, "q8_0"),
    ("deepseek-v3", 16384, 512, True, 1, "q8_0"),
    ("deepseek-v3", 65536, 128, True, 1, "f16"),
    ("gpt-oss-20b", 8192, 512, True, 1, "f16"),
    ("gpt-oss-20b", 16384, 2048, False, 1, "f16"),
    ("glm-4.5-air", 65536, 512, True, 1, "q4_0"),
    ("mixtral-8x7b", 32768, 512, True, 2, "f16"),
    ("llama-3-8b", 8192, 512, False, 1, "f16"),
    ("qwen3-next-80b-a3b", 16384, 512, True, 3, "f16"),
]


def _llama(path: Path, cfg: RunConfig) -> dict:
    """llama.cpp's KV (every cache's printed size) and compute buffer for ``cfg``, or ok=False if it refused."""
    try:
        got = engine.measure_memory(path, cfg)
    except engine.EngineError:
        return {"ok": False, "kv": 0.0, "compute": 0.0}
    return {"ok": True, "kv": got.kv_mib, "compute": sum(got.compute_mib.values())}


def bench_vs_llama(workdir: Path) -> None:
    if not engine.available():
        print(f"--vs-llama: {engine.unavailable_reason()}")
        return
    print("KV cache and CPU compute buffer, llama.cpp (llama-cpp-python, no_alloc) against moeplace, MiB")
    print(f"{'model':20s} {'ctx':>6s} {'ub':>5s} {'fa':>3s} {'np':>3s} {'type':>5s} "
          f"{'KV llama':>10s} {'KV ours':>10s} {'compute llama':>14s} {'ours':>9s} {'err':>7s}")
    errors = []
    for name, n_ctx, ub, fa, n_seq, ctype in GRID:
        path = workdir / f"{name}.gguf"
        if not path.exists():
            write_model(name, path)
        model = load_model(path)
        # swa_full off (RunConfig default, as llama-server runs) and n_batch >= n_ubatch
        cfg = RunConfig(n_ctx=n_ctx, n_ubatch=ub, n_batch=max(ub, 2048), flash_attn=fa, n_seq_max=n_seq,
                        type_k=ctype, type_v=ctype)
        got = _llama(path, cfg)
        if not got["ok"]:
            print(f"{name:20s} llama.cpp refused this configuration")
            continue
        kv = kv_bytes(model, cfg) / 2**20
        comp = compute_bytes(model, cfg) / 2**20
        err = (comp - got["compute"]) / got["compute"]
        errors.append(err)
        print(f"{name:20s} {n_ctx:6d} {ub:5d} {int(fa):3d} {n_seq:3d} {ctype:>5s} {got['kv']:10.2f} {kv:10.2f} "
              f"{got['compute']:14.2f} {comp:9.2f} {100 * err:6.1f}%")
    if errors:
        print(f"compute estimate error: {100 * min(errors):.1f}% .. {100 * max(errors):.1f}% "
              "(KV is exact up to llama.cpp's two printed decimals)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vs-llama", action="store_true", help="compare memory figures with llama.cpp's")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        if args.vs_llama:
            bench_vs_llama(work)
        else:
            bench_speed(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
