"""The real llama.cpp as an oracle for moeplace.llamacpp's matching rules.

Loads factory models through llama-cpp-python's C API with ``no_alloc`` (nothing is read or allocated) and the
override list in ``llama_model_params.tensor_buft_overrides``, and reads llama.cpp's own log lines:

    tensor blk.0.ffn_gate_exps.weight (0 MiB mxfp4) buffer type overridden to CPU_REPACK
    load_tensors: layer   0 assigned to device CPU, is_swa = 1

The build here is CPU-only, so every override targets the CPU buffer type and what is compared is *which
tensors each pattern selects* under ECMAScript ``std::regex_search`` versus moeplace's Python ``re.search``, and
the number of layer slots. Skipped where llama_cpp is not importable (run it with the interpreter that has it,
e.g. ``/tmp/llbuild/bin/python -m pytest tests/test_llamacpp_oracle.py``). The loading and log parsing are
moeplace.oracle.s (:func:`moeplace.oracle.tensor_buffers`)."""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from moeplace import llamacpp as L
from moeplace.model import ModelDescription, Role, load_model
from moeplace.oracle import tensor_buffers
from moeplace.placement import HOST, Placement
from moeplace.testing import TINY

pytestmark = pytest.mark.llama

_HOST_BUFFERS = re.compile(r"^(CPU\w*|\w+_Host)$")  # CPU, CPU_REPACK (extra buffer types), CUDA_Host...


class Oracle:
    """Loads a model with given overrides (every pattern to the CPU buffer type) through moeplace.oracle and
    reports what llama.cpp logged."""

    def load(self, path: Path, patterns: Sequence[str], ngl: int = 0) -> tuple[dict[str, str], list[int]]:
        """``({tensor: buffer llama.cpp logged}, [layer slot indices])`` for a no_alloc load."""
        got = tensor_buffers(path, [L.Override(p, HOST) for p in patterns], n_gpu_layers=ngl)
        return dict(got.overridden), [i for i, _ in got.slots]


@pytest.fixture(scope="module")
def oracle() -> Oracle:
    return Oracle()


@pytest.fixture(scope="module")
def paths(model_path: Callable[[str], Path]) -> dict[str, Path]:
    return {n: model_path(n) for n in (*TINY, "deepseek-v3", "glm-4.5-air")}


def python_matches(m: ModelDescription, pattern: str) -> set[str]:
    rx = re.compile(pattern, re.ASCII)
    return {t.name for t in m.tensors if t.loaded and rx.search(t.name)}


def check_each(oracle: Oracle, path: Path, m: ModelDescription, patterns: Sequence[str]) -> None:
    for p in patterns:
        got, _ = oracle.load(path, [p])
        assert set(got) == python_matches(m, p), p
        assert all(_HOST_BUFFERS.match(b) for b in got.values())


def random_plan(m: ModelDescription, rng: random.Random) -> tuple[Placement, list[str]]:
    devices = ["CUDA0", "CUDA1"][: rng.randint(1, 2)]
    n_slots = m.hparams.n_layer + 1
    ngl = rng.randint(0, n_slots)
    split = [rng.randint(0, 3) + 1 for _ in devices] if len(devices) > 1 else None
    base = L.apply(m, ngl, split, (), devices)
    names = [t.name for t in m.tensors if t.loaded]
    experts = [t.name for t in m.tensors if t.loaded and t.role is Role.ROUTED_EXPERT]
    moved = {n: rng.choice([HOST, *devices]) for n in rng.sample(experts, rng.randint(0, len(experts)))}
    moved |= {n: rng.choice([HOST, *devices]) for n in rng.sample(names, 2)}
    return Placement(base.layer_devices, base.output_device, {**base.tensor_devices, **moved}), devices


@pytest.mark.parametrize("name", TINY)
def test_layer_slots_are_blocks_plus_output(oracle: Oracle, paths: dict[str, Path], name: str) -> None:
    m = load_model(paths[name])
    _, slots = oracle.load(paths[name], [], ngl=-1)
    assert slots == list(range(m.hparams.n_layer + 1))  # NextN blocks included (n_layer_all), then the output


@pytest.mark.parametrize("name", TINY)
def test_cpu_moe_patterns_select_what_llama_cpp_selects(oracle: Oracle, paths: dict[str, Path], name: str) -> None:
    m = load_model(paths[name])
    check_each(oracle, paths[name], m, [L.cpu_moe_pattern().pattern])
    got, _ = oracle.load(paths[name], [o.pattern for o in L.cpu_moe_patterns(m.hparams.n_layer)])
    assert set(got) == {t.name for t in m.tensors if t.loaded and t.role is Role.ROUTED_EXPERT}


@pytest.mark.parametrize("name", TINY)
def test_fit_overflow_patterns_select_what_llama_cpp_selects(oracle: Oracle, paths: dict[str, Path],
                                                             name: str) -> None:
    m = load_model(paths[name])
    check_each(oracle, paths[name], m, [L.fit_overflow_pattern(1, f) for f in L.LayerFraction if f])


@pytest.mark.parametrize("name", TINY)
def test_emitted_patterns_select_what_llama_cpp_selects(oracle: Oracle, paths: dict[str, Path], name: str) -> None:
    m = load_model(paths[name])
    rng = random.Random(f"oracle-{name}")
    n_patterns = 0
    for _ in range(6):
        plan, devices = random_plan(m, rng)
        e = L.express(m, plan, devices)
        check_each(oracle, paths[name], m, [o.pattern for o in e.overrides])
        got, _ = oracle.load(paths[name], [o.pattern for o in e.overrides])
        assert set(got) == set().union(*(python_matches(m, o.pattern) for o in e.overrides))
        n_patterns += len(e.overrides)
    assert n_patterns > 0


@pytest.mark.parametrize("name", ["deepseek-v3", "glm-4.5-air"])
def test_emitted_patterns_on_full_scale_models(oracle: Oracle, paths: dict[str, Path], name: str) -> None:
    m = load_model(paths[name])
    rng = random.Random(f"oracle-{name}")
    base = L.apply(m, -1, None, (), ["CUDA0"])
    ranged = {t.name: HOST for t in m.tensors if t.loaded and t.role is Role.ROUTED_EXPERT and 7 <= t.block <= 31}
    plans = [(Placement(base.layer_devices, base.output_device, {**base.tensor_devices, **ranged}), ["CUDA0"]),
             random_plan(m, rng)]
    for plan, devices in plans:
        patterns = [o.pattern for o in L.express(m, plan, devices).overrides]
        got, _ = oracle.load(paths[name], patterns)
        assert set(got) == set().union(*(python_matches(m, p) for p in patterns))
    got, _ = oracle.load(paths[name], [o.pattern for o in L.cpu_moe_patterns(5)])  # literal block numbers
    assert set(got) == {t.name for t in m.tensors if t.loaded and t.role is Role.ROUTED_EXPERT and t.block < 5}
