"""Shared fixtures: factory models are written once per test session and shared by every test module.

Tests marked ``vulkan`` need the second llama.cpp build (Vulkan, in its own virtualenv, built by
.ci/llama-cpp-vulkan.sh) and a Vulkan device; where either is missing they skip with the one reason
moeplace.oracle.gpubuild gives."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from moeplace import oracle
from moeplace.oracle import gpubuild
from moeplace.testing import write_model


def pytest_configure(config: pytest.Config) -> None:
    """Ctrl-C as a terminal delivers it, however the test run was started: a shell that starts a command in the
    background without job control (``cmd &`` in a script, some CI runners) starts it with SIGINT ignored, which
    Python and every child process then inherit, so the interrupt tests would wait for a signal nothing receives.
    A handler installed here is reset to the default by exec, so the children of the tests get Ctrl-C too."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The one skip rule for tests that need a real llama.cpp: mark them ``@pytest.mark.llama`` (or a module
    ``pytestmark``) and nothing else; where llama-cpp-python cannot be imported they are skipped with the oracle's
    own one-line reason, which names the fix. ``@pytest.mark.vulkan`` likewise for the second (GPU) build."""
    for marker, what, why in (("llama", "needs llama.cpp", oracle.unavailable_reason),
                              ("vulkan", "Vulkan oracle", gpubuild.unavailable_reason)):
        marked = [item for item in items if item.get_closest_marker(marker)]
        reason = why() if marked else None
        if reason is None:
            continue
        skip = pytest.mark.skip(reason=f"{what}: {reason}")
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

