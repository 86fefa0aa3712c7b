"""Shared fixtures: factory models are written once per test session and shared by every test module.

Tests marked ``vulkan`` need the second llama.cpp build (Vulkan, in its own virtualenv, built by
.ci/llama-cpp-vulkan.sh) and a Vulkan device; where either is missing they skip with the one reason
moeplace.oracle.gpubuild gives."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from moeplace.testing import write_model


@pytest.fixture(scope="session")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``model_path(name)`` writes the factory model ``name`` on first use and returns its (first) file."""
    root = tmp_path_factory.mktemp("models")
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            cache[name] = write_model(name, root / f"{name}.gguf")[0]
        return cache[name]

    return get


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    marked = [item for item in items if item.get_closest_marker("vulkan")]
    if not marked:
        return
    from moeplace.oracle import gpubuild

    reason = gpubuild.unavailable_reason()
    if reason:
        skip = pytest.mark.skip(reason=f"Vulkan oracle: {reason}")
        for item in marked:
            item.add_marker(skip)
