"""GPU detectors, one per source: llama.cpp's own device list, NVML, nvidia-smi, rocm-smi, the amdgpu driver's sysfs
files, macOS, vulkaninfo."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
import shutil
import sys
from pathlib import Path

from moeplace.hardware import (
    BACKEND_PREFIX,
    Catalog,
    Preset,
    _norm,
    catalog,
)
from moeplace.machine.facts import VENDOR_WORDS, Gpu, run_tool
from moeplace.sizes import GIB

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
    text = run_tool(["nvidia-smi", f"--query-gpu={_SMI_FIELDS}", "--format=csv,noheader,nounits"], path)
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
    text = run_tool(["rocm-smi", "--showproductname", "--showmeminfo", "vram", "--json"], path)
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


# PCIe transfer rate per lane (sysfs max_link_speed, GT/s) -> generation
_PCIE_GEN = {"2.5": "1.0", "5.0": "2.0", "8.0": "3.0", "16.0": "4.0", "32.0": "5.0", "64.0": "6.0"}


def gpus_amdgpu_sysfs(sys_root: Path = Path("/sys")) -> list[Gpu] | None:
    """AMD GPUs from the amdgpu kernel driver's files (class/drm/cardN/device: ``mem_info_vram_total``,
    ``mem_info_vram_used``, ``product_name`` where the board has one, ``max_link_speed``/``max_link_width``):
    no tool needed, so it finds cards where ROCm ships amd-smi instead of rocm-smi, or where no ROCm is
    installed at all (llama.cpp's Vulkan build, the backend then assumed). None when no card has those files."""
    cards = sorted((p for p in (sys_root / "class" / "drm").glob("card*") if re.fullmatch(r"card\d+", p.name)),
                   key=lambda p: int(p.name[4:]))
    rocm = Path("/opt/rocm").is_dir() or shutil.which("hipconfig") is not None
    out = []
    for card in cards:
        dev = card / "device"
        try:
            total = int((dev / "mem_info_vram_total").read_text().strip())
            used = int((dev / "mem_info_vram_used").read_text().strip())
        except (OSError, ValueError):
            continue
        label = ""
        with contextlib.suppress(OSError):
            label = (dev / "product_name").read_text().strip()
        if not label:
            with contextlib.suppress(OSError):
                label = f"AMD GPU {(dev / 'device').read_text().strip()}"
        link = ""
        with contextlib.suppress(OSError, ValueError):
            speed = (dev / "max_link_speed").read_text().split()[0]
            width = int((dev / "max_link_width").read_text().strip())
            link = f"{_PCIE_GEN[speed]}x{width}" if speed in _PCIE_GEN else ""
        out.append(Gpu("rocm" if rocm else "vulkan", label or card.name, total, max(0, total - used),
                       "amdgpu sysfs", link=link))
    return out or None


def gpus_apple(path: str | None = None, platform: str = sys.platform, cat: Catalog | None = None) -> list[Gpu] | None:
    """Apple Silicon: the unified pool from ``sysctl -n hw.memsize`` and the chip from
    ``machdep.cpu.brand_string``; the GPU's share is the presets' gpu_fraction (Metal's
    recommendedMaxWorkingSetSize is not readable from a shell)."""
    if platform != "darwin":
        return None
    mem = run_tool(["sysctl", "-n", "hw.memsize"], path)
    if mem is None or not mem.strip().isdigit():
        return None
    brand = (run_tool(["sysctl", "-n", "machdep.cpu.brand_string"], path) or "Apple GPU").strip()
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
    text = run_tool(["vulkaninfo", "--summary"], path)
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
    bare = _norm(" ".join(w for w in label.split() if w.lower() not in VENDOR_WORDS))
    hits = []
    for key, p in cat.presets.items():
        names = {key, _norm(p.label), *(a for a, k in cat.aliases.items() if k == key)}
        if want in names or bare in names or (len(bare) >= 4 and any(n.startswith(bare) for n in names)):
            hits.append(p)
    if total:  # the same name at another memory size may have another bus width: refuse it
        hits = [p for p in hits if abs(p.total_memory - total) <= 0.1 * p.total_memory]
    return hits[0] if len(hits) == 1 else None


