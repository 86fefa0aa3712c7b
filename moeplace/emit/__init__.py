"""Emitters: a plan as llama.cpp arguments (:mod:`moeplace.emit.args`) and as launch scripts, a llama-swap entry
and JSON (:mod:`moeplace.emit.scripts`). Every emitted placement is verified against llama.cpp's rules first."""

from moeplace.emit.args import LlamaArgs, RunSettings, SettingsError, build_args

__all__ = ["LlamaArgs", "RunSettings", "SettingsError", "build_args"]
