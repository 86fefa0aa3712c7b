"""Loading llama.cpp: finding llama-cpp-python and its shared libraries, the devices of the build, its log, and
a model (with a context) loaded with moeplace's :class:`~moeplace.memory.RunConfig` and ``-ot``/``-ngl``/``-ts``
placement. Everything else in :mod:`moeplace.oracle` (and the live profiler) loads through :func:`load`.

llama-cpp-python is imported only when a function here is called, so the rest of moeplace works without it.
"""

from __future__ import annotations

import ctypes
import os
import platform
import re
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

from moeplace.errors import MoeplaceError
from moeplace.llamacpp import Override
from moeplace.memory import CACHE_TYPES, RunConfig

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


class _InitParams(ctypes.Structure):
    """``struct ggml_init_params`` (ggml/include/ggml.h), passed by value to ggml_init."""

    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


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
        ("ggml_backend_dev_memory", None, [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t),
                                           ctypes.POINTER(ctypes.c_size_t)]),
        ("ggml_backend_dev_supports_op", ctypes.c_bool, [ctypes.c_void_p, ctypes.c_void_p]),
    ):
        fn = getattr(ggml, name)
        fn.restype, fn.argtypes = res, args
    base = ctypes.CDLL(str(_lib_file(lib_dir, "ggml-base")))
    for name, res, args in (
        ("ggml_backend_buft_name", ctypes.c_char_p, [ctypes.c_void_p]),
        ("ggml_get_name", ctypes.c_char_p, [ctypes.c_void_p]),
        ("ggml_nbytes", ctypes.c_size_t, [ctypes.c_void_p]),
        ("ggml_backend_tensor_get", None, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]),
        ("ggml_init", ctypes.c_void_p, [_InitParams]),
        ("ggml_free", None, [ctypes.c_void_p]),
        ("ggml_new_tensor_2d", ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]),
        ("ggml_mul_mat", ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]),
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
class DeviceInfo:
    """One GPU device of the build, as ggml describes it."""

    name: str  # the buffer name moeplace and -ot use: Vulkan0, CUDA0...
    description: str  # the driver's name for it (lavapipe: "llvmpipe (LLVM 15.0.6, 256 bits)")
    memory_total: int
    memory_free: int
    largest_tensor: int | None  # bytes: the largest weight the device accepts (None: no limit found)


_GGML_TYPE_F16, _GGML_TYPE_F32 = 1, 0  # ggml/include/ggml.h enum ggml_type
_PROBE_ROW = 4096  # elements of an F16 row in the probe: sizes step by 8 KiB


def _largest_tensor(libs: _Libs, dev: int, limit: int = 1 << 40) -> int | None:
    """The largest F16 weight a matrix product on ``dev`` accepts, by bisection over the device's own
    ``supports_op``: the rule llama.cpp's loader applies to every weight (``weight_buft_supported`` in
    src/llama-model-loader.cpp; a weight whose op the device refuses falls back to the next buffer type, the
    host's). Vulkan refuses any source larger than ``maxStorageBufferRange`` (or ``maxBufferSize``;
    ggml-vulkan.cpp ``ggml_backend_vk_device_supports_op``). None when even ``limit`` bytes are accepted."""
    base = libs.ggml_base
    ctx = base.ggml_init(_InitParams(1 << 20, None, True))  # tensor headers only: no_alloc
    if not ctx:
        return None
    try:
        def accepts(rows: int) -> bool:
            a = base.ggml_new_tensor_2d(ctx, _GGML_TYPE_F16, _PROBE_ROW, rows)
            b = base.ggml_new_tensor_2d(ctx, _GGML_TYPE_F32, _PROBE_ROW, 1)
            return bool(libs.ggml.ggml_backend_dev_supports_op(dev, base.ggml_mul_mat(ctx, a, b)))

        row_bytes = 2 * _PROBE_ROW
        lo, hi = 0, limit // row_bytes
        if accepts(hi):
            return None
        while hi - lo > 1:  # accepts(lo) (0 rows: trivially), not accepts(hi)
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if accepts(mid) else (lo, mid)
        return lo * row_bytes
    finally:
        base.ggml_free(ctx)


@dataclass(frozen=True)
class BackendDevice:
    """One entry of ggml's device list: what ``llama-server --list-devices`` prints."""

    name: str  # CUDA0, ROCm0, Vulkan0, MTL0, CPU
    description: str  # the device's own name: "NVIDIA GeForce RTX 3090"
    is_gpu: bool
    free: int  # bytes, as ggml_backend_dev_memory reports them (what --fit plans with)
    total: int


def _devices(libs: _Libs) -> Iterator[tuple[int, BackendDevice]]:
    for i in range(libs.ggml.ggml_backend_dev_count()):
        dev = libs.ggml.ggml_backend_dev_get(i)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        libs.ggml.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        desc = libs.ggml.ggml_backend_dev_description(dev)
        yield dev, BackendDevice(libs.ggml.ggml_backend_dev_name(dev).decode(), desc.decode(errors="replace")
                                 if desc else "", libs.ggml.ggml_backend_dev_type(dev) in _GPU_DEVICE_TYPES,
                                 int(free.value), int(total.value))


def backend_devices() -> tuple[BackendDevice, ...]:
    """Every device of this llama.cpp build in ggml's order, with free and total memory."""
    return tuple(d for _, d in _devices(_libs()))


def device_info() -> tuple[DeviceInfo, ...]:
    """Every GPU device of this build with its memory and the largest weight it takes."""
    libs = _libs()
    return tuple(DeviceInfo(d.name, d.description, d.total, d.free, _largest_tensor(libs, dev))
                 for dev, d in _devices(libs) if d.is_gpu)


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


def log_lines(sink: Sequence[str]) -> list[str]:
    return "".join(sink).splitlines()


def last_error(sink: LogSink) -> str:
    """llama.cpp's last error-level line, else the last line mentioning an error, else its last line."""
    if sink.errors:
        return sink.errors[-1]
    useful = [x.strip() for x in log_lines(sink) if x.strip()]
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
class Loaded:
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


def _context_params(llama: ModuleType, cfg: RunConfig, n_threads: int, eval_callback: Any) -> Any:
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
    if eval_callback is not None:
        cp.cb_eval = eval_callback
        cp.cb_eval_user_data = None
    return cp


@contextmanager
def load(path: str | os.PathLike[str], cfg: RunConfig | None, *, overrides: Sequence[Override] = (),
         n_gpu_layers: int = 0, tensor_split: Sequence[float] | None = None, no_alloc: bool,
         n_threads: int | None = None, eval_callback: Any = None, sink: LogSink) -> Iterator[Loaded]:
    """A loaded model (and a context when ``cfg`` is given), freed afterwards. Errors carry llama.cpp's last
    error line. ``no_alloc`` sizes every buffer without reading or allocating (header-only files work);
    ``eval_callback`` is a ``ggml_backend_sched_eval_callback`` the context calls for every graph node (the live
    profiler's); the caller keeps it referenced."""
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
            cp = _context_params(llama, cfg, n_threads or os.cpu_count() or 1, eval_callback)
            ctx = llama.llama_init_from_model(model, cp)
            if not ctx:
                raise EngineError(f"{path}: llama.cpp could not create a context: {last_error(sink)}")
        yield Loaded(model, ctx, keep)
    finally:
        if ctx:
            llama.llama_free(ctx)
        llama.llama_model_free(model)

