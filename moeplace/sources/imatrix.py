"""Routing counts from a ``llama-imatrix`` GGUF file.

Layout (``tools/imatrix/imatrix.cpp``, ``save_imatrix``): ``general.type = "imatrix"``; keys
``imatrix.datasets`` (string array), ``imatrix.chunk_count`` and ``imatrix.chunk_size`` (u32); for every weight
``W`` the collector saw, tensors ``W.in_sum2`` F32 ``[nval/nmat, nmat]``, ``W.counts`` F32 ``[1, nmat]`` and, in
newer builds, ``W.in_sum``, in sorted name order. For an expert tensor (``blk.N.ffn_*_exps.weight``, computed by
``GGML_OP_MUL_MAT_ID``) ``nmat = n_expert`` and ``counts[e]`` is incremented once per (token, selected slot)
whose selected expert is ``e`` (``collect_imatrix``): exactly the routing histogram, summing to
``tokens x n_expert_used``. Counts are stored as F32, so they are exact below 2^24 per expert.

The legacy ``.dat`` format (``save_imatrix_legacy``) keeps one call count per tensor, never per expert; a GGUF
converted from it (``--in-file x.dat``) carries ``counts`` of one element. Neither holds routing data.
"""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, Keys

from moeplace.errors import MoeplaceError
from moeplace.gguf_file import GGUF_MAGIC, read_gguf
from moeplace.infiles import check_regular
from moeplace.model import ModelDescription
from moeplace.routing import ModelIdentity, RoutingProfile, Source, make_profile, moe_layers, utc_now

KEY_DATASETS = "imatrix.datasets"
KEY_CHUNK_COUNT = "imatrix.chunk_count"
KEY_CHUNK_SIZE = "imatrix.chunk_size"

_EXPS = re.compile(r"^(blk\.(\d+)\.ffn_(gate|up|down|gate_up)_exps\.weight)\.counts$")
# All expert tensors of a layer see the same selected ids; prefer the first present (they agree).
_PREFERENCE = ("gate", "gate_up", "up", "down")
_REGENERATE = ("run llama-imatrix on the model again with its default GGUF output "
               "(-o imatrix.gguf, not --output-format dat)")


class ImatrixError(MoeplaceError):
    """An imatrix file that cannot give a routing profile."""


def looks_like_legacy_dat(head: bytes) -> bool:
    """The legacy format starts with int32 entry count, int32 name length and the first tensor name."""
    if len(head) < 8:
        return False
    n_entries, name_len = struct.unpack_from("<ii", head)
    if not 1 <= n_entries <= 1 << 20 or not 1 <= name_len <= 512 or len(head) < 8 + min(name_len, 16):
        return False
    name = head[8:8 + min(name_len, len(head) - 8)]
    return all(32 <= b < 127 for b in name)


def import_imatrix(path: str | os.PathLike[str], model: ModelDescription) -> RoutingProfile:
    """Builds a routing profile for ``model`` from the per-expert counts of a llama-imatrix GGUF file.

    Refuses legacy ``.dat`` files (and GGUFs converted from them), files for another model, and model files.
    """
    p = Path(path)
    check_regular(p, "imatrix", ImatrixError)
    try:
        with open(p, "rb") as fh:
            head = fh.read(4096)
    except FileNotFoundError:
        raise ImatrixError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise ImatrixError(f"{p}: is a directory, not an imatrix file") from None
    if head[:4] != GGUF_MAGIC:
        if looks_like_legacy_dat(head):
            raise ImatrixError(f"{p}: a legacy .dat imatrix; that format stores one count per tensor, not per "
                               f"expert, so it holds no routing histogram: {_REGENERATE}")
        raise ImatrixError(f"{p}: not an imatrix file (neither GGUF nor the legacy .dat format)")

    gf = read_gguf(p)
    md = gf.metadata
    if md.get(Keys.General.TYPE) != "imatrix":
        if Keys.General.ARCHITECTURE in md:
            raise ImatrixError(f"{p}: this is a model file, not an imatrix; pass the model with --model and the "
                               "imatrix as the argument")
        raise ImatrixError(f"{p}: general.type is {md.get(Keys.General.TYPE)!r}, not 'imatrix': not a "
                           "llama-imatrix file")

    hp = model.hparams
    widths = {t.name: t.shape[0] for t in model.tensors if t.shape}
    names = set(widths)
    # An imatrix names no model: the best identity check is that every weight it saw exists in this model with
    # the same input width (in_sum2 is [ne0 of the weight, nmat]).
    for t in gf.tensors:
        if t.name.endswith(".in_sum2") and t.name.startswith("blk."):
            weight = t.name.removesuffix(".in_sum2")
            if weight not in names:
                raise ImatrixError(f"{p}: the imatrix has data for '{weight}', which {model.name} does not have: "
                                   "it was computed for another model")
            nmat = t.shape[1] if len(t.shape) > 1 else 1
            if t.shape and t.shape[0] * nmat not in (widths[weight], widths[weight] * max(hp.n_expert, 1)):
                raise ImatrixError(f"{p}: '{t.name}' has {t.shape[0] * nmat} values but '{weight}' in "
                                   f"{model.name} has rows of {widths[weight]}: it was computed for another model")
    per_layer: dict[int, dict[str, np.ndarray]] = {}
    with open(p, "rb") as fh:
        for t in gf.tensors:
            m = _EXPS.match(t.name)
            if m is None:
                continue
            weight, layer, kind = m.group(1), int(m.group(2)), m.group(3)
            if t.ggml_type != GGMLQuantizationType.F32 or (len(t.shape) == 2 and t.shape[0] != 1):
                raise ImatrixError(f"{p}: tensor '{t.name}' is {t.ggml_type.name} {list(t.shape)}, expected F32 "
                                   "[1, n_expert] as llama-imatrix writes it: the file is damaged")
            nmat = t.n_elements
            if nmat == 1:
                raise ImatrixError(f"{p}: '{t.name}' holds a single count for all experts (an imatrix converted "
                                   f"from the legacy .dat format, which has no per-expert counts): {_REGENERATE}")
            if weight not in names:
                raise ImatrixError(f"{p}: the imatrix has counts for '{weight}', which {model.name} does not "
                                   "have: it was computed for another model")
            if nmat != hp.n_expert:
                raise ImatrixError(f"{p}: '{t.name}' counts {nmat} experts but {model.name} has {hp.n_expert}: "
                                   "the imatrix was computed for another model")
            fh.seek(t.offset)
            raw = np.frombuffer(fh.read(4 * nmat), dtype="<f4")
            if raw.size != nmat:
                raise ImatrixError(f"{p}: the file is truncated inside '{t.name}'")
            # llama-imatrix itself reads counts back with lround (load_imatrix).
            per_layer.setdefault(layer, {})[kind] = np.rint(raw.astype(np.float64))

    if not per_layer:
        raise ImatrixError(f"{p}: the imatrix has no expert tensors (*_exps) at all: it was computed for a dense "
                           "model, or without MoE layers")
    want = set(moe_layers(model))
    missing = sorted(want - per_layer.keys())
    if missing:
        raise ImatrixError(f"{p}: no expert counts for MoE layers {missing[:8]}{'...' if len(missing) > 8 else ''} "
                           f"of {model.name}: the imatrix was computed for another model, or is incomplete")

    counts: dict[int, np.ndarray] = {}
    notes: list[str] = []
    skipped = sorted(per_layer.keys() - want)
    if skipped:
        notes.append(f"ignored counts of blocks {skipped}, which llama.cpp does not route through (NextN)")
    for layer in sorted(want):
        kinds = per_layer[layer]
        chosen = next(k for k in _PREFERENCE if k in kinds)
        counts[layer] = kinds[chosen]
        if any(not np.array_equal(kinds[chosen], v) for v in kinds.values()):
            notes.append(f"layer {layer}: expert tensors disagree; used ffn_{chosen}_exps")
        if counts[layer].max(initial=0) >= 1 << 24:
            notes.append(f"layer {layer}: counts above 2^24 are rounded in the F32 imatrix")

    datasets = md.get(KEY_DATASETS, [])
    chunk_count = md.get(KEY_CHUNK_COUNT, 0)
    chunk_size = md.get(KEY_CHUNK_SIZE, 0)
    k = hp.n_expert_used
    source = Source(
        kind="imatrix", tokens=max(float(c.sum()) / k for c in counts.values()), created=utc_now(),
        engine="llama-imatrix", file=p.name,
        datasets=tuple(str(d) for d in datasets) if isinstance(datasets, list) else (),
        chunk_count=chunk_count if isinstance(chunk_count, int) else 0,
        chunk_size=chunk_size if isinstance(chunk_size, int) else 0, notes=tuple(notes),
    )
    return make_profile(ModelIdentity.of(model), source, counts, origin=str(p))
