"""Shared fixtures: factory models are written once per test session and shared by every test module."""

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
