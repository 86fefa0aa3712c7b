"""A placement: which device holds each tensor, and which device runs each layer.

llama.cpp decides these separately. ``-ngl``/``-ts`` assign whole layers to devices: a layer's KV cache and its
compute live there. ``-ot`` then moves individual tensors (typically routed experts) to another buffer, while
the layer still runs where ``-ngl`` put it. A placement records both, so the memory model can put KV where
llama.cpp will, and the emitters can reproduce it exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

from moeplace.model import ModelDescription, Role, Tensor

HOST = "CPU"  # llama.cpp's host buffer name: the one name moeplace uses for host memory and the host device

# llama-arch.cpp LLM_TENSOR_INFOS: these kinds are REPEATING tensors created with the bid of layer 0 (llama and
# phi3 create them for every layer, TENSOR_DUPLICATED after the first), so they land in layer 0's buffer.
_LAYER0_KINDS = frozenset({"ROPE_FREQS", "ROPE_FACTORS_LONG", "ROPE_FACTORS_SHORT"})


@dataclass(frozen=True)
class Placement:
    """``layer_devices[il]`` runs block ``il`` (its KV and compute); ``output_device`` runs the output layer;
    ``tensor_devices`` maps every loaded tensor name to the device whose memory holds it."""

    layer_devices: tuple[str, ...]
    output_device: str
    tensor_devices: Mapping[str, str]

    def devices(self) -> tuple[str, ...]:
        """Every device used, in first-use order."""
        return self._devices

    @cached_property
    def _devices(self) -> tuple[str, ...]:
        # once per placement: the estimate asks on every call, and a placement is not changed once built
        return tuple(dict.fromkeys([*self.layer_devices, self.output_device, *self.tensor_devices.values()]))


def default_tensor_device(t: Tensor, layer_devices: tuple[str, ...], output_device: str) -> str:
    """Where llama.cpp puts a tensor that no override names: with its layer; ``rope_freqs`` with layer 0;
    output and output norm with the output slot; token embeddings and anything else on the host."""
    if t.block is None and t.kind in _LAYER0_KINDS and layer_devices:
        return layer_devices[0]
    if t.role is Role.TOKEN_EMBD:
        return HOST
    if t.block is None:
        return output_device if t.role in (Role.OUTPUT, Role.OUTPUT_NORM) else HOST
    return layer_devices[t.block]


def layer_placement(model: ModelDescription, layer_devices: tuple[str, ...], output_device: str,
                    overrides: Mapping[str, str] | None = None) -> Placement:
    """A placement from per-layer devices plus per-tensor overrides (tensor name -> device)."""
    if len(layer_devices) != model.hparams.n_layer:
        raise ValueError(f"{len(layer_devices)} layer devices for {model.hparams.n_layer} layers")
    overrides = overrides or {}
    tensor_devices = {
        t.name: overrides.get(t.name) or default_tensor_device(t, layer_devices, output_device)
        for t in model.tensors if t.loaded
    }
    return Placement(tuple(layer_devices), output_device, tensor_devices)


def all_on(model: ModelDescription, device: str) -> Placement:
    """Every layer on one device (``-ngl`` all), token embeddings on the host as llama.cpp keeps them."""
    return layer_placement(model, (device,) * model.hparams.n_layer, device)


def host_fallback(model: ModelDescription, placement: Placement, limits: Mapping[str, int]) -> Placement:
    """The placement after llama.cpp's loader has kept in host memory every weight its device refuses: it asks the
    device whether it supports the op that uses the weight (``weight_buft_supported``, src/llama-model-loader.cpp)
    and falls back to the host buffer types; Vulkan refuses a tensor larger than its storage-buffer range. ``limits``
    maps a device to the largest tensor it takes (a device not in it, or 0, has no limit)."""
    if not any(limits.values()):
        return placement
    moved = {}
    for t in model.tensors:
        dev = placement.tensor_devices.get(t.name, HOST)
        if limits.get(dev) and t.nbytes > limits[dev]:
            moved[t.name] = HOST
    if not moved:
        return placement
    return Placement(placement.layer_devices, placement.output_device, {**placement.tensor_devices, **moved})
