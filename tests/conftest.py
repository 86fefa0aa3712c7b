"""Shared fixtures: factory models are written once per test session and shared by every test module."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from moeplace import engine
from moeplace.testing import write_model


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The one skip rule for tests that need a real llama.cpp: mark them ``@pytest.mark.llama`` (or a module
    ``pytestmark``) and nothing else; where llama-cpp-python cannot be imported they are skipped with the engine's
    own one-line reason, which names the fix."""
    marked = [item for item in items if item.get_closest_marker("llama")]
    reason = engine.unavailable_reason() if marked else None
    if reason is None:
        return
    skip = pytest.mark.skip(reason=f"needs llama.cpp: {reason}")
    for item in marked:
        item.add_marker(skip)


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
