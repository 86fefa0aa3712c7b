"""CPU cost of each quant type relative to Q4_K, for decode and for prompt processing, measured with the real
llama.cpp on this machine.

    python benchmarks/quant_cost.py --write                      decode and prompt tables of this build:
                                                                 cpu_quant_cost, cpu_prefill_cost
    python benchmarks/quant_cost.py --kernels untiled --write    prompt table of older builds' kernels:
    python benchmarks/quant_cost.py --kernels vec_dot --write    cpu_prefill_cost_untiled, cpu_prefill_cost_vec_dot
    python benchmarks/quant_cost.py --bench ik_llama.cpp/build/bin/llama-bench --engine ik_llama.cpp --write
                                                                 another engine's kernels against this
                                                                 llama.cpp's: engine_cpu_quant_factor[ENGINE],
                                                                 engine_cpu_prefill_factor[ENGINE]

(without --write the tables are printed only; each run takes about 3 minutes on 2 shared cores, a --bench run
about 12 at --runs 7: it times both engines.)

A dense factory model with real F16 weights (2 blocks of a 1024-wide llama, 23M elements in its matrices: small
enough that the quantized weights stay in this machine's last-level cache, so decode is bound by dequantising and
dotting rather than by RAM) is made in each type, every matrix in that type (llama-quantize's ``--pure``). Each file
is timed with one thread, the way llama-bench times ``tg128`` and ``pp512``: 128 generated tokens one at a time, and
a 512-token prompt in ONE ubatch (``-ub 512``), so the batch kernels llama.cpp uses for prompts are what is timed.
Those differ from the decode kernels, and they changed over llama.cpp's history, which ``--kernels`` reproduces with
switches of this one build (see KERNELS): ``current`` is this build as is, with its tiled kernels for K- and
i-quants (ggml-cpu/tiled, PR 27851), which make every K- and i-quant prompt cost about what Q4_K's does; ``untiled``
turns those off (GGML_CPU_TILED_MM=0): K- and i-quants multiply by vec_dot again, 1.5-5x slower than the repacked
Q4_K; ``vec_dot`` also turns runtime repacking off (as llama.cpp's ``--no-repack`` does), as x86 builds before the
Q4_K repack (PR 12332, March 2025) ran. In every set llamafile's sgemm takes F16, BF16, Q8_0, Q5_0 and whichever of
Q4_0 and IQ4_NL are not repacked. The prompt ordering of types thus differs from the decode ordering (Q8_0 costs
about 1.7x Q4_K per element in decode, 1.3x in prompts), hence separate tables. At 512 tokens the attention (the
same for every type) is about 5% of this model's prompt FLOPs; it is left in, which pulls every prompt ratio that
much towards 1. The table measured before this one (128-token prompts, same build) was the ``current`` set too
(``--n-prompt 128`` gives the ratios 512 tokens give: IQ3_XXS 1.07, Q8_0 1.27, BF16 1.55; neither attention nor
per-ubatch overhead dominated it), which is why it "ordered the published CPU prompt speeds worse" than the decode
table: the published rows were measured with builds that had no tiled kernels, where i-quant prompts are several
times slower than Q4_K's.

The types are measured right after a Q4_K run, round after round, and each keeps the median of its ratios to that
Q4_K run, so a load that comes and goes on a shared machine cancels in each ratio; seconds per token over the
elements is the type's cost per element, and each table is that cost relative to Q4_K. The ratios transfer to
other CPUs of the same SIMD class (x86 with AVX2/AVX-512) better than an absolute rate would (``core_gelems`` and
``core_gflops`` carry the absolute rates, fitted on published rows); ARM (NEON) repacks and dots other types.

Another engine's kernels (``--bench``, ``--engine``): each round times every file with this llama.cpp and then with
that engine's own llama-bench (same settings: one thread, ``-p 512 -n 128 -b 512 -ub 512``, best of two runs, Q4_K
right before each type), and stores, per type, the engine's ratio to its Q4_K over llama.cpp's ratio in the same
round: ``engine_cpu_quant_factor`` and ``engine_cpu_prefill_factor`` under the engine's name, which
``moeplace.hardware.engine_costs`` multiplies into the tables above when a plan targets that engine. A factor
compares two engines on one machine, so it does not carry the machine's own ordering of types, which the tables
above carry: llama.cpp's own table timed on an Intel Xeon with AVX-512 VNNI (9 rounds) puts the K- and i-quants
within 11% of the stored table's (an AMD EPYC's), but BF16 at 5.3 against 2.5 and Q8_0 at 1.3 against 1.7.
ik_llama.cpp's iqk kernels decode Q2_K, Q3_K, Q5_K and IQ4_XS at 0.6-0.8 of llama.cpp's cost relative to Q4_K
(Q4_K itself at the same rate, Q6_K at about the same cost), MXFP4 at twice it, and prompts at 0.3-0.9 of it for
most types (its Q4_K prompt 1.6x llama.cpp's). ``--bench-arg`` passes the engine more flags (``-rtr 1``:
ik_llama.cpp's run-time repacking), for factors that are printed, not stored.

How each file is made. llama.cpp's own quantizer where it will: it refuses IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S
and IQ3_XXS without an importance matrix (``tensor_requires_imatrix`` in src/llama-quant.cpp), and its C API takes
the matrix only as a C++ map, which Python cannot build. Those files are written directly instead: the Q4_K file's
metadata and tensor list with every Q4_K matrix replaced by random bytes in the target type's block layout
(ggml-common.h), each block's f16 scale set to 2^-10 so no value is NaN, infinite or denormal. Timing does not
depend on the values: the dequantise-and-dot kernels run the same instructions on any bits (grid indices look up
small tables that stay in L1 either way). Every file, written or quantized, is checked to decode: the logits of
a short prompt must be finite.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

from moeplace import oracle
from moeplace.bench import run_llama_bench
from moeplace.errors import MoeplaceError
from moeplace.memory import RunConfig
from moeplace.model import load_model
from moeplace.oracle.loading import captured_log, load, load_llama
from moeplace.testing import SPECS, write_model

PARAMS = Path(__file__).resolve().parent.parent / "moeplace" / "data" / "speed-model.json"
# llama.cpp file type -> the ggml type its --pure recipe puts in every matrix. F16 is the source file itself.
TYPES = (
    ("Q4_K_S", "Q4_K"), ("Q2_K", "Q2_K"), ("Q3_K_S", "Q3_K"), ("Q5_K_S", "Q5_K"), ("Q6_K", "Q6_K"),
    ("Q4_0", "Q4_0"), ("Q4_1", "Q4_1"), ("Q5_0", "Q5_0"), ("Q5_1", "Q5_1"), ("Q8_0", "Q8_0"),
    ("IQ4_XS", "IQ4_XS"), ("IQ4_NL", "IQ4_NL"), ("IQ3_S", "IQ3_S"), ("IQ3_XXS", "IQ3_XXS"), ("IQ2_S", "IQ2_S"),
    ("IQ2_XS", "IQ2_XS"), ("IQ2_XXS", "IQ2_XXS"), ("IQ1_S", "IQ1_S"), ("IQ1_M", "IQ1_M"), ("MXFP4_MOE", "MXFP4"),
    ("BF16", "BF16"), ("F16", "F16"),
)
SPEC = replace(SPECS["llama-tiny"], name="quant-cost", n_layer=2, n_embd=1024, n_head=8, n_head_kv=2, head_dim=128,
               n_ff=2816, ftype=LlamaFileType.MOSTLY_F16)
N_PROMPT, N_GEN = 512, 128
# Byte offsets of each block's f16 scale (ggml-common.h) in the types written directly; IQ1_M has none: its f16
# scale is the top nibbles of the four 16-bit words of ``scales`` (bytes 48-55), see _raw_blocks.
SCALE_AT = {"IQ1_S": (0,), "IQ2_XXS": (0,), "IQ2_XS": (0,), "IQ2_S": (0,), "IQ3_XXS": (0,), "IQ3_S": (0,)}
SCALE = np.float16(2.0 ** -10)
# The batch kernels a prompt can run on, as llama.cpp's builds had them over time (x86).
KERNELS = {
    "current": "this build's kernels: tiled K- and i-quant kernels (ggml-cpu/tiled, PR 27851, Sept 2026), runtime "
               "repacking (Q4_0, Q4_K, IQ4_NL, MXFP4, Q2_K), llamafile sgemm (F16, BF16, Q8_0, Q5_0, ...)",
    "untiled": "GGML_CPU_TILED_MM=0: K- and i-quants by vec_dot, as builds before PR 27851 had them; repacking and "
               "sgemm as this build has them",
    "vec_dot": "GGML_CPU_TILED_MM=0 and no runtime repacking (--no-repack): "
               "K- and i-quants by vec_dot, F16, BF16, Q8_0, Q4_0, Q5_0 and IQ4_NL by llamafile sgemm, as x86 builds "
               "before the Q4_K repack (PR 12332, March 2025) had them",
}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _raw_blocks(gtype: str, n_blocks: int, rng: np.random.Generator) -> np.ndarray:
    """``n_blocks`` blocks of ``gtype`` with random quants and every scale a small normal f16."""
    size = GGML_QUANT_SIZES[GGMLQuantizationType[gtype]][1]
    blocks = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    scale = np.frombuffer(SCALE.tobytes(), dtype=np.uint8)
    if gtype == "IQ1_M":  # the f16 scale's 4 nibbles, lowest first, are the top nibbles of bytes 49, 51, 53, 55
        bits = int(SCALE.view(np.uint16))
        for i, at in enumerate((49, 51, 53, 55)):
            blocks[:, at] = (blocks[:, at] & 0x0F) | (((bits >> (4 * i)) & 0xF) << 4)
    elif gtype == "MXFP4":  # an E8M0 exponent byte first: 2^(e - 127), here 2^-7
        blocks[:, 0] = 120
    else:
        for at in SCALE_AT[gtype]:
            blocks[:, at:at + 2] = scale
    return blocks.reshape(-1)


def write_raw(template: Path, dst: Path, gtype: str, seed: int = 0) -> Path:
    """``template`` (a --pure Q4_K file) with every Q4_K tensor rewritten as random blocks of ``gtype``."""
    reader = gguf.GGUFReader(template)
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    writer = gguf.GGUFWriter(dst, arch)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        value = field.contents()
        if field.name == gguf.Keys.General.FILE_TYPE:
            value = int(getattr(LlamaFileType, f"MOSTLY_{gtype}", value))
        writer.add_key_value(field.name, value, vtype, sub_type=sub)
    rng = np.random.default_rng(seed)
    qt = GGMLQuantizationType[gtype]
    block, size = GGML_QUANT_SIZES[qt]
    for t in reader.tensors:
        if t.tensor_type == GGMLQuantizationType.Q4_K:
            ne = [int(x) for x in t.shape]  # ggml order: a row of ne[0] elements first
            rows = int(np.prod(ne[1:]))
            data = _raw_blocks(gtype, rows * ne[0] // block, rng).reshape(*reversed(ne[1:]), ne[0] // block * size)
            writer.add_tensor(t.name, data, raw_dtype=qt)  # a uint8 array: its last axis is bytes per row
        else:
            writer.add_tensor(t.name, np.asarray(t.data), raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


def check_decodes(path: Path) -> None:
    """A short prompt decodes and every logit is finite (a file of garbage scales would give NaN or inf)."""
    llama = load_llama()
    with captured_log() as sink, load(path, RunConfig(n_ctx=64, n_batch=16, n_ubatch=16), no_alloc=False,
                                      n_threads=1, sink=sink) as loaded:
        vocab = llama.llama_model_get_vocab(loaded.model)
        n_vocab = int(llama.llama_vocab_n_tokens(vocab))
        arr = (llama.llama_token * 8)(*range(1, 9))
        rc = llama.llama_decode(loaded.ctx, llama.llama_batch_get_one(arr, 8))
        if rc != 0:
            raise oracle.EngineError(f"{path.name}: llama_decode failed with code {rc}")
        ptr = llama.llama_get_logits_ith(loaded.ctx, -1)
        logits = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(n_vocab,))
        if not np.all(np.isfinite(logits)):
            raise oracle.EngineError(f"{path.name}: the logits are not finite")


def make_files(src: Path, d: Path) -> tuple[dict[str, Path], dict[str, str]]:
    """Every type's file, and how each was made."""
    files: dict[str, Path] = {"F16": src}
    how: dict[str, str] = {"F16": "source"}
    for ftype, gtype in TYPES:
        if gtype == "F16":
            continue
        dst = d / f"{ftype}.gguf"
        try:
            files[gtype] = oracle.quantize(src, dst, ftype)
            how[gtype] = "quantized"
        except oracle.EngineError as e:
            if gtype not in SCALE_AT and gtype != "IQ1_M":
                print(f"  {gtype:8s} skipped: {e}", file=sys.stderr)
                continue
            how[gtype] = "written (llama.cpp wants an importance matrix)"
    for ftype, gtype in TYPES:  # written from the Q4_K file, once it exists
        if how.get(gtype, "").startswith("written"):
            files[gtype] = write_raw(files["Q4_K"], d / f"{ftype}.gguf", gtype)
    for gtype, path in list(files.items()):
        types = {GGMLQuantizationType(t.tensor_type).name for t in gguf.GGUFReader(path).tensors
                 if len(t.shape) >= 2}
        if types != {gtype}:  # a recipe that keeps some matrices in another type would mislabel the timing
            print(f"  {gtype:8s} skipped: its matrices are {sorted(types)}", file=sys.stderr)
            del files[gtype]
            continue
        check_decodes(path)
    return files, how


def _no_repack() -> None:
    """Every weight in the plain CPU buffer, as llama.cpp's ``--no-repack`` (``use_extra_bufts = false``) puts it:
    no runtime repacking. The oracle's loader starts from llama.cpp's default model parameters, so this process's
    defaults are wrapped (an ``-ot .*=CPU`` override would not do: llama.cpp still picks the repacking buffer for
    weights overridden to the CPU)."""
    llama = load_llama()
    default = llama.llama_model_default_params

    def params() -> object:  # llama.cpp's ctypes struct
        p = default()
        p.use_extra_bufts = False
        return p

    llama.llama_model_default_params = params


def measure(path: Path, n_gen: int = N_GEN, n_prompt: int = N_PROMPT) -> tuple[float, float]:
    """Best seconds per generated token of two runs of ``n_gen`` tokens, and per prompt token of two
    ``n_prompt``-token prompts in one ubatch, one thread."""
    cfg = RunConfig(n_ctx=n_prompt + N_GEN, n_batch=n_prompt, n_ubatch=n_prompt)
    s = oracle.measure_speed(path, cfg, n_prompt=n_prompt, n_gen=n_gen, repetitions=2, n_threads=1)
    return 1.0 / max(s.tg_runs), 1.0 / max(s.pp_runs)


def measure_with(bench: Path, path: Path, n_gen: int, n_prompt: int, extra: tuple[str, ...]
                 ) -> tuple[float, float, str]:
    """:func:`measure` by an external llama-bench binary (llama.cpp's or a fork's), and the build it reports: the
    best of two runs each, one thread, the prompt in one ubatch. Only flags every llama-bench since 2024 takes
    (ik_llama.cpp's has no -d)."""
    args = [str(bench), "-m", str(path), "-t", "1", "-p", str(n_prompt), "-n", str(n_gen), "-b", str(n_prompt),
            "-ub", str(n_prompt), "-r", "2", "-o", "json", *extra]
    s = run_llama_bench(args, timeout=600)
    return 1.0 / max(s.tg_runs), 1.0 / max(s.pp_runs), s.engine


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write", action="store_true", help="store the tables in moeplace/data/speed-model.json")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--types", help="comma list of ggml types to measure (default: all)")
    ap.add_argument("--kernels", choices=tuple(KERNELS), default="current",
                    help="which batch kernels prompts run on (see the module help); other than 'current' measures "
                         "prompts only and --write stores cpu_prefill_cost_<kernels>")
    ap.add_argument("--n-prompt", type=int, default=N_PROMPT,
                    help=f"prompt tokens, one ubatch (default {N_PROMPT}, llama-bench's pp512); other values are "
                         "printed, never written")
    ap.add_argument("--bench", type=Path, metavar="LLAMA_BENCH",
                    help="also time each file with this llama-bench binary, after the llama.cpp library moeplace "
                         "loads: another engine's kernels against llama.cpp's (needs --engine)")
    ap.add_argument("--engine", help="the engine --bench runs (e.g. ik_llama.cpp): --write stores its factors as "
                                     "engine_cpu_quant_factor[ENGINE] and engine_cpu_prefill_factor[ENGINE]")
    ap.add_argument("--bench-arg", action="append", default=[], metavar="ARG",
                    help="an extra argument for --bench, repeatable (e.g. --bench-arg=-rtr --bench-arg=1); "
                         "printed, never written")
    args = ap.parse_args(argv)
    if (args.bench is None) != (args.engine is None):
        ap.error("--bench and --engine go together: the binary and the name its tables are stored under")
    if args.bench is not None and args.kernels != "current":
        ap.error("--kernels switches this library's kernels; another engine's --bench runs its own")
    if args.kernels != "current":  # read once by ggml-cpu, at its first batch multiplication (after this)
        os.environ["GGML_CPU_TILED_MM"] = "0"
    if args.kernels == "vec_dot":
        _no_repack()
    # decode is never tiled (under 8 rows); its table is this build's, in every era (see benchmarks/accuracy.py)
    n_gen = N_GEN if args.kernels == "current" else 4
    if not oracle.available():
        print(f"llama.cpp is not available: {oracle.unavailable_reason()}", file=sys.stderr)
        return 1
    t0 = time.time()
    with tempfile.TemporaryDirectory() as d:
        src = write_model(SPEC, Path(d) / "f16.gguf")[0]
        md = load_model(src)
        matrix_elements = sum(t.n_elements for t in md.tensors if len(t.shape) >= 2 and t.role.value != "token_embd")
        timer = oracle.version() if args.bench is None else f"{oracle.version()} and {args.engine} by {args.bench}"
        print(f"{SPEC.name}: {matrix_elements / 1e6:.0f}M matrix elements; {timer}; {cpu_name()}; "
              f"{os.cpu_count()} logical CPUs, measured with 1 thread; tg{n_gen}, pp{args.n_prompt} in one ubatch; "
              f"kernels: {args.kernels if args.bench is None else 'each engine its own'}",
              file=sys.stderr)
        files, how = make_files(src, Path(d))
        if args.types:
            keep = {"Q4_K", *args.types.upper().split(",")}
            files = {t: p for t, p in files.items() if t in keep}
        print("  " + ", ".join(f"{t}: {h}" for t, h in how.items() if t in files), file=sys.stderr)
        if "Q4_K" not in files:
            print("Q4_K could not be made", file=sys.stderr)
            return 1
        bench_build = ""

        def by_bench(f: Path) -> tuple[float, float]:
            nonlocal bench_build
            tg_s, pp_s, bench_build = measure_with(args.bench, f, n_gen, args.n_prompt, tuple(args.bench_arg))
            return tg_s, pp_s

        # the timers each round runs: this library's llama.cpp, and with --bench the other engine after it
        timers: dict[str, Callable[[Path], tuple[float, float]]] = {
            "llama.cpp": lambda f: measure(f, n_gen, args.n_prompt)}
        if args.bench is not None:
            timers[args.engine] = by_bench
            for gtype, path in list(files.items()):  # a type the engine cannot load is left out, not the table
                try:
                    by_bench(path)
                except MoeplaceError as e:
                    print(f"  {gtype:8s} skipped: {e}", file=sys.stderr)
                    del files[gtype]
            if "Q4_K" not in files:
                return 1
        # per timer: each type's ratio to the Q4_K run just before it, round after round
        tg = {name: {t: [] for t in files if t != "Q4_K"} for name in timers}
        pp = {name: {t: [] for t in files if t != "Q4_K"} for name in timers}
        ref_tg: dict[str, list[float]] = {name: [] for name in timers}
        ref_pp: dict[str, list[float]] = {name: [] for name in timers}
        for r in range(args.runs):
            for gtype, path in files.items():
                if gtype == "Q4_K":
                    continue
                for name, timer in timers.items():
                    (a_tg, a_pp), (b_tg, b_pp) = (timer(f) for f in (files["Q4_K"], path))
                    ref_tg[name].append(a_tg)
                    ref_pp[name].append(a_pp)
                    tg[name][gtype].append(b_tg / a_tg)
                    pp[name][gtype].append(b_pp / a_pp)
            for name in timers:
                print(f"round {r + 1}, {name} (decode/prompt): "
                      + ", ".join(f"{t} {v[-1]:.2f}/{pp[name][t][-1]:.2f}" for t, v in tg[name].items()),
                      file=sys.stderr)

    def table(ratios: dict[str, list[float]]) -> dict[str, float]:
        return dict(sorted({"Q4_K": 1.0, **{t: round(statistics.median(v), 3) for t, v in ratios.items()}}.items()))

    for name in timers:
        q4k_tg, q4k_pp = min(ref_tg[name]), min(ref_pp[name])
        print(f"{name} Q4_K: {1 / q4k_tg:.1f} tok/s decode ({matrix_elements / q4k_tg / 1e9:.2f} G elements/s), "
              f"{1 / q4k_pp:.1f} tok/s prompt ({2 * matrix_elements / q4k_pp / 1e9:.1f} GFLOP/s of matrix work), "
              "1 thread", file=sys.stderr)
    decode, prefill = table(tg["llama.cpp"]), table(pp["llama.cpp"])
    result: dict[str, Any] = {"decode": decode, "prefill": prefill}
    if args.bench is not None:  # the engine's cost per type over llama.cpp's, paired within each round
        def relative(ratios: dict[str, dict[str, list[float]]]) -> dict[str, float]:
            return table({t: [e / b for e, b in zip(v, ratios["llama.cpp"][t], strict=True)]
                          for t, v in ratios[args.engine].items()})

        own = {"decode": table(tg[args.engine]), "prefill": table(pp[args.engine])}
        result = {"llama.cpp": result, args.engine: own, "relative": {"decode": relative(tg), "prefill": relative(pp)}}
    print(json.dumps(result, indent=1))
    if args.write and args.n_prompt == N_PROMPT and not args.bench_arg:
        doc = json.loads(PARAMS.read_text(encoding="utf-8"))
        base = f"benchmarks/quant_cost.py on {cpu_name()}, 1 thread, {oracle.version()}"
        pp_how = f"{base}: pp{N_PROMPT} in one {N_PROMPT}-token ubatch; {KERNELS[args.kernels]}"
        if args.bench is not None:
            how = (f"benchmarks/quant_cost.py on {cpu_name()}, 1 thread: {args.engine}'s llama-bench "
                   f"({bench_build}) against {oracle.version()}, each type's cost relative to Q4_K in the one over "
                   f"the same in the other")
            doc.setdefault("engine_cpu_quant_factor", {})[args.engine] = {"_measured": f"{how}: tg{N_GEN} (decode)",
                                                                          **result["relative"]["decode"]}
            doc.setdefault("engine_cpu_prefill_factor", {})[args.engine] = {
                "_measured": f"{how}: pp{N_PROMPT} in one {N_PROMPT}-token ubatch", **result["relative"]["prefill"]}
        elif args.kernels == "current":
            doc["cpu_quant_cost"] = {"_measured": f"{base}: tg{N_GEN} (decode)", **decode}
            doc["cpu_prefill_cost"] = {"_measured": pp_how, **prefill}
        else:
            doc[f"cpu_prefill_cost_{args.kernels}"] = {"_measured": pp_how, **prefill}
        PARAMS.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    print(f"{time.time() - t0:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
