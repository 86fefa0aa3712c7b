"""The one place moeplace drives a real llama.cpp: through llama-cpp-python's low-level ctypes API, imported only
when a function here is called, so that the rest of moeplace imports and works without it.

What it does:

* :func:`measure_memory` loads a model with ``no_alloc`` (``llama_model_params.no_alloc``: llama.cpp sizes every
  buffer without reading or allocating, so full-scale header-only factory models work) and creates a context,
  then returns what llama.cpp reported: model, KV/recurrent-state, output and compute buffers as printed (MiB,
  two decimals) and, where the library exposes them, the exact bytes per buffer type.
* :func:`tensor_buffers` reports which buffer each overridden tensor went to and which device each layer slot
  was assigned to (llama.cpp's own "buffer type overridden" / "layer N assigned to device" lines): the pattern
  oracle.
* :func:`measure_speed` runs prompt processing and generation on a model with real data and times them the way
  ``llama-bench`` does (``tools/llama-bench/llama-bench.cpp``: random tokens, ``llama_batch_get_one``, a warm-up,
  the memory cleared before each test).

Exact bytes come from ``llama_get_memory_breakdown`` (``src/llama-ext.h``, exported by libllama): under
``no_alloc`` it is the only place llama.cpp states the model's buffer sizes (its "model buffer size" lines print
the dummy buffers' 0.00 MiB, ``src/llama-model.cpp`` ``load_tensors``). It returns a C++
``std::map<ggml_backend_buffer_type_t, llama_memory_breakdown_data>`` by value, which we read only where its
layout is known: Linux, 64-bit, libstdc++ (``bits/stl_tree.h``; the Itanium C++ ABI passes the result through a
hidden pointer). Every value read is checked against the printed lines; on any mismatch, or elsewhere, the exact
figures are None and only the printed ones are reported. The map's few nodes are not freed (no destructor is
callable from ctypes): tens of bytes per call.
"""

from __future__ import annotations

import ctypes
import os
import platform
import re
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from moeplace.errors import MoeplaceError
from moeplace.llamacpp import Override
from moeplace.memory import CACHE_TYPES, RunConfig, compute_bytes, context_shape, kv_bytes_per_layer
from moeplace.memory import kv_bytes as kv_total
from moeplace.model import ModelDescription
from moeplace.placement import HOST
from moeplace.sizes import MIB

ENGINE_HINT = ("this needs llama.cpp through llama-cpp-python: pip install 'moeplace[profile]' (a source build, "
               "~25 min on 2 cores; .ci/llama-cpp.sh builds it once per machine and caches the wheel)")

_FA_DISABLED, _FA_ENABLED = 0, 1  # include/llama.h enum llama_flash_attn_type
_LOAD_MODE_NONE = 0  # include/llama.h enum llama_load_mode: no_alloc requires it (the mmap path asserts !no_alloc)
# ggml/include/ggml-backend.h enum ggml_backend_dev_type: CPU, GPU, IGPU (integrated, host memory), ACCEL, META
_GPU_DEVICE_TYPES = (1, 2)


class EngineError(MoeplaceError):
    """llama.cpp is missing, or refused a model or configuration."""


# --- finding the library ---------------------------------------------------------------------------------------


def _import() -> tuple[ModuleType | None, str | None]:
    # Not cached: Python's module cache already makes a repeated import cheap, and a test (or a user) who hides
    # llama_cpp must see it gone.
    try:
        import llama_cpp
    except ImportError as e:
        return None, f"llama_cpp cannot be imported ({e}): {ENGINE_HINT}"
    except OSError as e:  # the package is there but its shared libraries do not load
        return None, f"llama_cpp's libraries do not load ({e}): reinstall it; {ENGINE_HINT}"
    return llama_cpp, None


def available() -> bool:
    """Whether llama-cpp-python can be imported here."""
    return _import()[0] is not None


def unavailable_reason() -> str | None:
    """Why :func:`available` is False (one line naming the fix), None when it is True."""
    return _import()[1]


def load_llama() -> ModuleType:
    """The llama_cpp module, or :class:`EngineError` saying how to get it."""
    llama, reason = _import()
    if llama is None:
        raise EngineError(reason or ENGINE_HINT)
    return llama


def version() -> str:
    """``llama-cpp-python X (libllama Y)``, or the reason it is unavailable."""
    llama, reason = _import()
    if llama is None:
        return f"unavailable: {reason}"
    lib = "?"
    fn = getattr(llama, "llama_version", None)
    if fn is not None:
        try:
            raw = fn()
            lib = raw.decode() if isinstance(raw, bytes) else str(raw)
        except Exception:  # older bindings lack the symbol; the version is informative only
            lib = "?"
    return f"llama-cpp-python {getattr(llama, '__version__', '?')} (libllama {lib})"


@dataclass(frozen=True)
class _Libs:
    llama: ModuleType
    ggml: ctypes.CDLL  # libggml: device registry
    ggml_base: ctypes.CDLL  # libggml-base: buffer type names
    breakdown: Any | None  # llama_get_memory_breakdown where its result can be read (see the module doc)


def _lib_file(lib_dir: Path, stem: str) -> Path:
    names = {"win32": (f"{stem}.dll", f"lib{stem}.dll"), "darwin": (f"lib{stem}.dylib", f"lib{stem}.so")}
    for name in names.get(sys.platform, (f"lib{stem}.so",)):
        if (lib_dir / name).exists():
            return lib_dir / name
    raise EngineError(f"{stem} not found in {lib_dir}: reinstall llama-cpp-python ({ENGINE_HINT})")


def _libstdcxx_loaded() -> bool:
    try:
        return "libstdc++.so" in Path("/proc/self/maps").read_text()
    except OSError:
        return False


@cache
def _libs() -> _Libs:
    llama = load_llama()
    lib_dir = Path(llama.__file__).parent / "lib"
    ggml = ctypes.CDLL(str(_lib_file(lib_dir, "ggml")))
    for name, res, args in (
        ("ggml_backend_dev_count", ctypes.c_size_t, []),
        ("ggml_backend_dev_get", ctypes.c_void_p, [ctypes.c_size_t]),
        ("ggml_backend_dev_by_type", ctypes.c_void_p, [ctypes.c_int]),
        ("ggml_backend_dev_type", ctypes.c_int, [ctypes.c_void_p]),
        ("ggml_backend_dev_name", ctypes.c_char_p, [ctypes.c_void_p]),
        ("ggml_backend_dev_buffer_type", ctypes.c_void_p, [ctypes.c_void_p]),
        ("ggml_backend_dev_description", ctypes.c_char_p, [ctypes.c_void_p]),
        ("ggml_backend_dev_memory", None,
         [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)]),
    ):
        fn = getattr(ggml, name)
        fn.restype, fn.argtypes = res, args
    base = ctypes.CDLL(str(_lib_file(lib_dir, "ggml-base")))
    for name, res, args in (
        ("ggml_backend_buft_name", ctypes.c_char_p, [ctypes.c_void_p]),
        ("ggml_get_name", ctypes.c_char_p, [ctypes.c_void_p]),
        ("ggml_nbytes", ctypes.c_size_t, [ctypes.c_void_p]),
        ("ggml_backend_tensor_get", None, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]),
    ):
        fn = getattr(base, name)
        fn.restype, fn.argtypes = res, args
    breakdown = None
    if (sys.platform.startswith("linux") and ctypes.sizeof(ctypes.c_void_p) == 8
            and platform.machine() in ("x86_64", "aarch64") and _libstdcxx_loaded()):
        try:
            lib = ctypes.CDLL(str(_lib_file(lib_dir, "llama")))
            breakdown = lib._Z26llama_get_memory_breakdownPK13llama_context
            breakdown.restype = ctypes.c_void_p
            breakdown.argtypes = [ctypes.c_void_p, ctypes.c_void_p]  # (hidden result pointer, ctx)
        except (AttributeError, EngineError):
            breakdown = None
    return _Libs(llama, ggml, base, breakdown)


def ggml_base() -> ctypes.CDLL:
    """libggml-base from llama-cpp-python's own lib folder, with the tensor accessors typed (ggml_get_name,
    ggml_nbytes, ggml_backend_tensor_get, ggml_backend_buft_name)."""
    return _libs().ggml_base


def buffer_types() -> dict[str, int]:
    """Buffer type name -> ``ggml_backend_buffer_type_t`` for every device of this build, as ``-ot`` resolves
    names (``common/arg.cpp`` ``parse_tensor_buffer_overrides``: each device's default buffer type)."""
    libs = _libs()
    out = {}
    for i in range(libs.ggml.ggml_backend_dev_count()):
        buft = libs.ggml.ggml_backend_dev_buffer_type(libs.ggml.ggml_backend_dev_get(i))
        if buft:
            out[libs.ggml_base.ggml_backend_buft_name(buft).decode()] = buft
    return out


def gpu_devices() -> tuple[str, ...]:
    """Names of the GPU devices (dedicated or integrated) this llama.cpp build sees: empty for a CPU-only build
    or a machine without a GPU."""
    libs = _libs()
    out = []
    for i in range(libs.ggml.ggml_backend_dev_count()):
        dev = libs.ggml.ggml_backend_dev_get(i)
        if libs.ggml.ggml_backend_dev_type(dev) in _GPU_DEVICE_TYPES:
            out.append(libs.ggml.ggml_backend_dev_name(dev).decode())
    return tuple(out)


@dataclass(frozen=True)
class BackendDevice:
    """One entry of ggml's device list: what ``llama-server --list-devices`` prints."""

    name: str  # CUDA0, ROCm0, Vulkan0, MTL0, CPU
    description: str  # the device's own name: "NVIDIA GeForce RTX 3090"
    is_gpu: bool
    free: int  # bytes, as ggml_backend_dev_memory reports them (what --fit plans with)
    total: int


def backend_devices() -> tuple[BackendDevice, ...]:
    """Every device of this llama.cpp build in ggml's order, with free and total memory."""
    libs = _libs()
    out = []
    for i in range(libs.ggml.ggml_backend_dev_count()):
        dev = libs.ggml.ggml_backend_dev_get(i)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        libs.ggml.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        desc = libs.ggml.ggml_backend_dev_description(dev)
        out.append(BackendDevice(libs.ggml.ggml_backend_dev_name(dev).decode(), desc.decode() if desc else "",
                                 libs.ggml.ggml_backend_dev_type(dev) in _GPU_DEVICE_TYPES, free.value, total.value))
    return tuple(out)


# --- log capture ---------------------------------------------------------------------------------------------


class LogSink(list):  # type: ignore[type-arg]
    """llama.cpp's log text, chunk by chunk, and separately the text it logged at error level."""

    def __init__(self) -> None:
        super().__init__()
        self.errors: list[str] = []


# ggml/include/ggml.h enum ggml_log_level (NONE, DEBUG, INFO, WARN, ERROR, CONT); llama-cpp-python's _logger.py
# comment has an older numbering.
_LOG_LEVEL_ERROR, _LOG_LEVEL_CONT = 4, 5


@contextmanager
def captured_log(max_chunks: int = 200_000) -> Iterator[LogSink]:
    """Collects llama.cpp's (and ggml's) log text while the block runs instead of printing it, then restores
    llama-cpp-python's own logger. Every level is collected, debug included (the override lines are debug)."""
    llama = load_llama()
    sink = LogSink()
    last_level = [0]

    def log(level: int, text: bytes, user_data: Any) -> None:
        decoded = text.decode("utf-8", errors="replace")
        if len(sink) < max_chunks:
            sink.append(decoded)
        if level == _LOG_LEVEL_CONT and last_level[0] == _LOG_LEVEL_ERROR and sink.errors:
            sink.errors[-1] += decoded.rstrip()
        elif level == _LOG_LEVEL_ERROR and len(sink.errors) < 100:
            sink.errors.append(decoded.strip())
        if level != _LOG_LEVEL_CONT:
            last_level[0] = level

    callback = llama.llama_log_callback(log)
    llama.llama_log_set(callback, ctypes.c_void_p(0))
    try:
        yield sink
    finally:
        restore = getattr(getattr(llama, "_logger", None), "llama_log_callback", None)
        if restore is not None:
            llama.llama_log_set(restore, ctypes.c_void_p(0))
        else:  # nothing to restore to: keep ours alive, llama.cpp may still call it
            llama._moeplace_log_callback = callback


def _lines(sink: Sequence[str]) -> list[str]:
    return "".join(sink).splitlines()


def last_error(sink: LogSink) -> str:
    """llama.cpp's last error-level line, else the last line mentioning an error, else its last line."""
    if sink.errors:
        return sink.errors[-1]
    useful = [x.strip() for x in _lines(sink) if x.strip()]
    errors = [x for x in useful if re.search(r"error|failed|unable", x, re.IGNORECASE)]
    return (errors or useful or ["no message"])[-1]


# --- loading -------------------------------------------------------------------------------------------------


class _OverrideStruct(ctypes.Structure):
    """``struct llama_model_tensor_buft_override`` (include/llama.h): a pattern and a buffer type."""

    _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]


def _override_array(overrides: Sequence[Override]) -> Any:
    """The NULL-terminated override array llama.cpp reads, checked against this build's buffer types."""
    if not overrides:
        return None
    bufts = buffer_types()
    items = []
    for o in overrides:
        if o.buffer not in bufts:
            raise EngineError(f"buffer type {o.buffer} is not in this llama.cpp build (it has "
                              f"{', '.join(bufts) or 'none'}); GPU buffers need a GPU build and a GPU")
        items.append(_OverrideStruct(o.pattern.encode(), bufts[o.buffer]))
    return (_OverrideStruct * (len(items) + 1))(*items, _OverrideStruct(None, None))


@dataclass
class _Loaded:
    model: Any
    ctx: Any
    keep: list[Any] = field(default_factory=list)  # ctypes objects llama.cpp points into


def _model_params(libs: _Libs, overrides: Sequence[Override], n_gpu_layers: int,
                  tensor_split: Sequence[float] | None, no_alloc: bool, keep: list[Any]) -> Any:
    llama = libs.llama
    mp = llama.llama_model_default_params()
    array = _override_array(overrides)
    if array is not None:
        keep.append(array)
        mp.tensor_buft_overrides = ctypes.cast(array, ctypes.c_void_p).value
    mp.n_gpu_layers = n_gpu_layers
    if tensor_split:
        n = int(llama.llama_max_devices())
        if len(tensor_split) > n:
            raise EngineError(f"-ts has {len(tensor_split)} values; this build supports {n} devices")
        ts = (ctypes.c_float * n)(*tensor_split)
        keep.append(ts)
        mp.tensor_split = ctypes.cast(ts, ctypes.POINTER(ctypes.c_float))
    if no_alloc:
        mp.no_alloc = True
        mp.load_mode = _LOAD_MODE_NONE
    return mp


def _context_params(llama: ModuleType, cfg: RunConfig, n_threads: int) -> Any:
    cp = llama.llama_context_default_params()
    cp.n_ctx = cfg.n_ctx
    cp.n_batch = cfg.n_batch
    cp.n_ubatch = cfg.n_ubatch
    cp.n_seq_max = cfg.n_seq_max
    cp.kv_unified = cfg.kv_unified
    cp.type_k = int(CACHE_TYPES[cfg.type_k])  # ggml_type values: gguf's GGMLQuantizationType mirrors ggml.h
    cp.type_v = int(CACHE_TYPES[cfg.type_v])
    cp.flash_attn_type = _FA_ENABLED if cfg.flash_attn else _FA_DISABLED
    cp.swa_full = cfg.swa_full
    cp.offload_kqv = not cfg.no_kv_offload
    cp.op_offload = cfg.op_offload
    cp.n_threads = cp.n_threads_batch = n_threads
    cp.no_perf = True
    return cp


@contextmanager
def _load(path: str | os.PathLike[str], cfg: RunConfig | None, *, overrides: Sequence[Override] = (),
          n_gpu_layers: int = 0, tensor_split: Sequence[float] | None = None, no_alloc: bool,
          n_threads: int | None = None, sink: LogSink) -> Iterator[_Loaded]:
    """A loaded model (and a context when ``cfg`` is given), freed afterwards. Errors carry llama.cpp's last
    error line."""
    libs = _libs()
    llama = libs.llama
    keep: list[Any] = []
    path = Path(path)
    if not path.is_file():
        raise EngineError(f"{path}: no such model file")
    llama.llama_backend_init()
    mp = _model_params(libs, overrides, n_gpu_layers, tensor_split, no_alloc, keep)
    model = llama.llama_model_load_from_file(str(path).encode(), mp)
    if not model:
        raise EngineError(f"{path}: llama.cpp could not load the model: {last_error(sink)}")
    ctx = None
    try:
        if cfg is not None:
            ctx = llama.llama_init_from_model(model, _context_params(llama, cfg, n_threads or os.cpu_count() or 1))
            if not ctx:
                raise EngineError(f"{path}: llama.cpp could not create a context: {last_error(sink)}")
        yield _Loaded(model, ctx, keep)
    finally:
        if ctx:
            llama.llama_free(ctx)
        llama.llama_model_free(model)


# --- memory ------------------------------------------------------------------------------------------------


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
class BufferBytes:
    """Exact bytes llama.cpp accounts to one buffer type (``llama_memory_breakdown_data``, src/llama-ext.h)."""

    model: int
    context: int
    compute: int


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


class _MapHeader(ctypes.Structure):
    """libstdc++ ``std::map`` (``_Rb_tree_impl``): the comparator (padded), then ``_Rb_tree_header``."""

    _fields_ = [("compare", ctypes.c_uint64), ("color", ctypes.c_uint64), ("root", ctypes.c_void_p),
                ("leftmost", ctypes.c_void_p), ("rightmost", ctypes.c_void_p), ("count", ctypes.c_size_t)]


class _MapNode(ctypes.Structure):
    """``_Rb_tree_node<pair<const ggml_backend_buffer_type_t, llama_memory_breakdown_data>>``."""

    _fields_ = [("color", ctypes.c_uint64), ("parent", ctypes.c_void_p), ("left", ctypes.c_void_p),
                ("right", ctypes.c_void_p), ("buft", ctypes.c_void_p), ("model", ctypes.c_size_t),
                ("context", ctypes.c_size_t), ("compute", ctypes.c_size_t)]


def _read_breakdown(libs: _Libs, ctx: Any) -> dict[str, BufferBytes] | None:
    if libs.breakdown is None:
        return None
    header = _MapHeader()
    libs.breakdown(ctypes.addressof(header), ctypes.cast(ctx, ctypes.c_void_p).value)
    if header.count > 64:
        return None
    out: dict[str, BufferBytes] = {}
    stack = [header.root]
    seen = 0
    while stack:
        addr = stack.pop()
        if not addr:
            continue
        seen += 1
        if seen > header.count:
            return None
        node = _MapNode.from_address(addr)
        name = libs.ggml_base.ggml_backend_buft_name(node.buft).decode("utf-8", "replace")
        prev = out.get(name, BufferBytes(0, 0, 0))
        out[name] = BufferBytes(prev.model + node.model, prev.context + node.context, prev.compute + node.compute)
        stack += [node.left, node.right]
    return out if seen == header.count else None


def _consistent(exact: Mapping[str, BufferBytes], compute_mib: Mapping[str, float],
                caches: Sequence[CacheLine]) -> bool:
    """The exact figures agree with what llama.cpp printed (so the map was read right)."""
    for name, mib in compute_mib.items():
        if name not in exact or abs(exact[name].compute / MIB - mib) > 0.0051:
            return False
    kv = sum(b.context for b in exact.values()) / MIB
    return abs(kv - sum(c.mib for c in caches)) <= 0.0051 * max(1, len(caches)) + 0.01


def measure_memory(model_path: str | os.PathLike[str], cfg: RunConfig, overrides: Sequence[Override] = (),
                   n_gpu_layers: int = 0, *, no_alloc: bool = True) -> EngineMemory:
    """Loads the model (``no_alloc``: nothing read or allocated, so header-only files work) with ``cfg``'s
    context and returns the buffer sizes llama.cpp reports. ``no_alloc=False`` really allocates and, for the
    model, maps the file: use it only on small models with data (it prints the real model buffer sizes)."""
    libs = _libs()
    with captured_log() as sink, _load(model_path, cfg, overrides=overrides, n_gpu_layers=n_gpu_layers,
                                       no_alloc=no_alloc, n_threads=1, sink=sink) as loaded:
        exact = _read_breakdown(libs, loaded.ctx)
        file_bytes = int(libs.llama.llama_model_size(loaded.model))
    lines = _lines(sink)
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
    with captured_log() as sink, _load(model_path, None, overrides=overrides, n_gpu_layers=n_gpu_layers,
                                       tensor_split=tensor_split, no_alloc=True, sink=sink):
        pass
    overridden: dict[str, str] = {}
    slots: list[tuple[int, str]] = []
    for line in _lines(sink):
        if m := _OVERRIDDEN.match(line):
            overridden[m.group(1)] = m.group(2)
        elif m := _LAYER.match(line):
            slots.append((int(m.group(1)), m.group(2)))
    return TensorBuffers(overridden, tuple(slots))


# --- speed ---------------------------------------------------------------------------------------------------


def sparse_files(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The files among ``paths`` whose disk blocks cover far less than their length: header-only (sparse)
    models such as the factory's full-scale ones, whose weights read back as zeros. Where the platform does not
    report blocks (Windows) nothing is flagged."""
    out = []
    for p in map(Path, paths):
        st = p.stat()
        blocks = getattr(st, "st_blocks", None)
        # A real file occupies at least its length (rounded up to blocks); transparent compression can shrink
        # that, but not below an eighth for quantized weights, which do not compress.
        if blocks is not None and st.st_size > (1 << 20) and blocks * 512 < st.st_size / 8:
            out.append(p)
    return out


@dataclass(frozen=True)
class EngineSpeed:
    """Measured tokens per second: prompt processing of ``n_prompt`` tokens and generation of ``n_gen`` tokens
    from an empty context, each the mean over ``repetitions`` runs after a warm-up (llama-bench's pp/tg)."""

    pp_tps: float
    tg_tps: float
    n_prompt: int
    n_gen: int
    repetitions: int
    n_threads: int
    pp_runs: tuple[float, ...]  # tokens/s of each run
    tg_runs: tuple[float, ...]
    engine: str


def _decode_tokens(llama: ModuleType, ctx: Any, tokens: np.ndarray) -> None:
    arr = (llama.llama_token * len(tokens))(*(int(t) for t in tokens))
    rc = llama.llama_decode(ctx, llama.llama_batch_get_one(arr, len(tokens)))
    if rc != 0:
        raise EngineError(f"llama_decode failed with code {rc}")


def measure_speed(model_path: str | os.PathLike[str], cfg: RunConfig, overrides: Sequence[Override] = (),
                  n_prompt: int = 512, n_gen: int = 128, *, n_gpu_layers: int = 0,
                  tensor_split: Sequence[float] | None = None, repetitions: int = 3, n_threads: int | None = None,
                  seed: int = 0) -> EngineSpeed:
    """Prompt-processing and generation tokens/s of a model with real data under ``cfg`` and a placement
    (``overrides``, ``n_gpu_layers``, ``tensor_split``), timed like llama-bench: random tokens (a BOS first where
    the vocabulary adds one), the prompt in ``n_batch`` pieces, generation one token at a time, the context's
    memory cleared before every run, one warm-up run first."""
    if n_prompt < 1 or n_gen < 1 or repetitions < 1:
        raise EngineError("the prompt and generation lengths and the repetitions must be at least 1")
    if cfg.n_ctx and max(n_prompt, n_gen) > cfg.n_ctx:
        raise EngineError(f"{max(n_prompt, n_gen)} tokens in one run exceed the context of {cfg.n_ctx}: "
                          "raise -c or lower the lengths")
    sparse = sparse_files([model_path])
    if sparse:
        raise EngineError(f"{sparse[0]} is header-only (a sparse file: its weights are not on disk), so its speed "
                          "cannot be measured: use a model with real weights")
    libs = _libs()
    llama = libs.llama
    threads = n_threads or os.cpu_count() or 1
    rng = np.random.default_rng(seed)
    with captured_log() as sink, _load(model_path, cfg, overrides=overrides, n_gpu_layers=n_gpu_layers,
                                       tensor_split=tensor_split, no_alloc=False, n_threads=threads,
                                       sink=sink) as loaded:
        ctx = loaded.ctx
        vocab = llama.llama_model_get_vocab(loaded.model)
        n_vocab = int(llama.llama_vocab_n_tokens(vocab))
        bos = int(llama.llama_vocab_bos(vocab)) if llama.llama_vocab_get_add_bos(vocab) else None
        memory = llama.llama_get_memory(ctx)
        n_batch = min(cfg.n_batch, n_prompt)

        def tokens(n: int, first: bool) -> np.ndarray:
            t = rng.integers(0, n_vocab, size=n)
            if first and bos is not None:
                t[0] = bos
            return t

        def prompt(n: int) -> float:
            llama.llama_memory_clear(memory, False)
            t0 = time.perf_counter()
            for i in range(0, n, n_batch):
                _decode_tokens(llama, ctx, tokens(min(n_batch, n - i), i == 0))
            llama.llama_synchronize(ctx)
            return n / (time.perf_counter() - t0)

        def generate(n: int) -> float:
            llama.llama_memory_clear(memory, False)
            t0 = time.perf_counter()
            for i in range(n):
                _decode_tokens(llama, ctx, tokens(1, i == 0))
            llama.llama_synchronize(ctx)
            return n / (time.perf_counter() - t0)

        try:
            prompt(n_batch)  # warm-up, as llama-bench does
            generate(1)
            pp = tuple(prompt(n_prompt) for _ in range(repetitions))
            tg = tuple(generate(n_gen) for _ in range(repetitions))
        except EngineError as e:
            raise EngineError(f"{e}: {last_error(sink)}") from None
    return EngineSpeed(pp_tps=float(np.mean(pp)), tg_tps=float(np.mean(tg)), n_prompt=n_prompt, n_gen=n_gen,
                       repetitions=repetitions, n_threads=threads, pp_runs=pp, tg_runs=tg, engine=version())


def quantize(src: str | os.PathLike[str], dst: str | os.PathLike[str], ftype: str, *, pure: bool = True,
             n_threads: int | None = None) -> Path:
    """Quantizes a GGUF with llama.cpp's own quantizer (``llama_model_quantize``, what llama-quantize runs) to
    file type ``ftype`` (``Q4_K_S``, ``IQ4_XS``, ... as in LLAMA_FTYPE_MOSTLY_*); ``pure`` puts every quantizable
    tensor in the type's base type (llama-quantize ``--pure``) instead of the mixed recipe. Raises
    :class:`EngineError` where llama.cpp refuses (types such as IQ2_XXS need an importance matrix)."""
    llama = load_llama()
    code = getattr(llama, f"LLAMA_FTYPE_MOSTLY_{ftype.upper()}", None)
    if code is None:
        raise EngineError(f"llama.cpp has no file type {ftype}")
    params = llama.llama_model_quantize_default_params()
    params.ftype = code
    params.pure = pure
    params.nthread = n_threads or os.cpu_count() or 1
    with captured_log() as sink:
        rc = llama.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise EngineError(f"llama.cpp could not quantize to {ftype}: {last_error(sink) or f'code {rc}'}")
    return Path(dst)


# --- comparing with moeplace's memory model ---------------------------------------------------------------------

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
        output_ours=4 * model.hparams.n_vocab * cfg.n_seq_max, output_llama_mib=sum(measured.output_mib.values()),
        engine=measured.engine,
    )
