"""The engines ``solve --target`` knows. Adding one: a module with a ``TARGET`` object implementing
:class:`moeplace.targets.base.Target`, and one line here."""

from __future__ import annotations

from importlib import import_module

from moeplace.targets.base import Target, TargetError

# name -> module under moeplace.targets
TARGETS = {
    "llama.cpp": "llamacpp",
    "ik_llama.cpp": "ik_llama",
    "llama-server-preset": "llama_server_preset",
    "lmstudio": "lmstudio",
    "ollama": "ollama",
    "ktransformers": "ktransformers",
}


def get_target(name: str) -> Target:
    """The target called ``name`` (imported on first use, so one engine's module never slows another's runs)."""
    if name not in TARGETS:
        raise TargetError(f"unknown target '{name}': use one of {', '.join(TARGETS)}")
    return import_module(f"moeplace.targets.{TARGETS[name]}").TARGET
