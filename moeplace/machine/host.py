"""Host detectors: RAM total and available, cores and threads, NUMA nodes, DIMMs from SMBIOS, a copy-bandwidth
probe."""

from __future__ import annotations

import os
import platform
import re
import struct
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from moeplace.hardware import (
    system_ram_bytes,
)
from moeplace.machine.facts import Dimm


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


def _cpuinfo(proc: Path) -> dict[str, str] | None:
    """The first processor's fields of /proc/cpuinfo (later blocks repeat it), keys lower-cased; None without it."""
    try:
        text = (proc / "cpuinfo").read_text(errors="replace")
    except OSError:
        return None
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            if fields:
                break
            continue
        fields.setdefault(key.strip().lower(), value.strip())
    return fields


def cpu_simd(proc: Path = Path("/proc"), system: str = sys.platform, machine: str = platform.machine()) -> str:
    """The CPU's vector class (:meth:`moeplace.hardware.SpeedParams.simd_factor`) from /proc/cpuinfo's flags: AMD
    family 26 (Zen 5) with AVX-512 is zen5 except the Ryzen AI 300 laptop parts, whose AVX-512 runs on 256-bit
    units. Without /proc (macOS) an arm64 machine is neon; "" where nothing known is said (the reference class is
    assumed)."""
    fields = _cpuinfo(proc)
    if fields is None:
        return "neon" if system == "darwin" and machine in ("arm64", "aarch64") else ""
    flags = set((fields.get("flags") or fields.get("features") or "").split())
    if "asimd" in flags:
        return "neon"
    if "avx512f" not in flags:
        return "avx2" if "avx2" in flags else ""
    if "avx512_vnni" not in flags:
        return "avx512"
    mobile_zen5 = re.search(r"Ryzen AI (5|7|9)\b", fields.get("model name", ""), re.IGNORECASE)
    return "zen5" if fields.get("cpu family") == "26" and not mobile_zen5 else "avx512-vnni"


# AMD parts whose cores sit on core dies (CCDs) linked to a separate I/O die: EPYC, Threadripper and desktop Ryzen
# numbered without a suffix other than X/X3D (G and F parts, laptop parts and the Ryzen AI line are one die).
_CHIPLET_NAME = re.compile(r"EPYC|Threadripper|Ryzen \d+ \d{4}(X3D|X)?\b", re.IGNORECASE)


def cpu_ccds(proc: Path = Path("/proc"), sys_root: Path = Path("/sys")) -> int:
    """The core dies (CCDs) of an AMD chiplet CPU, all sockets: the distinct L3 caches sysfs lists (one per CCD
    from Zen 3 on, one per four-core complex, two per CCD, on Zen 2). 0 for other CPUs (their cores reach memory
    without one link per die), Zen and Zen+ (no I/O die), and where /proc or sysfs do not say."""
    fields = _cpuinfo(proc)
    name = (fields or {}).get("model name", "")
    if fields is None or fields.get("vendor_id") != "AuthenticAMD" or not _CHIPLET_NAME.search(name) \
            or "radeon" in name.lower():
        return 0
    family, model = fields.get("cpu family", ""), fields.get("model", "")
    zen2 = family == "23"
    if zen2 and not (model.isdigit() and int(model) >= 0x30):
        return 0  # Zen, Zen+: the memory controllers sit on the core dies
    l3 = set()
    for cache in (sys_root / "devices/system/cpu").glob("cpu[0-9]*/cache/index[0-9]*"):
        try:
            if (cache / "level").read_text().strip() == "3":
                l3.add((cache / "shared_cpu_list").read_text().strip())
        except OSError:
            continue
    return max(1, len(l3) // 2) if zen2 and l3 else len(l3)


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


