"""The memory oracle: moeplace's memory model against what a real llama.cpp reports, written as a Markdown table.

    PYTHONPATH=/path/to/site-packages-with-llama_cpp python benchmarks/memory_oracle.py
        [--out docs/memory-oracle.md] [--models qwen3-30b-a3b,deepseek-v3] [--stdout]

Every factory model (tiny ones with data and full-scale header-only ones: qwen3moe, deepseek2/v3 MLA, gpt-oss
SWA, llama4 chunked attention, glm4moe NextN, qwen3next hybrid, mixtral, dense llama) is loaded in llama.cpp
(llama-cpp-python, CPU backend, ``no_alloc``: nothing read or allocated) at several contexts, cache types, ubatch
sizes, flash-attention settings and parallel-sequence layouts, and moeplace.oracle.compare_memory puts
llama.cpp's figures beside moeplace.memory's for the CPU-only placement: weights (the loaded tensors' bytes),
the KV cache (every cache's printed size and K/V parts, and the exact bytes), and the compute buffer
(moeplace.memory.compute_bytes, an estimate). Configurations llama.cpp refuses are listed with its reason and
whether moeplace refuses them too. The output contains no timestamps: regenerating it with the same llama.cpp
gives the same file.

    python benchmarks/memory_oracle.py --backend gpu [--models ...] [--stdout]

does the same on a GPU backend: the second build that moeplace.oracle.gpubuild runs (llama.cpp's Vulkan backend
from .ci/llama-cpp-vulkan.sh, on a machine without a GPU Mesa's software device lavapipe; MOEPLACE_GPU_PYTHON for
a CUDA or ROCm build, as benchmarks/gpu_oracle.sh sets it) with GPU placements: full offload, partial -ngl,
--cpu-moe and --n-cpu-moe, ubatch 512/2048/4096, contexts up to 128K, and compares every buffer of every device
(moeplace.oracle.compare_devices). It rewrites only that device's section of the document.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from moeplace import oracle
from moeplace.errors import MoeplaceError
from moeplace.hardware import BACKEND_PREFIX, Device, host_device
from moeplace.llamacpp import Override, apply, cpu_moe_pattern, cpu_moe_patterns
from moeplace.memory import DEFAULT_MARGIN, MARGIN_ALLOWANCE, MARGINS, VULKAN_WORST_UNDER, RunConfig, validate
from moeplace.model import ModelDescription, load_model
from moeplace.oracle import gpubuild
from moeplace.oracle.compare import BUFFERS, DeviceComparison
from moeplace.placement import HOST, Placement, host_fallback
from moeplace.sizes import MIB
from moeplace.testing import FULL, TINY, write_model

ROOT = Path(__file__).resolve().parent.parent


def configs(model: ModelDescription, full_scale: bool) -> Iterator[RunConfig]:
    """The grid for one model: the llama.cpp defaults, then one axis changed at a time (mostly)."""
    yield RunConfig(n_ctx=4096)
    yield RunConfig(n_ctx=32768, flash_attn=False)
    yield RunConfig(n_ctx=16384, n_ubatch=2048, type_k="q8_0", type_v="q8_0")
    yield RunConfig(n_ctx=65536, n_ubatch=128, type_k="q4_0", type_v="q4_0")
    yield RunConfig(n_ctx=8192, type_k="q8_0", type_v="f16")
    yield RunConfig(n_ctx=8192, n_seq_max=4)
    yield RunConfig(n_ctx=8192, n_seq_max=4, kv_unified=True, n_ubatch=1024)
    if model.hparams.n_swa:
        yield RunConfig(n_ctx=16384, swa_full=True)
    if full_scale:
        yield RunConfig(n_ctx=131072)
        yield RunConfig(n_ctx=16384, n_ubatch=2048, flash_attn=False)


@dataclass(frozen=True)
class Row:
    name: str
    cfg: RunConfig
    comparison: oracle.MemoryComparison | None
    refused: str | None  # llama.cpp's reason
    ours_refuses: str | None  # moeplace.memory.validate's reason


def measure(name: str, path: Path) -> list[Row]:
    model = load_model(path)
    rows = []
    for cfg in configs(model, name in FULL):
        try:
            validate(model, cfg)
            ours = None
        except MoeplaceError as e:
            ours = str(e)
        try:
            measured = oracle.measure_memory(path, cfg)
        except oracle.EngineError as e:
            rows.append(Row(name, cfg, None, str(e).split(": ", 2)[-1], ours))
            continue
        rows.append(Row(name, cfg, oracle.compare_memory(model, cfg, measured) if ours is None else None, None,
                        ours))
    return rows


def _options(cfg: RunConfig) -> str:
    out = []
    if cfg.n_seq_max > 1:
        out.append(f"-np {cfg.n_seq_max}")
    if cfg.kv_unified:
        out.append("-kvu")
    if cfg.swa_full:
        out.append("--swa-full")
    return " ".join(out)


def _cfg_cells(cfg: RunConfig) -> str:
    fa = "on" if cfg.flash_attn else "off"
    return f"{cfg.n_ctx} | {cfg.type_k}/{cfg.type_v} | {cfg.n_ubatch} | {fa} | {_options(cfg)}"


def _mib(n: float | None) -> str:
    return "-" if n is None else f"{n / MIB:,.2f}"


def _wrap(text: str, bullet: bool = False) -> list[str]:
    if bullet:
        return textwrap.wrap(text, 110, initial_indent="* ", subsequent_indent="  ", break_on_hyphens=False)
    return textwrap.wrap(text, 110, break_on_hyphens=False)


def render(rows: list[Row], version: str) -> str:
    compared = [r.comparison for r in rows if r.comparison is not None]
    weights_ok = sum(1 for c in compared if c.weights_match)
    weights_known = sum(1 for c in compared if c.weights_match is not None)
    weights_bytes = sum(1 for c in compared if c.weights_llama == c.weights_ours)
    padding = max((c.weights_llama - c.weights_ours for c in compared if c.weights_llama is not None), default=0)
    kv_ok = sum(1 for c in compared if c.kv_match)
    kv_bytes = sum(1 for c in compared if c.kv_llama == c.kv_ours)
    compute_ok = sum(1 for c in compared if c.compute_within)
    errors = [c.compute_error / MIB for c in compared]
    worst = max(compared, key=lambda c: abs(c.compute_error), default=None)
    refused = [r for r in rows if r.refused]
    disagree = [r for r in rows if (r.refused is None) != (r.ours_refuses is None)]
    tol = (f"at most {oracle.COMPUTE_TOLERANCE_MIB:.0f} MiB under llama.cpp's figure; at most "
           f"{oracle.COMPUTE_TOLERANCE_MIB:.0f} MiB plus the estimate's attention-mask term over it")
    under = [c.compute_error / MIB for c in compared if c.compute_error < 0]
    limit = oracle.COMPUTE_TOLERANCE_MIB * MIB
    over64 = sum(1 for c in compared if c.compute_error > limit)
    under64 = sum(1 for c in compared if c.compute_error < -limit)
    compute_text = (
        f"`moeplace.memory.compute_bytes` (an estimate) against the `CPU compute buffer size`: within the "
        f"documented tolerance ({tol}) in {compute_ok} of {len(compared)}. Error "
        + (f"{min(errors):+.1f} .. {max(errors):+.1f} MiB" if errors else "n/a")
        + (f" (largest: {worst.model} at -c {worst.cfg.n_ctx} -ub {worst.cfg.n_ubatch})" if worst else "")
        + f"; the largest underestimate is {min(under, default=0.0):.1f} MiB. {under64} configurations are more "
        f"than 64 MiB under, {over64} more than 64 MiB over: overestimates at long contexts, where the estimate "
        "counts a 2 x context x ubatch byte attention mask in the logits phase that llama.cpp has freed by then "
        "on most graphs (an overestimate wastes GPU memory but never overfills it).")
    out = [
        "# Memory oracle: moeplace against llama.cpp",
        "",
        *_wrap("Generated by `benchmarks/memory_oracle.py`; do not edit by hand, rerun it with a Python that has "
               "llama-cpp-python (`PYTHONPATH=<site-packages with llama_cpp> python benchmarks/memory_oracle.py`). "
               f"llama.cpp: {version}, CPU backend. `tests/test_memory_oracle.py` holds these tolerances live on "
               "a subset of the grid."),
        "",
        *_wrap("Every factory model is loaded with `no_alloc` (llama.cpp sizes every buffer but reads and "
               "allocates nothing, so the full-scale header-only models work) and a context is created; "
               "moeplace's figures are for the CPU-only placement (every weight on the host):"),
        "",
        *_wrap(f"**weights**: the bytes of the tensors llama.cpp loads (NextN/MTP blocks are not) against the "
               "model buffers (`CPU` plus `CPU_REPACK`) from `llama_get_memory_breakdown`. Equal to the printed "
               f"precision (MiB, two decimals) in {weights_ok} of {weights_known} configurations, to the byte in "
               f"{weights_bytes}; the others differ by ggml's 32-byte tensor alignment (at most {padding} bytes, "
               "on tiny models with odd tensor sizes).", bullet=True),
        *_wrap("**KV**: every cache llama.cpp prints (`llama_kv_cache: size = ... K (f16): ... V (f16): ...`, one "
               "per iSWA half, `llama_memory_recurrent` for recurrent state) against moeplace's per-layer KV "
               f"grouped the same way, compared as the printed strings: equal in {kv_ok} of {len(compared)}; "
               f"total bytes equal in {kv_bytes} of {len(compared)}.", bullet=True),
        *_wrap(f"**compute**: {compute_text}", bullet=True),
        *_wrap(f"{len(refused)} configurations were refused by llama.cpp (listed at the end); moeplace's own "
               f"check (`moeplace.memory.validate`) disagrees on {len(disagree)} of all {len(rows)}.", bullet=True),
        "",
        *_wrap("What the CPU backend cannot tell, and what covers it: a GPU backend's compute buffers differ "
               "from the CPU's (graph splits between devices, CUDA's pool allocator, cuBLAS workspaces, op "
               "offload of host weights for prompt batches) and the driver takes memory no llama.cpp buffer "
               "reports (CUDA context and kernels, typically 300-600 MiB per GPU). moeplace adds the presets' "
               "per-backend runtime overhead for the latter and keeps `--margin` (default 256 MiB on CUDA, ROCm, "
               "SYCL and Metal; Vulkan's, derived in its section below, is smaller) free on every GPU for both; "
               "neither is measured here, so on a new GPU stack check the first plan with "
               "llama.cpp's own `--fit-print on` or `nvidia-smi`. The output buffer (logits for `-np` sequences) "
               "is checked too: moeplace counts it in the host's compute."),
        "",
        "| model | -c | -ctk/-ctv | -ub | -fa | options | weights moeplace | weights llama.cpp | KV moeplace | "
        "KV llama.cpp | compute moeplace | compute llama.cpp | compute error |",
        "|---|---:|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r.comparison is None:
            continue
        c, cfg = r.comparison, r.cfg
        w_mark = "" if c.weights_match else " ≠"
        kv_mark = "" if c.kv_match else " ≠"
        err = c.compute_error
        pct = 100 * err / c.compute_llama if c.compute_llama else 0.0
        flag = "" if c.compute_within else " **over**"
        out.append(
            f"| {r.name} | {_cfg_cells(cfg)} | {_mib(c.weights_ours)} | {_mib(c.weights_llama)}{w_mark} | "
            f"{_mib(c.kv_ours)} | {_mib(c.kv_llama)}{kv_mark} | {_mib(c.compute_ours)} | {_mib(c.compute_llama)} | "
            f"{err / MIB:+.2f} MiB ({pct:+.1f}%){flag} |")
    if refused or disagree:
        out += ["", "## Refused configurations", "",
                "| model | -c | -ctk/-ctv | -ub | -fa | options | llama.cpp | moeplace |",
                "|---|---:|---|---:|---|---|---|---|"]
        for r in rows:
            if r.refused is None and r.ours_refuses is None:
                continue
            cfg = r.cfg
            ours = r.ours_refuses or "**accepts** (disagrees)"
            theirs = r.refused or "**accepts** (disagrees)"
            out.append(f"| {r.name} | {_cfg_cells(cfg)} | {theirs} | {ours} |")
    return "\n".join(out) + "\n"


SECTION = "<!-- section {device}: benchmarks/memory_oracle.py --backend gpu -->"
_SECTION = re.compile(r"^<!-- section (\S+): .*-->$", re.MULTILINE)


@dataclass(frozen=True)
class GpuCase:
    """A placement as llama.cpp's options give it, and moeplace's reading of the same options."""

    label: str  # the options, as a user writes them
    ngl: int
    overrides: tuple[Override, ...]


def gpu_cases(model: ModelDescription) -> list[GpuCase]:
    """Full offload, every routed expert on the host, half of them, and half the layers."""
    n = model.hparams.n_layer
    out = [GpuCase("-ngl 999", 999, ())]
    if model.is_moe:
        out += [GpuCase("-ngl 999 --cpu-moe", 999, (cpu_moe_pattern(),)),
                GpuCase(f"-ngl 999 --n-cpu-moe {n // 2}", 999, cpu_moe_patterns(n // 2))]
    out.append(GpuCase(f"-ngl {n // 2}", n // 2, ()))
    return out


def gpu_configs(full_scale: bool) -> list[RunConfig]:
    """ubatch 512/2048/4096 at 4K, then longer contexts (flash attention off at 32K), 128K on full-scale models."""
    out = [RunConfig(n_ctx=4096), RunConfig(n_ctx=4096, n_ubatch=2048), RunConfig(n_ctx=8192, n_batch=4096,
                                                                              n_ubatch=4096),
           RunConfig(n_ctx=32768, flash_attn=False)]
    if full_scale:
        out.append(RunConfig(n_ctx=131072))
    return out


def _gpu(name: str, limit: int | None) -> Device:
    """The build's device as moeplace describes it: its memory is irrelevant here, its largest tensor is not."""
    return Device(name=name, backend=gpu_backend(name), label=name, memory=1 << 40, bandwidth=1e11,
                  efficiency=0.6, link_bandwidth=1e10, max_tensor=limit or 0)


@dataclass(frozen=True)
class GpuRow:
    name: str
    case: GpuCase
    cfg: RunConfig
    comparison: DeviceComparison | None
    refused: str | None


def measure_gpu(name: str, path: Path, gpu: Device) -> list[GpuRow]:
    model = load_model(path)
    devices = {gpu.name: gpu, HOST: host_device(1 << 40, 50)}
    full_scale = name in FULL
    todo: list[tuple[GpuCase, RunConfig, Placement]] = []
    for case in gpu_cases(model):
        placement = host_fallback(model, apply(model, case.ngl, None, case.overrides, [gpu.name]),
                                  {gpu.name: gpu.max_tensor})
        for cfg in gpu_configs(full_scale):
            try:
                validate(model, cfg)
            except MoeplaceError:
                continue
            todo.append((case, cfg, placement))
    got = gpubuild.measure_memory_many([
        gpubuild.MemoryRequest(str(path), cfg, case.overrides, case.ngl, no_alloc=full_scale)
        for case, cfg, _ in todo])
    rows = []
    for (case, cfg, placement), m in zip(todo, got):
        if isinstance(m, oracle.EngineError):
            rows.append(GpuRow(name, case, cfg, None, str(m)))
        else:
            rows.append(GpuRow(name, case, cfg, oracle.compare_devices(model, cfg, placement, devices, m), None))
    return rows


GPU_TOLERANCE = 64 * MIB  # the goal: every buffer within 64 MiB, never under by more


def gpu_backend(gpu: str) -> str:
    """moeplace's backend name for a device name such as Vulkan0."""
    prefix = gpu.rstrip("0123456789")
    return next((b for b, p in BACKEND_PREFIX.items() if p == prefix), "cuda")


def worst_gpu_underestimate(rows: list[GpuRow], gpu: str) -> float:
    """The most negative error (bytes) of any buffer on the GPU over the table, 0 when none is under."""
    return min((f.error for r in rows if r.comparison is not None for f in r.comparison.figures
                if f.device == gpu and f.error is not None), default=0.0)


def _cell(c: DeviceComparison, device: str, buffer: str) -> str:
    f = c.figure(device, buffer)
    if f is None or f.llama is None:
        return "-"
    err = f.ours - f.llama
    mark = " **!**" if abs(err) > GPU_TOLERANCE else ""
    return f"{f.llama / MIB:,.2f} ({err / MIB:+.2f}){mark}"


def render_gpu(rows: list[GpuRow], gpu: str, description: str, version: str) -> str:
    compared = [r.comparison for r in rows if r.comparison is not None]
    lines = [SECTION.format(device=gpu), "", f"## {gpu}: llama.cpp's {gpu.rstrip('0123456789')} backend", ""]
    lines += _wrap(f"llama.cpp: {version}, device {gpu}: {description}. Each model is loaded with the "
                   "placement in the second column (`-ngl`, `--cpu-moe`, `--n-cpu-moe` as llama.cpp's options; the "
                   "full-scale header-only models with `no_alloc`, the tiny ones with real allocation), and every "
                   "buffer llama.cpp reports per device (exact bytes from `llama_get_memory_breakdown`; host means "
                   "`CPU`, `CPU_REPACK` and the backend's host buffer such as `Vulkan_Host` together) is put beside "
                   "`moeplace.memory.memory_by_device` "
                   "for the same options read by `moeplace.llamacpp` (with the weights the device refuses kept on "
                   "the host, `moeplace.placement.host_fallback`). Cells: llama.cpp's MiB (moeplace minus llama.cpp); "
                   "**!** marks an error beyond 64 MiB. Regenerate with "
                   "`python benchmarks/memory_oracle.py --backend gpu`.")
    lines.append("")
    keys = [(d, b) for d in (gpu, HOST) for b in BUFFERS if not (d == gpu and b == "output")]
    for d, b in keys:
        errs = [f.error for c in compared if (f := c.figure(d, b)) is not None and f.error is not None]
        if not errs:
            continue
        within = sum(1 for e in errs if abs(e) <= GPU_TOLERANCE)
        lines += _wrap(f"**{d} {b}**: error {min(errs) / MIB:+.2f} .. {max(errs) / MIB:+.2f} MiB; within 64 MiB in "
                       f"{within} of {len(errs)}; under by more than 64 MiB in "
                       f"{sum(1 for e in errs if e < -GPU_TOLERANCE)}.", bullet=True)
    refused = [r for r in rows if r.refused]
    if refused:
        lines += _wrap(f"{len(refused)} loads were refused or aborted by llama.cpp (listed at the end).", bullet=True)
    gpu_under = worst_gpu_underestimate(rows, gpu)
    margin = MARGINS.get(gpu_backend(gpu), DEFAULT_MARGIN)
    if gpu_backend(gpu) == "vulkan":
        covers = "covers" if -gpu_under <= VULKAN_WORST_UNDER else "does not cover: raise it"
        margin_text = (f"the Vulkan default `--margin` (`moeplace.memory.default_margin`) is the stated worst "
                       f"underestimate (`VULKAN_WORST_UNDER`, {VULKAN_WORST_UNDER / MIB:.0f} MiB, which {covers} "
                       f"this table's) plus an allowance of {MARGIN_ALLOWANCE / MIB:.0f} MiB for what the software "
                       f"device cannot show, rounded up to 32 MiB: {margin / MIB:.0f} MiB; other backends keep "
                       f"{DEFAULT_MARGIN / MIB:.0f} MiB, a stated figure.")
    else:
        margin_text = f"this backend's default `--margin` is the stated {margin / MIB:.0f} MiB."
    lines += ["", *_wrap(
        "What is measured and what is not. Measured here: every figure in this table (weights and KV per device "
        "by moeplace's exact rules; compute by `moeplace.vulkan_compute`, which replays llama.cpp's worst-case "
        "graph op by op: where ggml-backend's scheduler runs each op, the copies between devices, the order "
        "ggml-vulkan's graph optimiser gives a split, and ggml-alloc's peak per buffer). The software device accepts "
        "no tensor over 128 MiB, weights or activations, so at large ubatches, long contexts without flash attention "
        "and on models with large expert matrices (deepseek-v3, qwen3-235b, gpt-oss, mixtral) single ops leave the "
        "device for the host in ways a real driver (4 GiB) rarely forces; the model follows them from ggml-vulkan's "
        "size rule. It leaves out most small ops and most of the optimiser's fusion patterns (the gated delta net "
        "is modelled node by node, and the fused top-k router as it allocates), which move the holes ggml-alloc's "
        "best fit leaves in a buffer: that is where the remaining errors come from. Not measured: any "
        "real GPU driver (benchmarks/gpu_oracle.sh is prepared for "
        "one), CUDA/ROCm/SYCL/Metal compute buffers (their stated rule: the CPU-fitted phases split by device, with "
        "the host computing routed experts when op offload cannot move them; sources ggml-backend.cpp's scheduler "
        "and llama.cpp PRs 13386, 15346, 18535), and driver overhead (the presets' `_overhead_mib`, a stated "
        f"assumption). The largest underestimate of {gpu}'s buffers here is {gpu_under / MIB:+.1f} MiB; "
        + margin_text)]
    head = ["model", "placement", "-c", "-ub", "-fa", *(f"{'host' if d == HOST else d} {b}" for d, b in keys)]
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * 2 + "---|" + "---:|" * len(keys)]
    for r in rows:
        if r.comparison is None:
            continue
        cfg = r.cfg
        cells = [r.name, r.case.label, str(cfg.n_ctx), str(cfg.n_ubatch), "on" if cfg.flash_attn else "off",
                 *(_cell(r.comparison, d, b) for d, b in keys)]
        lines.append("| " + " | ".join(cells) + " |")
    if refused:
        lines += ["", "| model | placement | -c | -ub | -fa | llama.cpp |", "|---|---|---:|---:|---|---|"]
        for r in refused:
            fa = "on" if r.cfg.flash_attn else "off"
            lines.append(f"| {r.name} | {r.case.label} | {r.cfg.n_ctx} | {r.cfg.n_ubatch} | {fa} | {r.refused} |")
    return "\n".join(lines) + "\n"


def _splice(path: Path, cpu: str | None, section: tuple[str, str] | None) -> str:
    """The document with its CPU part or one device's section replaced, everything else kept as it is."""
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    marks = list(_SECTION.finditer(old))
    head = old[: marks[0].start()] if marks else old
    sections = {m.group(1): old[m.start(): marks[i + 1].start() if i + 1 < len(marks) else len(old)]
                for i, m in enumerate(marks)}
    if section is not None:
        sections[section[0]] = section[1]
    parts = [(cpu if cpu is not None else head).strip("\n"), *(s.strip("\n") for s in sections.values())]
    return "\n\n".join(x for x in parts if x) + "\n"


def main_gpu(args: argparse.Namespace) -> int:
    reason = gpubuild.unavailable_reason()
    if reason:
        print(f"memory_oracle: {reason}", file=sys.stderr)
        return 2
    dev = gpubuild.devices()[0]
    gpu = _gpu(dev.name, dev.largest_tensor)
    names = args.models.split(",") if args.models else [*TINY, *FULL]
    rows: list[GpuRow] = []
    version = "?"
    with tempfile.TemporaryDirectory() as d:
        for name in names:
            path = write_model(name, Path(d) / f"{name}.gguf")[0]
            got = measure_gpu(name, path, gpu)
            bad = [r for r in got if r.comparison and any(
                f.error is not None and abs(f.error) > GPU_TOLERANCE for f in r.comparison.figures)]
            print(f"{name:22s} {len(got)} loads, {len(bad)} with a buffer beyond 64 MiB", file=sys.stderr)
            rows += got
            version = next((r.comparison.engine for r in got if r.comparison), version)
    limit = dev.largest_tensor
    desc = f"`{dev.description}`" + (f", largest tensor it takes {limit / MIB:,.2f} MiB (asked from the device)"
                                      if limit else "")
    text = render_gpu(rows, dev.name, desc, version)
    under = worst_gpu_underestimate(rows, dev.name)
    print(f"largest underestimate of a {dev.name} buffer: {under / MIB:+.2f} MiB (moeplace.memory.VULKAN_WORST_UNDER: "
          f"{VULKAN_WORST_UNDER / MIB:.0f} MiB)", file=sys.stderr)
    if args.stdout:
        print(text)
    else:
        args.out.write_text(_splice(args.out, None, (dev.name, text)), encoding="utf-8")
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "memory-oracle.md", help="the Markdown file")
    ap.add_argument("--models", default=None, help="comma-separated factory names (default: all)")
    ap.add_argument("--stdout", action="store_true", help="print the table instead of writing the file")
    ap.add_argument("--backend", choices=("cpu", "gpu"), default="cpu",
                    help="cpu: the CPU build in this Python; gpu: the GPU build moeplace.oracle.gpubuild runs")
    args = ap.parse_args()
    if args.backend == "gpu":
        return main_gpu(args)
    if not oracle.available():
        print(f"memory_oracle: {oracle.unavailable_reason()}", file=sys.stderr)
        return 2
    names = args.models.split(",") if args.models else [*TINY, *FULL]
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as d:
        for name in names:
            path = write_model(name, Path(d) / f"{name}.gguf")[0]
            got = measure(name, path)
            bad = [r for r in got if r.comparison and not (r.comparison.kv_match and r.comparison.weights_match
                                                           and r.comparison.compute_within)]
            print(f"{name:22s} {len(got)} configurations, {len(bad)} outside tolerance", file=sys.stderr)
            rows += got
    text = render(rows, oracle.version())
    if args.stdout:
        print(text)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(_splice(args.out, text, None), encoding="utf-8")
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
