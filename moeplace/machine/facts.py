"""What detection finds (GPUs, DIMMs, RAM bandwidth, the machine) and running vendor tools safely."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from moeplace.hardware import (
    BACKEND_PREFIX,
)
from moeplace.sizes import GIB, format_size

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
    simd: str = ""  # the CPU's vector class from /proc/cpuinfo ("": not known)
    ccds: int = 0  # an AMD chiplet CPU's core dies (moeplace.machine.host.cpu_ccds; 0: none or not known)

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
        ccds = f", {self.ccds} CCD" + ("s" if self.ccds != 1 else "") if self.ccds else ""
        parts.append(f"{self.threads} threads ({self.cores} cores{', ' + self.simd if self.simd else ''}{ccds})")
        parts.append(f"{self.numa_nodes} NUMA node" + ("s" if self.numa_nodes != 1 else ""))
        return "detected: " + ", ".join(parts)


def short_label(label: str) -> str:
    """'NVIDIA GeForce RTX 3090' -> 'RTX 3090': vendor words dropped for the one-line summary."""
    words = [w for w in label.split() if w.lower() not in VENDOR_WORDS]
    return " ".join(words) or label


VENDOR_WORDS = {"nvidia", "geforce", "amd", "radeon", "intel(r)", "intel", "(tm)", "apple", "ati", "graphics"}


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


def run_tool(argv: Sequence[str], path: str | None) -> str | None:
    """stdout of a tool found on ``path`` (default: PATH), or None when it is absent or fails."""
    exe = shutil.which(argv[0], path=path)
    if exe is None:
        return None
    try:
        res = subprocess.run([exe, *argv[1:]], capture_output=True, text=True, timeout=_TOOL_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout if res.returncode == 0 else None


