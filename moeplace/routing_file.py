"""The routing profile's file: versioned JSON (documented in ``profiles/README.md``) with one line per layer, read
strictly (every field checked, the expert and layer counts before anything is allocated) and written whole."""

from __future__ import annotations

import base64
import json
import os
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from moeplace.infiles import json_depth, parse_json, printable, read_text
from moeplace.model import LLAMA_MAX_EXPERTS, LLAMA_MAX_LAYERS
from moeplace.outfiles import encode_text, write_file
from moeplace.routing import (
    ModelIdentity,
    ProfileError,
    RoutingProfile,
    Source,
    _fail,
    finite,
    identity_to_json,
    make_profile,
)

FORMAT = "moeplace-routing-profile"
FORMAT_VERSION = 1

# --- file format -------------------------------------------------------------------------------------------


def _num(x: float) -> int | float:
    """Integral counts as ints (small files, exact); others as floats."""
    return int(x) if float(x).is_integer() and abs(x) < 2**53 else float(x)


def _source_json(s: Source) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": s.kind, "tokens": _num(s.tokens)}
    for name in ("created", "engine", "file", "prompts", "prompts_sha256", "prompt_count", "generated_per_prompt",
                 "generated_tokens", "chunk_count", "chunk_size", "interrupted"):
        v = getattr(s, name)
        if v:
            out[name] = v
    for name in ("datasets", "notes"):
        if getattr(s, name):
            out[name] = list(getattr(s, name))
    if s.merged_from:
        out["merged_from"] = [dict(p) for p in s.merged_from]
    return out


def profile_to_json(profile: RoutingProfile) -> dict[str, Any]:
    """The file's content as plain data."""
    layers = []
    for layer in profile.layers:
        entry: dict[str, Any] = {"layer": layer, "tokens": _num(profile.tokens[layer]),
                                 "counts": [_num(x) for x in profile.counts[layer]]}
        if profile.coactivation is not None:
            m = profile.coactivation[layer]
            iu = np.triu_indices(profile.model.n_expert, k=1)
            entry["coactivation_upper"] = [_num(x) for x in m[iu]]
        layers.append(entry)
    out = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": identity_to_json(profile.model),
           "source": _source_json(profile.source), "layers": layers}
    if profile.trace:
        out["trace"] = trace_to_json(profile.trace, profile.model.n_expert)
    return out


# A routing trace is stored compactly beside the counts: per layer the [tokens, n_expert_used] ids, token-major,
# as little-endian uint8 (up to 256 experts) or uint16, zlib-compressed and base64-encoded.
TRACE_ENCODING = "zlib+base64"


def trace_to_json(trace: Mapping[int, np.ndarray], n_expert: int) -> dict[str, Any]:
    dtype = "uint8" if n_expert <= 256 else "uint16"
    return {"encoding": TRACE_ENCODING, "dtype": dtype,
            "layers": [{"layer": int(layer), "tokens": int(ids.shape[0]),
                        "ids": base64.b64encode(zlib.compress(ids.astype("<" + ("u1" if dtype == "uint8" else "u2"))
                                                              .tobytes(), 9)).decode("ascii")}
                       for layer, ids in sorted(trace.items())]}


def trace_from_json(data: Any, k: int, origin: str = "") -> dict[int, np.ndarray]:
    fix = "re-create the profile with 'moeplace profile run'"
    if not isinstance(data, Mapping) or data.get("encoding") != TRACE_ENCODING or data.get("dtype") not in (
            "uint8", "uint16"):
        raise _fail(origin, f"the routing trace is not {TRACE_ENCODING} of uint8 or uint16 ids", fix)
    dt = "<u1" if data["dtype"] == "uint8" else "<u2"
    out: dict[int, np.ndarray] = {}
    for i, entry in enumerate(_get(data, "layers", list, origin, "trace.")):
        where = f"trace.layers[{i}]."
        layer = _get(entry, "layer", int, origin, where)
        n = _get(entry, "tokens", int, origin, where)
        try:
            raw = zlib.decompress(base64.b64decode(_get(entry, "ids", str, origin, where), validate=True))
        except (ValueError, zlib.error):
            raise _fail(origin, f"layer {layer}: the routing trace is corrupt (not {TRACE_ENCODING})", fix) from None
        ids = np.frombuffer(raw, dtype=dt)
        if ids.size != n * k:
            raise _fail(origin, f"layer {layer}: the routing trace holds {ids.size} ids, expected {n} tokens x {k}",
                        fix)
        out[layer] = ids.reshape(n, k)
    return out


def dumps(profile: RoutingProfile) -> str:
    """JSON text with one line per layer: readable, diffable, and small."""
    data = profile_to_json(profile)
    layers = data.pop("layers")
    trace = data.pop("trace", None)
    head = json.dumps(data, indent=2, allow_nan=False)[:-2]  # drop the closing "\n}"
    body = ",\n    ".join(json.dumps(e, separators=(",", ":"), allow_nan=False) for e in layers)
    tail = ""
    if trace is not None:
        entries = ",\n      ".join(json.dumps(e, separators=(",", ":")) for e in trace.pop("layers"))
        tail = f',\n  "trace": {json.dumps(trace)[:-1]}, "layers": [\n      {entries}\n  ]}}'
    return f'{head},\n  "layers": [\n    {body}\n  ]{tail}\n}}\n'


def save_profile(profile: RoutingProfile, path: str | os.PathLike[str]) -> Path:
    """Writes the profile (creating the folder); returns the path written."""
    return write_file(path, encode_text(dumps(profile)))  # whole or not at all


def _get(d: Mapping[str, Any], key: str, kind: type | tuple[type, ...], origin: str, where: str = "") -> Any:
    fix = "re-create the profile with 'moeplace profile run' or 'moeplace profile import'"
    if not isinstance(d, Mapping) or key not in d:
        raise _fail(origin, f"missing field '{where}{key}' (a truncated or hand-edited file?)", fix)
    v = d[key]
    if not isinstance(v, kind) or isinstance(v, bool):
        raise _fail(origin, f"field '{where}{key}' has the wrong type ({type(v).__name__})", fix)
    return v


def _opt(d: Mapping[str, Any], key: str, kind: type | tuple[type, ...], default: Any, origin: str,
         where: str = "") -> Any:
    """An optional field of the given type (bool is not an int here, and an int is not a bool)."""
    if key not in d:
        return default
    v = d[key]
    if not isinstance(v, kind) or (isinstance(v, bool) and kind is not bool):
        raise _fail(origin, f"field '{where}{key}' has the wrong type ({type(v).__name__})",
                    "re-create the profile with 'moeplace profile run' or 'moeplace profile import'")
    return v


def profile_from_json(data: Any, origin: str = "") -> RoutingProfile:
    """Parses and validates the file's content; every problem is one :class:`ProfileError` line."""
    fix = "re-create the profile with 'moeplace profile run' or 'moeplace profile import'"
    if not isinstance(data, Mapping):
        raise _fail(origin, "not a moeplace routing profile (the JSON is not an object)", fix)
    if data.get("format") != FORMAT:
        raise _fail(origin, f"not a moeplace routing profile (format {data.get('format')!r}, expected {FORMAT!r})",
                    "pass a file written by 'moeplace profile run/import/merge'")
    version = _get(data, "format_version", int, origin)
    if version > FORMAT_VERSION:
        raise _fail(origin, f"profile format_version {version} is newer than this moeplace reads "
                            f"({FORMAT_VERSION})", "upgrade moeplace")
    if version < 1:
        raise _fail(origin, f"invalid format_version {version}", fix)
    m = _get(data, "model", dict, origin)
    ident = ModelIdentity(
        arch=_get(m, "arch", str, origin, "model."), n_layer=_get(m, "n_layer", int, origin, "model."),
        n_expert=_get(m, "n_expert", int, origin, "model."),
        n_expert_used=_get(m, "n_expert_used", int, origin, "model."),
        fingerprint=_get(m, "fingerprint", str, origin, "model."),
        name=printable(_opt(m, "name", str, "", origin, "model.")),
    )
    # Checked before anything is sized by them: a co-activation matrix is n_expert^2 numbers per layer.
    if not 1 <= ident.n_expert <= LLAMA_MAX_EXPERTS or not 1 <= ident.n_layer <= LLAMA_MAX_LAYERS:
        raise _fail(origin, f"the profile claims {ident.n_expert} experts and {ident.n_layer} layers; llama.cpp "
                            f"loads at most {LLAMA_MAX_EXPERTS} experts and {LLAMA_MAX_LAYERS} layers", fix)
    s = _get(data, "source", dict, origin)
    num = (int, float)
    tokens_total = _get(s, "tokens", num, origin, "source.")
    if not finite(tokens_total) or tokens_total < 0:
        raise _fail(origin, f"field 'source.tokens' must be a non-negative number, not {tokens_total!r}", fix)

    def opt(key: str, kind: type | tuple[type, ...], default: Any) -> Any:
        return _opt(s, key, kind, default, origin, "source.")

    def texts(key: str) -> tuple[str, ...]:
        items = opt(key, list, [])
        if not all(isinstance(x, str) for x in items):
            raise _fail(origin, f"field 'source.{key}' must be a list of strings", fix)
        return tuple(items)

    merged = opt("merged_from", list, [])
    if not all(isinstance(x, dict) and json_depth(x) <= 2 for x in merged):
        raise _fail(origin, "field 'source.merged_from' must be a list of flat objects", fix)
    source = Source(
        kind=_get(s, "kind", str, origin, "source."), tokens=float(tokens_total),
        created=opt("created", str, ""), engine=opt("engine", str, ""), file=opt("file", str, ""),
        prompts=opt("prompts", str, ""), prompts_sha256=opt("prompts_sha256", str, ""),
        prompt_count=opt("prompt_count", int, 0), generated_per_prompt=opt("generated_per_prompt", int, 0),
        generated_tokens=opt("generated_tokens", int, 0), datasets=texts("datasets"),
        chunk_count=opt("chunk_count", int, 0), chunk_size=opt("chunk_size", int, 0),
        interrupted=opt("interrupted", bool, False), merged_from=tuple(dict(x) for x in merged),
        notes=texts("notes"),
    )
    layers = _get(data, "layers", list, origin)
    counts: dict[int, Any] = {}
    tokens: dict[int, float] = {}
    co: dict[int, Any] = {}
    iu = np.triu_indices(ident.n_expert, k=1) if ident.n_expert > 0 else None
    for i, entry in enumerate(layers):
        where = f"layers[{i}]."
        layer = _get(entry, "layer", int, origin, where)
        if layer in counts:
            raise _fail(origin, f"layer {layer} appears twice", fix)
        counts[layer] = _get(entry, "counts", list, origin, where)
        tokens[layer] = _get(entry, "tokens", num, origin, where)
        if "coactivation_upper" in entry:
            try:
                upper = np.array(_get(entry, "coactivation_upper", list, origin, where), dtype=np.float64)
            except (TypeError, ValueError, OverflowError):
                raise _fail(origin, f"layer {layer}: co-activation counts are not numbers", fix) from None
            n = ident.n_expert
            if iu is None or upper.shape != (n * (n - 1) // 2,):
                raise _fail(origin, f"layer {layer}: coactivation_upper needs {n * (n - 1) // 2} numbers, "
                                    f"has {upper.size}", fix)
            full = np.zeros((n, n))
            full[iu] = upper
            co[layer] = full + full.T
    if co and len(co) != len(counts):
        raise _fail(origin, "co-activation counts are present for some layers only", fix)
    trace = trace_from_json(data["trace"], ident.n_expert_used, origin) if "trace" in data else None
    return make_profile(ident, source, counts, tokens, co or None, origin=origin, trace=trace)


def load_profile(path: str | os.PathLike[str]) -> RoutingProfile:
    """Reads a profile file. Raises :class:`ProfileError` with one line naming the problem and the fix."""
    p = Path(path)
    fix = "re-create it with 'moeplace profile run' or 'moeplace profile import'"
    if not p.exists() and not p.is_symlink():
        raise _fail(str(p), "no such profile file", "check the path (profiles live under profiles/ by default)")
    text = read_text(p, "moeplace routing profile", ProfileError)
    if not text.strip():
        raise _fail(str(p), "the profile file is empty", fix)
    data = parse_json(text, str(p), ProfileError, "the file is truncated or not a profile; " + fix)
    return profile_from_json(data, str(p))


def default_profile_path(identity: ModelIdentity, kind: str, root: str | os.PathLike[str] = "profiles") -> Path:
    """Where a profile goes without ``-o``: ``profiles/<model>-<kind>.json``."""
    stem = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in (identity.name or identity.arch))
    return Path(root) / f"{stem}-{kind}.json"
