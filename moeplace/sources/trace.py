"""Routing counts from a trace CSV.

Two shapes are read, both with absolute block indices (llama.cpp's ``il``) and expert ids from 0:

- aggregated: ``layer,expert,count`` (one row per layer and expert; repeated pairs add up);
- events: ``layer,expert`` or ``layer,expert,token``, one row per routing decision, the shape the proposed
  llama.cpp ``moe-trace`` example writes (PR 28544: one ``layer,expert`` row per routed activation).

A header line naming the columns (``layer``, ``expert`` and ``count`` or ``token``, in any order, extra columns
ignored) is optional for two columns and required for three, where ``count`` and ``token`` cannot be told
apart. Lines starting with ``#`` are comments. Tokens per layer are ``sum(counts) / n_expert_used``.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from moeplace.errors import MoeplaceError
from moeplace.infiles import check_regular
from moeplace.model import ModelDescription
from moeplace.routing import ModelIdentity, RoutingProfile, Source, make_profile, moe_layers, utc_now

_ALIASES = {
    "layer": "layer", "il": "layer", "block": "layer", "blk": "layer",
    "expert": "expert", "expert_id": "expert",
    "count": "count", "n": "count", "freq": "count", "frequency": "count",
    "token": "token", "token_idx": "token", "pos": "token", "step": "token",
}
_CHUNK = 65536


class TraceError(MoeplaceError):
    """A trace CSV that cannot give a routing profile."""


def _rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """Non-empty, non-comment rows with their 1-based line numbers."""
    check_regular(path, "trace CSV", TraceError)
    with open(path, newline="", encoding="utf-8") as fh:
        try:
            reader = csv.reader(fh)
            for row in reader:
                if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
                    continue
                yield reader.line_num, [c.strip() for c in row]
        except UnicodeDecodeError:
            raise TraceError(f"{path}: not a text CSV file (binary content)") from None
        except csv.Error as e:
            raise TraceError(f"{path}: malformed CSV ({e})") from None


def _columns(first: list[str], path: Path) -> tuple[dict[str, int], bool]:
    """Column positions and whether ``first`` was a header."""
    lowered = [c.lower() for c in first]
    if any(not _is_number(c) for c in lowered):
        cols: dict[str, int] = {}
        for i, name in enumerate(lowered):
            key = _ALIASES.get(name)
            if key and key not in cols:
                cols[key] = i
        if "layer" not in cols or "expert" not in cols:
            raise TraceError(f"{path}: the header {first} has no 'layer' and 'expert' columns: name them "
                             "'layer,expert[,count|token]'")
        if "count" in cols and "token" in cols:
            raise TraceError(f"{path}: the header has both a count and a token column: give aggregated counts "
                             "or one row per event, not both")
        return cols, True
    if len(first) == 2:
        return {"layer": 0, "expert": 1}, False
    if len(first) == 3:
        raise TraceError(f"{path}: three columns without a header are ambiguous: add a first line "
                         "'layer,expert,count' (aggregated) or 'layer,expert,token' (one row per event)")
    raise TraceError(f"{path}: {len(first)} columns without a header: add a first line naming the columns "
                     "(layer, expert and count or token)")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def import_trace(path: str | os.PathLike[str], model: ModelDescription) -> RoutingProfile:
    """Builds a routing profile for ``model`` from a trace CSV (aggregated counts or routing events)."""
    p = Path(path)
    hp = model.hparams
    want = set(moe_layers(model))
    counts = np.zeros((hp.n_layer, hp.n_expert))
    cols: dict[str, int] | None = None
    layers: list[int] = []
    experts: list[int] = []
    weights: list[float] = []
    rows = 0

    def flush() -> None:
        if layers:
            np.add.at(counts, (np.array(layers), np.array(experts)), np.array(weights))
            layers.clear()
            experts.clear()
            weights.clear()

    for line, row in _rows(p):
        if cols is None:
            cols, header = _columns(row, p)
            if header:
                continue
        width = max(cols.values()) + 1
        if len(row) < width:
            raise TraceError(f"{p}:{line}: {len(row)} columns, expected at least {width}")
        try:
            layer, expert = int(row[cols["layer"]]), int(row[cols["expert"]])
            count = float(row[cols["count"]]) if "count" in cols else 1.0
        except ValueError:
            raise TraceError(f"{p}:{line}: {row} is not 'layer,expert' integers"
                             f"{' and a count' if 'count' in cols else ''}") from None
        if not math.isfinite(count) or count < 0:
            raise TraceError(f"{p}:{line}: count {row[cols['count']]} is not a non-negative number")
        if not 0 <= expert < hp.n_expert:
            raise TraceError(f"{p}:{line}: expert {expert} is outside 0..{hp.n_expert - 1} ({model.name} has "
                             f"{hp.n_expert} experts): the trace is from another model")
        if layer not in want:
            raise TraceError(f"{p}:{line}: layer {layer} is not a MoE layer of {model.name} (MoE layers: "
                             f"{min(want)}..{max(want)}): the trace is from another model")
        layers.append(layer)
        experts.append(expert)
        weights.append(count)
        rows += 1
        if len(layers) >= _CHUNK:
            flush()
    flush()
    if rows == 0:
        raise TraceError(f"{p}: no data rows")
    seen = {il for il in want if counts[il].sum() > 0}
    missing = sorted(want - seen)
    if missing:
        raise TraceError(f"{p}: no routing for MoE layers {missing[:8]}{'...' if len(missing) > 8 else ''} of "
                         f"{model.name}: trace every MoE layer")
    per_layer = {il: counts[il] for il in sorted(want)}
    kind = "counts" if cols is not None and "count" in cols else "events"
    source = Source(kind="trace", tokens=max(float(c.sum()) / hp.n_expert_used for c in per_layer.values()),
                    created=utc_now(), file=p.name, notes=(f"{rows} {kind} rows",))
    return make_profile(ModelIdentity.of(model), source, per_layer, origin=str(p))
