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
cores) and ``/sys/devices/system/node`` (NUMA nodes). RAM bandwidth: the SMBIOS memory-device records (type 17:
DDR generation, configured MT/s, channel from the bank locator) in ``/sys/firmware/dmi/tables/DMI`` where
readable (root only on most systems); else a measured multi-threaded copy bandwidth when asked (``--measure``);
else the presets' stated default.

Each detector takes its inputs as paths and PATH so the tests can hand it recorded files and tools.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from moeplace.errors import MoeplaceError
from moeplace.hardware import (
    BACKEND_PREFIX,
    GB,
    Catalog,
    Device,
    Preset,
    _norm,
    catalog,
    link_bandwidth,
    parse_gpus,
    system_ram_bytes,
)
from moeplace.sizes import format_size

GIB = 1 << 30
_TOOL_TIMEOUT = 10.0  # seconds; a hung vendor tool must not hang moeplace


@dataclass(frozen=True)
class Gpu:
    """One GPU as a detector saw it. ``free`` is None where the source does not say."""

    backend: str  # a key of hardware.BACKEND_PREFIX
    label: str
    total: int
    free: int | None
    source: str
    name: str = ""  # llama.cpp's buffer name when llama.cpp itself listed it, else numbered later
    bandwidth: float = 0.0  # peak bytes/s where the source gives it
    link: str = ""  # PCIe "GEN xLANES" (4.0x16) where the source gives it
    pool: int = 0  # unified memory (Apple): the whole pool the GPU shares with the host


@dataclass(frozen=True)
class Dimm:
    """A populated SMBIOS type-17 memory device."""

    kind: str  # DDR4, DDR5, LPDDR5...
    mts: int  # configured speed in MT/s (the rated speed where no configured speed is recorded)
    size: int  # bytes
    channel: str  # channel named in the locator strings, "" where none is


@dataclass(frozen=True)
class RamBandwidth:
    bandwidth: float  # peak bytes/s, or the measured copy rate
    spec: str  # what the detected line shows: "2x DDR5-6000", "measured 31.2 GB/s copy"
    source: str  # dmi | measured | default


@dataclass(frozen=True)
class Machine:
    gpus: tuple[Gpu, ...]
    ram_total: int
    ram_available: int
    threads: int
    cores: int
    numa_nodes: int
    ram_bw: RamBandwidth
    notes: tuple[str, ...]  # every assumption and fallback, in words
    searched_gpus: bool = True  # False when the user named the GPUs and none were looked for

    def line(self) -> str:
        """``detected: CUDA0 RTX 3090 24.00 GiB (22.9 free), RAM 64 GiB (51 available), 2x DDR5-6000, ...``"""
        parts = []
        for name, g in zip(gpu_names(self.gpus), self.gpus):
            free = f" ({g.free / GIB:.1f} free)" if g.free is not None else ""
            parts.append(f"{name} {short_label(g.label)} {format_size(g.total)}{free}")
        if not self.gpus and self.searched_gpus:
            parts.append("no GPU")
        parts.append(f"RAM {self.ram_total / GIB:.0f} GiB ({self.ram_available / GIB:.0f} available)")
        parts.append(self.ram_bw.spec)
        parts.append(f"{self.threads} threads ({self.cores} cores)")
        parts.append(f"{self.numa_nodes} NUMA node" + ("s" if self.numa_nodes != 1 else ""))
        return "detected: " + ", ".join(parts)


def short_label(label: str) -> str:
    """'NVIDIA GeForce RTX 3090' -> 'RTX 3090': vendor words dropped for the one-line summary."""
    words = [w for w in label.split() if w.lower() not in _VENDOR_WORDS]
    return " ".join(words) or label


_VENDOR_WORDS = {"nvidia", "geforce", "amd", "radeon", "intel(r)", "intel", "(tm)", "apple", "ati", "graphics"}


def gpu_names(gpus: Sequence[Gpu]) -> list[str]:
    """llama.cpp buffer names: the one llama.cpp gave, else numbered per backend in detection order."""
    counters: dict[str, int] = {}
    out = []
    for g in gpus:
        n = counters.get(g.backend, 0)
        counters[g.backend] = n + 1
        out.append(g.name or f"{BACKEND_PREFIX[g.backend]}{n}")
    return out


# --- running tools -------------------------------------------------------------------------------------------


def _run(argv: Sequence[str], path: str | None) -> str | None:
    """stdout of a tool found on ``path`` (default: PATH), or None when it is absent or fails."""
    exe = shutil.which(argv[0], path=path)
    if exe is None:
        return None
    try:
        res = subprocess.run([exe, *argv[1:]], capture_output=True, text=True, timeout=_TOOL_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout if res.returncode == 0 else None


# --- GPU detectors ---------------------------------------------------------------------------------------------

# ggml_backend_dev_name prefixes -> moeplace backend (ggml-cuda names HIP devices ROCm<n>; Metal is MTL<n>)
_GGML_PREFIX = {v: k for k, v in BACKEND_PREFIX.items()}


def gpus_llamacpp() -> list[Gpu] | None:
    """GPUs in the installed llama.cpp's own order, names and free memory; None when llama.cpp is not installed,
    [] when its build or this machine has no GPU."""
    from moeplace import engine  # optional dependency, imported only here

    if not engine.available():
        return None
    out = []
    for d in engine.backend_devices():
        if not d.is_gpu:
            continue
        m = re.match(r"([A-Za-z]+)\d*$", d.name)
        backend = _GGML_PREFIX.get(m.group(1) if m else "", "")
        if not backend:
            continue  # a backend moeplace cannot name in -ot (reported by llama.cpp, not placeable here)
        out.append(Gpu(backend=backend, label=d.description or d.name, total=d.total, free=d.free,
                       source="llama.cpp", name=d.name))
    return out


def gpus_nvml() -> list[Gpu] | None:
    """NVIDIA GPUs through NVML (``pip install nvidia-ml-py``); None when pynvml or the driver is missing."""
    try:
        import pynvml  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # pynvml.NVMLError: no driver, no library
        return None
    try:
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            bw, link = 0.0, ""
            try:
                # GDDR and HBM: peak = memory clock (MHz, as NVML reports it) x 2 transfers x bus width / 8
                bw = pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_MEM) * 1e6 * 2 * \
                    pynvml.nvmlDeviceGetMemoryBusWidth(h) / 8
                link = (f"{pynvml.nvmlDeviceGetMaxPcieLinkGeneration(h)}.0"
                        f"x{pynvml.nvmlDeviceGetMaxPcieLinkWidth(h)}")
            except Exception:  # older drivers lack some queries: the preset or the default fills in
                pass
            out.append(Gpu("cuda", name.decode() if isinstance(name, bytes) else str(name), int(mem.total),
                           int(mem.free), "NVML", bandwidth=bw, link=link))
        return out
    finally:
        pynvml.nvmlShutdown()


_SMI_FIELDS = ("name,memory.total,memory.free,clocks.max.memory,pcie.link.gen.max,pcie.link.width.max")


def gpus_nvidia_smi(path: str | None = None) -> list[Gpu] | None:
    """NVIDIA GPUs from ``nvidia-smi --query-gpu=... --format=csv,noheader,nounits`` (MiB and MHz); the memory
    bus width is not a query field, so bandwidth comes from a preset or the default."""
    text = _run(["nvidia-smi", f"--query-gpu={_SMI_FIELDS}", "--format=csv,noheader,nounits"], path)
    if text is None:
        return None
    out = []
    for row in csv.reader(io.StringIO(text)):
        if len(row) < 3:
            continue
        name, total, free, *rest = (c.strip() for c in row)
        try:
            tot, fr = int(float(total)) << 20, int(float(free)) << 20
        except ValueError:
            continue
        link = ""
        if len(rest) >= 3 and rest[1].isdigit() and rest[2].isdigit():
            link = f"{rest[1]}.0x{rest[2]}"
        out.append(Gpu("cuda", name, tot, fr, "nvidia-smi", link=link))
    return out


def gpus_rocm_smi(path: str | None = None) -> list[Gpu] | None:
    """AMD GPUs from ``rocm-smi --showproductname --showmeminfo vram --json``: per card, "VRAM Total Memory (B)",
    "VRAM Total Used Memory (B)" and "Card Series" (strings)."""
    text = _run(["rocm-smi", "--showproductname", "--showmeminfo", "vram", "--json"], path)
    if text is None:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return None
    out = []
    cards = sorted((k for k in data if re.fullmatch(r"card\d+", k)), key=lambda k: int(k[4:]))
    for key in cards:
        card = data[key]
        try:
            total = int(card["VRAM Total Memory (B)"])
            used = int(card.get("VRAM Total Used Memory (B)", 0))
        except (KeyError, ValueError, TypeError):
            continue
        label = card.get("Card Series") or card.get("Card series") or key
        out.append(Gpu("rocm", str(label), total, max(0, total - used), "rocm-smi"))
    return out


def gpus_apple(path: str | None = None, platform: str = sys.platform, cat: Catalog | None = None) -> list[Gpu] | None:
    """Apple Silicon: the unified pool from ``sysctl -n hw.memsize`` and the chip from
    ``machdep.cpu.brand_string``; the GPU's share is the presets' gpu_fraction (Metal's
    recommendedMaxWorkingSetSize is not readable from a shell)."""
    if platform != "darwin":
        return None
    mem = _run(["sysctl", "-n", "hw.memsize"], path)
    if mem is None or not mem.strip().isdigit():
        return None
    brand = (_run(["sysctl", "-n", "machdep.cpu.brand_string"], path) or "Apple GPU").strip()
    if not brand.startswith("Apple"):
        return []  # an Intel Mac: its GPU is not a Metal device llama.cpp offloads MoE layers to usefully
    total = int(mem.strip())
    frac = apple_gpu_fraction(total, cat)
    return [Gpu("metal", brand, round(total * frac), None, f"sysctl, GPU share {frac:.2f} of the pool assumed",
                pool=total)]


# Metal's recommendedMaxWorkingSetSize as a share of the pool, as llama.cpp logs it: 10922.67 MB of 16 GB = 2/3
# (https://github.com/abetlen/llama-cpp-python/issues/687), 49152 MiB of 64 GB = 3/4
# (https://github.com/ggml-org/llama.cpp/issues/1870), 107.52 GiB of 128 GB = 0.84 on macOS 26
# (https://github.com/antirez/ds4/pull/893). Above 36 GB the presets' gpu_fraction (0.75) is used: conservative.
APPLE_SMALL_GPU_FRACTION = 2 / 3
APPLE_SMALL_POOL = 36 * GIB


def apple_gpu_fraction(pool: int, cat: Catalog | None = None) -> float:
    """Metal's recommended working set as a fraction of the pool: the presets' figure above 36 GB, two thirds at
    and below it (see the sources above)."""
    cat = cat or catalog()
    fractions = [p.memory / p.total_memory for p in cat.presets.values() if p.unified and p.total_memory]
    return (max(fractions) if fractions else 0.75) if pool > APPLE_SMALL_POOL else APPLE_SMALL_GPU_FRACTION


def gpus_vulkan(path: str | None = None, cat: Catalog | None = None) -> list[Gpu] | None:
    """GPUs from ``vulkaninfo --summary`` (``GPUn:`` blocks of ``key = value`` lines). The summary has no memory
    sizes, so only GPUs a preset recognises by name are returned; the others are reported."""
    text = _run(["vulkaninfo", "--summary"], path)
    if text is None:
        return None
    cat = cat or catalog()
    out = []
    for block in re.split(r"^GPU\d+:\s*$", text, flags=re.MULTILINE)[1:]:
        fields = dict(re.findall(r"^\s*(\w+)\s*=\s*(.*?)\s*$", block, flags=re.MULTILINE))
        if "GPU" not in fields.get("deviceType", ""):
            continue  # llvmpipe and other CPU implementations
        label = fields.get("deviceName", "Vulkan GPU")
        p = match_preset(label, None, cat)
        out.append(Gpu("vulkan", label, p.total_memory if p else 0, None, "vulkaninfo"))
    return out


def match_preset(label: str, total: int | None, cat: Catalog | None = None) -> Preset | None:
    """The preset a detected device name denotes ('NVIDIA GeForce RTX 3090' -> rtx3090), preferring one whose
    memory is within 10% of ``total`` when several names fit."""
    cat = cat or catalog()
    want = _norm(label)
    bare = _norm(" ".join(w for w in label.split() if w.lower() not in _VENDOR_WORDS))
    hits = []
    for key, p in cat.presets.items():
        names = {key, _norm(p.label), *(a for a, k in cat.aliases.items() if k == key)}
        if want in names or bare in names or (len(bare) >= 4 and any(n.startswith(bare) for n in names)):
            hits.append(p)
    if total:  # the same name at another memory size may have another bus width: refuse it
        hits = [p for p in hits if abs(p.total_memory - total) <= 0.1 * p.total_memory]
    return hits[0] if len(hits) == 1 else None


# --- host detectors --------------------------------------------------------------------------------------------


def meminfo(proc: Path = Path("/proc")) -> tuple[int, int]:
    """(MemTotal, MemAvailable) in bytes from /proc/meminfo; elsewhere (macOS, Windows) the physical RAM for
    both."""
    try:
        text = (proc / "meminfo").read_text()
    except OSError:
        n = system_ram_bytes()
        return n, n
    vals = {k: int(v) * 1024 for k, v in re.findall(r"^(\w+):\s+(\d+)\s*kB", text, flags=re.MULTILINE)}
    total = vals.get("MemTotal", 0)
    return total, vals.get("MemAvailable", vals.get("MemFree", 0) + vals.get("Cached", 0))


def cpu_topology(sys_root: Path = Path("/sys")) -> tuple[int, int]:
    """(threads, physical cores) of the online CPUs, from each CPU's topology/core_cpus_list (thread siblings)."""
    cpu_dir = sys_root / "devices/system/cpu"
    threads = 0
    cores: set[str] = set()
    for d in cpu_dir.glob("cpu[0-9]*"):
        online = d / "online"
        if online.exists() and online.read_text().strip() == "0":
            continue
        threads += 1
        topo = d / "topology"
        sib = topo / "core_cpus_list" if (topo / "core_cpus_list").exists() else topo / "thread_siblings_list"
        try:
            pkg = (topo / "physical_package_id").read_text().strip() if (topo / "physical_package_id").exists() else ""
            cores.add(pkg + ":" + sib.read_text().strip())
        except OSError:
            cores.add(d.name)
    if threads == 0:
        n = os.cpu_count() or 1
        return n, n
    return threads, max(1, len(cores))


def numa_nodes(sys_root: Path = Path("/sys")) -> int:
    """NUMA nodes with memory or CPUs (/sys/devices/system/node/node<N>); 1 where the kernel does not say."""
    return max(1, len(list((sys_root / "devices/system/node").glob("node[0-9]*"))))


# SMBIOS (DMTF DSP0134 3.x) type 17 "Memory Device": memory type codes (table 76) and field offsets.
_MEMORY_TYPES = {0x12: "DDR", 0x13: "DDR2", 0x18: "DDR3", 0x1A: "DDR4", 0x1B: "LPDDR", 0x1C: "LPDDR2",
                 0x1D: "LPDDR3", 0x1E: "LPDDR4", 0x20: "HBM", 0x21: "HBM2", 0x22: "DDR5", 0x23: "LPDDR5",
                 0x24: "HBM3"}


def _smbios_structures(table: bytes) -> Iterator[tuple[int, bytes, list[str]]]:
    """(type, formatted area, strings) of each structure, up to the end-of-table structure (type 127)."""
    i = 0
    while i + 4 <= len(table):
        typ, length = table[i], table[i + 1]
        if length < 4:
            return
        end = table.find(b"\0\0", i + length)
        if end < 0:
            return
        strings = [s.decode("latin-1").strip() for s in table[i + length:end].split(b"\0")]
        yield typ, table[i:i + length], strings
        if typ == 127:
            return
        i = end + 2


def dmi_dimms(table: bytes) -> list[Dimm]:
    """Populated memory devices of an SMBIOS structure table (the contents of /sys/firmware/dmi/tables/DMI)."""
    out = []
    for typ, f, strings in _smbios_structures(table):
        if typ != 17 or len(f) < 0x17:
            continue

        def word(off: int, f: bytes = f) -> int:
            return struct.unpack_from("<H", f, off)[0] if len(f) >= off + 2 else 0

        def dword(off: int, f: bytes = f) -> int:
            return struct.unpack_from("<I", f, off)[0] if len(f) >= off + 4 else 0

        def string(idx: int, strings: list[str] = strings) -> str:
            return strings[idx - 1] if 0 < idx <= len(strings) else ""

        size_field = word(0x0C)
        if size_field in (0, 0xFFFF):
            continue  # empty slot, or size unknown
        # 0x7FFF: the size is in the Extended Size field (MB); bit 15 set: KB units, else MB
        unit = 10 if size_field & 0x8000 else 20
        size = dword(0x1C) << 20 if size_field == 0x7FFF else (size_field & 0x7FFF) << unit
        speed = word(0x15)
        if speed == 0xFFFF:
            speed = dword(0x54)
        conf = word(0x20)
        if conf == 0xFFFF:
            conf = dword(0x58)
        kind = _MEMORY_TYPES.get(f[0x12], f"type 0x{f[0x12]:02x}")
        loc = f"{string(f[0x10])} {string(f[0x11])}"
        m = re.search(r"channel[\s_-]*([a-z0-9]+)", loc, flags=re.IGNORECASE)
        out.append(Dimm(kind, conf or speed, size, m.group(1).upper() if m else ""))
    return out


def dimm_bandwidth(dimms: Sequence[Dimm]) -> tuple[float, str, str | None]:
    """(peak bytes/s, '2x DDR5-6000', assumption or None): MT/s x 8 bytes per 64-bit channel (the presets'
    rule), channels counted from the locator strings, else one channel per populated DIMM (stated)."""
    mts = min(d.mts for d in dimms)
    kinds = sorted({d.kind for d in dimms})
    named = {d.channel for d in dimms if d.channel}
    if named and all(d.channel for d in dimms):
        channels, note = len(named), None
    else:
        channels = len(dimms)
        note = (f"memory channels assumed = populated DIMMs ({channels}): the firmware's locators do not name "
                "channels; give --ram-bw if two DIMMs share a channel")
    spec = f"{len(dimms)}x {'/'.join(kinds)}-{mts}" + (f" ({channels} channels)" if channels != len(dimms) else "")
    return mts * 1e6 * 8 * channels, spec, note


def measure_copy_bandwidth(seconds: float = 2.0, threads: int | None = None, nbytes: int = 256 << 20) -> float:
    """Bytes/s a multi-threaded numpy copy moves (read + write counted, as STREAM's Copy does) over ``nbytes``
    (each of source and destination; beyond CPU caches) split between ``threads``, for about ``seconds``. A
    lower bound of the peak: the cores may not saturate the memory controller, and write-allocate traffic is
    not counted."""
    import numpy as np

    threads = threads or (os.cpu_count() or 1)
    per = max(1 << 20, nbytes // threads) // 8
    pairs = [(np.full(per, 1.0), np.full(per, 0.0)) for _ in range(threads)]  # pages touched before timing

    def work(pair: tuple[object, object], deadline: float) -> int:
        src, dst = pair
        n = 0
        while time.perf_counter() < deadline:
            np.copyto(dst, src)  # type: ignore[call-overload]
            n += 1
        return n

    start = time.perf_counter()
    deadline = start + seconds
    with ThreadPoolExecutor(threads) as ex:
        counts = list(ex.map(lambda p: work(p, deadline), pairs))
    elapsed = time.perf_counter() - start
    return sum(counts) * per * 8 * 2 / elapsed


# --- putting it together ---------------------------------------------------------------------------------------

GpuDetector = Callable[[], "list[Gpu] | None"]


def detect_gpus(path: str | None = None, platform: str = sys.platform,
                use_llamacpp: bool = True) -> tuple[list[Gpu], list[str]]:
    """GPUs from the first source that finds any, and notes on what was tried and assumed."""
    notes: list[str] = []
    sources: list[tuple[str, GpuDetector]] = []
    if use_llamacpp:
        sources.append(("llama.cpp", gpus_llamacpp))
    sources += [("NVML", gpus_nvml), ("nvidia-smi", lambda: gpus_nvidia_smi(path)),
                ("rocm-smi", lambda: gpus_rocm_smi(path)), ("sysctl", lambda: gpus_apple(path, platform)),
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
    found, notes = detect_gpus(path, platform, use_llamacpp) if gpus else ([], [])
    total, avail = meminfo(proc)
    threads, cores = cpu_topology(sys_root)
    bw, bw_notes = detect_ram_bandwidth(measure, sys_root / "firmware/dmi/tables/DMI", threads)
    return Machine(tuple(found), total, avail, threads, cores, numa_nodes(sys_root), bw, tuple(notes + bw_notes),
                   searched_gpus=gpus)


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
        link = dev.link_bandwidth
        if g.link and not dev.unified:
            with contextlib.suppress(MoeplaceError):  # an odd link report keeps the preset's link
                link = link_bandwidth(g.link, cat)
        if g.pool:
            dev = replace(dev, unified=True, pool=g.pool, link_bandwidth=0.0)
            link = 0.0
        dev = replace(dev, name=name, label=g.label, memory=usable,
                      link_bandwidth=link, notes=tuple(notes))
        out.append(dev)
    return tuple(out)
