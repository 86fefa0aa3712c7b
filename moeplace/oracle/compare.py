"""moeplace's memory model beside what llama.cpp measured (:mod:`moeplace.oracle.memory`): the comparisons that
``benchmarks/memory_oracle.py`` tabulates and ``tests/test_memory_oracle.py`` holds live."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from moeplace.hardware import Device
from moeplace.memory import (
    MemoryBreakdown,
    RunConfig,
    compute_bytes,
    context_shape,
    kv_bytes_per_layer,
    memory_by_device,
    output_bytes,
)
from moeplace.memory import kv_bytes as kv_total
from moeplace.model import ModelDescription
from moeplace.oracle.memory import EngineMemory
from moeplace.placement import HOST, Placement
from moeplace.sizes import MIB

# The compute-buffer estimate's documented tolerance against llama.cpp's CPU compute buffer, held over the
# oracle's grid (docs/memory-oracle.md) and by tests/test_memory_oracle.py. An underestimate (the side that can
# overfill a GPU) stays within the 64 MiB goal. An overestimate may in addition reach the attention-mask term
# that moeplace.memory.compute_terms adds to the logits phase (2 bytes x KV cells x ubatch with flash attention,
# 4 without), which llama.cpp frees before the logits on most graphs: 128 MiB at 128K context, ubatch 512.
COMPUTE_TOLERANCE_MIB = 64.0


def mib_text(nbytes: int | float, single: bool = False) -> str:
    """``nbytes`` in MiB with two decimals, as llama.cpp prints it: the KV lines divide in single precision
    (``(float)bytes / (1024.0f * 1024.0f)``, src/llama-kv-cache.cpp), the buffer lines in double."""
    if single:
        return f"{float(np.float32(nbytes) / np.float32(MIB)):.2f}"
    return f"{nbytes / MIB:.2f}"


@dataclass(frozen=True)
class CacheFigure:
    """One cache as both sides see it: total, then the parts (K, V or R, S, P) as printed MiB strings."""

    kind: str  # kv or recurrent
    cells: int
    total: str
    parts: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class MemoryComparison:
    """moeplace.memory against llama.cpp for one model and context (CPU only: every weight on the host)."""

    model: str
    cfg: RunConfig
    weights_ours: int  # bytes of loaded tensors
    weights_llama: int | None  # exact model buffer bytes (None where the library does not expose them)
    kv_ours: int
    kv_llama: int | None  # exact context bytes
    caches_ours: tuple[CacheFigure, ...]
    caches_llama: tuple[CacheFigure, ...]
    compute_ours: int
    compute_llama: float
    compute_mask: int  # the attention-mask term of moeplace's estimate (see COMPUTE_TOLERANCE_MIB)
    output_ours: int
    output_llama_mib: float
    engine: str

    @property
    def weights_match(self) -> bool | None:
        """Equal to the printed precision (two decimals of MiB); None where llama.cpp's figure is unknown."""
        if self.weights_llama is None:
            return None
        return mib_text(self.weights_ours) == mib_text(self.weights_llama)

    @property
    def kv_match(self) -> bool:
        """Every cache's printed total and parts equal (order-free: the caches are matched as a set)."""
        return sorted(self.caches_ours, key=repr) == sorted(self.caches_llama, key=repr)

    @property
    def compute_error(self) -> float:
        """moeplace minus llama.cpp, bytes."""
        return self.compute_ours - self.compute_llama

    @property
    def compute_within(self) -> bool:
        """Within the documented tolerance: at most 64 MiB under llama.cpp's figure, at most 64 MiB plus the
        mask term over it."""
        limit = COMPUTE_TOLERANCE_MIB * MIB
        return -limit <= self.compute_error <= limit + self.compute_mask

    @property
    def output_match(self) -> bool:
        return mib_text(self.output_ours) == f"{self.output_llama_mib:.2f}"


def _our_caches(model: ModelDescription, cfg: RunConfig) -> tuple[CacheFigure, ...]:
    """moeplace's per-layer KV grouped into the caches llama.cpp creates: one for the full-attention layers, one
    for the sliding-window/chunked layers of an iSWA model (src/llama-kv-cache-iswa.cpp), one recurrent state
    (src/llama-memory-recurrent.cpp)."""
    shape = context_shape(model, cfg)
    groups: dict[str, list[Any]] = {}
    for x in kv_bytes_per_layer(model, cfg):
        if x.kind == "recurrent":
            groups.setdefault("recurrent", []).append(x)
        elif x.total:
            groups.setdefault("swa" if x.kind in ("swa", "chunked") else "base", []).append(x)
    out = []
    for key, xs in groups.items():
        k, v = sum(x.k_bytes for x in xs), sum(x.v_bytes for x in xs)
        if key == "recurrent":
            parts = (("R", mib_text(k, True)), ("S", mib_text(v, True)), ("P", mib_text(0, True)))
            out.append(CacheFigure("recurrent", shape.recurrent_cells, mib_text(k + v, True), parts))
        else:
            cells = shape.swa_cells if key == "swa" else shape.n_ctx_seq
            out.append(CacheFigure("kv", cells, mib_text(k + v, True),
                                   (("K", mib_text(k, True)), ("V", mib_text(v, True)))))
    return tuple(out)


def _llama_caches(measured: EngineMemory) -> tuple[CacheFigure, ...]:
    return tuple(CacheFigure("recurrent" if c.recurrent else "kv", c.cells, f"{c.mib:.2f}",
                             tuple((lab, f"{mib:.2f}") for lab, _, mib in c.parts))
                 for c in measured.caches)


def _mask_bytes(model: ModelDescription, cfg: RunConfig) -> int:
    """The attention-mask term of moeplace.memory.compute_terms for a whole ubatch (its KV cells: a full
    layer's plus the window's on sliding-window models; 2 bytes each with flash attention, 4 without)."""
    hp = model.hparams
    shape = context_shape(model, cfg)
    n_kv = shape.n_ctx_seq + (shape.swa_cells if hp.n_swa and any(hp.swa_layers) else 0)
    return (2 if cfg.flash_attn else 4) * n_kv * shape.n_ubatch


def compare_memory(model: ModelDescription, cfg: RunConfig, measured: EngineMemory) -> MemoryComparison:
    """Puts moeplace's figures for the CPU-only placement beside what llama.cpp measured."""
    weights = sum(t.nbytes for t in model.tensors if t.loaded)
    host = {b for b in measured.exact or {} if b == HOST or b.startswith(HOST + "_")}  # CPU, CPU_REPACK...
    weights_llama = None if measured.exact is None else sum(measured.exact[b].model for b in host)
    return MemoryComparison(
        model=model.name, cfg=cfg, weights_ours=weights, weights_llama=weights_llama,
        kv_ours=kv_total(model, cfg), kv_llama=measured.kv_bytes,
        caches_ours=_our_caches(model, cfg), caches_llama=_llama_caches(measured),
        compute_ours=compute_bytes(model, cfg), compute_llama=measured.compute_total(),
        compute_mask=_mask_bytes(model, cfg),
        output_ours=output_bytes(model, cfg), output_llama_mib=sum(measured.output_mib.values()),
        engine=measured.engine,
    )


# --- per device, on a GPU backend ------------------------------------------------------------------------------

_GPU_BUFFER = re.compile(r"^[A-Za-z]+\d+$")  # Vulkan0, CUDA1: a device's own buffer; CPU*, Vulkan_Host...: host

# The buffers compared per device, in table order.
BUFFERS = ("weights", "kv", "compute", "output")


@dataclass(frozen=True)
class BufferFigure:
    """One buffer of one device: moeplace's bytes beside llama.cpp's (None where llama.cpp's are unknown)."""

    device: str  # a GPU's name, or CPU for everything in host memory (CPU, CPU_REPACK, Vulkan_Host...)
    buffer: str  # one of BUFFERS
    ours: int
    llama: float | None

    @property
    def error(self) -> float | None:
        return None if self.llama is None else self.ours - self.llama


@dataclass(frozen=True)
class DeviceComparison:
    """moeplace.memory.memory_by_device against llama.cpp's buffers for one placement on a GPU backend."""

    model: str
    cfg: RunConfig
    figures: tuple[BufferFigure, ...]
    engine: str

    def figure(self, device: str, buffer: str) -> BufferFigure | None:
        return next((f for f in self.figures if f.device == device and f.buffer == buffer), None)


def measured_by_device(measured: EngineMemory) -> dict[str, dict[str, float]]:
    """llama.cpp's bytes per device (GPU buffers by name, every host buffer type summed as ``CPU``) and buffer."""
    out: dict[str, dict[str, float]] = {}

    def add(buft: str, what: str, value: float) -> None:
        dev = buft if _GPU_BUFFER.match(buft) and not buft.startswith(HOST) else HOST
        slot = out.setdefault(dev, dict.fromkeys(BUFFERS, 0.0))
        slot[what] += value

    for buft, b in (measured.exact or {}).items():
        add(buft, "weights", b.model)
        add(buft, "kv", b.context)
        add(buft, "compute", b.compute)
    for buft, mib in measured.output_mib.items():
        add(buft, "output", mib * MIB)
    return out


def compare_devices(model: ModelDescription, cfg: RunConfig, placement: Placement, devices: Mapping[str, Device],
                    measured: EngineMemory) -> DeviceComparison:
    """Every buffer of every device of ``placement``: weights, KV, compute and the output (logits) buffer, which
    moeplace counts in the host's compute and is split out here. Needs llama.cpp's exact figures
    (:mod:`moeplace.oracle.stdmap`); without them only the output buffer is compared."""
    ours = memory_by_device(model, placement, cfg, devices)
    theirs = measured_by_device(measured) if measured.exact is not None else {}
    output = output_bytes(model, cfg)
    figures = []
    for dev in dict.fromkeys([*ours, *theirs]):
        b = ours.get(dev, MemoryBreakdown())
        values = {"weights": b.weights, "kv": b.kv, "compute": b.compute - (output if dev == HOST else 0),
                  "output": output if dev == HOST else 0}
        for what in BUFFERS:
            got: float | None
            if what == "output":
                got = sum(measured.output_mib.values()) * MIB if dev == HOST else 0.0
            else:
                got = theirs.get(dev, {}).get(what, 0.0) if measured.exact is not None else None
            figures.append(BufferFigure(dev, what, values[what], got))
    return DeviceComparison(model.name, cfg, tuple(figures), measured.engine)
