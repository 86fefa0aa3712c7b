"""The one place moeplace drives a real llama.cpp: through llama-cpp-python's low-level ctypes API, imported only
when a function here is called, so the rest of moeplace imports and works without it.

* :mod:`~moeplace.oracle.loading`: finding the library, the build's devices (with the largest weight each takes),
  its log, and loading a model with a context and a placement (the live profiler loads through it too);
* :mod:`~moeplace.oracle.stdmap`: exact bytes per buffer type from ``llama_get_memory_breakdown``'s ``std::map``;
* :mod:`~moeplace.oracle.memory`: the buffers llama.cpp reports, and where each overridden tensor went;
* :mod:`~moeplace.oracle.speed`: prompt and generation tokens/s timed like llama-bench;
* :mod:`~moeplace.oracle.quantize`: llama.cpp's own quantizer (per-type speed measurements);
* :mod:`~moeplace.oracle.compare`: moeplace's memory model beside llama.cpp's figures (benchmarks and tests);
* :mod:`~moeplace.oracle.gpubuild`: the same measurements through a second llama.cpp build (Vulkan) in its own
  virtualenv, run as a subprocess.
"""

from moeplace.oracle.compare import (
    COMPUTE_TOLERANCE_MIB,
    CacheFigure,
    DeviceComparison,
    MemoryComparison,
    compare_devices,
    compare_memory,
    mib_text,
)
from moeplace.oracle.loading import (
    ENGINE_HINT,
    BackendDevice,
    DeviceInfo,
    EngineError,
    LogSink,
    available,
    backend_devices,
    buffer_types,
    captured_log,
    device_info,
    ggml_base,
    gpu_devices,
    last_error,
    load,
    load_llama,
    log_lines,
    unavailable_reason,
    version,
)
from moeplace.oracle.memory import CacheLine, EngineMemory, TensorBuffers, measure_memory, tensor_buffers
from moeplace.oracle.quantize import quantize
from moeplace.oracle.speed import EngineSpeed, measure_speed, sparse_files
from moeplace.oracle.stdmap import BufferBytes

__all__ = [
    "COMPUTE_TOLERANCE_MIB",
    "ENGINE_HINT",
    "BackendDevice",
    "BufferBytes",
    "CacheFigure",
    "CacheLine",
    "DeviceComparison",
    "DeviceInfo",
    "EngineError",
    "EngineMemory",
    "EngineSpeed",
    "LogSink",
    "MemoryComparison",
    "TensorBuffers",
    "available",
    "backend_devices",
    "buffer_types",
    "captured_log",
    "compare_devices",
    "compare_memory",
    "device_info",
    "ggml_base",
    "gpu_devices",
    "last_error",
    "load",
    "load_llama",
    "log_lines",
    "measure_memory",
    "measure_speed",
    "mib_text",
    "quantize",
    "sparse_files",
    "tensor_buffers",
    "unavailable_reason",
    "version",
]
