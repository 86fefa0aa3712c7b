"""Options shared by the commands that take hardware and llama.cpp context settings, named as llama.cpp names
them (short forms too), and the functions that turn them into devices and a RunConfig."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from moeplace import machine
from moeplace.calibration import apply as apply_calibration
from moeplace.calibration import load as load_calibration
from moeplace.cli import INT32_MAX, POSITIVE_SIZE, SIZE
from moeplace.errors import MoeplaceError
from moeplace.hardware import GB, Device, catalog, device_set, host_device, parse_gpus, speed_params, with_links
from moeplace.memory import CACHE_TYPES, DEFAULT_MARGIN, MARGINS, RunConfig, resolve_flash_attn, validate
from moeplace.model import ModelDescription
from moeplace.sizes import format_size

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def _list_presets(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    cat = catalog()
    for key in cat.preset_names():
        p = cat.presets[key]
        click.echo(f"{p.key:16s} {p.label:38s} {format_size(p.memory):>10s} {p.bandwidth / 1e9:6.0f} GB/s "
                   f"{p.power:5.0f} W  {p.backend}")
    click.echo("RAM: --ram-bw takes GB/s, ddrN-MTS[xCHANNELS] or a platform: " + ", ".join(cat.platforms))
    ctx.exit(0)


def _remember(ctx: click.Context, param: click.Parameter, value: object) -> None:
    """Keeps an option the commands do not take as an argument in ctx.meta (only devices_from reads it)."""
    ctx.meta[f"moeplace.{param.name}"] = value


def _stack(*decorators: Decorator) -> Decorator:
    def apply(f: Callable[..., Any]) -> Callable[..., Any]:
        for d in reversed(decorators):
            f = d(f)
        return f
    return apply


HARDWARE_HELP = """\b
Hardware: what is not given is detected on this machine (GPUs through llama.cpp's device list, NVML,
rocm-smi, sysctl or vulkaninfo, planned against their FREE memory as llama.cpp --fit does; available RAM;
RAM speed from the DMI memory table, or timed with --measure) and printed in one 'detected:' line.
--gpu/--vram takes a preset (--list-gpus), SIZE@GB/s (24G@936) or a size (24G), used as given; repeat it
or separate with commas for several GPUs (CUDA0, CUDA1, ... in llama.cpp's order); --gpu none plans for
the CPU alone. --ram is the RAM size, --ram-bw its bandwidth (GB/s, ddr5-6000x2 = 2 channels of
DDR5-6000, or a platform name); --calibration FILE uses the bandwidths moeplace bench measured. Sizes:
24G or 24GiB = 24 x 2^30 bytes; 24GB = 24 x 10^9 bytes."""

hardware_options = _stack(
    click.option("--gpu", "--vram", "gpus", multiple=True, metavar="SPEC",
                 help="A GPU: preset name, SIZE@GB/s or SIZE; repeat or comma-separate for several; 'none' for "
                      "no GPU (default: the GPUs detected here, at their free memory)."),
    click.option("--backend", type=click.Choice(["cuda", "rocm", "vulkan", "sycl", "metal", "musa"]), default=None,
                 help="llama.cpp backend of the GPUs (buffer names CUDA0, ROCm0, Vulkan0, SYCL0, MTL0); "
                      "default: the preset's own, CUDA for sizes."),
    click.option("--ram", type=POSITIVE_SIZE, default=None,
                 help="System RAM (default: this machine's available RAM)."),
    click.option("--ram-bw", default=None, metavar="GB/s|DDR|PLATFORM",
                 help="RAM bandwidth: 80, ddr5-6000x2, epyc-9004... (default: from this machine's DMI memory "
                      "table, else --measure's figure, else dual-channel DDR4-3200, stated)."),
    click.option("--ram-avail", type=SIZE, default=None, expose_value=False, callback=_remember,
                 help="RAM free for llama.cpp (default: what this machine has available, or --ram less 2 GiB for "
                      "the OS, stated); host weights beyond it are read from disk again while decoding."),
    click.option("--link", "--pcie", "link", multiple=True, expose_value=False, callback=_remember,
                 metavar="GEN xLANES",
                 help="The GPUs' host link: pcie4x8, 5.0x16, 4.0x4 for a card in an x4 slot or behind a riser; one "
                      "for all, or a comma list in GPU order (default: the preset's, or what was detected, stated "
                      "when it matters); prompt copies and expert-cache misses cross it."),
    click.option("--cores", type=click.IntRange(min=1), default=None, expose_value=False, callback=_remember,
                 help="Physical CPU cores of the host (default: this machine's; llama.cpp's -t defaults to them)."),
    click.option("--numa-nodes", type=click.IntRange(min=1), default=None, expose_value=False, callback=_remember,
                 help="NUMA nodes the host's RAM spans: sockets, or sub-NUMA clusters (default: this machine's, "
                      "else 1)."),
    click.option("--ccds", type=click.IntRange(min=0), default=None, expose_value=False, callback=_remember,
                 help="AMD chiplet CPUs: the core dies (CCDs) of all sockets, e.g. 2 for an EPYC 9115 or a Ryzen 9 "
                      "9950X (L3 size / 32 MB on Zen 3-5). Each CCD reads RAM over one fabric link, so a part with "
                      "few CCDs cannot use all its channels. Default: counted here on AMD EPYC, Threadripper and "
                      "desktop Ryzen; 0 for none."),
    click.option("--cpu-class", "simd", type=click.Choice(list(speed_params().cpu_simd_factor)), default=None,
                 expose_value=False, callback=_remember,
                 help="The host CPU's vector class, which sets its prompt rate: avx2 (no AVX-512), avx512 (AVX-512 "
                      "without VNNI: Skylake-SP/X), avx512-vnni (Intel Cascade Lake and later, AMD Zen 4, Zen 5 "
                      "laptops), zen5 (AMD Zen 5 desktop and server), neon (ARM, Apple). Default: read from "
                      "/proc/cpuinfo when this machine is the host, else avx512-vnni."),
    click.option("--measure", is_flag=True, expose_value=False, callback=_remember,
                 help="Time a few seconds of memory copies for the RAM bandwidth when the DMI table is not "
                      "readable."),
    click.option("--margin", type=SIZE, default=None,
                 help=f"Memory kept free on each GPU (default per backend, from the measured error of the "
                      f"compute-buffer estimate: Vulkan {format_size(MARGINS['vulkan'])}, others "
                      f"{format_size(DEFAULT_MARGIN)})."),
    click.option("--calibration", type=click.Path(path_type=Path, dir_okay=False), default=None, metavar="FILE",
                 help="Measured bandwidths (moeplace bench -o FILE) in place of the presets' efficiencies."),
    click.option("--list-gpus", is_flag=True, expose_value=False, is_eager=True, callback=_list_presets,
                 help="List the hardware presets and exit."),
)


_TOKENS = click.IntRange(min=0, max=INT32_MAX)
_COUNT = click.IntRange(min=1, max=INT32_MAX)


def context_options(ctx_help: str = "Context size in tokens (0 = the model's trained context).",
                    ctx_type: Any = _TOKENS, ctx_default: Any = 4096) -> Decorator:
    """llama.cpp's context flags; ``solve`` passes a context type that also accepts ``auto``."""
    return _stack(
        click.option("-c", "--ctx", "--ctx-size", "n_ctx", type=ctx_type, default=ctx_default, show_default=True,
                     help=ctx_help),
        click.option("-ctk", "--cache-type-k", "type_k", type=click.Choice(list(CACHE_TYPES)), default="f16",
                     show_default=True, help="KV cache type for K. A quantized cache takes less memory, but on CUDA "
                     "llama.cpp decodes it with its vector attention kernel, which reads it once per query head: "
                     "slower at long contexts once a block's cache outgrows the GPU's L2."),
        click.option("-ctv", "--cache-type-v", "type_v", type=click.Choice(list(CACHE_TYPES)), default="f16",
                     show_default=True, help="KV cache type for V (quantized V needs flash attention)."),
        click.option("-b", "--batch-size", "n_batch", type=_COUNT, default=2048, show_default=True,
                     help="Logical batch size."),
        click.option("-ub", "--ubatch-size", "n_ubatch", type=_COUNT, default=512,
                     show_default=True, help="Physical batch size: prompt tokens per graph; sizes the compute "
                                             "buffers."),
        click.option("-fa", "--flash-attn", "flash_attn", type=click.Choice(["on", "off", "auto"]), default="auto",
                     show_default=True, help="Flash attention."),
        click.option("-np", "--parallel", "n_seq_max", type=_COUNT, default=1, show_default=True,
                     help="Parallel sequences (slots); decode is also estimated at this batch."),
        click.option("-kvu", "--kv-unified", is_flag=True, help="One KV buffer shared by all sequences."),
        click.option("--swa-full", is_flag=True, help="Full-size cache for sliding-window layers."),
        click.option("-nkvo", "--no-kv-offload", is_flag=True, help="Keep the KV cache in RAM."),
        click.option("--no-op-offload", is_flag=True,
                     help="Do not copy RAM-resident weights to the GPU for prompts."),
    )


def devices_from(gpus: tuple[str, ...], backend: str | None, ram: int | None, ram_bw: str | None,
                 calibration: Path | None = None, *, threads: int | None = None, cores: int | None = None,
                 numa_nodes: int | None = None, available: int | None = None, links: tuple[str, ...] = (),
                 simd: str | None = None) -> dict[str, Device]:
    """The host and the GPUs the options describe, keyed by llama.cpp buffer name, with the measured bandwidths
    of a calibration file applied. What the options leave out is detected on this machine (moeplace.machine),
    and the 'detected:' line and its assumptions go to stderr; a flag always wins over detection."""
    no_gpu = [g.strip().lower() for g in gpus] == ["none"]
    meta = ctx_meta.meta if (ctx_meta := click.get_current_context(silent=True)) is not None else {}
    if available is None:
        available = meta.get("moeplace.ram_avail")
    cores = cores or meta.get("moeplace.cores")
    numa_nodes = numa_nodes or meta.get("moeplace.numa_nodes")
    simd = simd or meta.get("moeplace.simd")
    ccds = meta.get("moeplace.ccds")
    found = None
    if not gpus or ram is None or ram_bw is None:
        ctx = click.get_current_context(silent=True)
        measure = bool(ctx and ctx.meta.get("moeplace.measure")) and ram_bw is None
        # once per command: --compare asks again for each variant, and detection runs programs
        key = (not gpus, measure)
        cached = ctx.meta.get("moeplace.machine_key") if ctx is not None else None
        if ctx is not None and cached is not None and cached[0] >= key[0] and cached[1] >= key[1]:
            found = ctx.meta["moeplace.machine"]
        else:
            found = machine.detect(gpus=not gpus, measure=measure)
            if ctx is not None:
                ctx.meta["moeplace.machine"], ctx.meta["moeplace.machine_key"] = found, key
    if no_gpu:
        gpu_devs: tuple[Device, ...] = ()
    elif gpus:
        gpu_devs = parse_gpus(gpus, backend)
    else:
        assert found is not None
        gpu_devs = machine.gpu_devices(found, backend)
    gpu_devs = with_links(gpu_devs, links or meta.get("moeplace.link") or ())
    host_ram: int | None = ram
    host_bw: str | float | None = ram_bw
    unified = any(g.unified for g in gpu_devs)  # Apple: the host is the GPU's pool, at the GPU's bandwidth
    if found is not None:
        own_bw = ram_bw is None and not unified
        notes = list(found.notes) if own_bw else [n for n in found.notes if "RAM bandwidth" not in n]
        if ram is None and not unified and found.ram_available:
            # rounded down to 256 MiB: what is available moves by the second, a plan should not with it
            host_ram = found.ram_available // (256 << 20) * (256 << 20)
            notes.append(f"planning for the available RAM {format_size(host_ram)} of "
                         f"{format_size(found.ram_total)}; give --ram to change it")
        if own_bw:
            host_bw = found.ram_bw.bandwidth / GB
        _defer_report([found.line(), *(f"note: {n}" for n in notes)])
    if found is not None:  # what this machine has, where the options do not say
        cores = cores or found.cores
        numa_nodes = numa_nodes or found.numa_nodes
        ccds = found.ccds if ccds is None else ccds
        if ram is None and available is None and host_ram is not None:
            available = host_ram  # already what is available, not the total
    host = host_device(host_ram, host_bw, gpu_devs, threads=threads, cores=cores, numa_nodes=numa_nodes or 1,
                       available=available, simd=simd or (found.simd if found is not None else ""), ccds=ccds or 0)
    devices = device_set(gpu_devs, host)
    return devices if calibration is None else apply_calibration(devices, load_calibration(calibration))


_PENDING = "moeplace.detected_lines"


def _defer_report(lines: list[str]) -> None:
    """What was detected goes to stderr once the command has something to show (report_detected), or when it
    ends; a command that fails with an error prints only its one-line error (friendly_errors drops these)."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        for line in lines:
            click.echo(line, err=True)
        return
    ctx.meta[_PENDING] = lines
    ctx.call_on_close(report_detected)


def report_detected() -> None:
    """Prints the 'detected:' line and its notes to stderr, once."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return
    for line in ctx.meta.pop(_PENDING, []):
        click.echo(line, err=True)


# The options whose values choose_config may choose, under RunConfig's field names (the option names are the same).
_RUN_SETTINGS = ("n_ubatch", "n_batch", "type_k", "type_v", "n_seq_max", "kv_unified")


def given_run_settings(mmap_given: bool = False) -> list[str]:
    """The run settings the user gave on the command line: pinned, the search keeps them."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return []
    out = [f for f in _RUN_SETTINGS if ctx.get_parameter_source(f) is click.core.ParameterSource.COMMANDLINE]
    return out + (["no_mmap"] if mmap_given else [])


def detected_machine() -> machine.Machine | None:
    """What devices_from detected for the running command (None when the flags described all the hardware)."""
    ctx = click.get_current_context(silent=True)
    return ctx.meta.get("moeplace.machine") if ctx is not None else None


def run_config_from(model: ModelDescription, devices: dict[str, Device], *, n_ctx: int, type_k: str, type_v: str,
                    n_batch: int, n_ubatch: int, flash_attn: str, n_seq_max: int, kv_unified: bool,
                    swa_full: bool, no_kv_offload: bool, no_op_offload: bool) -> RunConfig:
    """The RunConfig the context options describe, checked against what llama.cpp accepts for this model."""
    if n_ubatch > n_batch:
        raise MoeplaceError(f"-ub {n_ubatch} exceeds -b {n_batch}: llama.cpp would lower -ub to {n_batch}; "
                            "raise -b or lower -ub")
    trained = model.hparams.n_ctx_train
    if trained and n_ctx > trained:
        click.echo(f"warning: -c {n_ctx} is beyond the {trained} tokens {model.name} was trained on: "
                   "llama.cpp runs it, but quality past the trained length is not assured (RoPE scaling may "
                   "be needed)", err=True)
    cfg = RunConfig(n_ctx=n_ctx, n_batch=n_batch, n_ubatch=n_ubatch, n_seq_max=n_seq_max, kv_unified=kv_unified,
                    type_k=type_k, type_v=type_v, flash_attn=resolve_flash_attn(flash_attn, devices),
                    swa_full=swa_full, no_kv_offload=no_kv_offload, op_offload=not no_op_offload)
    validate(model, cfg)
    return cfg
