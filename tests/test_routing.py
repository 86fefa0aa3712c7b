"""Routing profiles: validation, the file format, identity checks, skew statistics, distinct experts, merge."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moeplace.model import ModelDescription, load_model
from moeplace.routing import (
    PROMPT_ROUTING_SHAPE,
    ModelIdentity,
    ProfileError,
    RoutingProfile,
    Source,
    check_profile,
    coverage,
    distinct_by_layer,
    expected_distinct,
    expert_probs,
    hot_experts,
    make_profile,
    merge_profiles,
    moe_layers,
    skew_report,
    uniform_probs,
)
from moeplace.routing_file import dumps, load_profile, save_profile
from moeplace.testing import SPECS, write_model

IDENT = ModelIdentity("qwen3moe", n_layer=4, n_expert=64, n_expert_used=4, fingerprint="f" * 16, name="synthetic")


def from_probs(probs: dict[int, np.ndarray], tokens: float, ident: ModelIdentity = IDENT) -> RoutingProfile:
    """A synthetic profile whose per-token probabilities are exactly ``probs``."""
    return make_profile(ident, Source("synthetic", tokens), {il: p * tokens for il, p in probs.items()},
                        dict.fromkeys(probs, tokens))


def zipf(n: int, k: int, s: float) -> np.ndarray:
    """Per-token selection probabilities following a Zipf law, scaled to sum to k (each at most 1)."""
    w = 1.0 / np.arange(1, n + 1) ** s
    p = k * w / w.sum()
    for _ in range(50):  # cap at 1 and hand the excess to the others, keeping the sum at k
        over = p > 1
        if not over.any():
            break
        p[over] = 1
        rest = ~over
        p[rest] *= (k - over.sum()) / p[rest].sum()
    return p


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModelDescription]:
    d = tmp_path_factory.mktemp("models")
    base = SPECS["qwen3moe-tiny"]
    variants = {
        "qwen": base,
        "qwen-q8": dataclasses.replace(base, name="qwen3moe-tiny-q8", ftype=type(base.ftype).MOSTLY_Q8_0),
        "qwen-3layers": dataclasses.replace(base, name="qwen3moe-3l", n_layer=3),
        "qwen-wider": dataclasses.replace(base, name="qwen3moe-wide", n_embd=128),
        "qwen-16experts": dataclasses.replace(base, name="qwen3moe-16e", n_expert=16),
        "deepseek": SPECS["deepseek2-tiny"],
    }
    return {k: load_model(write_model(spec, d / f"{k}.gguf")[0]) for k, spec in variants.items()}


def route(rng: np.random.Generator, weights: np.ndarray, k: int, tokens: int) -> np.ndarray:
    """Counts of ``tokens`` tokens that each pick ``k`` distinct experts with the given weights, as a top-k
    router does (Gumbel top-k: sampling without replacement proportional to the weights)."""
    keys = np.log(weights) + rng.gumbel(size=(tokens, weights.size))
    chosen = np.argpartition(-keys, k - 1, axis=1)[:, :k]
    return np.bincount(chosen.ravel(), minlength=weights.size).astype(float)


def profile_for(model: ModelDescription, seed: int = 0, tokens: int = 1000) -> RoutingProfile:
    """Counts drawn as real routing would be: every token picks n_expert_used distinct experts."""
    hp = model.hparams
    rng = np.random.default_rng(seed)
    w = zipf(hp.n_expert, 1, 1.0)
    counts = {il: route(rng, w, hp.n_expert_used, tokens) for il in moe_layers(model)}
    return make_profile(ModelIdentity.of(model), Source("synthetic", tokens), counts)


# --- distinct experts: the figure the plan uses ------------------------------------------------------------


def test_probabilities_sum_to_experts_used() -> None:
    prof = from_probs({0: zipf(64, 4, 1.2), 2: uniform_probs(64, 4)}, 5000)
    for p in expert_probs(prof).values():
        assert p.sum() == pytest.approx(4)
        assert (p >= 0).all() and (p <= 1).all()


def test_uniform_distinct_matches_closed_form() -> None:
    n, k = 128, 8
    for b in (1, 8, 32, 512):
        assert expected_distinct(uniform_probs(n, k), b) == pytest.approx(n * (1 - (1 - k / n) ** b))


def test_skewed_profile_touches_fewer_experts_than_uniform_as_the_formula_says() -> None:
    """The product's premise: where routing is skewed, a batch touches fewer distinct experts, by exactly
    sum_e 1-(1-p_e)^B, which the speed model then turns into bytes read and copied."""
    n, k = 64, 4
    skewed = zipf(n, k, 1.5)
    prof = from_probs({0: skewed, 1: uniform_probs(n, k)}, 100_000)
    for b in (8, 32, 512):
        d = distinct_by_layer(prof, b)
        uniform = n * (1 - (1 - k / n) ** b)
        assert d[1] == pytest.approx(uniform)
        # Monte Carlo: tokens whose experts are chosen independently with p_e; count distinct experts.
        rng = np.random.default_rng(b)
        draws = rng.random((4000, b, n)) < skewed if b <= 32 else rng.random((300, b, n)) < skewed
        simulated = draws.any(axis=1).sum(axis=1).mean()
        assert d[0] == pytest.approx(simulated, rel=0.02)
        assert d[0] < uniform - 1  # a real difference, not rounding
    # At batch 1 every token touches exactly k experts, skewed or not.
    assert distinct_by_layer(prof, 1)[0] == pytest.approx(k)


def test_a_prompts_tokens_touch_fewer_experts_as_llama_cpp_pr_15346_counted() -> None:
    """One prompt's tokens route alike (PROMPT_ROUTING_SHAPE): a 512-token ubatch of Qwen3-30B-A3B's shape (128
    experts, 8 used) touches about 65% of the experts (PR 15346 counted 72-95 per block, 83 on average), where
    independent tokens touch all of them; the formula is a gamma mixture of each expert's rate, as a Monte Carlo
    of prompts that draw their own rates and then route tokens independently finds; it grows with the ubatch and
    never exceeds the independent count."""
    n, k = 128, 8
    p = uniform_probs(n, k)
    d512 = expected_distinct(p, 512, PROMPT_ROUTING_SHAPE)
    assert 0.6 * n < d512 < 0.7 * n < expected_distinct(p, 512) - 0.25 * n
    rng = np.random.default_rng(15346)
    rates = rng.gamma(PROMPT_ROUTING_SHAPE, p / PROMPT_ROUTING_SHAPE, size=(20_000, n))  # per prompt, mean p
    simulated = (1 - np.exp(-512 * rates)).sum(axis=1).mean()  # Poisson arrivals at each prompt's rates
    assert d512 == pytest.approx(simulated, rel=0.02)
    batches = (32, 128, 512, 2048, 8192)
    sizes = [expected_distinct(p, b, PROMPT_ROUTING_SHAPE) for b in batches]
    assert sizes == sorted(sizes) and all(d <= expected_distinct(p, b) for d, b in zip(sizes, batches))


def test_only_k_experts_ever_chosen_means_k_distinct_at_any_batch() -> None:
    p = np.zeros(64)
    p[[3, 10, 20, 40]] = 1.0
    prof = from_probs({0: p}, 100)
    assert [round(expected_distinct(expert_probs(prof)[0], b), 9) for b in (1, 8, 512)] == [4, 4, 4]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10_000), min_size=8, max_size=8), st.integers(1, 1000))
def test_distinct_is_monotone_and_never_beats_uniform(raw: list[int], batch: int) -> None:
    # Counts for a top-1 router: any non-negative vector with a positive sum is valid.
    if sum(raw) == 0:
        raw = [1, *raw[1:]]
    ident = ModelIdentity("x", 1, 8, 1, "0")
    prof = make_profile(ident, Source("synthetic", sum(raw)), {0: raw})
    p = expert_probs(prof)[0]
    d1, d2 = expected_distinct(p, batch), expected_distinct(p, batch + 1)
    assert 1 - 1e-9 <= d1 <= d2 + 1e-12 <= 8 + 1e-9
    # Uniform routing maximises distinct experts (concavity of 1-(1-p)^B).
    assert d1 <= expected_distinct(uniform_probs(8, 1), batch) + 1e-9
    assert d2 <= 8 - int((np.array(raw) == 0).sum()) + 1e-9


# --- validation --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("counts", "tokens", "needle"), [
    ({0: [-1] + [1] * 63}, None, "negative count"),
    ({0: [math.nan] + [1] * 63}, None, "NaN"),
    ({0: [math.inf] + [1] * 63}, None, "NaN or infinity"),
    ({0: [1] * 63}, None, "63 counts for a model with 64 experts"),
    ({7: [1] * 64}, None, "outside the model's 4 layers"),
    ({0: [1] * 64}, {0: 10}, "counts sum to 64 but 10 tokens x 4"),
    ({0: [40] + [0] * 63}, None, "chosen 40 times in 10 tokens"),
    ({0: [0] * 64}, None, "no routed tokens"),
    ({}, None, "no layer counts"),
])
def test_bad_counts_are_refused_in_one_line(counts: dict[int, list[float]], tokens: dict[int, float] | None,
                                            needle: str) -> None:
    with pytest.raises(ProfileError) as e:
        make_profile(IDENT, Source("synthetic", 1), counts, tokens)
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_profiles_are_immutable() -> None:
    prof = from_probs({0: uniform_probs(64, 4)}, 10)
    with pytest.raises(ValueError):
        prof.counts[0][0] = 5


# --- file format -------------------------------------------------------------------------------------------


def test_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    n = 8
    pairs = rng.integers(0, 50, (n, n)).astype(float)
    pairs = pairs + pairs.T
    np.fill_diagonal(pairs, 0)
    ident = ModelIdentity("qwen3moe", 2, n, 2, "abcd", "m")
    src = Source("live", 30, created="2026-01-01T00:00:00+00:00", engine="llama-cpp-python 0.3.36", prompts="p.txt",
                 prompts_sha256="0" * 64, prompt_count=3, generated_per_prompt=4, generated_tokens=12)
    prof = make_profile(ident, src, {0: [10, 20, 5, 5, 10, 0, 5, 5], 1: [30, 0, 0, 0, 0, 10, 10, 10]},
                        coactivation={0: pairs, 1: pairs})
    path = save_profile(prof, tmp_path / "sub" / "p.json")
    back = load_profile(path)
    assert back.model == prof.model
    assert back.source == prof.source
    assert back.layers == prof.layers
    for il in prof.layers:
        assert np.array_equal(back.counts[il], prof.counts[il])
        assert back.tokens[il] == prof.tokens[il] == 30
        assert back.coactivation is not None and np.array_equal(back.coactivation[il], pairs)
    data = json.loads(path.read_text())
    assert data["format"] == "moeplace-routing-profile" and data["format_version"] == 1
    assert data["layers"][0]["counts"] == [10, 20, 5, 5, 10, 0, 5, 5]  # integers stay integers
    assert len(path.read_text().splitlines()) < 40  # one line per layer: small and diffable


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "bad.json"
    p.write_text(text)
    return p


@pytest.fixture()
def good_text() -> str:
    return dumps(from_probs({0: uniform_probs(64, 4), 1: zipf(64, 4, 1.0)}, 1000))


@pytest.mark.parametrize(("edit", "needle"), [
    (lambda t: t[: len(t) // 2], "not valid JSON"),
    (lambda t: "", "empty"),
    (lambda t: "[1, 2]", "not an object"),
    (lambda t: t.replace("moeplace-routing-profile", "something-else"), "not a moeplace routing profile"),
    (lambda t: t.replace('"format_version": 1', '"format_version": 9'), "upgrade moeplace"),
    (lambda t: t.replace('"n_expert": 64', '"n_expert": "64"'), "wrong type"),
    (lambda t: t.replace('"fingerprint"', '"fingerprnt"'), "missing field 'model.fingerprint'"),
    (lambda t: re.sub(r'"counts":\[[0-9.]+', '"counts":[-62', t, count=1), "negative count"),
    (lambda t: re.sub(r'"counts":\[[0-9.]+', '"counts":[NaN', t, count=1), "NaN"),
    (lambda t: t.replace('"layer":1,', '"layer":0,'), "layer 0 appears twice"),
    (lambda t: t.replace('"layer":1,', '"layer":11,'), "outside the model's 4 layers"),
    # strict JSON, types checked field by field, limits before allocation (issue 14)
    (lambda t: re.sub(r'"counts":\[[0-9.]+', '"counts":[Infinity', t, count=1), "Infinity is not a JSON number"),
    (lambda t: re.sub(r'"counts":\[[0-9.]+', '"counts":[1' + "0" * 400, t, count=1), "not numbers"),
    (lambda t: t.replace('"n_expert": 64', '"n_expert": 20000'), "claims 20000 experts"),
    (lambda t: t.replace('"n_layer": 4', '"n_layer": 100000'), "llama.cpp loads at most"),
    (lambda t: t.replace('"kind": "synthetic"', '"kind": "synthetic", "prompt_count": "many"'),
     "field 'source.prompt_count' has the wrong type"),
    (lambda t: t.replace('"kind": "synthetic"', '"kind": "synthetic", "notes": [1, 2]'), "list of strings"),
    (lambda t: t.replace('"kind": "synthetic"', '"kind": "synthetic", "interrupted": 1'), "wrong type"),
    (lambda t: t.replace('"kind": "synthetic"', '"kind": "synthetic", "x": ' + "[" * 5000 + "]" * 5000),
     "nested too deeply"),
    (lambda t: t.replace('"name": ', '"name": 5, "nam": '), "field 'model.name' has the wrong type"),
])
def test_broken_files_are_refused_in_one_line(tmp_path: Path, good_text: str, edit, needle: str) -> None:
    text = edit(good_text)
    assert text != good_text
    with pytest.raises(ProfileError) as e:
        load_profile(_write(tmp_path, text))
    assert needle in str(e.value)
    assert "\n" not in str(e.value)
    assert str(tmp_path) in str(e.value)


def test_missing_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="no such profile file"):
        load_profile(tmp_path / "nope.json")
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00GGUF")
    with pytest.raises(ProfileError, match="binary"):
        load_profile(tmp_path / "bin.json")


# --- identity ----------------------------------------------------------------------------------------------


def test_profile_belongs_to_its_model_and_its_quantisations(models: dict[str, ModelDescription]) -> None:
    prof = profile_for(models["qwen"])
    check_profile(prof, models["qwen"])
    check_profile(prof, models["qwen-q8"])  # same network at another quantisation


@pytest.mark.parametrize(("other", "needle"), [
    ("deepseek", "architecture qwen3moe, but"),
    ("qwen-3layers", "with 2 layers, but qwen3moe-3l has 3"),
    ("qwen-16experts", "with 8 experts per layer, but qwen3moe-16e has 16"),
    ("qwen-wider", "a different network"),
])
def test_profile_for_another_model_is_refused(models: dict[str, ModelDescription], other: str, needle: str) -> None:
    prof = profile_for(models["qwen"])
    with pytest.raises(ProfileError) as e:
        check_profile(prof, models[other], origin="p.json")
    assert needle in str(e.value)
    assert "moeplace profile run" in str(e.value)
    assert "\n" not in str(e.value)


def test_profile_missing_a_moe_layer_is_refused(models: dict[str, ModelDescription]) -> None:
    full = profile_for(models["qwen"])
    partial = make_profile(full.model, full.source, {0: full.counts[0]})
    with pytest.raises(ProfileError, match="no counts for MoE layers 1"):
        check_profile(partial, models["qwen"])


# --- skew --------------------------------------------------------------------------------------------------


def test_uniform_routing_is_called_uniform() -> None:
    prof = from_probs({il: uniform_probs(64, 4) for il in range(4)}, 100_000)
    r = skew_report(prof)
    assert r.near_uniform
    assert "close to uniform" in r.verdict() and "cannot pay" in r.verdict()
    for s in r.layers:
        assert s.top25_share == pytest.approx(16 / 64)
        assert s.entropy == pytest.approx(1.0)
        assert s.dead == 0
        assert s.distinct == pytest.approx(r.uniform_distinct)


def test_skewed_routing_is_called_skewed() -> None:
    p = zipf(64, 4, 1.3)
    prof = from_probs({il: p for il in range(4)}, 100_000)
    r = skew_report(prof)
    assert not r.near_uniform
    assert "skewed in 4 of 4 layers" in r.verdict()
    s = r.layers[0]
    q = np.sort(p)[::-1] / 4
    assert s.top10_share == pytest.approx(q[:7].sum())  # 10% of 64 experts, rounded up
    assert s.top25_share == pytest.approx(q[:16].sum())
    assert 0 < s.entropy < 0.95
    assert r.n_top10 == 7 and r.n_top25 == 16


def test_dead_experts_are_counted() -> None:
    p = uniform_probs(64, 4) * 64 / 60
    p[:4] = 0
    r = skew_report(from_probs({0: p}, 1000))
    assert r.layers[0].dead == 4


def test_too_few_tokens_is_said_plainly() -> None:
    # Uniform routing observed over only 20 tokens: chance alone makes the hottest quarter look hot.
    ident = ModelIdentity("x", 2, 64, 4, "0")
    rng = np.random.default_rng(3)
    counts = {il: route(rng, np.ones(64), 4, 20) for il in range(2)}
    r = skew_report(make_profile(ident, Source("synthetic", 20), counts))
    assert all(s.top25_share > 0.3 for s in r.layers)  # looks skewed...
    assert r.near_uniform and "Too few tokens" in r.verdict()  # ...but is not


# --- merge -------------------------------------------------------------------------------------------------


def test_merge_pools_or_weighs(models: dict[str, ModelDescription]) -> None:
    a = profile_for(models["qwen"], seed=1, tokens=300)
    b = profile_for(models["qwen"], seed=2, tokens=100)
    pooled = merge_profiles([a, b])
    for il in a.layers:
        assert np.array_equal(pooled.counts[il], a.counts[il] + b.counts[il])
        assert pooled.tokens[il] == 400
    equal = merge_profiles([a, b], [1, 1])
    pa, pb, pe = expert_probs(a), expert_probs(b), expert_probs(equal)
    for il in a.layers:
        assert pe[il] == pytest.approx((pa[il] + pb[il]) / 2)
        assert equal.tokens[il] == 400
    only_b = merge_profiles([a, b], [0, 1])
    assert expert_probs(only_b)[0] == pytest.approx(pb[0])
    assert only_b.source.kind == "merge" and len(only_b.source.merged_from) == 2


def test_merge_refuses_other_models_and_bad_weights(models: dict[str, ModelDescription]) -> None:
    a = profile_for(models["qwen"])
    with pytest.raises(ProfileError, match="same model"):
        merge_profiles([a, profile_for(models["qwen-wider"])])
    with pytest.raises(ProfileError, match="one weight per profile"):
        merge_profiles([a, a], [1])
    with pytest.raises(ProfileError, match="non-negative"):
        merge_profiles([a, a], [1, -1])


# --- hot experts -------------------------------------------------------------------------------------------


def test_hot_experts_export() -> None:
    p = zipf(64, 4, 1.2)
    rng = np.random.default_rng(0)
    perm = [rng.permutation(64) for _ in range(2)]
    prof = from_probs({il: p[perm[il]] for il in range(2)}, 10_000)
    data = hot_experts(prof, cache=8)
    assert data["format"] == "moeplace-hot-experts" and data["cache_per_layer"] == 8
    for il, entry in zip(range(2), data["layers"]):
        c = prof.counts[il]
        assert entry["experts"] == [int(np.where(perm[il] == r)[0][0]) for r in range(8)]
        assert entry["shares"] == sorted(entry["shares"], reverse=True)
        assert entry["served"] == pytest.approx(np.sort(c)[::-1][:8].sum() / c.sum(), abs=1e-6)
    cov = coverage(prof)
    assert cov[0] == 0 and cov[-1] == pytest.approx(1)
    assert np.all(np.diff(cov) >= -1e-12)
    assert data["served"] == pytest.approx(cov[8], abs=1e-6)
    assert data["coverage"][7]["served"] == pytest.approx(cov[8], abs=1e-6)
    assert data["coverage"][7]["uniform"] == pytest.approx(8 / 64)
    assert len(hot_experts(prof)["layers"][0]["experts"]) == 64
    with pytest.raises(ProfileError, match=r"outside 1\.\.64"):
        hot_experts(prof, cache=65)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(min_value=0, max_value=2**40), min_size=6, max_size=6), min_size=1, max_size=4),
       st.floats(min_value=0.01, max_value=100))
def test_any_valid_profile_survives_the_file(tmp_path_factory: pytest.TempPathFactory, rows: list[list[int]],
                                             weight: float) -> None:
    ident = ModelIdentity("x", 4, 6, 1, "0")
    counts = {il: [c or 1 for c in row] for il, row in enumerate(rows)}
    prof = make_profile(ident, Source("synthetic", 1), counts)
    # A weighted merge makes non-integral counts: those must survive too.
    merged = merge_profiles([prof, prof], [1, weight])
    for p in (prof, merged):
        path = save_profile(p, tmp_path_factory.mktemp("rt") / "p.json")
        back = load_profile(path)
        for il in p.layers:
            assert np.array_equal(back.counts[il], p.counts[il])
            assert back.tokens[il] == p.tokens[il]


def test_a_profile_claiming_20000_experts_is_refused_before_allocating(tmp_path: Path, good_text: str) -> None:
    """The co-activation matrix of 20,000 experts is 3.2 GB of float64: the claim is checked first."""
    import time
    import tracemalloc

    doc = json.loads(good_text)
    doc["model"]["n_expert"] = 20_000
    doc["layers"][0]["coactivation_upper"] = [1, 2, 3]
    path = _write(tmp_path, json.dumps(doc))
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(ProfileError, match="claims 20000 experts"):
        load_profile(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert time.perf_counter() - t0 < 2.0
    assert peak < 64 << 20
