"""Reading ``llama_get_memory_breakdown``: exact bytes per buffer type (model, context, compute).

The function (``src/llama-ext.h``, exported by libllama) is under ``no_alloc`` the only place llama.cpp states
the model's buffer sizes (its "model buffer size" lines print the dummy buffers' 0.00 MiB, ``src/llama-model.cpp``
``load_tensors``). It returns a C++ ``std::map<ggml_backend_buffer_type_t, llama_memory_breakdown_data>`` by
value, which is read only where its layout is known: Linux, 64-bit, libstdc++ (``bits/stl_tree.h``; the Itanium
C++ ABI passes the result through a hidden pointer; :func:`moeplace.oracle.loading._libs` finds the symbol only
there). Callers check every value against the printed lines and drop the exact figures on any mismatch. The
map's few nodes are not freed (no destructor is callable from ctypes): tens of bytes per call.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

from moeplace.oracle.loading import _libs


@dataclass(frozen=True)
class BufferBytes:
    """Exact bytes llama.cpp accounts to one buffer type (``llama_memory_breakdown_data``, src/llama-ext.h)."""

    model: int
    context: int
    compute: int



class _MapHeader(ctypes.Structure):
    """libstdc++ ``std::map`` (``_Rb_tree_impl``): the comparator (padded), then ``_Rb_tree_header``."""

    _fields_ = [("compare", ctypes.c_uint64), ("color", ctypes.c_uint64), ("root", ctypes.c_void_p),
                ("leftmost", ctypes.c_void_p), ("rightmost", ctypes.c_void_p), ("count", ctypes.c_size_t)]


class _MapNode(ctypes.Structure):
    """``_Rb_tree_node<pair<const ggml_backend_buffer_type_t, llama_memory_breakdown_data>>``."""

    _fields_ = [("color", ctypes.c_uint64), ("parent", ctypes.c_void_p), ("left", ctypes.c_void_p),
                ("right", ctypes.c_void_p), ("buft", ctypes.c_void_p), ("model", ctypes.c_size_t),
                ("context", ctypes.c_size_t), ("compute", ctypes.c_size_t)]


def read_breakdown(ctx: Any) -> dict[str, BufferBytes] | None:
    """Bytes per buffer type name for a context, or None where the map cannot be read (see the module doc)."""
    libs = _libs()
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
