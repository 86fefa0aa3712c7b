"""Routing profiles: how often each expert of each MoE layer is chosen, and what that means for placement.

A profile holds, per MoE layer (absolute block index, as llama.cpp's ``il``), the number of times each expert
was selected and the number of tokens that went through the layer. Everything placement needs follows from
the per-token selection probability ``p_e = count_e / tokens`` (so ``sum(p) = n_expert_used``): a batch of
``B`` independent tokens touches ``sum_e 1 - (1 - p_e)^B`` distinct experts in expectation, which decides how
much of a layer's expert weights batched decode reads and prompt processing copies across PCIe.

The file format (JSON, versioned, documented in ``profiles/README.md``) carries the model identity, so a
profile measured on another network is refused with a message instead of silently steering the plan.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from moeplace.errors import MoeplaceError
from moeplace.model import ModelDescription
from moeplace.outfiles import encode_text, write_file
from moeplace.ranges import format_ranges

FORMAT = "moeplace-routing-profile"
FORMAT_VERSION = 1
HOT_FORMAT = "moeplace-hot-experts"
HOT_FORMAT_VERSION = 1

DEFAULT_BATCHES = (1, 8, 32, 512)
# A layer whose hottest quarter of experts serves at most 1.2x its uniform share of routes is "near uniform":
# a hot-expert cache there serves barely more than a cache of arbitrary experts would.
NEAR_UNIFORM_RATIO = 1.2
# Sum of counts must equal tokens x n_expert_used to this relative tolerance (merged profiles hold floats).
_SUM_RTOL = 1e-6
_NOISE_DRAWS = 200


class ProfileError(MoeplaceError):
    """A routing profile that cannot be read, or does not belong to the model it is used with."""


@dataclass(frozen=True)
class ModelIdentity:
    """What a profile was measured on. The fingerprint ignores quantisation (see ModelDescription.fingerprint)."""

    arch: str
    n_layer: int
    n_expert: int
    n_expert_used: int
    fingerprint: str
    name: str = ""

    @classmethod
    def of(cls, model: ModelDescription) -> ModelIdentity:
        hp = model.hparams
        return cls(hp.arch, hp.n_layer, hp.n_expert, hp.n_expert_used, model.fingerprint(), model.name)


@dataclass(frozen=True)
class Source:
    """Where the counts came from. Fields that do not apply to a kind stay empty."""

    kind: str  # "live", "imatrix", "trace", "merge" or "synthetic"
    tokens: float  # tokens routed through the best-covered layer
    created: str = ""
    engine: str = ""  # e.g. "llama-cpp-python 0.3.36"
    file: str = ""  # the imatrix or trace file name
    prompts: str = ""  # prompts file or directory name
    prompts_sha256: str = ""
    prompt_count: int = 0
    generated_per_prompt: int = 0
    generated_tokens: int = 0
    datasets: tuple[str, ...] = ()  # imatrix.datasets
    chunk_count: int = 0  # imatrix.chunk_count
    chunk_size: int = 0  # imatrix.chunk_size
    interrupted: bool = False
    merged_from: tuple[Mapping[str, Any], ...] = ()  # merge: each part's source and weight
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class RoutingProfile:
    """Per-layer expert selection counts. Arrays are read-only; build one with :func:`make_profile`."""

    model: ModelIdentity
    source: Source
    counts: Mapping[int, np.ndarray]  # layer -> [n_expert] selections
    tokens: Mapping[int, float]  # layer -> tokens that went through the layer's router
    coactivation: Mapping[int, np.ndarray] | None = field(default=None, repr=False)  # layer -> [n, n] pairs

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(sorted(self.counts))


def _fail(origin: str, problem: str, fix: str = "") -> ProfileError:
    where = f"{origin}: " if origin else ""
    return ProfileError(f"{where}{problem}" + (f"; {fix}" if fix else ""))


def make_profile(model: ModelIdentity, source: Source, counts: Mapping[int, Any],
                 tokens: Mapping[int, float] | None = None, coactivation: Mapping[int, Any] | None = None,
                 *, origin: str = "") -> RoutingProfile:
    """Validates and freezes a profile. ``tokens`` defaults to ``sum(counts) / n_expert_used`` per layer.

    Raises :class:`ProfileError` for negative, NaN or infinite counts, a wrong expert count, a layer outside
    the model, an expert chosen more often than there were tokens, or counts that do not add up to
    ``tokens x n_expert_used``.
    """
    fix = "re-create the profile with 'moeplace profile run' or 'moeplace profile import'"
    if model.n_expert < 1 or not 1 <= model.n_expert_used <= model.n_expert or model.n_layer < 1:
        raise _fail(origin, f"model identity has {model.n_layer} layers, {model.n_expert} experts and "
                            f"{model.n_expert_used} used per token, which is not a MoE model", fix)
    if not counts:
        raise _fail(origin, "the profile holds no layer counts", fix)
    k = model.n_expert_used
    frozen: dict[int, np.ndarray] = {}
    toks: dict[int, float] = {}
    for layer, raw in sorted(counts.items()):
        if not isinstance(layer, int | np.integer) or not 0 <= layer < model.n_layer:
            raise _fail(origin, f"layer {layer!r} is outside the model's {model.n_layer} layers", fix)
        layer = int(layer)
        try:
            arr = np.array(raw, dtype=np.float64)
        except (TypeError, ValueError):
            raise _fail(origin, f"layer {layer}: counts are not numbers", fix) from None
        if arr.shape != (model.n_expert,):
            raise _fail(origin, f"layer {layer}: {arr.size} counts for a model with {model.n_expert} experts", fix)
        if not np.isfinite(arr).all():
            raise _fail(origin, f"layer {layer}: counts contain NaN or infinity", fix)
        if (arr < 0).any():
            raise _fail(origin, f"layer {layer}: negative count {arr.min():g} for expert {int(arr.argmin())}", fix)
        total = float(arr.sum())
        t = total / k if tokens is None or layer not in tokens else tokens[layer]
        if not isinstance(t, int | float | np.integer | np.floating) or not math.isfinite(t) or t < 0:
            raise _fail(origin, f"layer {layer}: token count {t!r} is not a non-negative number", fix)
        t = float(t)
        if total <= 0 or t <= 0:
            raise _fail(origin, f"layer {layer} has no routed tokens", "drop the layer or profile more prompts")
        if abs(total - t * k) > _SUM_RTOL * max(total, t * k):
            raise _fail(origin, f"layer {layer}: counts sum to {total:g} but {t:g} tokens x {k} experts per token "
                                f"= {t * k:g}", fix)
        if arr.max() > t * (1 + _SUM_RTOL):
            raise _fail(origin, f"layer {layer}: expert {int(arr.argmax())} was chosen {arr.max():g} times in "
                                f"{t:g} tokens (at most once per token)", fix)
        arr.flags.writeable = False
        frozen[layer] = arr
        toks[layer] = t
    co: dict[int, np.ndarray] | None = None
    if coactivation is not None:
        co = {}
        for layer, raw in sorted(coactivation.items()):
            if int(layer) not in frozen:
                raise _fail(origin, f"co-activation counts for layer {layer}, which has no expert counts", fix)
            try:
                m = np.array(raw, dtype=np.float64)
            except (TypeError, ValueError):
                raise _fail(origin, f"layer {layer}: co-activation counts are not numbers", fix) from None
            n = model.n_expert
            if m.shape != (n, n) or not np.isfinite(m).all() or (m < 0).any() or not np.allclose(m, m.T):
                raise _fail(origin, f"layer {layer}: co-activation counts must be a symmetric {n}x{n} matrix of "
                                    "non-negative numbers", fix)
            m.flags.writeable = False
            co[int(layer)] = m
    return RoutingProfile(model, source, MappingProxyType(frozen), MappingProxyType(toks),
                          None if co is None else MappingProxyType(co))


# --- what the plan reads -----------------------------------------------------------------------------------


def expert_probs(profile: RoutingProfile) -> dict[int, np.ndarray]:
    """Per MoE layer, the probability that one token selects each expert: ``p_e = count_e / tokens``, so the
    probabilities of a layer sum to ``n_expert_used``. This is the mapping the speed model takes."""
    return {layer: np.minimum(profile.counts[layer] / profile.tokens[layer], 1.0) for layer in profile.layers}


def expected_distinct(p: np.ndarray, batch: float) -> float:
    """Expected number of distinct experts a batch of ``batch`` independent tokens selects:
    ``sum_e 1 - (1 - p_e)^batch``."""
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    if batch <= 0:
        return 0.0
    with np.errstate(divide="ignore"):  # p = 1 gives log1p(-1) = -inf, and expm1(-inf) = -1 is right
        return float(np.sum(-np.expm1(batch * np.log1p(-p))))


def uniform_probs(n_expert: int, n_expert_used: int) -> np.ndarray:
    """What every expert gets when routing is uniform: ``n_expert_used / n_expert``."""
    return np.full(n_expert, n_expert_used / n_expert)


def distinct_experts(profile: RoutingProfile, batch: float) -> dict[int, float]:
    """Per MoE layer, the expected number of distinct experts a batch of ``batch`` tokens touches."""
    return {layer: expected_distinct(p, batch) for layer, p in expert_probs(profile).items()}


def top_share(counts: np.ndarray, n_top: int) -> float:
    """Share of all routes the ``n_top`` most chosen experts took."""
    total = float(counts.sum())
    if total <= 0 or n_top <= 0:
        return 0.0
    return float(np.sort(counts)[::-1][:n_top].sum() / total)


def n_top(n_expert: int, fraction: float) -> int:
    """How many experts 'the top fraction' means: rounded up, at least one."""
    return max(1, math.ceil(fraction * n_expert - 1e-9))


# --- skew -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerSkew:
    """How unevenly one layer routes."""

    layer: int
    tokens: float
    top10_share: float  # share of routes the top 10% of experts take
    top25_share: float
    entropy: float  # of the routing distribution, normalised: 1 = uniform, 0 = a single expert
    dead: int  # experts never chosen
    distinct: tuple[float, ...]  # expected distinct experts at each batch of SkewReport.batches
    noise_top25: float  # 95th percentile of the top-25% share uniform routing shows with this many tokens

    def verdict(self, uniform_top25: float) -> str:
        """``skewed``, ``near-uniform`` or ``noise`` (the skew seen is what uniform routing shows by chance)."""
        if self.top25_share <= uniform_top25 * NEAR_UNIFORM_RATIO:
            return "near-uniform"
        if self.top25_share <= self.noise_top25:
            return "noise"
        return "skewed"


@dataclass(frozen=True)
class SkewReport:
    """Skew of every layer, the uniform baselines, and a plain verdict."""

    n_expert: int
    n_expert_used: int
    n_top10: int  # experts that make up the top 10%
    n_top25: int
    batches: tuple[int, ...]
    uniform_distinct: tuple[float, ...]  # distinct experts at each batch under uniform routing
    layers: tuple[LayerSkew, ...]

    @property
    def uniform_top25(self) -> float:
        return self.n_top25 / self.n_expert

    @property
    def uniform_top10(self) -> float:
        return self.n_top10 / self.n_expert

    def count(self, verdict: str) -> int:
        return sum(1 for s in self.layers if s.verdict(self.uniform_top25) == verdict)

    @property
    def near_uniform(self) -> bool:
        """True when hot-expert placement cannot pay: no layer shows skew beyond chance, or at most a tenth
        of the layers do."""
        return self.count("skewed") <= len(self.layers) // 10

    def verdict(self) -> str:
        """One plain sentence for people."""
        n = len(self.layers)
        skewed, noise = self.count("skewed"), self.count("noise")
        mean25 = float(np.mean([s.top25_share for s in self.layers]))
        if self.near_uniform and noise > n // 2:
            return (f"Too few tokens to tell: the skew in {noise} of {n} layers is what uniform routing shows by "
                    "chance at this sample size. Profile more prompts before trusting hot-expert placement.")
        if self.near_uniform:
            return (f"Routing is close to uniform: the top 25% of experts take {mean25:.0%} of routes on average "
                    f"(uniform: {self.uniform_top25:.0%}). Hot-expert placement cannot pay for this workload; "
                    "place whole layers instead.")
        return (f"Routing is skewed in {skewed} of {n} layers: the top 25% of experts take {mean25:.0%} of routes "
                f"on average (uniform: {self.uniform_top25:.0%}). Hot-expert placement can pay where it is "
                "skewed.")


def _noise_top25(tokens: float, n_expert: int, k: int, n25: int, rng: np.random.Generator) -> float:
    """The top-25% share uniform routing shows by chance with this many tokens (95th percentile)."""
    n_routes = round(tokens * k)
    if n_routes < 1:
        return 1.0
    # A multinomial ignores that one token picks k distinct experts; its counts vary slightly more than
    # real uniform routing's, which errs towards calling skew noise.
    draws = rng.multinomial(n_routes, np.full(n_expert, 1.0 / n_expert), size=_NOISE_DRAWS)
    shares = np.sort(draws, axis=1)[:, ::-1][:, :n25].sum(axis=1) / n_routes
    return float(np.quantile(shares, 0.95))


def skew_report(profile: RoutingProfile, batches: Sequence[int] = DEFAULT_BATCHES) -> SkewReport:
    """Skew statistics of every layer: top-10%/25% shares, normalised entropy, dead experts, expected distinct
    experts at each batch size, and the share uniform routing would show by chance at this sample size."""
    n, k = profile.model.n_expert, profile.model.n_expert_used
    n10, n25 = n_top(n, 0.10), n_top(n, 0.25)
    rng = np.random.default_rng(0)  # fixed: the same profile always gets the same report
    probs = expert_probs(profile)
    rows = []
    for layer in profile.layers:
        c = profile.counts[layer]
        q = c / c.sum()
        nz = q[q > 0]
        entropy = float(-(nz * np.log(nz)).sum() / math.log(n)) if n > 1 else 1.0
        rows.append(LayerSkew(
            layer=layer, tokens=profile.tokens[layer], top10_share=top_share(c, n10), top25_share=top_share(c, n25),
            entropy=min(1.0, entropy), dead=int((c == 0).sum()),
            distinct=tuple(expected_distinct(probs[layer], b) for b in batches),
            noise_top25=_noise_top25(profile.tokens[layer], n, k, n25, rng),
        ))
    uniform = uniform_probs(n, k)
    return SkewReport(n, k, n10, n25, tuple(batches), tuple(expected_distinct(uniform, b) for b in batches),
                      tuple(rows))


# --- identity checks ---------------------------------------------------------------------------------------


def check_profile(profile: RoutingProfile, model: ModelDescription, *, origin: str = "") -> None:
    """Refuses a profile measured on another model: architecture, layer count, expert counts, the fingerprint
    of the tensor list, and the set of MoE layers must all match."""
    want = ModelIdentity.of(model)
    have = profile.model
    fix = f"profile this model ('moeplace profile run {model.paths[0].name} --prompts ...') or import its imatrix"
    what = f"the profile was measured on {have.name or have.arch}"
    if have.arch != want.arch:
        raise _fail(origin, f"{what}, architecture {have.arch}, but {model.name} is {want.arch}", fix)
    for label, a, b in (("layers", have.n_layer, want.n_layer), ("experts per layer", have.n_expert, want.n_expert),
                        ("experts used per token", have.n_expert_used, want.n_expert_used)):
        if a != b:
            raise _fail(origin, f"{what} with {a} {label}, but {model.name} has {b}", fix)
    if have.fingerprint != want.fingerprint:
        raise _fail(origin, f"{what} (fingerprint {have.fingerprint}), a different network from {model.name} "
                            f"(fingerprint {want.fingerprint}) with the same shape", fix)
    moe = {layer.index for layer in model.layers if layer.moe and not layer.nextn}
    missing, extra = sorted(moe - set(profile.layers)), sorted(set(profile.layers) - moe)
    if extra:
        layers = format_ranges(extra, ", ")
        raise _fail(origin, f"the profile has counts for layers {layers}, which are not MoE layers of {model.name}",
                    fix)
    if missing:
        layers = format_ranges(missing, ", ")
        raise _fail(origin, f"the profile has no counts for MoE layers {layers} of {model.name}", fix)


def moe_layers(model: ModelDescription) -> tuple[int, ...]:
    """The blocks llama.cpp routes through experts (NextN blocks are not loaded, so never routed)."""
    return tuple(layer.index for layer in model.layers if layer.moe and not layer.nextn)


# --- merge -------------------------------------------------------------------------------------------------


def merge_profiles(profiles: Sequence[RoutingProfile], weights: Sequence[float] | None = None) -> RoutingProfile:
    """Combines profiles of the same model.

    Without weights the samples are pooled (counts add up; each profile weighs by its token count). With
    weights, each weight is that profile's share of the workload whatever its token count: the merged per-token
    probabilities are ``sum_i w_i p_i / sum_i w_i``, scaled to the pooled token count. Co-activation counts
    survive only when every part has them.
    """
    if len(profiles) < 2:
        raise ProfileError("merge needs at least two profiles")
    first = profiles[0].model
    for p in profiles[1:]:
        if replace(p.model, name="") != replace(first, name=""):
            raise ProfileError(f"cannot merge a profile of {p.model.name or p.model.arch} (fingerprint "
                               f"{p.model.fingerprint}) with one of {first.name or first.arch} (fingerprint "
                               f"{first.fingerprint}): merge only profiles of the same model")
    layer_sets = {p.layers for p in profiles}
    if len(layer_sets) != 1:
        raise ProfileError("the profiles cover different layers; merge only complete profiles of the same model")
    if weights is not None:
        if len(weights) != len(profiles):
            raise ProfileError(f"{len(weights)} weights for {len(profiles)} profiles: give one weight per profile")
        if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
            raise ProfileError("weights must be non-negative numbers, not all zero")
    with_co = all(p.coactivation is not None for p in profiles)
    counts: dict[int, np.ndarray] = {}
    tokens: dict[int, float] = {}
    co: dict[int, np.ndarray] = {}
    for layer in profiles[0].layers:
        pooled = sum(p.tokens[layer] for p in profiles)
        tokens[layer] = pooled
        if weights is None:
            counts[layer] = sum(p.counts[layer] for p in profiles)  # type: ignore[assignment]
            if with_co:
                co[layer] = sum(p.coactivation[layer] for p in profiles)  # type: ignore[index,assignment]
        else:
            total_w = float(sum(weights))
            counts[layer] = pooled * sum(w / total_w * p.counts[layer] / p.tokens[layer]  # type: ignore[assignment]
                                         for w, p in zip(weights, profiles))
            if with_co:
                co[layer] = pooled * sum(w / total_w * p.coactivation[layer] / p.tokens[layer]  # type: ignore
                                         for w, p in zip(weights, profiles))
    parts = tuple({"kind": p.source.kind, "tokens": p.source.tokens, "weight": None if weights is None else w,
                   "file": p.source.file, "prompts": p.source.prompts, "prompts_sha256": p.source.prompts_sha256,
                   "datasets": list(p.source.datasets)}
                  for p, w in zip(profiles, weights or [None] * len(profiles)))
    notes = () if with_co or all(p.coactivation is None for p in profiles) else (
        "co-activation counts dropped: not every merged profile had them",)
    source = Source(kind="merge", tokens=sum(p.source.tokens for p in profiles), created=utc_now(), merged_from=parts,
                    datasets=tuple(d for p in profiles for d in p.source.datasets), notes=notes)
    return make_profile(first, source, counts, tokens, co if with_co else None)


# --- hot experts -------------------------------------------------------------------------------------------


def hot_order(counts: np.ndarray) -> np.ndarray:
    """Expert ids from most to least chosen; ties go to the lower id."""
    return np.argsort(-counts, kind="stable")


def coverage(profile: RoutingProfile) -> np.ndarray:
    """``coverage[c]``: the share of all routes (averaged over layers) that a cache of the ``c`` hottest experts
    of every layer would serve, for c = 0..n_expert."""
    n = profile.model.n_expert
    acc = np.zeros(n + 1)
    for layer in profile.layers:
        c = profile.counts[layer]
        acc[1:] += np.cumsum(np.sort(c)[::-1]) / c.sum()
    return acc / len(profile.layers)


def hot_experts(profile: RoutingProfile, cache: int | None = None) -> dict[str, Any]:
    """The ``hot-json`` export: per layer, the experts from hottest to coldest (the ``cache`` hottest when given)
    with their share of the layer's routes, and the coverage ranking for every cache size."""
    n = profile.model.n_expert
    if cache is not None and not 1 <= cache <= n:
        raise ProfileError(f"--cache {cache} is outside 1..{n} (experts per layer)")
    keep = n if cache is None else cache
    layers = []
    for layer in profile.layers:
        c = profile.counts[layer]
        order = hot_order(c)[:keep]
        shares = c[order] / c.sum()
        layers.append({"layer": layer, "experts": [int(e) for e in order],
                       "shares": [round(float(s), 6) for s in shares], "served": round(float(shares.sum()), 6)})
    cov = coverage(profile)
    return {
        "format": HOT_FORMAT,
        "format_version": HOT_FORMAT_VERSION,
        "model": _identity_json(profile.model),
        "source": {"kind": profile.source.kind, "tokens": profile.source.tokens},
        "cache_per_layer": cache,
        "served": None if cache is None else round(float(cov[cache]), 6),
        "layers": layers,
        "coverage": [{"experts_per_layer": c, "served": round(float(cov[c]), 6),
                      "uniform": round(c / n, 6)} for c in range(1, n + 1)],
    }


# --- file format -------------------------------------------------------------------------------------------


def utc_now() -> str:
    """The current time for a profile's ``created`` field."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def _identity_json(m: ModelIdentity) -> dict[str, Any]:
    return {"name": m.name, "arch": m.arch, "n_layer": m.n_layer, "n_expert": m.n_expert,
            "n_expert_used": m.n_expert_used, "fingerprint": m.fingerprint}


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
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "model": _identity_json(profile.model),
            "source": _source_json(profile.source), "layers": layers}


def dumps(profile: RoutingProfile) -> str:
    """JSON text with one line per layer: readable, diffable, and small."""
    data = profile_to_json(profile)
    layers = data.pop("layers")
    head = json.dumps(data, indent=2)[:-2]  # drop the closing "\n}"
    body = ",\n    ".join(json.dumps(e, separators=(",", ":")) for e in layers)
    return f'{head},\n  "layers": [\n    {body}\n  ]\n}}\n'


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
        fingerprint=_get(m, "fingerprint", str, origin, "model."), name=str(m.get("name", "")),
    )
    s = _get(data, "source", dict, origin)
    num = (int, float)
    source = Source(
        kind=_get(s, "kind", str, origin, "source."), tokens=float(_get(s, "tokens", num, origin, "source.")),
        created=str(s.get("created", "")), engine=str(s.get("engine", "")), file=str(s.get("file", "")),
        prompts=str(s.get("prompts", "")), prompts_sha256=str(s.get("prompts_sha256", "")),
        prompt_count=int(s.get("prompt_count", 0)), generated_per_prompt=int(s.get("generated_per_prompt", 0)),
        generated_tokens=int(s.get("generated_tokens", 0)),
        datasets=tuple(str(x) for x in s.get("datasets", ())), chunk_count=int(s.get("chunk_count", 0)),
        chunk_size=int(s.get("chunk_size", 0)), interrupted=bool(s.get("interrupted", False)),
        merged_from=tuple(dict(x) for x in s.get("merged_from", ()) if isinstance(x, Mapping)),
        notes=tuple(str(x) for x in s.get("notes", ())),
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
            upper = np.array(_get(entry, "coactivation_upper", list, origin, where), dtype=np.float64)
            n = ident.n_expert
            if iu is None or upper.shape != (n * (n - 1) // 2,):
                raise _fail(origin, f"layer {layer}: coactivation_upper needs {n * (n - 1) // 2} numbers, "
                                    f"has {upper.size}", fix)
            full = np.zeros((n, n))
            full[iu] = upper
            co[layer] = full + full.T
    if co and len(co) != len(counts):
        raise _fail(origin, "co-activation counts are present for some layers only", fix)
    return make_profile(ident, source, counts, tokens, co or None, origin=origin)


def load_profile(path: str | os.PathLike[str]) -> RoutingProfile:
    """Reads a profile file. Raises :class:`ProfileError` with one line naming the problem and the fix."""
    p = Path(path)
    fix = "re-create it with 'moeplace profile run' or 'moeplace profile import'"
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _fail(str(p), "no such profile file", "check the path (profiles live under profiles/ by default)") \
            from None
    except IsADirectoryError:
        raise _fail(str(p), "is a directory, not a profile file") from None
    except UnicodeDecodeError:
        raise _fail(str(p), "not a moeplace routing profile (binary content)",
                    "pass the JSON file written by 'moeplace profile run/import'") from None
    if not text.strip():
        raise _fail(str(p), "the profile file is empty", fix)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise _fail(str(p), f"not valid JSON at line {e.lineno} column {e.colno} ({e.msg}): the file is truncated "
                            "or not a profile", fix) from None
    return profile_from_json(data, str(p))


def default_profile_path(identity: ModelIdentity, kind: str, root: str | os.PathLike[str] = "profiles") -> Path:
    """Where a profile goes without ``-o``: ``profiles/<model>-<kind>.json``."""
    stem = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in (identity.name or identity.arch))
    return Path(root) / f"{stem}-{kind}.json"
