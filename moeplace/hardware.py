"""Devices: what each GPU and the host can hold and how fast they read it, from presets or the user's own figures.

A :class:`Device` carries the llama.cpp buffer name a placement uses (``CUDA0``, ``ROCm0``, ``Vulkan0``,
``SYCL0``, ``MTL0``, ``RPC[host:port]``, ``CPU``), its memory, its peak memory bandwidth and the fraction of it
llama.cpp reaches while decoding (``efficiency``; calibration replaces the literature default), board power,
and the bandwidth of its link to the host.

Presets live in ``moeplace/data/hardware-<name>.json``, each device with the source it was taken from, and load
with :mod:`importlib.resources`, so an installed package has them with no repository next to it. They are the
only copy; ``profiles/`` in the repository is for users' routing profiles.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cache
from importlib import resources
from typing import Any

from moeplace.errors import MoeplaceError
from moeplace.placement import HOST
from moeplace.sizes import GIB, format_size, parse_size

GB = 1e9  # bandwidths are quoted in decimal GB/s, as vendors do

# llama.cpp buffer-name prefixes per backend (ggml-cuda, ggml-vulkan, ggml-sycl, ggml-metal device names; HIP
# builds name their devices ROCm<n>).
BACKEND_PREFIX: dict[str, str] = {
    "cuda": "CUDA", "rocm": "ROCm", "vulkan": "Vulkan", "sycl": "SYCL", "metal": "MTL", "musa": "MUSA",
}


class HardwareError(MoeplaceError):
    """A device specification moeplace cannot read."""


@dataclass(frozen=True)
class Device:
    """One memory pool with compute next to it: a GPU, or the host (``name == "CPU"``).

    ``memory`` is what llama.cpp may use there in bytes; ``bandwidth`` is the peak in bytes/s and
    ``efficiency`` the fraction of it reached while decoding; ``flops`` is dense FP16 FLOP/s (prefill only);
    ``link_bandwidth`` is bytes/s to the host (PCIe, or the network for RPC); ``unified`` marks a GPU that
    shares the host's RAM (Apple), so its use also counts against host memory."""

    name: str
    backend: str
    label: str
    memory: int
    bandwidth: float
    efficiency: float
    power: float = 0.0
    link_bandwidth: float = 0.0
    unified: bool = False
    flops: float = 0.0
    idle_power: float = 0.0
    link_latency: float = 0.0  # seconds per switch of decoding to or from this device (graph split sync + copy)
    compute_efficiency: float = 1.0  # fraction of ``flops`` reached in prompt processing (GPU matrix kernels)
    # A GPU's decode bandwidth on routed experts relative to its dense weights: MUL_MAT_ID runs many small
    # per-expert matrices through indirect kernels, which stream below the dense rate on some backends.
    expert_efficiency: float = 1.0
    # The same in prompts, of a GPU's prompt FLOP rate: MUL_MAT_ID gathers each expert's tokens and multiplies
    # expert by expert, below the rate of one dense multiplication of as many rows.
    expert_compute: float = 1.0
    # Tokens per matrix multiplication at which a GPU's prompt kernels reach half their large-batch rate (0: no
    # such loss, the host): speed.gpu_flop_cost.
    half_rate_rows: float = 0.0
    # Op offload of routed experts to this GPU: 0 moves a host expert tensor for every ubatch of at least
    # OP_OFFLOAD_MIN_BATCH tokens (llama.cpp); N moves it only when each expert gets N of the ubatch's tokens on
    # average (ubatch x experts used / experts), the rule of ik_llama.cpp's CUDA backend (ENGINE_MOE_OFFLOAD_ROWS).
    moe_offload_rows: float = 0.0
    # Op offload copies every expert of a host expert tensor, not only those the ubatch uses: llama.cpp before its
    # PR 15346 (2025-08-20), ik_llama.cpp before its PR 698 (2025-09-04). Builds moeplace targets copy the used
    # ones; the accuracy report sets it for older rows.
    copies_all_experts: bool = False
    # NVIDIA compute capability (8.6 Ampere GA10x, 8.9 Ada, 12.0 consumer Blackwell; 0: not known), by which
    # llama.cpp's CUDA backend picks a decoded token's attention kernel (speed.kv_rereads).
    cuda_cc: float = 0.0
    l2_cache: int = 0  # bytes of L2 cache (0: not known): where a vector attention kernel's repeated KV reads stay
    # Share of the repeated K/V reads of that vector attention kernel (a block per query head, so each KV head is
    # read once per query head sharing it) that reach memory instead of the L2 cache; 0 where decode attention
    # reads each KV head once (GQA-aware kernels: other backends, ik_llama.cpp since its PR 370).
    kv_reread_share: float = 0.0
    pool: int = 0  # unified memory: the whole pool the GPU shares with the host (its ``memory`` is the GPU's part)
    # The largest weight the backend accepts on this device (0: no limit). llama.cpp's loader keeps a larger one in
    # host memory even at -ngl 999, and an -ot sending it to the device aborts (Vulkan: maxStorageBufferRange).
    max_tensor: int = 0
    notes: tuple[str, ...] = field(default=(), compare=False)
    # The host's compute side (decode is limited by memory AND compute there): llama.cpp threads (-t), physical
    # cores, NUMA nodes, what one thread can draw from RAM, Q4_K elements one core handles per second in decode,
    # and the share of each further NUMA node's bandwidth that counts. Zero: no such limit (GPUs, calibrated).
    threads: int = 0
    cores: int = 0
    numa_nodes: int = 1
    numa_gain: float = 1.0
    thread_bandwidth: float = 0.0
    core_rate: float = 0.0
    # AMD chiplet CPUs: each core die (CCD) reads memory over one Infinity Fabric link, so a part with few CCDs
    # cannot draw all its channels' bandwidth (EPYC 9115: 2 CCDs, 12 channels). 0: no such limit (monolithic, or
    # not known).
    ccds: int = 0
    ccd_bandwidth: float = 0.0  # peak read bytes/s of one CCD's link
    # Cost per weight element relative to Q4_K by ggml type: the CPU's decode cost on the host, the inverse of
    # the kernel efficiency on a GPU. Types not listed cost 1.
    quant_cost: tuple[tuple[str, float], ...] = field(default=(), compare=False)
    # The host's prompt-processing cost per element by type relative to Q4_K: llama.cpp multiplies a batch with
    # other kernels than a decode step (runtime repacking, llamafile sgemm, tiled K-/i-quant kernels), so the
    # ordering differs. Types not listed cost 1; a GPU's prompt kernels are not costed per type.
    prefill_cost: tuple[tuple[str, float], ...] = field(default=(), compare=False)
    layer_seconds: float = 0.0  # fixed cost per block per decoded token here (kernel launches, thread barriers)
    simd: str = ""  # the host CPU's vector class (SpeedParams.cpu_simd_factor); "": not known, the reference class
    available: int = 0  # host RAM free for llama.cpp (0: memory less the reserve in speed-model.json)
    link_assumed: bool = False  # the link is the preset's or generic default, not given with --link

    @property
    def is_host(self) -> bool:
        return self.name == HOST

    @property
    def compute_threads(self) -> int:
        """Threads that add compute: -t up to the physical cores (hyper-threads share a core's units)."""
        return min(self.threads, self.cores) if self.threads and self.cores else self.threads

    @property
    def effective_bandwidth(self) -> float:
        """Bytes/s llama.cpp actually streams weights at: peak x efficiency, where the host's peak is at most what
        its CCDs' fabric links read, with the NUMA nodes after the first counting ``numa_gain`` each, and at most
        what ``threads`` threads can draw (the host)."""
        bw = self.read_peak * self.efficiency
        if self.numa_nodes > 1:
            bw *= (1 + (self.numa_nodes - 1) * self.numa_gain) / self.numa_nodes
        if self.thread_bandwidth > 0 and self.threads > 0:
            bw = min(bw, self.threads * self.thread_bandwidth)
        return bw

    @property
    def read_peak(self) -> float:
        """Peak bytes/s: the memory's, or on a chiplet host what its CCDs' fabric links read, if less."""
        cap = self.ccds * self.ccd_bandwidth
        return min(self.bandwidth, cap) if cap > 0 else self.bandwidth

    def peak_text(self) -> str:
        """``576 GB/s peak``, and where the CCDs' links read less, ``, 162 through 2 CCDs``."""
        text = f"{self.bandwidth / GB:.0f} GB/s peak"
        if self.read_peak < self.bandwidth:
            text += f", {self.read_peak / GB:.0f} through {self.ccds} CCDs"
        return text

    @property
    def expert_cost(self) -> float:
        """Decode time of a routed-expert byte here relative to a dense byte (1 on the host)."""
        return 1.0 if self.is_host or self.expert_efficiency <= 0 else 1.0 / self.expert_efficiency

    @property
    def expert_flop_cost(self) -> float:
        """Prompt time of a routed-expert FLOP here relative to a dense FLOP of as many rows (1 on the host)."""
        return 1.0 if self.is_host or self.expert_compute <= 0 else 1.0 / self.expert_compute

    @property
    def decode_rate(self) -> float:
        """Q4_K weight elements/s this device's cores dequantise and dot in decode; 0 when not compute-bound."""
        return self.compute_threads * self.core_rate if self.core_rate > 0 and self.threads > 0 else 0.0

    def with_efficiency(self, efficiency: float) -> Device:
        """The same device with a measured efficiency (what calibration does): the measurement already contains
        the thread, NUMA and compute limits, so they are dropped."""
        if not 0 < efficiency <= 1.5:
            raise HardwareError(f"{self.name}: efficiency {efficiency} is outside (0, 1.5]")
        return replace(self, efficiency=efficiency, numa_nodes=1, thread_bandwidth=0.0, core_rate=0.0,
                       layer_seconds=0.0, ccds=0)

    def describe(self) -> str:
        return f"{self.name}: {self.label}, {format_size(self.memory)}, {self.peak_text()} x {self.efficiency:.2f}"


# --- presets -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preset:
    """A named device from the preset files."""

    key: str
    label: str
    backend: str
    memory: int  # bytes the GPU may use (for unified memory: gpu_fraction of the pool)
    total_memory: int  # the whole pool for unified memory, else == memory
    bandwidth: float
    power: float
    flops: float
    pcie: str
    unified: bool
    source: str
    max_tensor: int = 0  # bytes; 0: the backend's default (Catalog.max_tensor)
    cuda_cc: float = 0.0  # NVIDIA compute capability; 0: not an NVIDIA preset
    l2_cache: int = 0  # bytes of L2 cache; 0: not known


# The CPU vector class core_gflops is fitted in (speed-model.json's cpu_simd_factor is relative to it).
SIMD_REFERENCE = "avx512-vnni"


def _type_table(doc: Mapping[str, Any]) -> dict[str, float]:
    """A per-type table of speed-model.json: ggml type names (upper case) -> value; ``_``-keys are notes."""
    return {k.upper(): float(v) for k, v in doc.items() if not k.startswith("_")}


@dataclass(frozen=True)
class SpeedParams:
    """The speed model's fitted and measured parameters (``moeplace/data/speed-model.json``; what each means is
    documented there). Devices take theirs from it when they are built."""

    efficiency: Mapping[str, float]  # per GPU backend, and cpu-desktop / cpu-server for the host
    thread_gbs: float
    numa_gain: float
    core_gelems: float
    core_gflops: float
    gpu_compute_efficiency: Mapping[str, float]  # per GPU backend
    default_threads: int
    ram_reserve_gib: float
    cpu_quant_cost: Mapping[str, float]
    gpu_quant_efficiency: Mapping[str, float]
    cpu_prefill_cost: Mapping[str, float] = field(default_factory=dict)  # prompt processing, by type
    gpu_layer_us: float = 0.0
    cpu_layer_us: float = 0.0
    engine_cpu_factor: Mapping[str, float] = field(default_factory=dict)  # CPU kernel speed vs llama.cpp's
    # Prompt FLOP/s of one core by the CPU's vector class, relative to core_gflops (the AVX-512 VNNI class).
    cpu_simd_factor: Mapping[str, float] = field(default_factory=dict)
    gpu_expert_efficiency: Mapping[str, float] = field(default_factory=dict)  # per GPU backend (Device field)
    gpu_half_rate_rows: float = 0.0  # Device.half_rate_rows of every GPU
    gpu_expert_compute: float = 1.0  # Device.expert_compute of every GPU
    gpu_kv_reread_share: float = 0.0  # Device.kv_reread_share of every GPU
    ccd_gbs: float = 0.0  # Device.ccd_bandwidth of every chiplet host, GB/s
    # Another engine's own CPU kernels, by type: engine -> type -> its cost relative to its Q4_K over llama.cpp's,
    # in decode and in prompts, both timed on one machine (benchmarks/quant_cost.py --bench): the factor the host's
    # tables take for that engine. Types not listed: 1.
    engine_cpu_quant_factor: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    engine_cpu_prefill_factor: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> SpeedParams:
        return cls(
            efficiency={k: float(v) for k, v in doc["efficiency"].items()},
            thread_gbs=float(doc["thread_gbs"]), numa_gain=float(doc["numa_gain"]),
            core_gelems=float(doc["core_gelems"]), core_gflops=float(doc["core_gflops"]),
            gpu_compute_efficiency={k: float(v) for k, v in doc["gpu_compute_efficiency"].items()},
            default_threads=int(doc["default_threads"]), ram_reserve_gib=float(doc["ram_reserve_gib"]),
            cpu_quant_cost=_type_table(doc["cpu_quant_cost"]),
            gpu_quant_efficiency=_type_table(doc["gpu_quant_efficiency"]),
            gpu_layer_us=float(doc.get("gpu_layer_us", 0.0)), cpu_layer_us=float(doc.get("cpu_layer_us", 0.0)),
            engine_cpu_factor={k: float(v) for k, v in doc.get("engine_cpu_factor", {}).items()},
            cpu_simd_factor={k: float(v) for k, v in doc.get("cpu_simd_factor", {}).items()},
            gpu_expert_efficiency={k: float(v) for k, v in doc.get("gpu_expert_efficiency", {}).items()},
            gpu_half_rate_rows=float(doc.get("gpu_half_rate_rows", 0.0)),
            gpu_expert_compute=float(doc.get("gpu_expert_compute", 1.0)),
            gpu_kv_reread_share=float(doc.get("gpu_kv_reread_share", 0.0)),
            ccd_gbs=float(doc.get("ccd_gbs", 0.0)),
            cpu_prefill_cost=_type_table(doc.get("cpu_prefill_cost", {})),
            engine_cpu_quant_factor={k: _type_table(v) for k, v in doc.get("engine_cpu_quant_factor", {}).items()},
            engine_cpu_prefill_factor={k: _type_table(v)
                                       for k, v in doc.get("engine_cpu_prefill_factor", {}).items()},
        )

    def simd_factor(self, simd: str) -> float:
        """A core's prompt FLOP/s in the vector class ``simd`` relative to the reference class (1 for "")."""
        if simd and simd not in self.cpu_simd_factor:
            raise HardwareError(f"unknown CPU vector class '{simd}': use one of {', '.join(self.cpu_simd_factor)}")
        return self.cpu_simd_factor.get(simd or SIMD_REFERENCE, 1.0)

    def host_class(self, channels: int, bandwidth: float) -> str:
        """cpu-desktop up to two memory channels, cpu-server above (by peak bandwidth when channels are unknown:
        two channels of the fastest desktop DDR5 stay under 150 GB/s)."""
        many = channels > 2 if channels else bandwidth > 150 * GB
        return "cpu-server" if many else "cpu-desktop"


@cache
def speed_params() -> SpeedParams:
    """The shipped speed-model parameters (read once)."""
    text = resources.files("moeplace").joinpath("data", "speed-model.json").read_text(encoding="utf-8")
    return SpeedParams.from_dict(json.loads(text))


@dataclass(frozen=True)
class Catalog:
    """Everything the preset files say."""

    presets: Mapping[str, Preset]
    aliases: Mapping[str, str]
    efficiency: Mapping[str, float]
    generic: Mapping[str, Any]
    default_ram_bw: str
    cpu_power: float
    platforms: Mapping[str, Mapping[str, str]]
    link_efficiency: float
    pcie_lane: Mapping[str, float]
    network: Mapping[str, float]
    default_rpc_link: str
    overhead: Mapping[str, int]
    disk_bandwidth: float
    switch_latency: Mapping[str, float]
    max_tensor: Mapping[str, int] = field(default_factory=dict)  # per backend, bytes

    def preset(self, name: str) -> Preset | None:
        key = _norm(name)
        key = self.aliases.get(key, key)
        return self.presets.get(key)

    def preset_names(self) -> list[str]:
        return sorted(self.presets)


def _norm(name: str) -> str:
    """Preset names match ignoring case, spaces, dashes and underscores ('RTX-3090' == 'rtx3090')."""
    return re.sub(r"[\s_\-]", "", name.lower())


def preset_files() -> dict[str, str]:
    """The shipped preset files, name -> JSON text (``moeplace/data/hardware-gpus.json`` is ``gpus.json``)."""
    out = {}
    for entry in resources.files("moeplace").joinpath("data").iterdir():
        m = re.fullmatch(r"hardware-(.+\.json)", entry.name)
        if m:
            out[m.group(1)] = entry.read_text(encoding="utf-8")
    return out


def build_catalog(texts: Iterable[str]) -> Catalog:
    """A catalog from the text of preset files (any mix of gpus/apple/memory/links files)."""
    presets: dict[str, Preset] = {}
    aliases: dict[str, str] = {}
    merged: dict[str, Any] = {}
    for text in texts:
        data = json.loads(text)
        for key, spec in data.get("devices", {}).items():
            unified = bool(spec.get("unified", spec["backend"] == "metal"))  # Apple, or an iGPU marked unified
            total = round(float(spec["memory_gib"]) * GIB)
            usable = round(total * float(spec.get("gpu_fraction", 1.0)))
            k = _norm(key)
            presets[k] = Preset(
                key=key, label=spec["label"], backend=spec["backend"], memory=usable, total_memory=total,
                bandwidth=float(spec["bandwidth_gbs"]) * GB, power=float(spec["power_w"]),
                flops=float(spec.get("fp16_tflops", 0.0)) * 1e12, pcie=spec.get("pcie", ""), unified=unified,
                source=spec.get("source", ""), max_tensor=int(spec.get("max_tensor_bytes", 0)),
                cuda_cc=float(spec.get("cuda_cc", 0.0)), l2_cache=round(float(spec.get("l2_mib", 0.0)) * (1 << 20)),
            )
            for alias in spec.get("aliases", []):
                aliases[_norm(alias)] = k
        for key, value in data.items():
            if key != "devices" and not key.startswith("_about"):  # _about* keys are documentation
                merged[key] = value
    return Catalog(
        presets=presets, aliases=aliases, efficiency=speed_params().efficiency, generic=merged.get("_generic", {}),
        default_ram_bw=merged.get("default_ram_bw", "ddr4-3200x2"),
        cpu_power=float(merged.get("cpu_power_w", 65)),
        platforms=merged.get("platforms", {}), link_efficiency=float(merged.get("link_efficiency", 0.8)),
        pcie_lane={k: float(v) for k, v in merged.get("pcie_lane_gbs", {}).items()},
        network={k: float(v) for k, v in merged.get("network_gbs", {}).items()},
        default_rpc_link=merged.get("default_rpc_link", "10gbe"),
        overhead={k: int(v) << 20 for k, v in merged.get("_overhead_mib", {}).items() if not k.startswith("_")},
        disk_bandwidth=float(merged.get("disk_gbs", 3.0)) * GB,
        switch_latency={k: float(v) * 1e-6 for k, v in merged.get("switch_latency_us", {}).items()},
        max_tensor={k: int(v) for k, v in merged.get("_max_tensor_bytes", {}).items() if not k.startswith("_")},
    )


@cache
def catalog() -> Catalog:
    """The shipped presets (read once; the files are data, not state)."""
    return build_catalog(preset_files().values())


# --- links ---------------------------------------------------------------------------------------------------


def link_bandwidth(spec: str, cat: Catalog | None = None) -> float:
    """Effective bytes/s of a host link: ``4.0x16`` (PCIe generation x lanes) or a network name (``10gbe``)."""
    cat = cat or catalog()
    s = spec.strip().lower()
    if s in cat.network:
        return cat.network[s] * GB * cat.link_efficiency
    m = re.fullmatch(r"(?:pcie|gen)?\s*(\d)(?:\.0)?\s*x\s*(\d+)", s)
    gen = f"{m.group(1)}.0" if m else ""
    if not m or gen not in cat.pcie_lane or not 1 <= int(m.group(2)) <= 16:
        raise HardwareError(f"unknown link '{spec}': write PCIe as GEN x LANES ({', '.join(sorted(cat.pcie_lane))}"
                            f" x 1..16, e.g. pcie4x8 or 4.0x16) or a network: {', '.join(cat.network)}")
    return cat.pcie_lane[gen] * int(m.group(2)) * GB * cat.link_efficiency


# --- parsing user specs --------------------------------------------------------------------------------------

_SIZE_AT_BW = re.compile(r"^(?P<size>[\d.]+\s*[A-Za-z]+)\s*(?:@\s*(?P<bw>\d+(?:\.\d+)?)\s*(?:gb/?s|g)?)?$",
                         re.IGNORECASE)
_RPC = re.compile(r"^rpc:(?P<host>[^=\s]+:\d+)=(?P<spec>.+)$", re.IGNORECASE)
_BACKEND_ITEM = re.compile(r"^(?P<backend>[a-z]+):(?P<spec>.+)$", re.IGNORECASE)
_DDR = re.compile(r"^(?P<gen>lpddr[45]x?|ddr[345])-(?P<mts>\d+)(?:x(?P<ch>\d+))?$", re.IGNORECASE)
# Sane ranges for user figures: the fastest memory shipping (HBM3e) is under 10 TB/s; DDR runs from DDR3-800 to
# overclocked DDR5 near 10000 MT/s; servers have up to 24 channels per socket pair.
MAX_BANDWIDTH_GBS = 100_000.0
DDR_MTS_RANGE = (400, 20_000)
MAX_CHANNELS = 64


def check_bandwidth(gbs: float, what: str) -> float:
    """A bandwidth in GB/s the user wrote, as bytes/s: finite, positive and below any real memory's."""
    if not math.isfinite(gbs) or not 0 < gbs <= MAX_BANDWIDTH_GBS:
        raise HardwareError(f"{what} {gbs:g} GB/s is not a real bandwidth: give a positive figure up to "
                            f"{MAX_BANDWIDTH_GBS:g} GB/s")
    return gbs * GB


def _check_backend(backend: str) -> str:
    b = backend.lower()
    if b == "hip":
        b = "rocm"
    if b not in BACKEND_PREFIX:
        raise HardwareError(f"unknown backend '{backend}': use one of {', '.join(BACKEND_PREFIX)}")
    return b


def _gpu_from_item(item: str, backend: str | None, cat: Catalog, params: SpeedParams) -> tuple[str, Device]:
    """One --gpu item -> (backend, device with a placeholder name)."""
    text = item.strip()
    rpc_host = None
    m = _RPC.match(text)
    if m:
        rpc_host, text = m.group("host"), m.group("spec").strip()
    else:
        m = _BACKEND_ITEM.match(text)
        if m and m.group("backend").lower() in (*BACKEND_PREFIX, "hip"):
            backend, text = m.group("backend"), m.group("spec").strip()
    preset = cat.preset(text)
    notes: list[str] = []
    if preset is not None:
        b = _check_backend(backend) if backend else preset.backend
        link = link_bandwidth(preset.pcie, cat) if preset.pcie and not preset.unified else 0.0
        dev = Device(
            name="", backend=b, label=preset.label, memory=preset.memory, bandwidth=preset.bandwidth,
            efficiency=gpu_efficiency(params, b, preset.label), power=preset.power, link_bandwidth=link,
            link_assumed=bool(link),
            unified=preset.unified, flops=preset.flops, idle_power=0.1 * preset.power,
            pool=preset.total_memory if preset.unified else 0,
            link_latency=cat.switch_latency.get("unified" if preset.unified else "pcie", 2e-5),
            max_tensor=preset.max_tensor if b == preset.backend and preset.max_tensor else cat.max_tensor.get(b, 0),
            cuda_cc=preset.cuda_cc, l2_cache=preset.l2_cache,
        )
    else:
        m = _SIZE_AT_BW.match(text)
        if not m:
            close = [n for n in cat.preset_names() if _norm(text)[:4] in n][:5]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise HardwareError(f"unknown GPU '{item}'{hint}: give a preset name (moeplace lists them with "
                                "--list-gpus), SIZE@GB/s like 24G@936, or a size like 24G")
        size = parse_size(m.group("size"))
        if size <= 0:
            raise HardwareError(f"GPU '{item.strip()}' has no memory: give its size, like 24G")
        b = _check_backend(backend) if backend else "cuda"
        gen = cat.generic
        if m.group("bw"):
            bw = check_bandwidth(float(m.group("bw")), f"GPU '{item.strip()[:40]}':")
            label = f"GPU {format_size(size)} @ {float(m.group('bw')):g} GB/s"
        else:
            bw = float(gen.get("bandwidth_gbs", 448)) * GB
            label = f"GPU {format_size(size)}"
            notes.append(f"bandwidth not given: assumed {bw / GB:.0f} GB/s (write {m.group('size')}@GB/s)")
        power = float(gen.get("power_w", 200))
        dev = Device(
            name="", backend=b, label=label, memory=size, bandwidth=bw, efficiency=gpu_efficiency(params, b, label),
            power=power, link_bandwidth=link_bandwidth(str(gen.get("pcie", "4.0x16")), cat), link_assumed=True,
            flops=float(gen.get("fp16_tflops", 50)) * 1e12, idle_power=0.1 * power, notes=tuple(notes),
            link_latency=cat.switch_latency.get("pcie", 2e-5), max_tensor=cat.max_tensor.get(b, 0),
        )
    if rpc_host is not None:
        dev = replace(dev, name=f"RPC[{rpc_host}]", backend="rpc",
                      efficiency=params.efficiency.get("rpc", dev.efficiency),
                      link_bandwidth=link_bandwidth(cat.default_rpc_link, cat), link_assumed=False,
                      link_latency=cat.switch_latency.get("rpc", 2e-4),
                      notes=(*dev.notes, f"RPC link assumed {cat.default_rpc_link}"))
        return "rpc", dev
    return dev.backend, dev


# Backends that run on GPUs of several vendors: their kernels differ per vendor (Vulkan's cooperative-matrix paths,
# memory subsystems from discrete GDDR to shared laptop LPDDR) and so do the quoted FP16 figures (NVIDIA's tensor
# cores, AMD RDNA3's dual issue, Intel's XMX), so their bandwidth and prompt efficiencies are fitted per vendor.
MULTI_VENDOR_BACKENDS = ("vulkan",)
GPU_VENDORS = ("nvidia", "amd", "intel")


def gpu_key(backend: str, label: str) -> str:
    """A GPU's key in SpeedParams.efficiency and .gpu_compute_efficiency: the backend, with the vendor (the label's
    first word) on a multi-vendor backend ("vulkan:amd")."""
    vendor = (label.split() or [""])[0].lower()
    return f"{backend}:{vendor}" if backend in MULTI_VENDOR_BACKENDS and vendor in GPU_VENDORS else backend


def _per_gpu(table: Mapping[str, float], backend: str, label: str, default: float) -> float:
    """A GPU's entry in a parameter table: its vendor's on a multi-vendor backend, else its backend's."""
    return table.get(gpu_key(backend, label), table.get(backend, default))


def gpu_efficiency(params: SpeedParams, backend: str, label: str) -> float:
    """A GPU's decode bandwidth efficiency."""
    return _per_gpu(params.efficiency, backend, label, 0.6)


def compute_efficiency(params: SpeedParams, backend: str, label: str) -> float:
    """A GPU's prompt efficiency (CUDA's where neither its vendor's nor its backend's is fitted)."""
    return _per_gpu(params.gpu_compute_efficiency, backend, label, params.gpu_compute_efficiency.get("cuda", 0.4))


def gpu_params(dev: Device, params: SpeedParams) -> Device:
    """``dev`` with the fitted speed parameters of its backend (and vendor, :func:`gpu_key`): what
    :func:`parse_gpus` gives every GPU, and what benchmarks/accuracy.py varies while fitting."""
    cost = tuple((t, 1.0 / e) for t, e in sorted(params.gpu_quant_efficiency.items()) if e > 0)
    return replace(dev, efficiency=gpu_efficiency(params, dev.backend, dev.label),
                   compute_efficiency=compute_efficiency(params, dev.backend, dev.label), quant_cost=cost,
                   layer_seconds=params.gpu_layer_us * 1e-6,
                   expert_efficiency=params.gpu_expert_efficiency.get(dev.backend, 1.0),
                   half_rate_rows=params.gpu_half_rate_rows, kv_reread_share=params.gpu_kv_reread_share,
                   expert_compute=params.gpu_expert_compute)


def parse_gpus(specs: Sequence[str], backend: str | None = None, cat: Catalog | None = None,
               links: Sequence[str] = (), params: SpeedParams | None = None) -> tuple[Device, ...]:
    """GPUs from ``--gpu`` values. Each value is one item or a comma list of items; an item is a preset name
    (``rtx3090``), ``SIZE@GB/s`` (``24G@936``), a bare size (``24G``, bandwidth assumed and noted), optionally
    prefixed with a backend (``vulkan:rx7900xtx``) or written ``rpc:HOST:PORT=ITEM`` for an RPC server.
    Devices are named as llama.cpp names them, numbered per backend in the order given (CUDA0, CUDA1, ...);
    ``backend`` changes the default backend of every item (``--backend rocm``)."""
    cat = cat or catalog()
    params = params or speed_params()
    items = [part for spec in specs for part in spec.split(",") if part.strip()]
    _check_links(links, len(items))
    counters: dict[str, int] = {}
    out = []
    for item in items:
        b, dev = _gpu_from_item(item, backend, cat, params)
        dev = gpu_params(dev, params)
        if b != "rpc":
            n = counters.get(b, 0)
            counters[b] = n + 1
            dev = replace(dev, name=f"{BACKEND_PREFIX[b]}{n}")
        out.append(dev)
    names = [d.name for d in out]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise HardwareError(f"device {', '.join(sorted(dupes))} given twice: each RPC server may appear once")
    return with_links(tuple(out), links, cat)


def _check_links(links: Sequence[str], n_gpus: int) -> list[str]:
    if any(not spec.strip() for spec in links):
        raise HardwareError("--link is empty: give a link such as pcie4x8 or 4.0x16 (one for all GPUs, or a comma "
                            "list in --gpu order)")
    items = [part.strip() for spec in links for part in spec.split(",") if part.strip()]
    if len(items) > 1 and len(items) != n_gpus:
        raise HardwareError(f"--link has {len(items)} entries for {n_gpus} GPUs: give one for all or one per GPU, "
                            "in --gpu order")
    return items


def with_links(gpus: Sequence[Device], links: Sequence[str], cat: Catalog | None = None) -> tuple[Device, ...]:
    """The GPUs with their host links from ``--link`` values: a comma list in GPU order gives each its own (an RPC
    server's is its network, ``25gbe``); one value is every local card's PCIe link, and an RPC server keeps its
    network. A GPU sharing the host's memory (Apple) has no link."""
    items = _check_links(links, len(gpus))
    if not items:
        return tuple(gpus)
    out = []
    for i, dev in enumerate(gpus):
        if not dev.unified and (len(items) > 1 or dev.backend != "rpc"):
            spec = items[0] if len(items) == 1 else items[i]
            dev = replace(dev, link_bandwidth=link_bandwidth(spec, cat), link_assumed=False)
        out.append(dev)
    return tuple(out)


def ram_bandwidth(text: str | float, cat: Catalog | None = None) -> float:
    """Peak RAM bandwidth in bytes/s from ``80`` (GB/s), ``ddr5-6000x2`` (MT/s x channels x 8 bytes; one
    channel when ``xN`` is left out) or a platform name (``epyc-9004``)."""
    cat = cat or catalog()
    if isinstance(text, int | float):
        return check_bandwidth(float(text), "RAM bandwidth")
    s = text.strip().lower().removesuffix("gb/s").strip()
    if s in cat.platforms:
        s = cat.platforms[s]["ram"].lower()
    try:
        value = float(s)
    except ValueError:
        pass
    else:
        return check_bandwidth(value, "RAM bandwidth")
    m = _DDR.match(s)
    if not m:
        raise HardwareError(f"unknown RAM bandwidth '{text}': give GB/s (80), a DDR spec like ddr5-6000x2 "
                            f"(MT/s x channels), or a platform: {', '.join(cat.platforms)}")
    channels = int(m.group("ch") or 1)
    mts = int(m.group("mts"))
    if not DDR_MTS_RANGE[0] <= mts <= DDR_MTS_RANGE[1] or not 1 <= channels <= MAX_CHANNELS:
        raise HardwareError(f"RAM '{text}': {mts} MT/s x {channels} channel(s) is not a real memory system "
                            f"(MT/s {DDR_MTS_RANGE[0]}..{DDR_MTS_RANGE[1]}, channels 1..{MAX_CHANNELS})")
    return mts * 1e6 * 8 * channels


def system_ram_bytes() -> int:
    """This machine's physical RAM (POSIX sysconf); 0 where the platform does not say."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0


def ram_channels(text: str | float | None, cat: Catalog | None = None) -> int:
    """Memory channels a --ram-bw value states (ddr5-6000x8 -> 8, a platform by its RAM spec); 0 when unknown."""
    if text is None or isinstance(text, int | float):
        return 0
    cat = cat or catalog()
    s = text.strip().lower()
    if s in cat.platforms:
        s = cat.platforms[s]["ram"].lower()
    m = _DDR.match(s)
    return int(m.group("ch") or 1) if m else 0


def host_device(ram: int | None = None, ram_bw: str | float | None = None, gpus: Sequence[Device] = (),
                cat: Catalog | None = None, *, threads: int | None = None, cores: int | None = None,
                numa_nodes: int = 1, channels: int | None = None, available: int | None = None,
                simd: str = "", ccds: int = 0, params: SpeedParams | None = None) -> Device:
    """The host (``CPU``): ``ram`` bytes (default: this machine's RAM, or the unified pool of an Apple preset)
    at ``ram_bw`` (see :func:`ram_bandwidth`; default from the preset files, and an Apple GPU's bandwidth
    when the memory is unified). ``threads`` is llama.cpp's ``-t`` (default: ``cores``, as llama.cpp uses the
    physical cores, else the parameters' default, noted); ``available`` the RAM free for llama.cpp (default
    ``ram`` less the parameters' reserve, noted); ``channels`` defaults to what ``ram_bw`` states; ``simd`` is the
    CPU's vector class (:meth:`SpeedParams.simd_factor`; "" for the reference class); ``ccds`` its core dies
    (AMD chiplet CPUs, all sockets; 0: no limit from them)."""
    cat = cat or catalog()
    params = params or speed_params()
    notes = []
    unified = next((g for g in gpus if g.unified), None)
    if unified is not None:
        default_ram = unified.pool or unified.memory
        default_bw: float = unified.bandwidth
    else:
        default_ram = system_ram_bytes()
        default_bw = ram_bandwidth(cat.default_ram_bw, cat)
    if ram is None:
        ram = default_ram
        notes.append(f"RAM not given: using {format_size(ram)}" + (" (unified pool)" if unified else
                                                                     " (this machine)"))
    if ram_bw is None:
        bw = default_bw
        if unified is None:
            notes.append(f"RAM bandwidth not given: assumed {cat.default_ram_bw} = {bw / GB:.1f} GB/s "
                         "(give --ram-bw)")
    else:
        bw = ram_bandwidth(ram_bw, cat)
    if channels is None:
        channels = ram_channels(ram_bw if ram_bw is not None else (None if unified else cat.default_ram_bw), cat)
    if threads is None:
        threads = cores or params.default_threads
        if not cores:
            notes.append(f"threads not given: assumed -t {threads} (give -t, or the CPU's cores)")
    if available is None:
        reserve = round(params.ram_reserve_gib * GIB)
        available = max(int(ram) - reserve, 0)
        if int(ram) > reserve:
            notes.append(f"RAM available not given: assumed {format_size(available)} ({format_size(reserve)} "
                         "for the OS and other programs; give --ram-avail)")
    host = Device(
        name=HOST, backend="cpu", label="system RAM" + (" (unified)" if unified else ""), memory=int(ram),
        bandwidth=bw, efficiency=0.0, power=cat.cpu_power, link_bandwidth=0.0,  # efficiency: host_params
        unified=unified is not None, idle_power=0.15 * cat.cpu_power, notes=tuple(notes),
        threads=int(threads), cores=int(cores or 0), numa_nodes=max(1, int(numa_nodes)),
        quant_cost=tuple(sorted(params.cpu_quant_cost.items())), available=int(available),
        prefill_cost=tuple(sorted(params.cpu_prefill_cost.items())), simd=simd, ccds=max(0, int(ccds)),
    )
    host = host_params(host, params, channels)
    if host.read_peak < host.bandwidth:
        host = replace(host, notes=(*host.notes, (
            f"RAM read at most {host.read_peak / GB:.0f} GB/s of its {host.bandwidth / GB:.0f} GB/s peak: "
            f"{host.ccds} CCD{'s' if host.ccds != 1 else ''} x {host.ccd_bandwidth / GB:.0f} GB/s per fabric link "
            "(--ccds)")))
    return host


def host_params(host: Device, params: SpeedParams, channels: int) -> Device:
    """``host`` with the fitted speed parameters of its platform class (``channels`` memory channels): what
    :func:`host_device` gives every host, and what benchmarks/accuracy.py varies while fitting."""
    klass = params.host_class(channels, host.bandwidth)
    host = replace(host, efficiency=params.efficiency.get(klass, 0.65), numa_gain=params.numa_gain,
                   thread_bandwidth=params.thread_gbs * GB, core_rate=params.core_gelems * 1e9,
                   ccd_bandwidth=params.ccd_gbs * GB, layer_seconds=params.cpu_layer_us * 1e-6)
    return replace(host, flops=host_flops(host, params))


def host_flops(host: Device, params: SpeedParams) -> float:
    """The host's prompt FLOP/s: its compute threads x one core's rate in its vector class. Only prompts take the
    class: decode is bound by memory on most hosts, and the class applied to decode fitted the published rows
    worse (benchmarks/accuracy.py)."""
    return host.compute_threads * params.core_gflops * 1e9 * params.simd_factor(host.simd)


def runtime_overhead(device: Device, cat: Catalog | None = None) -> int:
    """Bytes a backend takes on a GPU beyond llama.cpp's buffers (driver context, BLAS workspace), per the
    preset files' ``_overhead_mib``; 0 for the host."""
    cat = cat or catalog()
    return 0 if device.is_host else cat.overhead.get(device.backend, 0)


def device_set(gpus: Sequence[Device], host: Device) -> dict[str, Device]:
    """Devices by llama.cpp buffer name, GPUs first, host last."""
    return {d.name: d for d in (*gpus, host)}


# Device.moe_offload_rows by engine. ik_llama.cpp's ggml_backend_cuda_offload_op (since its PR 520, 2025-06-12;
# ikawrakow/ik_llama.cpp@8337e4cd3861 ggml/src/ggml-cuda.cu) moves a MUL_MAT_ID or fused up/gate op only when
# ubatch x experts used >= GGML_CUDA_MIN_BATCH_OFFLOAD (32) x experts: DeepSeek-V3 from -ub 1024, Qwen3-235B from
# 512. llama.cpp moves every op of at least 32 tokens.
ENGINE_MOE_OFFLOAD_ROWS = {"ik_llama.cpp": 32.0}
# Engines whose CUDA attention for one decoded token reads each KV head once for all the query heads sharing it,
# whatever the cache type: ik_llama.cpp since its PR 370 (2025-05-04, "CUDA: faster FA TG for GQA models").
ENGINE_GQA_DECODE_ATTENTION = ("ik_llama.cpp",)
# The vector class an engine's CPU kernels run in, by the CPU's own class, where the two differ: ik_llama.cpp's
# iqk kernels take their AVX-512 path only with VNNI (HAVE_FANCY_SIMD, ggml/src/iqk/iqk_config.h at 8337e4cd3861),
# else their AVX2 one.
ENGINE_SIMD = {"ik_llama.cpp": {"avx512": "avx2"}}


def engine_simd(engine: str, simd: str) -> str:
    """The vector class ``engine``'s CPU kernels use on a CPU of class ``simd`` (ENGINE_SIMD)."""
    return ENGINE_SIMD.get(engine, {}).get(simd, simd)


def engine_costs(host: Device, engine: str, params: SpeedParams) -> Device:
    """The host's per-type cost tables as ``engine``'s own CPU kernels have them: llama.cpp's times the engine's
    measured factor per type (``engine_cpu_quant_factor``, ``engine_cpu_prefill_factor``; 1 where none is)."""
    def scaled(table: tuple[tuple[str, float], ...], factor: Mapping[str, float]) -> tuple[tuple[str, float], ...]:
        return tuple((t, c * factor.get(t, 1.0)) for t, c in table)

    decode = params.engine_cpu_quant_factor.get(engine)
    prompt = params.engine_cpu_prefill_factor.get(engine)
    if not decode and not prompt:
        return host
    return replace(host, quant_cost=scaled(host.quant_cost, decode or {}),
                   prefill_cost=scaled(host.prefill_cost, prompt or {}))


def for_engine(devices: Mapping[str, Device], engine: str, params: SpeedParams | None = None) -> dict[str, Device]:
    """The devices as ``engine`` drives them: another engine's CPU kernels (ik_llama.cpp's repacked and fused ones)
    do the host's work at ``engine_cpu_factor`` times llama.cpp's rate, in decode and in prompts (fitted on that
    engine's published rows, docs/accuracy.md), with that engine's own cost per type where it was measured
    (:func:`engine_costs`) and in the vector class its kernels use there (ENGINE_SIMD), and its GPU backends take
    host experts over for prompts by its own rule (ENGINE_MOE_OFFLOAD_ROWS) and, where it has
    GQA-aware decode attention on CUDA (ENGINE_GQA_DECODE_ATTENTION), read each KV head once. The one place
    engines differ in speed: solution.solve and the accuracy report."""
    params = params or speed_params()
    f = params.engine_cpu_factor.get(engine, 1.0)
    rows = ENGINE_MOE_OFFLOAD_ROWS.get(engine, 0.0)
    gqa_aware = engine in ENGINE_GQA_DECODE_ATTENTION

    def gpu(d: Device) -> Device:
        share = 0.0 if gqa_aware else d.kv_reread_share
        return d if (rows, share) == (d.moe_offload_rows, d.kv_reread_share) else replace(
            d, moe_offload_rows=rows, kv_reread_share=share)

    def host(d: Device) -> Device:
        simd = engine_simd(engine, d.simd)
        g = params.simd_factor(simd) / params.simd_factor(d.simd)
        d = engine_costs(d, engine, params)
        return d if f == 1.0 and simd == d.simd else replace(d, core_rate=d.core_rate * f, flops=d.flops * f * g,
                                                               simd=simd)
    return {n: host(d) if d.is_host else gpu(d) for n, d in devices.items()}
