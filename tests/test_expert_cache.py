"""The expert cache (--moe-cache-mib): LRU hit rates from a routing trace (checked against a plain LRU
simulation) or from independent routing (checked against simulated independent traces), and the size chosen
against static placement, which depends on the link."""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from moeplace.cli import main
from moeplace.expert_cache import (
    CacheError,
    choose_cache,
    independent_hit_rates,
    lru_stack_distances,
    trace_hit_rates,
)
from moeplace.hardware import device_set, host_device, link_bandwidth, parse_gpus
from moeplace.memory import RunConfig
from moeplace.model import ModelDescription, load_model
from moeplace.planner import WORKLOADS
from moeplace.routing import ModelIdentity, Source, make_profile
from moeplace.routing_file import save_profile


def lru_hits(ids: np.ndarray, capacity: int) -> float:
    """A plain LRU cache of ``capacity`` experts run over the trace."""
    cache: OrderedDict[int, None] = OrderedDict()
    hits = 0
    flat = ids.ravel().tolist()
    for e in flat:
        if e in cache:
            hits += 1
            cache.move_to_end(e)
        else:
            cache[e] = None
            if len(cache) > capacity:
                cache.popitem(last=False)
    return hits / len(flat)


def test_stack_distances_by_hand() -> None:
    ids = np.array([[0, 1], [0, 2], [1, 0]])
    assert lru_stack_distances(ids).tolist() == [-1, -1, 1, -1, 2, 2]
    assert trace_hit_rates(ids, [1, 2, 3]).tolist() == pytest.approx([0, 1 / 6, 3 / 6])


@pytest.mark.parametrize("seed", range(4))
def test_trace_hit_rates_equal_an_lru_simulation(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, k = 32, 4
    p = rng.dirichlet(np.full(n, 0.3))
    ids = np.array([rng.choice(n, k, replace=False, p=p) for _ in range(300)])
    slots = [4, 8, 16, 31]
    assert trace_hit_rates(ids, slots).tolist() == pytest.approx([lru_hits(ids, c) for c in slots])


def test_independent_hit_rates_match_simulated_independent_routing() -> None:
    """Che's approximation against an LRU run over tokens drawn independently (skewed and uniform routing): within
    0.035, optimistic by up to that when the cache holds only two tokens' experts (a token's experts are distinct,
    which independent accesses ignore), within 0.02 from four tokens' worth."""
    rng = np.random.default_rng(7)
    n, k = 64, 4
    for weights in (rng.dirichlet(np.full(n, 0.5)), np.full(n, 1 / n)):
        ids = np.array([rng.choice(n, k, replace=False, p=weights) for _ in range(6000)])
        p = np.bincount(ids.ravel(), minlength=n) / len(ids)  # per-token selection probabilities, sum k
        for c, tol in ((8, 0.035), (16, 0.02), (32, 0.02)):
            assert independent_hit_rates(p, [c])[0] == pytest.approx(lru_hits(ids, c), abs=tol)
    uniform = np.full(n, k / n)
    assert independent_hit_rates(uniform, [16])[0] == pytest.approx(16 / n)  # no better than 16 static experts
    assert independent_hit_rates(uniform, [0, n])[:].tolist() == [0.0, 1.0]


def local_trace(model: ModelDescription, tokens: int = 600, working_set: int = 32, drift: float = 0.1,
                seed: int = 1) -> dict[int, np.ndarray]:
    """Routing with temporal locality: every layer picks each token's experts from a working set that drifts."""
    rng = np.random.default_rng(seed)
    n, k = model.hparams.n_expert, model.hparams.n_expert_used
    out = {}
    for layer in (x.index for x in model.layers if x.moe):
        ws = list(rng.choice(n, working_set, replace=False))
        rows = []
        for _ in range(tokens):
            if rng.random() < drift:
                ws[rng.integers(working_set)] = int(rng.integers(n))
            rows.append(rng.choice(list(dict.fromkeys(ws)), k, replace=False))
        out[layer] = np.array(rows)
    return out


def rtx3060(link: str) -> dict:
    g = parse_gpus(["rtx3060"])
    g = (replace(g[0], link_bandwidth=link_bandwidth(link)),)
    return device_set(g, host_device(64 << 30, "ddr5-6000x2", g))


def test_cache_size_depends_on_locality_and_the_link(model_path: Callable[[str], Path]) -> None:
    m = load_model(model_path("qwen3-30b-a3b"))
    trace = local_trace(m)
    cfg, wl = RunConfig(n_ctx=8192), WORKLOADS["chat"]
    fast = choose_cache(m, rtx3060("4.0x16"), cfg, workload=wl, margin=256 << 20, trace=trace)
    assert fast.best.mib > 0 and fast.best.hit_rate > 0.9
    none = next(o for o in fast.options if o.mib == 0)
    assert fast.best.decode_tps > none.decode_tps and fast.best.static_decode_tps < none.static_decode_tps
    assert "routing trace (600 tokens" in fast.method
    slow = choose_cache(m, rtx3060("3.0x4"), cfg, workload=wl, margin=256 << 20, trace=trace)
    assert slow.best.mib == 0  # every miss and every prompt copy crosses a quarter-width link
    blind = choose_cache(m, rtx3060("4.0x16"), cfg, workload=wl, margin=256 << 20, sizes=[0, 2048])
    assert blind.best.mib == 0 and "independence assumption" in blind.method
    with pytest.raises(CacheError, match="batch-1"):
        choose_cache(m, rtx3060("4.0x16"), cfg, workload=WORKLOADS["batch"], margin=256 << 20)


def test_solve_sizes_the_cache_from_a_profile_trace(model_path: Callable[[str], Path], tmp_path: Path) -> None:
    m = load_model(model_path("qwen3-30b-a3b"))
    trace = local_trace(m)
    counts = {layer: np.bincount(ids.ravel(), minlength=m.hparams.n_expert) for layer, ids in trace.items()}
    prof = make_profile(ModelIdentity.of(m), Source("synthetic", 600), counts, trace=trace)
    path = save_profile(prof, tmp_path / "local.json")
    base = ["solve", str(model_path("qwen3-30b-a3b")), "--gpu", "rtx3060", "--ram", "64G", "--ram-bw",
            "ddr5-6000x2", "-c", "8192", "-ub", "512", "-ctk", "f16", "-ctv", "f16", "--no-scripts",
            "--profile", str(path), "--moe-cache-mib", "auto"]
    r = CliRunner().invoke(main, [*base, "--json"])
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    argv = doc["llama_cpp"]["argv"]
    mib = int(argv[argv.index("--moe-cache-mib") + 1])
    assert mib == doc["expert_cache"]["mib"] > 0
    r = CliRunner().invoke(main, [*base, "--pcie", "3.0x1"])
    assert r.exit_code == 0, r.stderr
    command = r.stdout.split("command:\n")[1].splitlines()[0]
    assert "Expert cache (--moe-cache-mib" in r.stdout and "llama-server" in command
    assert "--moe-cache-mib" not in command  # behind a x1 Gen3 link no cache size pays (misses cross it)
    r = CliRunner().invoke(main, [*base[:-1], "lots"])
    assert r.exit_code == 2 and "--moe-cache-mib 'lots'" in r.stderr
