"""moeplace.placement: the loader's host fallback for weights a device refuses."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from moeplace.llamacpp import apply
from moeplace.model import load_model
from moeplace.placement import HOST, host_fallback


def test_host_fallback_keeps_oversized_weights_on_the_host(model_path: Callable[[str], Path]) -> None:
    m = load_model(model_path("qwen3-30b-a3b"))
    full = apply(m, -1, None, (), ["Vulkan0"])
    limit = 128 << 20
    got = host_fallback(m, full, {"Vulkan0": limit})
    for t in m.loaded_tensors:
        want = HOST if t.nbytes > limit else full.tensor_devices[t.name]
        assert got.tensor_devices[t.name] == want, t.name
    assert got.layer_devices == full.layer_devices  # the layers still run on the device
    assert host_fallback(m, full, {"Vulkan0": 0}) is full and host_fallback(m, full, {}) is full
    assert host_fallback(m, full, {"Vulkan0": 1 << 40}).tensor_devices == full.tensor_devices
