"""What ``moeplace inspect`` reports about a model, as plain data (the CLI prints it or dumps it as JSON)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from moeplace.model import ModelDescription, Role, tensor_bytes_per_token


def layer_rows(model: ModelDescription) -> list[dict[str, Any]]:
    """One row per block: its kind, attention, and bytes split into routed experts, shared experts, rest."""
    rows = []
    by_block: dict[int, list[Any]] = defaultdict(list)
    for t in model.tensors:
        if t.block is not None:
            by_block[t.block].append(t)
    for layer in model.layers:
        ts = by_block[layer.index]
        routed = sum(t.nbytes for t in ts if t.role is Role.ROUTED_EXPERT)
        shared = sum(t.nbytes for t in ts if t.role is Role.SHARED_EXPERT)
        attention = sum(t.nbytes for t in ts if t.role is Role.ATTENTION)
        total = sum(t.nbytes for t in ts)
        kind = "nextn" if layer.nextn else "moe" if layer.moe else "dense"
        rows.append({
            "block": layer.index, "kind": kind, "attention": layer.attention, "has_kv": layer.has_kv,
            "n_head_kv": layer.n_head_kv, "routed_expert_bytes": routed, "shared_expert_bytes": shared,
            "attention_bytes": attention, "other_bytes": total - routed - shared - attention, "total_bytes": total,
            "expert_slice_bytes": sum(t.expert_bytes for t in ts if t.role is Role.ROUTED_EXPERT),
        })
    return rows


def quant_mix(model: ModelDescription) -> list[dict[str, Any]]:
    """Tensor count and bytes per ggml type, largest first."""
    acc: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for t in model.tensors:
        acc[t.ggml_type][0] += 1
        acc[t.ggml_type][1] += t.nbytes
    return [{"type": k, "tensors": n, "bytes": b} for k, (n, b) in sorted(acc.items(), key=lambda kv: -kv[1][1])]


def summarize(model: ModelDescription) -> dict[str, Any]:
    """Everything ``inspect`` shows, JSON-ready."""
    hp = model.hparams
    roles = model.bytes_by_role()
    loaded = model.loaded_bytes
    per_token = sum(tensor_bytes_per_token(t, hp) for t in model.tensors)
    params = sum(t.n_elements for t in model.tensors if t.loaded)
    active = sum(tensor_bytes_per_token(t, hp) / t.nbytes * t.n_elements
                 for t in model.tensors if t.loaded and t.nbytes)
    return {
        "name": model.name,
        "files": [str(p) for p in model.paths],
        "file_size": model.file_size,
        "file_type": model.file_type,
        "fingerprint": model.fingerprint(),
        "is_moe": model.is_moe,
        "hparams": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(hp).items()},
        "parameters": params,
        "active_parameters_per_token": round(active),
        "tensor_count": len(model.tensors),
        "total_bytes": model.total_bytes,
        "loaded_bytes": loaded,
        "bytes_by_role": {r.value: b for r, b in roles.items()},
        "routed_expert_share": roles[Role.ROUTED_EXPERT] / loaded if loaded else 0.0,
        "bytes_read_per_token": round(per_token),
        "quant_mix": quant_mix(model),
        "layers": layer_rows(model),
    }


def tensor_rows(model: ModelDescription) -> list[dict[str, Any]]:
    """The full tensor list, JSON-ready."""
    return [{
        "name": t.name, "block": t.block, "role": t.role.value, "kind": t.kind, "type": t.ggml_type,
        "shape": list(t.shape), "bytes": t.nbytes, "n_expert": t.n_expert, "expert_bytes": t.expert_bytes,
        "shard": t.shard, "offset": t.offset,
    } for t in model.tensors]
