"""llama.cpp's own quantizer (``llama_model_quantize``, what llama-quantize runs), for models of each quant type
that the speed model's per-type costs are measured on (benchmarks/quant_cost.py)."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from moeplace.oracle.loading import EngineError, captured_log, last_error, load_llama


def quantize(src: str | os.PathLike[str], dst: str | os.PathLike[str], ftype: str, *, pure: bool = True,
             n_threads: int | None = None) -> Path:
    """Quantizes a GGUF to file type ``ftype`` (``Q4_K_S``, ``IQ4_XS``, ... as in LLAMA_FTYPE_MOSTLY_*); ``pure``
    puts every quantizable tensor in the type's base type (llama-quantize ``--pure``) instead of the mixed recipe.
    Raises :class:`EngineError` where llama.cpp refuses (types such as IQ2_XXS need an importance matrix)."""
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
