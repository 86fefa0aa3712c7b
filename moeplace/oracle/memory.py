"""What llama.cpp allocates, as it reports it: :func:`measure_memory` loads a model with ``no_alloc``
(``llama_model_params.no_alloc``: every buffer is sized, nothing read or allocated, so full-scale header-only
factory models work) and creates a context, then returns the model, KV/recurrent-state, output and compute
buffers as printed (MiB, two decimals) and, where :mod:`moeplace.oracle.stdmap` can read them, the exact bytes per
buffer type. :func:`tensor_buffers` is the pattern oracle: which buffer each overridden tensor went to and which
device each layer slot was assigned to (llama.cpp's own "buffer type overridden" / "layer N assigned to device"
lines).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from moeplace.llamacpp import Override
from moeplace.memory import RunConfig
from moeplace.oracle.loading import captured_log, load, load_llama, log_lines, version
from moeplace.oracle.stdmap import BufferBytes, read_breakdown
from moeplace.sizes import MIB


@dataclass(frozen=True)
class CacheLine:
    """One "size = ..." line of a KV cache (``llama_kv_cache``, src/llama-kv-cache.cpp) or recurrent state
    (``llama_memory_recurrent``, src/llama-memory-recurrent.cpp). An iSWA model prints two KV lines (the full and
    the sliding-window cache, src/llama-kv-cache-iswa.cpp); a hybrid one a KV and a recurrent line."""

    source: str  # the printing function: llama_kv_cache or llama_memory_recurrent
    mib: float
    cells: int
    layers: int
    parts: tuple[tuple[str, str, float], ...]  # (K/V or R/S/P, type name, MiB) as printed

    @property
    def recurrent(self) -> bool:
        return "recurrent" in self.source

    def part(self, label: str) -> float:
        return sum(m for lab, _, m in self.parts if lab == label)



@dataclass(frozen=True)
class EngineMemory:
    """What llama.cpp reported for one model and context. ``*_mib`` are the printed figures by buffer type
    (two decimals; the model ones are 0.00 under no_alloc, where llama.cpp prints its dummy buffers); ``exact``
    is bytes by buffer type from ``llama_get_memory_breakdown`` where it could be read, else None."""

    model_mib: Mapping[str, float]
    output_mib: Mapping[str, float]
    caches: tuple[CacheLine, ...]
    compute_mib: Mapping[str, float]
    exact: Mapping[str, BufferBytes] | None
    file_bytes: int  # llama_model_size: every tensor in the file (loaded or not)
    n_ctx: int
    n_ctx_seq: int
    no_alloc: bool
    engine: str
    log: tuple[str, ...] = field(repr=False, default=())

    @property
    def model_bytes(self) -> int | None:
        return None if self.exact is None else sum(b.model for b in self.exact.values())

    @property
    def kv_bytes(self) -> int | None:
        return None if self.exact is None else sum(b.context for b in self.exact.values())

    @property
    def compute_bytes(self) -> int | None:
        return None if self.exact is None else sum(b.compute for b in self.exact.values())

    def compute_total(self) -> float:
        """Compute buffers in bytes: exact where available, else from the printed MiB."""
        exact = self.compute_bytes
        return float(exact) if exact is not None else sum(self.compute_mib.values()) * MIB


_BUF_LINE = re.compile(r"^\w+: +(?P<buft>\S+) +(?P<what>model|output|compute) buffer size = +(?P<mib>[\d.]+) MiB")
_CACHE_LINE = re.compile(r"^(?P<src>\w+): size = +(?P<mib>[\d.]+) MiB \( *(?P<cells>\d+) cells, +(?P<layers>\d+) "
                         r"layers,[^)]*\), (?P<parts>.*)$")
_PART = re.compile(r"(?P<label>[A-Z]) \((?P<type>\w+)\): +(?P<mib>[\d.]+) MiB")
_CTX_VALUE = re.compile(r"^llama_context: (?P<key>n_ctx|n_ctx_seq) += (?P<value>\d+)")


def _parse_memory(lines: Sequence[str]) -> tuple[dict[str, float], dict[str, float], list[CacheLine],
                                                  dict[str, float], dict[str, int]]:
    model: dict[str, float] = {}
    output: dict[str, float] = {}
    compute: dict[str, float] = {}
    caches: list[CacheLine] = []
    values: dict[str, int] = {}
    for line in lines:
        if m := _BUF_LINE.match(line):
            target = {"model": model, "output": output, "compute": compute}[m.group("what")]
            target[m.group("buft")] = target.get(m.group("buft"), 0.0) + float(m.group("mib"))
        elif m := _CACHE_LINE.match(line):
            parts = tuple((p.group("label"), p.group("type"), float(p.group("mib")))
                          for p in _PART.finditer(m.group("parts")))
            caches.append(CacheLine(m.group("src"), float(m.group("mib")), int(m.group("cells")),
                                    int(m.group("layers")), parts))
        elif m := _CTX_VALUE.match(line):
            values[m.group("key")] = int(m.group("value"))
    return model, output, caches, compute, values


def _consistent(exact: Mapping[str, BufferBytes], compute_mib: Mapping[str, float],
                caches: Sequence[CacheLine]) -> bool:
    """The exact figures agree with what llama.cpp printed (so the map was read right)."""
    for name, mib in compute_mib.items():
        if name not in exact or abs(exact[name].compute / MIB - mib) > 0.0051:
            return False
    kv = sum(b.context for b in exact.values()) / MIB
    return abs(kv - sum(c.mib for c in caches)) <= 0.0051 * max(1, len(caches)) + 0.01


def measure_memory(model_path: str | os.PathLike[str], cfg: RunConfig, overrides: Sequence[Override] = (),
                   n_gpu_layers: int = 0, *, tensor_split: Sequence[float] | None = None,
                   no_alloc: bool = True) -> EngineMemory:
    """Loads the model (``no_alloc``: nothing read or allocated, so header-only files work) with ``cfg``'s
    context and returns the buffer sizes llama.cpp reports. ``no_alloc=False`` really allocates and, for the
    model, maps the file: use it only on small models with data (it prints the real model buffer sizes)."""
    llama = load_llama()
    with captured_log() as sink, load(model_path, cfg, overrides=overrides, n_gpu_layers=n_gpu_layers,
                                      tensor_split=tensor_split, no_alloc=no_alloc, n_threads=1,
                                      sink=sink) as loaded:
        exact = read_breakdown(loaded.ctx)
        file_bytes = int(llama.llama_model_size(loaded.model))
    lines = log_lines(sink)
    model, output, caches, compute, values = _parse_memory(lines)
    if exact is not None and not _consistent(exact, compute, caches):
        exact = None
    return EngineMemory(model_mib=model, output_mib=output, caches=tuple(caches), compute_mib=compute, exact=exact,
                        file_bytes=file_bytes, n_ctx=values.get("n_ctx", 0), n_ctx_seq=values.get("n_ctx_seq", 0),
                        no_alloc=no_alloc, engine=version(), log=tuple(lines))


# --- which buffer each tensor went to ------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorBuffers:
    """From llama.cpp's load log: the buffer of every tensor an override matched (src/llama-model-loader.cpp,
    "tensor X (N MiB type) buffer type overridden to B") and the device of every layer slot (blocks, then the
    output layer; src/llama-model.cpp, "layer N assigned to device D")."""

    overridden: Mapping[str, str]
    slots: tuple[tuple[int, str], ...]  # (layer slot, device) in the order llama.cpp logged them

    @property
    def layer_devices(self) -> tuple[str, ...]:
        """The device of each layer slot, by slot index."""
        return tuple(d for _, d in sorted(self.slots))


_OVERRIDDEN = re.compile(r"^tensor (\S+) \(\d+ MiB \S+\) buffer type overridden to (\S+)$")
_LAYER = re.compile(r"^load_tensors: layer +(\d+) assigned to device (\S+?),")


def tensor_buffers(model_path: str | os.PathLike[str], overrides: Sequence[Override] = (),
                   n_gpu_layers: int = 0, tensor_split: Sequence[float] | None = None) -> TensorBuffers:
    """Loads the model with ``no_alloc`` and the given overrides and returns where llama.cpp put things."""
    with captured_log() as sink, load(model_path, None, overrides=overrides, n_gpu_layers=n_gpu_layers,
                                      tensor_split=tensor_split, no_alloc=True, sink=sink):
        pass
    overridden: dict[str, str] = {}
    slots: list[tuple[int, str]] = []
    for line in log_lines(sink):
        if m := _OVERRIDDEN.match(line):
            overridden[m.group(1)] = m.group(2)
        elif m := _LAYER.match(line):
            slots.append((int(m.group(1)), m.group(2)))
    return TensorBuffers(overridden, tuple(slots))

