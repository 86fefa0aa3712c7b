"""What this machine has: GPUs, RAM and its bandwidth, cores, NUMA nodes, detected when the user gives no
hardware flags, with every figure's source and every assumption named.

GPUs, first source that answers wins:

1. The installed llama.cpp's own device list (:func:`moeplace.engine.backend_devices`: ggml's
   ``ggml_backend_dev_get``/``_name``/``_description``/``_memory``) when its build has a GPU backend: the names
   (CUDA0, ROCm1, Vulkan0...), order and free memory llama.cpp itself uses, the figures ``--fit`` plans with.
2. NVML (``nvidia-ml-py``, optional) or, without it, ``nvidia-smi --query-gpu`` (CSV): NVIDIA GPUs, named CUDA<i>
   in NVML's order (PCI bus order; CUDA's default order is fastest first, so this is stated as an assumption).
3. ``rocm-smi --showproductname --showmeminfo vram --json``: AMD GPUs, named ROCm<i>.
4. macOS: ``sysctl hw.memsize``; Metal lets the GPU wire at most ``recommendedMaxWorkingSetSize``, which is not
   exposed to a shell, so the fraction of the pool is the presets' ``gpu_fraction`` (see
   ``profiles/hardware/apple.json``).
5. ``vulkaninfo --summary``: device names only, so sizes come from a matching preset.

The host comes from ``/proc/meminfo`` (MemTotal, MemAvailable), ``/sys/devices/system/cpu`` (threads, physical
cores), ``/proc/cpuinfo`` (the CPU's vector class, which sets its prompt rate) and ``/sys/devices/system/node``
(NUMA nodes). RAM bandwidth: the SMBIOS memory-device records (type 17:
DDR generation, configured MT/s, channel from the bank locator) in ``/sys/firmware/dmi/tables/DMI`` where
readable (root only on most systems); else a measured multi-threaded copy bandwidth when asked (``--measure``);
else the presets' stated default.

Each detector takes its inputs as paths and PATH so the tests can hand it recorded files and tools.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from moeplace.errors import MoeplaceError
from moeplace.hardware import GB, Catalog, Device, catalog, link_bandwidth, parse_gpus
from moeplace.machine.facts import Dimm, Gpu, Machine, RamBandwidth, gpu_names, short_label
from moeplace.machine.gpus import (
    apple_gpu_fraction,
    gpus_amdgpu_sysfs,
    gpus_apple,
    gpus_llamacpp,
    gpus_nvidia_smi,
    gpus_nvml,
    gpus_rocm_smi,
    gpus_vulkan,
    match_preset,
)
from moeplace.machine.host import (
    cpu_ccds,
    cpu_simd,
    cpu_topology,
    dimm_bandwidth,
    dmi_dimms,
    measure_copy_bandwidth,
    meminfo,
    numa_nodes,
)
from moeplace.sizes import format_size

__all__ = ["Dimm", "Gpu", "Machine", "RamBandwidth", "apple_gpu_fraction", "cpu_ccds", "cpu_simd", "cpu_topology",
           "detect", "detect_gpus", "detect_ram_bandwidth", "dimm_bandwidth", "dmi_dimms", "gpu_devices", "gpu_names",
           "gpus_apple", "gpus_llamacpp", "gpus_nvidia_smi", "gpus_nvml", "gpus_rocm_smi", "gpus_vulkan",
           "match_preset", "measure_copy_bandwidth", "meminfo", "numa_nodes", "short_label"]


GpuDetector = Callable[[], "list[Gpu] | None"]


def detect_gpus(path: str | None = None, platform: str = sys.platform,
                use_llamacpp: bool = True, sys_root: Path = Path("/sys")) -> tuple[list[Gpu], list[str]]:
    """GPUs from the first source that finds any, and notes on what was tried and assumed."""
    notes: list[str] = []
    sources: list[tuple[str, GpuDetector]] = []
    if use_llamacpp:
        sources.append(("llama.cpp", gpus_llamacpp))
    sources += [("NVML", gpus_nvml), ("nvidia-smi", lambda: gpus_nvidia_smi(path)),
                ("rocm-smi", lambda: gpus_rocm_smi(path)), ("amdgpu sysfs", lambda: gpus_amdgpu_sysfs(sys_root)),
                ("sysctl", lambda: gpus_apple(path, platform)),
                ("vulkaninfo", lambda: gpus_vulkan(path))]
    llama_said_none = False
    for name, fn in sources:
        try:
            found = fn()
        except Exception as e:  # a detector must never stop a plan: report it and try the next
            notes.append(f"GPU detection through {name} failed ({e})")
            continue
        if found is None:
            continue
        if name == "llama.cpp" and not found:
            llama_said_none = True
            continue
        unsized = [g for g in found if g.total <= 0]
        if unsized:
            notes.append(f"{', '.join(g.label for g in unsized)} ({name}): memory size unknown, left out; "
                         "give --vram")
        found = [g for g in found if g.total > 0]
        if not found:
            continue
        if name in ("NVML", "nvidia-smi") and len(found) > 1:
            notes.append(f"GPU order from {name} (PCI bus) assumed to be CUDA's: set CUDA_DEVICE_ORDER=PCI_BUS_ID "
                         "when running llama.cpp")
        if llama_said_none:
            notes.append(f"the installed llama.cpp has no GPU backend; GPUs found through {name}: the plan is for "
                         "a GPU build of llama.cpp")
        return found, notes
    return [], notes


def detect_ram_bandwidth(measure: bool, dmi: Path = Path("/sys/firmware/dmi/tables/DMI"), threads: int = 1,
                         cat: Catalog | None = None) -> tuple[RamBandwidth, list[str]]:
    """RAM bandwidth from the DMI memory devices, else a measured copy (when ``measure``), else the default."""
    from moeplace.hardware import ram_bandwidth

    cat = cat or catalog()
    notes = []
    why = "not present"
    try:
        dimms = dmi_dimms(dmi.read_bytes())
        why = "lists no populated memory device with a speed" if not dimms else why
    except PermissionError:
        dimms, why = [], "not readable without root"
    except OSError:
        dimms = []
    dimms = [d for d in dimms if d.mts > 0]
    if dimms:
        bw, spec, note = dimm_bandwidth(dimms)
        if note:
            notes.append(note)
        return RamBandwidth(bw, spec, "dmi"), notes
    if measure:
        bw = measure_copy_bandwidth(threads=threads)
        notes.append(f"RAM bandwidth measured: {bw / GB:.1f} GB/s multi-threaded copy (a lower bound of the peak), "
                     "used as the peak")
        return RamBandwidth(bw, f"measured {bw / GB:.1f} GB/s copy", "measured"), notes
    bw = ram_bandwidth(cat.default_ram_bw, cat)
    notes.append(f"RAM bandwidth assumed {cat.default_ram_bw} = {bw / GB:.1f} GB/s: the DMI memory table ({dmi}) is "
                 f"{why}; give --ram-bw, or --measure to time a copy")
    return RamBandwidth(bw, f"{cat.default_ram_bw} (assumed)", "default"), notes


def detect(*, gpus: bool = True, measure: bool = False, path: str | None = None, platform: str = sys.platform,
           proc: Path = Path("/proc"), sys_root: Path = Path("/sys"), use_llamacpp: bool = True) -> Machine:
    """Everything this module can find out about the machine (``gpus=False`` skips the GPU detectors)."""
    found, notes = detect_gpus(path, platform, use_llamacpp, sys_root) if gpus else ([], [])
    total, avail = meminfo(proc)
    threads, cores = cpu_topology(sys_root)
    bw, bw_notes = detect_ram_bandwidth(measure, sys_root / "firmware/dmi/tables/DMI", threads)
    return Machine(tuple(found), total, avail, threads, cores, numa_nodes(sys_root), bw, tuple(notes + bw_notes),
                   searched_gpus=gpus, simd=cpu_simd(proc, platform), ccds=cpu_ccds(proc, sys_root))


def gpu_devices(machine: Machine, backend: str | None = None, cat: Catalog | None = None) -> tuple[Device, ...]:
    """Devices for the detected GPUs, sized to their *free* memory where known (as llama.cpp's --fit plans), with
    a preset's bandwidth when the name matches one, else the source's figure, else the stated default."""
    cat = cat or catalog()
    out = []
    gpus = [replace(g, backend=backend, name="") if backend and backend != g.backend else g for g in machine.gpus]
    for name, g in zip(gpu_names(gpus), gpus):
        b = g.backend
        preset = match_preset(g.label, g.pool or g.total, cat)
        if preset is not None:
            (dev,) = parse_gpus([f"{b}:{preset.key}"], cat=cat)
        elif g.bandwidth:
            (dev,) = parse_gpus([f"{b}:{g.total}B@{g.bandwidth / GB:.0f}"], cat=cat)
        else:
            (dev,) = parse_gpus([f"{b}:{g.total}B"], cat=cat)
        usable = g.free if g.free is not None else g.total
        notes = list(dev.notes)
        if preset is None:
            notes.append(f"{g.label}: no preset of that name; bandwidth " +
                         ("from " + g.source if g.bandwidth else "assumed (give --gpu SIZE@GB/s)"))
        if g.free is not None:
            notes.append(f"planning for the free memory {format_size(g.free)} of {format_size(g.total)} "
                         f"({g.source}), as llama.cpp --fit does, minus the margin")
        link, assumed = dev.link_bandwidth, dev.link_assumed
        if g.link and not dev.unified:
            with contextlib.suppress(MoeplaceError):  # an odd link report keeps the preset's link
                link, assumed = link_bandwidth(g.link, cat), False
        if g.pool:
            dev = replace(dev, unified=True, pool=g.pool, link_bandwidth=0.0)
            link = 0.0
        dev = replace(dev, name=name, label=g.label, memory=usable,
                      link_bandwidth=link, link_assumed=assumed, notes=tuple(notes))
        out.append(dev)
    return tuple(out)
