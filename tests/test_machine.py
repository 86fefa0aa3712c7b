"""Hardware detection: each detector reads recorded outputs written in its tool's documented format (real
executables on a PATH in a tmp folder, real /proc and /sys trees, a real SMBIOS table), and the real path runs on
this machine."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from moeplace import machine
from moeplace.cli import main
from moeplace.hardware import GB, link_bandwidth

GIB = 1 << 30


def tool(bin_dir: Path, name: str, stdout: str) -> None:
    """An executable ``name`` on ``bin_dir`` that prints ``stdout`` whatever its arguments."""
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / f"{name}.out").write_text(stdout)
    exe = bin_dir / name
    exe.write_text(f"#!/bin/sh\ncat '{bin_dir / (name + '.out')}'\n")
    exe.chmod(0o755)


# rocm-smi --showproductname --showmeminfo vram --json (ROCm 6.x: one object per card, every value a string;
# keys as in https://github.com/marimo-team/marimo/issues/9237)
ROCM_SMI = {
    "card0": {"VRAM Total Memory (B)": "21458059264", "VRAM Total Used Memory (B)": "27856896",
              "Card Series": "Radeon RX 7900 XT", "Card Model": "0x744c",
              "Card Vendor": "Advanced Micro Devices, Inc. [AMD/ATI]", "Card SKU": "D70401XT",
              "GFX Version": "gfx1100"},
    "card1": {"VRAM Total Memory (B)": "25753026560", "VRAM Total Used Memory (B)": "1073741824",
              "Card Series": "Radeon RX 7900 XTX", "Card Model": "0x744c", "GFX Version": "gfx1100"},
    "system": {"Driver version": "6.8.0"},
}

# nvidia-smi --query-gpu=name,memory.total,memory.free,clocks.max.memory,pcie.link.gen.max,pcie.link.width.max
#            --format=csv,noheader,nounits  (MiB, MHz)
NVIDIA_SMI = "NVIDIA GeForce RTX 3090, 24576, 23450, 9751, 4, 16\nNVIDIA GeForce RTX 3060, 12288, 11800, 7501, 4, 4\n"

# vulkaninfo --summary, "Devices:" section (Vulkan SDK 1.3)
VULKAN = """==========
VULKANINFO
==========

Vulkan Instance Version: 1.3.275

Devices:
========
GPU0:
	apiVersion         = 1.3.277
	driverVersion      = 550.54.14.0
	vendorID           = 0x10de
	deviceID           = 0x2204
	deviceType         = PHYSICAL_DEVICE_TYPE_DISCRETE_GPU
	deviceName         = NVIDIA GeForce RTX 3090
	driverID           = DRIVER_ID_NVIDIA_PROPRIETARY
GPU1:
	apiVersion         = 1.3.274
	vendorID           = 0x10005
	deviceType         = PHYSICAL_DEVICE_TYPE_CPU
	deviceName         = llvmpipe (LLVM 17.0.6, 256 bits)
GPU2:
	vendorID           = 0x1002
	deviceType         = PHYSICAL_DEVICE_TYPE_DISCRETE_GPU
	deviceName         = Some Unknown Card 9000
"""


def test_rocm_smi(tmp_path: Path) -> None:
    tool(tmp_path / "bin", "rocm-smi", json.dumps(ROCM_SMI))
    gpus, _notes = machine.detect_gpus(str(tmp_path / "bin"), platform="linux", use_llamacpp=False)
    assert [g.label for g in gpus] == ["Radeon RX 7900 XT", "Radeon RX 7900 XTX"]
    assert gpus[0].total == 21458059264 and gpus[0].free == 21458059264 - 27856896
    m = machine.Machine(tuple(gpus), 64 * GIB, 50 * GIB, 16, 8, 1, machine.RamBandwidth(96e9, "x", "dmi"), ())
    devs = machine.gpu_devices(m)
    assert [d.name for d in devs] == ["ROCm0", "ROCm1"]
    assert devs[0].memory == gpus[0].free  # planned at free memory
    assert devs[1].bandwidth == 960 * GB  # the RX 7900 XTX preset, matched by name and size
    assert any("free memory" in n and "--fit" in n for n in devs[0].notes)
    assert "detected: ROCm0 RX 7900 XT 19.98 GiB (20.0 free), ROCm1 RX 7900 XTX" in m.line()


def test_nvidia_smi_order_and_link(tmp_path: Path) -> None:
    tool(tmp_path / "bin", "nvidia-smi", NVIDIA_SMI)
    gpus, notes = machine.detect_gpus(str(tmp_path / "bin"), platform="linux", use_llamacpp=False)
    assert [(g.label, g.total, g.free, g.link) for g in gpus] == [
        ("NVIDIA GeForce RTX 3090", 24 * GIB, 23450 << 20, "4.0x16"),
        ("NVIDIA GeForce RTX 3060", 12 * GIB, 11800 << 20, "4.0x4")]
    assert any("CUDA_DEVICE_ORDER=PCI_BUS_ID" in n for n in notes)
    m = machine.Machine(tuple(gpus), 64 * GIB, 50 * GIB, 16, 8, 1, machine.RamBandwidth(96e9, "x", "dmi"), ())
    d0, d1 = machine.gpu_devices(m)
    assert (d0.name, d1.name) == ("CUDA0", "CUDA1")
    assert d1.link_bandwidth == pytest.approx(d0.link_bandwidth / 4)  # x4 link as reported, not the preset's x16
    assert not d0.link_assumed and not d1.link_assumed  # detected: no "host link assumed" note
    assert m.line().startswith("detected: CUDA0 RTX 3090 24.00 GiB (22.9 free), CUDA1 RTX 3060 12.00 GiB")
    # --backend renames every detected GPU, numbered again
    assert [d.name for d in machine.gpu_devices(m, "vulkan")] == ["Vulkan0", "Vulkan1"]


def test_vulkaninfo_sizes_from_presets(tmp_path: Path) -> None:
    tool(tmp_path / "bin", "vulkaninfo", VULKAN)
    gpus, notes = machine.detect_gpus(str(tmp_path / "bin"), platform="linux", use_llamacpp=False,
                                      sys_root=tmp_path / "sys")
    assert [(g.backend, g.label, g.total) for g in gpus] == [("vulkan", "NVIDIA GeForce RTX 3090", 24 * GIB)]
    assert any("Some Unknown Card 9000" in n and "--vram" in n for n in notes)


@pytest.mark.parametrize(("pool_gib", "fraction"), [(16, 2 / 3), (64, 0.75)])
def test_apple_unified_pool(tmp_path: Path, pool_gib: int, fraction: float) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "sysctl"  # sysctl -n KEY prints the value of KEY
    exe.write_text(f'#!/bin/sh\ncase "$2" in hw.memsize) echo {pool_gib * GIB};; '
                   'machdep.cpu.brand_string) echo "Apple M2 Max";; esac\n')
    exe.chmod(0o755)
    assert machine.gpus_apple(str(bin_dir), platform="linux") is None
    (g,) = machine.gpus_apple(str(bin_dir), platform="darwin") or []
    assert g.backend == "metal" and g.pool == pool_gib * GIB
    assert g.total == round(pool_gib * GIB * fraction)
    m = machine.Machine((g,), pool_gib * GIB, pool_gib * GIB, 12, 12, 1, machine.RamBandwidth(1, "", "dmi"), ())
    (dev,) = machine.gpu_devices(m)
    assert dev.name == "MTL0" and dev.unified and dev.pool == pool_gib * GIB and dev.link_bandwidth == 0


def smbios_type17(handle: int, size_mb: int, mem_type: int, speed: int, configured: int, locator: str,
                  bank: str) -> bytes:
    """One SMBIOS 3.x type-17 Memory Device structure (DSP0134 7.18), 0x28 bytes formatted, then its strings."""
    f = bytearray(0x28)
    f[0], f[1] = 17, 0x28
    struct.pack_into("<H", f, 2, handle)
    struct.pack_into("<H", f, 0x08, 64)  # total width
    struct.pack_into("<H", f, 0x0A, 64)  # data width
    struct.pack_into("<H", f, 0x0C, size_mb)
    f[0x0E] = 0x09  # form factor DIMM
    f[0x10], f[0x11] = 1, 2  # device locator, bank locator: string numbers
    f[0x12] = mem_type
    struct.pack_into("<H", f, 0x15, speed)
    struct.pack_into("<H", f, 0x20, configured)
    return bytes(f) + locator.encode() + b"\0" + bank.encode() + b"\0\0"


def fake_sys(root: Path, dimms: list[bytes], cpus: dict[int, str], nodes: int) -> Path:
    """A /sys tree with CPU topology, NUMA nodes and an SMBIOS table."""
    for cpu, siblings in cpus.items():
        topo = root / "devices/system/cpu" / f"cpu{cpu}" / "topology"
        topo.mkdir(parents=True)
        (topo / "core_cpus_list").write_text(siblings + "\n")
        (topo / "physical_package_id").write_text("0\n")
    for n in range(nodes):
        (root / "devices/system/node" / f"node{n}").mkdir(parents=True)
    dmi = root / "firmware/dmi/tables"
    dmi.mkdir(parents=True)
    empty = smbios_type17(0x30, 0, 0x02, 0, 0, "DIMM_A2", "BANK 1")  # an empty slot
    (dmi / "DMI").write_bytes(b"".join(dimms) + empty + bytes([127, 4, 0xFF, 0xFF]) + b"\0\0")
    return root


def test_host_from_proc_and_sys(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "meminfo").write_text("MemTotal:       65536000 kB\nMemFree:         1000000 kB\n"
                                  "MemAvailable:   52428800 kB\nCached:         30000000 kB\n")
    ddr5 = [smbios_type17(0x40 + i, 32768, 0x22, 6400, 6000, f"DIMM {c}1", f"P0 CHANNEL {c}")
            for i, c in enumerate("AB")]
    sys_root = fake_sys(tmp_path / "sys", ddr5, {0: "0,8", 8: "0,8", 1: "1,9", 9: "1,9"}, nodes=1)
    m = machine.detect(gpus=False, proc=proc, sys_root=sys_root)
    assert (m.ram_total, m.ram_available) == (65536000 * 1024, 52428800 * 1024)
    assert (m.threads, m.cores, m.numa_nodes) == (4, 2, 1)
    assert m.ram_bw.bandwidth == 6000e6 * 8 * 2  # configured speed, two named channels
    assert m.line() == "detected: RAM 62 GiB (50 available), 2x DDR5-6000, 4 threads (2 cores), 1 NUMA node"
    assert m.notes == ()


def test_dimms_without_channel_names_are_assumed_one_channel_each(tmp_path: Path) -> None:
    ddr4 = [smbios_type17(0x40 + i, 16384, 0x1A, 3200, 0, f"DIMM{i}", "BANK 0") for i in range(4)]
    sys_root = fake_sys(tmp_path / "sys", ddr4, {0: "0"}, nodes=2)
    m = machine.detect(gpus=False, proc=tmp_path, sys_root=sys_root)
    assert m.ram_bw.spec == "4x DDR4-3200" and m.ram_bw.bandwidth == 3200e6 * 8 * 4
    assert m.numa_nodes == 2
    assert any("channels assumed" in n for n in m.notes)


def test_no_dmi_falls_back_to_the_stated_default_or_a_measurement(tmp_path: Path) -> None:
    (tmp_path / "sys").mkdir()
    m = machine.detect(gpus=False, proc=tmp_path, sys_root=tmp_path / "sys")
    assert m.ram_bw.source == "default" and "(assumed)" in m.ram_bw.spec
    assert any("--measure" in n for n in m.notes)
    bw = machine.measure_copy_bandwidth(seconds=0.2, threads=1, nbytes=32 << 20)
    assert 1e8 < bw < 1e13


def test_real_machine() -> None:
    """The real path on whatever runs the tests (CPU only here): every figure is positive and named."""
    m = machine.detect()
    assert m.ram_total > 0 and 0 < m.ram_available <= m.ram_total
    assert m.threads >= m.cores >= 1 and m.numa_nodes >= 1
    assert m.line().startswith("detected: ")
    assert all(d.memory > 0 for d in machine.gpu_devices(m))


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    r = CliRunner().invoke(main, list(args), env=env)
    return r.exit_code, r.stdout, r.stderr


def test_solve_with_no_flags(model_path: Callable[[str], Path]) -> None:
    """The first command people type: no hardware flags at all. A plan and a command, and what was detected."""
    code, out, err = run("solve", str(model_path("qwen3-30b-a3b")), "--no-scripts")
    assert code == 0, err
    assert "Traceback" not in err
    assert "detected: " in err and "available" in err
    assert "llama-server -m" in out


def test_detected_gpus_and_flags_that_override_them(model_path: Callable[[str], Path], tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    tool(bin_dir, "rocm-smi", json.dumps(ROCM_SMI))
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    model = str(model_path("qwen3-30b-a3b"))
    code, out, err = run("solve", model, "--no-scripts", "--ram", "64G", "--ram-bw", "ddr5-6000x2", env=env)
    assert code == 0, err
    assert "detected: ROCm0 RX 7900 XT" in err
    assert "ROCm0" in out and "ROCm1" in out
    # a flag wins: --vram is used as given, and --gpu none plans for the CPU alone
    code, out, err = run("solve", model, "--no-scripts", "--vram", "12G", "--ram", "64G", "--ram-bw", "80", env=env)
    assert code == 0, err
    assert "detected:" not in err and "CUDA0 12.00 GiB" in out and "ROCm0" not in out
    code, out, err = run("solve", model, "--no-scripts", "--gpu", "none", "--ram", "64G", env=env)
    assert code == 0, err
    assert "detected: RAM" in err and "ROCm0" not in out and "blocks 0-47 run on CPU" in out


@pytest.mark.llama
def test_llama_cpp_device_list() -> None:
    """The installed llama.cpp's own device list (what --fit plans with): names, descriptions, free and total
    memory; a CPU-only build lists the CPU and no GPU, so detection falls through to the other tools."""
    from moeplace import engine

    if not engine.available():
        pytest.skip(engine.unavailable_reason() or "llama.cpp is not installed")
    devs = engine.backend_devices()
    assert devs and all(d.name and d.total >= d.free >= 0 for d in devs)
    gpus = machine.gpus_llamacpp()
    assert gpus is not None
    assert [g.name for g in gpus] == [d.name for d in devs if d.is_gpu]
    assert all(g.free is not None and g.total > 0 for g in gpus)


# A stand-in libnvidia-ml.so.1 answering the NVML C API (nvml.h) with one RTX 3090 on a x16 link and one RTX 3060
# on a x4 link: the same entry points pynvml calls, with the figures those cards report.
FAKE_NVML = r"""
#include <string.h>
typedef struct { unsigned long long total, free, used; } mem_t;
static const char *names[] = {"NVIDIA GeForce RTX 3090", "NVIDIA GeForce RTX 3060"};
static const unsigned long long totals[] = {25769803776ULL, 12884901888ULL}, frees[] = {24589860864ULL, 12348030976ULL};
static const unsigned clocks[] = {9751, 7501}, buses[] = {384, 192}, widths[] = {16, 4};
int nvmlInitWithFlags(unsigned flags) { return 0; }
int nvmlShutdown(void) { return 0; }
const char *nvmlErrorString(int r) { return "error"; }
int nvmlDeviceGetCount_v2(unsigned *n) { *n = 2; return 0; }
int nvmlDeviceGetHandleByIndex_v2(unsigned i, void **h) { *h = (void *)(size_t)(i + 1); return 0; }
int nvmlDeviceGetName(void *h, char *name, unsigned len) { strncpy(name, names[(size_t)h - 1], len); return 0; }
int nvmlDeviceGetMemoryInfo(void *h, mem_t *m) {
    size_t i = (size_t)h - 1; m->total = totals[i]; m->free = frees[i]; m->used = totals[i] - frees[i]; return 0; }
int nvmlDeviceGetMaxClockInfo(void *h, int type, unsigned *c) {  /* type 2: NVML_CLOCK_MEM */
    *c = type == 2 ? clocks[(size_t)h - 1] : 1900; return 0; }
int nvmlDeviceGetMemoryBusWidth(void *h, unsigned *w) { *w = buses[(size_t)h - 1]; return 0; }
int nvmlDeviceGetMaxPcieLinkGeneration(void *h, unsigned *g) { *g = 4; return 0; }
int nvmlDeviceGetMaxPcieLinkWidth(void *h, unsigned *w) { *w = widths[(size_t)h - 1]; return 0; }
"""

_NVML_PROBE = """
import json
from moeplace import machine
print(json.dumps([g.__dict__ for g in machine.gpus_nvml() or []]))
"""


def test_nvml(tmp_path: Path) -> None:
    """NVML through pynvml against a library that answers as the driver's does; without a driver, None."""
    import shutil
    import subprocess
    import sys

    pytest.importorskip("pynvml", reason="nvidia-ml-py is not installed (pip install '.[test]')")
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build the stand-in NVML library")
    (tmp_path / "nvml.c").write_text(FAKE_NVML)
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(tmp_path / "libnvidia-ml.so.1"), str(tmp_path / "nvml.c")],
                   check=True)
    root = Path(__file__).resolve().parents[1]
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root), "LD_LIBRARY_PATH": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", _NVML_PROBE], capture_output=True, text=True, env=env, check=True)
    gpus = json.loads(out.stdout)
    assert [(g["label"], g["total"], g["free"], g["link"], g["source"]) for g in gpus] == [
        ("NVIDIA GeForce RTX 3090", 24 * GIB, 24589860864, "4.0x16", "NVML"),
        ("NVIDIA GeForce RTX 3060", 12 * GIB, 12348030976, "4.0x4", "NVML")]
    assert gpus[0]["bandwidth"] == pytest.approx(936.2e9, rel=1e-3)  # 9751 MHz x 2 x 384 bits / 8
    assert gpus[1]["bandwidth"] == pytest.approx(360.0e9, rel=1e-3)
    env["LD_LIBRARY_PATH"] = str(tmp_path / "none")
    out = subprocess.run([sys.executable, "-c", _NVML_PROBE], capture_output=True, text=True, env=env, check=True)
    assert json.loads(out.stdout) == []


def _amdgpu_card(sys_root: Path, n: int, files: dict[str, str]) -> None:
    dev = sys_root / "class" / "drm" / f"card{n}" / "device"
    dev.mkdir(parents=True)
    for name, text in files.items():
        (dev / name).write_text(text)


def test_amdgpu_sysfs(tmp_path: Path) -> None:
    """The amdgpu driver's own files, for machines whose ROCm has amd-smi rather than rocm-smi (or no ROCm):
    cards in number order, free = total - used, the PCIe link from max_link_speed/width, a connector-only card
    (no VRAM files) and a card whose files are unreadable left out."""
    sys_root = tmp_path / "sys"
    _amdgpu_card(sys_root, 1, {"mem_info_vram_total": "25753026560\n", "mem_info_vram_used": "1073741824\n",
                               "product_name": "Radeon RX 7900 XTX\n", "max_link_speed": "16.0 GT/s PCIe\n",
                               "max_link_width": "8\n"})
    _amdgpu_card(sys_root, 0, {"mem_info_vram_total": "17163091968", "mem_info_vram_used": "0",
                               "device": "0x73bf"})
    _amdgpu_card(sys_root, 2, {"mem_info_vram_total": "garbage", "mem_info_vram_used": "0"})
    (sys_root / "class" / "drm" / "card1-DP-1").mkdir()  # a connector, not a card
    gpus, _ = machine.detect_gpus(str(tmp_path / "bin"), platform="linux", use_llamacpp=False, sys_root=sys_root)
    assert [(g.label, g.total, g.free, g.link, g.source) for g in gpus] == [
        ("AMD GPU 0x73bf", 17163091968, 17163091968, "", "amdgpu sysfs"),
        ("Radeon RX 7900 XTX", 25753026560, 25753026560 - (1 << 30), "4.0x8", "amdgpu sysfs")]
    m = machine.Machine(tuple(gpus), 64 * GIB, 50 * GIB, 16, 8, 1, machine.RamBandwidth(96e9, "x", "dmi"), ())
    devs = machine.gpu_devices(m)
    assert devs[1].bandwidth == 960 * GB  # the RX 7900 XTX preset, matched by name
    assert devs[1].link_bandwidth == link_bandwidth("4.0x8") and not devs[1].link_assumed  # as the driver says
    assert machine.detect_gpus(str(tmp_path / "bin"), platform="linux", use_llamacpp=False,
                               sys_root=tmp_path / "none") == ([], [])


# /proc/cpuinfo as the kernel writes it (first processor's block; later blocks repeat it).
_CPUINFO = ("processor\t: 0\nvendor_id\t: {vendor}\ncpu family\t: {family}\nmodel name\t: {name}\n"
            "flags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: fpu\n")


@pytest.mark.parametrize(("vendor", "family", "name", "flags", "simd"), [
    ("GenuineIntel", "6", "Intel(R) Xeon(R) CPU E5-2690 v3", "fpu sse avx avx2 fma", "avx2"),
    ("GenuineIntel", "6", "Intel(R) Xeon(R) Gold 6138", "avx2 avx512f avx512bw", "avx512"),
    ("GenuineIntel", "6", "Intel(R) Xeon(R) 6980P", "avx2 avx512f avx512_vnni amx_int8", "avx512-vnni"),
    ("AuthenticAMD", "25", "AMD Ryzen 9 7950X 16-Core Processor", "avx2 avx512f avx512_vnni", "avx512-vnni"),
    ("AuthenticAMD", "26", "AMD Ryzen 9 9950X 16-Core Processor", "avx2 avx512f avx512_vnni", "zen5"),
    ("AuthenticAMD", "26", "AMD Ryzen AI 9 HX 370 w/ Radeon 890M", "avx2 avx512f avx512_vnni", "avx512-vnni"),
    ("AuthenticAMD", "26", "AMD RYZEN AI MAX+ 395 w/ Radeon 8060S", "avx2 avx512f avx512_vnni", "zen5"),
    ("AuthenticAMD", "23", "AMD Ryzen 5 3500 6-Core Processor", "sse avx2", "avx2"),
    ("GenuineIntel", "6", "Intel(R) Atom(TM)", "sse sse2", ""),
])
def test_cpu_simd_reads_cpuinfo(tmp_path: Path, vendor: str, family: str, name: str, flags: str, simd: str) -> None:
    (tmp_path / "cpuinfo").write_text(_CPUINFO.format(vendor=vendor, family=family, name=name, flags=flags))
    assert machine.cpu_simd(tmp_path) == simd


def test_cpu_simd_arm_and_missing(tmp_path: Path) -> None:
    assert machine.cpu_simd(tmp_path, "win32", "AMD64") == ""  # no cpuinfo, nothing known: the reference class
    assert machine.cpu_simd(tmp_path, "darwin", "arm64") == "neon"  # Apple silicon
    assert machine.cpu_simd(tmp_path, "darwin", "x86_64") == ""
    (tmp_path / "cpuinfo").write_text("processor\t: 0\nBogoMIPS\t: 48.00\nFeatures\t: fp asimd evtstrm aes asimddp\n")
    assert machine.cpu_simd(tmp_path) == "neon"


def _caches(root: Path, l3: list[str]) -> Path:
    """A /sys tree whose CPUs share the given L3 caches (one shared_cpu_list per cache), with an L2 per CPU."""
    cpu = 0
    for shared in l3:
        first, last = (int(x) for x in shared.split("-"))
        for cpu in range(first, last + 1):
            for index, level, who in ((2, 2, str(cpu)), (3, 3, shared)):
                d = root / "devices/system/cpu" / f"cpu{cpu}" / "cache" / f"index{index}"
                d.mkdir(parents=True)
                (d / "level").write_text(f"{level}\n")
                (d / "shared_cpu_list").write_text(who + "\n")
    return root


@pytest.mark.parametrize(("vendor", "family", "model", "name", "l3", "ccds"), [
    ("AuthenticAMD", "26", "2", "AMD EPYC 9115 16-Core Processor", ["0-7", "8-15"], 2),
    ("AuthenticAMD", "26", "2", "AMD EPYC 9115 16-Core Processor", ["0-7", "8-15", "16-23", "24-31"], 4),  # 2 sockets
    ("AuthenticAMD", "25", "24", "AMD Ryzen Threadripper PRO 7965WX 24-Cores", ["0-5", "6-11", "12-17", "18-23"], 4),
    ("AuthenticAMD", "26", "68", "AMD Ryzen 7 9700X 8-Core Processor", ["0-7"], 1),
    ("AuthenticAMD", "23", "113", "AMD Ryzen 5 3500 6-Core Processor", ["0-2", "3-5"], 1),  # Zen 2: two L3 per CCD
    ("AuthenticAMD", "23", "8", "AMD Ryzen 7 2700X Eight-Core Processor", ["0-3", "4-7"], 0),  # Zen+: one die
    ("AuthenticAMD", "25", "117", "AMD Ryzen 7 8700G w/ Radeon 780M Graphics", ["0-7"], 0),  # an APU: one die
    ("AuthenticAMD", "26", "36", "AMD Ryzen AI 9 HX 370 w/ Radeon 890M", ["0-3", "4-11"], 0),
    ("GenuineIntel", "6", "207", "INTEL(R) XEON(R) PLATINUM 8592+", ["0-63"], 0),
])
def test_cpu_ccds_counts_an_amd_chiplet_cpus_l3_caches(tmp_path: Path, vendor: str, family: str, model: str,
                                                        name: str, l3: list[str], ccds: int) -> None:
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "cpuinfo").write_text(f"processor\t: 0\nvendor_id\t: {vendor}\ncpu family\t: {family}\n"
                                  f"model\t\t: {model}\nmodel name\t: {name}\nflags\t\t: avx2\n")
    sys_root = _caches(tmp_path / "sys", l3)
    assert machine.cpu_ccds(proc, sys_root) == ccds
    assert machine.cpu_ccds(tmp_path / "none", sys_root) == 0  # no /proc/cpuinfo: nothing known
    if ccds:
        m = machine.detect(gpus=False, proc=proc, sys_root=sys_root)
        assert m.ccds == ccds and f"{ccds} CCD" in m.line()
