"""CPU decode cost of each quant type relative to Q4_K, measured with the real llama.cpp on this machine.

    python benchmarks/quant_cost.py            measure and print the table
    python benchmarks/quant_cost.py --write    also store the decode table as cpu_quant_cost in
                                               moeplace/data/speed-model.json

A dense factory model with real F16 weights (2 blocks of a 1024-wide llama, 22M elements in its matrices: small
enough that every type's weights stay in this machine's last-level cache, so decode is bound by dequantising and
dotting rather than by RAM, large enough that per-token overheads are a small part) is quantized by llama.cpp's
own quantizer to each type (``--pure``: every matrix in that type), then decoded with one thread; the types are
measured right after a Q4_K run, round after round, and each keeps the median of its ratios to that Q4_K run,
so a load that comes and goes on a shared machine cancels in each ratio. Seconds per token over the elements is
the type's cost per element; the table is that cost relative to Q4_K. Prompts (128 tokens, one ubatch) are
measured the same way and printed, not stored: llama.cpp multiplies a batch with other kernels (llamafile's sgemm
for some types), but that table ordered the published CPU prompt speeds worse than the decode table does
(docs/accuracy.md, 59% against 54% of pairs), so the speed model uses the decode ratios for prompts too.
The ratio transfers to other x86 CPUs
with the same SIMD class better than an absolute rate would (``core_gelems`` carries the absolute rate, fitted
on published rows).
Types llama.cpp refuses to make without an importance matrix (IQ1, IQ2, IQ3_XXS) are reported and skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from gguf import LlamaFileType

from moeplace import oracle
from moeplace.memory import RunConfig
from moeplace.model import load_model
from moeplace.testing import SPECS, write_model

PARAMS = Path(__file__).resolve().parent.parent / "moeplace" / "data" / "speed-model.json"
# llama.cpp file type -> the ggml type its --pure recipe puts in every matrix.
TYPES = (
    ("Q4_K_S", "Q4_K"), ("Q2_K", "Q2_K"), ("Q3_K_S", "Q3_K"), ("Q5_K_S", "Q5_K"), ("Q6_K", "Q6_K"),
    ("Q4_0", "Q4_0"), ("Q4_1", "Q4_1"), ("Q5_0", "Q5_0"), ("Q5_1", "Q5_1"), ("Q8_0", "Q8_0"),
    ("IQ4_XS", "IQ4_XS"), ("IQ4_NL", "IQ4_NL"), ("IQ3_S", "IQ3_S"), ("IQ3_XXS", "IQ3_XXS"), ("IQ2_S", "IQ2_S"),
    ("IQ2_XS", "IQ2_XS"), ("IQ2_XXS", "IQ2_XXS"), ("IQ1_S", "IQ1_S"), ("BF16", "BF16"),
)
SPEC = replace(SPECS["llama-tiny"], name="quant-cost", n_layer=2, n_embd=1024, n_head=8, n_head_kv=2, head_dim=128,
               n_ff=2816, ftype=LlamaFileType.MOSTLY_F16)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure(path: Path) -> tuple[float, float]:
    """Best seconds per generated token of two runs of 128 tokens, and per prompt token of two 128-token prompts
    (one ubatch), one thread."""
    s = oracle.measure_speed(path, RunConfig(n_ctx=512, n_batch=128, n_ubatch=128), n_prompt=128, n_gen=128,
                             repetitions=2, n_threads=1)
    return 1.0 / max(s.tg_runs), 1.0 / max(s.pp_runs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write", action="store_true", help="store the table in moeplace/data/speed-model.json")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args(argv)
    if not oracle.available():
        print(f"llama.cpp is not available: {oracle.unavailable_reason()}", file=sys.stderr)
        return 1
    t0 = time.time()
    rows: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory() as d:
        src = write_model(SPEC, Path(d) / "f16.gguf")[0]
        md = load_model(src)
        matrix_elements = sum(t.n_elements for t in md.tensors if len(t.shape) >= 2 and t.role.value != "token_embd")
        print(f"{SPEC.name}: {matrix_elements / 1e6:.0f}M matrix elements; {oracle.version()}; {cpu_name()}; "
              f"{os.cpu_count()} logical CPUs, measured with 1 thread", file=sys.stderr)
        files: dict[str, Path] = {}
        for ftype, gtype in TYPES:
            dst = Path(d) / f"{ftype}.gguf"
            try:
                files[gtype] = oracle.quantize(src, dst, ftype)
            except oracle.EngineError as e:
                print(f"  {gtype:8s} skipped: {e}", file=sys.stderr)
        src.unlink()
        if "Q4_K" not in files:
            print("Q4_K could not be made", file=sys.stderr)
            return 1
        ratios: dict[str, list[float]] = {t: [] for t in files if t != "Q4_K"}
        pp_ratios: dict[str, list[float]] = {t: [] for t in files if t != "Q4_K"}
        for r in range(args.runs):
            for gtype, path in files.items():
                if gtype == "Q4_K":
                    continue
                (ref, ref_pp), (sec, sec_pp) = measure(files["Q4_K"]), measure(path)
                ratios[gtype].append(sec / ref)
                pp_ratios[gtype].append(sec_pp / ref_pp)
                rows["Q4_K"] = min(rows.get("Q4_K", (ref, 0.0)), (ref, ref / matrix_elements * 1e9))
            print(f"round {r + 1}: " + ", ".join(f"{t} {v[-1]:.2f}/{pp_ratios[t][-1]:.2f}" for t, v in ratios.items()),
                  file=sys.stderr)
        for gtype, v in ratios.items():
            rows[gtype] = (statistics.median(v) * rows["Q4_K"][0], 0.0)
    ref = rows["Q4_K"][0]
    table = {t: round(sec / ref, 3) for t, (sec, _) in sorted(rows.items())}
    prefill = {"Q4_K": 1.0, **{t: round(statistics.median(v), 3) for t, v in sorted(pp_ratios.items())}}
    print(json.dumps({"decode": table, "prefill": prefill}, indent=1))
    if args.write:
        doc = json.loads(PARAMS.read_text(encoding="utf-8"))
        how = f"benchmarks/quant_cost.py on {cpu_name()}, 1 thread, {oracle.version()}"
        doc["cpu_quant_cost"] = {"_measured": how, **table}
        PARAMS.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    print(f"{time.time() - t0:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
