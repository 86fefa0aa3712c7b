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

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from types import MappingProxyType
from typing import Any

import numpy as np

from moeplace.errors import MoeplaceError
from moeplace.model import ModelDescription
from moeplace.ranges import format_ranges

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
    # layer -> [tokens, n_expert_used] expert ids in the order the tokens were evaluated: the order of routing,
    # which an LRU expert cache's hit rate depends on (counts alone cannot tell it). Optional; may cover fewer
    # tokens (and layers) than the counts.
    trace: Mapping[int, np.ndarray] | None = field(default=None, repr=False)

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(sorted(self.counts))


def _fail(origin: str, problem: str, fix: str = "") -> ProfileError:
    where = f"{origin}: " if origin else ""
    return ProfileError(f"{where}{problem}" + (f"; {fix}" if fix else ""))


def make_profile(model: ModelIdentity, source: Source, counts: Mapping[int, Any],
                 tokens: Mapping[int, float] | None = None, coactivation: Mapping[int, Any] | None = None,
                 *, origin: str = "", trace: Mapping[int, Any] | None = None) -> RoutingProfile:
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
        except (TypeError, ValueError, OverflowError):
            raise _fail(origin, f"layer {layer}: counts are not numbers", fix) from None
        if arr.shape != (model.n_expert,):
            raise _fail(origin, f"layer {layer}: {arr.size} counts for a model with {model.n_expert} experts", fix)
        if not np.isfinite(arr).all():
            raise _fail(origin, f"layer {layer}: counts contain NaN or infinity", fix)
        if (arr < 0).any():
            raise _fail(origin, f"layer {layer}: negative count {arr.min():g} for expert {int(arr.argmin())}", fix)
        total = float(arr.sum())
        t = total / k if tokens is None or layer not in tokens else tokens[layer]
        if not isinstance(t, int | float | np.integer | np.floating) or not finite(t) or t < 0:
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
            except (TypeError, ValueError, OverflowError):
                raise _fail(origin, f"layer {layer}: co-activation counts are not numbers", fix) from None
            n = model.n_expert
            if m.shape != (n, n) or not np.isfinite(m).all() or (m < 0).any() or not np.allclose(m, m.T):
                raise _fail(origin, f"layer {layer}: co-activation counts must be a symmetric {n}x{n} matrix of "
                                    "non-negative numbers", fix)
            m.flags.writeable = False
            co[int(layer)] = m
    tr: dict[int, np.ndarray] | None = None
    if trace:
        tr = {}
        for layer, raw in sorted(trace.items()):
            layer = int(layer)
            if layer not in frozen:
                raise _fail(origin, f"a routing trace for layer {layer}, which has no expert counts", fix)
            ids = np.asarray(raw)
            if ids.ndim != 2 or ids.shape[1] != k or not np.issubdtype(ids.dtype, np.integer):
                raise _fail(origin, f"layer {layer}: the routing trace must hold {k} expert ids per token", fix)
            if ids.shape[0] > toks[layer] * (1 + _SUM_RTOL):
                raise _fail(origin, f"layer {layer}: the routing trace has {ids.shape[0]} tokens, the counts only "
                                    f"{toks[layer]:g}", fix)
            if ids.size and (ids.min() < 0 or ids.max() >= model.n_expert):
                raise _fail(origin, f"layer {layer}: the routing trace names an expert outside 0..{model.n_expert - 1}",
                            fix)
            srt = np.sort(ids, axis=1)
            if ids.size and (srt[:, 1:] == srt[:, :-1]).any():
                raise _fail(origin, f"layer {layer}: the routing trace picks an expert twice for one token", fix)
            ids = ids.astype(np.uint16)
            ids.flags.writeable = False
            tr[layer] = ids
    return RoutingProfile(model, source, MappingProxyType(frozen), MappingProxyType(toks),
                          None if co is None else MappingProxyType(co), None if tr is None else MappingProxyType(tr))


# --- what the plan reads -----------------------------------------------------------------------------------


def expert_probs(profile: RoutingProfile) -> dict[int, np.ndarray]:
    """Per MoE layer, the probability that one token selects each expert: ``p_e = count_e / tokens``, so the
    probabilities of a layer sum to ``n_expert_used``. This is the mapping the speed model takes."""
    return {layer: np.minimum(profile.counts[layer] / profile.tokens[layer], 1.0) for layer in profile.layers}


# The tokens of one prompt route alike, so a prompt's ubatch touches far fewer experts than as many independent
# tokens would. Modelled as each prompt drawing its own rate for each expert, gamma-distributed around the
# aggregate rate ``p_e`` with this shape: an expert is then untouched by ``t`` tokens with probability
# ``(1 + t p_e / shape)^-shape`` (the gamma's Laplace transform) instead of ``(1 - p_e)^t``. The shape is set from
# the one published count: llama.cpp PR 15346 (slaren, https://github.com/ggml-org/llama.cpp/pull/15346): a
# 512-token ubatch of a code prompt on Qwen3-30B-A3B (128 experts, 8 used) touched 95, 91, 72, 74, 73, 78, 87 and
# 95 experts in blocks 0-7, 65% on average, where independent tokens touch all 128; shape 0.2 gives 64%.
PROMPT_ROUTING_SHAPE = 0.2


def expected_distinct(p: np.ndarray, batch: float, shape: float | None = None) -> Any:
    """Expected number of distinct experts a batch of ``batch`` tokens selects. Independent tokens (``shape``
    None: a decode batch of separate sequences): ``sum_e 1 - (1 - p_e)^batch``, computed as
    ``-expm1(batch log1p(-p))`` so that rare experts at large batches keep their precision. Tokens of one prompt
    (``shape``, :data:`PROMPT_ROUTING_SHAPE`): ``sum_e 1 - (1 + batch p_e / shape)^-shape``. ``p`` holds one
    layer's per-token probabilities (a float comes back) or one row per layer (an array of one figure per row
    comes back). The one copy of this formula: the speed model's batched decode and prefill and the profile
    reports all use it."""
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    if batch <= 0:
        d = np.zeros(p.shape[:-1])
    elif shape is not None:
        d = np.sum(-np.expm1(-shape * np.log1p(batch * p / shape)), axis=-1)
    else:
        with np.errstate(divide="ignore"):  # p = 1 gives log1p(-1) = -inf, and expm1(-inf) = -1 is right
            d = np.sum(-np.expm1(batch * np.log1p(-p)), axis=-1)
    return float(d) if d.ndim == 0 else d


def uniform_probs(n_expert: int, n_expert_used: int) -> np.ndarray:
    """Per-token routing probability of each expert with uniform routing: ``n_expert_used / n_expert``."""
    return np.full(n_expert, n_expert_used / n_expert, dtype=np.float64)


def distinct_by_layer(profile: RoutingProfile, batch: float) -> dict[int, float]:
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
    if any(p.trace for p in profiles):
        notes += ("routing traces dropped: merged counts have no single order of routing",)
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
        "model": identity_to_json(profile.model),
        "source": {"kind": profile.source.kind, "tokens": profile.source.tokens},
        "cache_per_layer": cache,
        "served": None if cache is None else round(float(cov[cache]), 6),
        "layers": layers,
        "coverage": [{"experts_per_layer": c, "served": round(float(cov[c]), 6),
                      "uniform": round(c / n, 6)} for c in range(1, n + 1)],
    }


def utc_now() -> str:
    """The current time for a profile's ``created`` field."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def finite(x: float) -> bool:
    try:
        return math.isfinite(x)
    except OverflowError:  # an integer too large for a float
        return False


def identity_to_json(m: ModelIdentity) -> dict[str, Any]:
    return {"name": m.name, "arch": m.arch, "n_layer": m.n_layer, "n_expert": m.n_expert,
            "n_expert_used": m.n_expert_used, "fingerprint": m.fingerprint}
