"""llama-server's router mode as a target: one section per planned model in a presets INI file
(``llama-server --models-preset FILE.ini``), merged into an existing file without touching its other sections.

The format, read from ``common/preset.cpp`` (``parse_ini_from_file``, ``load_from_ini``) of the llama.cpp that
llama-cpp-python 0.3.36 vendors (ggml-org/llama.cpp@0c1e57098):

* ``[name]`` starts a section (``name`` is anything but ``]``; a ``:tag`` suffix is canonicalised, so moeplace's
  names carry no ``:``); ``key = value`` lines; ``;`` or ``#`` starts a comment anywhere, also inside a value, so
  a value cannot contain them; lines before any section belong to ``default``; ``[*]`` is the global section.
* A key is any of an option's names without its leading dashes (``n-gpu-layers``, ``ngl``) or its
  ``LLAMA_ARG_*`` environment name; a negated switch's name reverses a truthy value (``no-kv-offload = true``).
* Every section is a model the router can load; the section's options become that model's command line.

The arguments are the llama.cpp target's (verified with mainline rules); only their spelling changes. A key
holds one value, so every ``-ot`` item goes into one comma-separated ``override-tensor`` value, which llama.cpp
splits exactly like repeated flags, in the same order.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from moeplace.memory import RunConfig
from moeplace.model import ModelDescription
from moeplace.targets.base import Baseline, BaselineContext, Emission, Granularity, LayerOrder, TargetError
from moeplace.targets.builds import EngineBuild
from moeplace.targets.llamacpp import TARGET as LLAMACPP
from moeplace.targets.llamacpp_rules import BUFFER_FORMS

if TYPE_CHECKING:
    from moeplace.emit.args import LlamaArgs, RunSettings
    from moeplace.planner import Plan

FILE_NAME = "models-preset.ini"
# llama.cpp's long option names (common/arg.cpp) for the flags moeplace writes.
_KEYS = {"-m": "model", "-c": "ctx-size", "-ngl": "n-gpu-layers", "-ts": "tensor-split", "--rpc": "rpc",
         "-ot": "override-tensor", "-ctk": "cache-type-k", "-ctv": "cache-type-v", "-fa": "flash-attn",
         "-ub": "ubatch-size", "-b": "batch-size", "-np": "parallel", "--fit": "fit", "-t": "threads",
         "--load-mode": "load-mode"}
_SWITCHES = {"-nkvo": ("no-kv-offload", "true"), "-kvu": ("kv-unified", "true"), "--no-mmap": ("no-mmap", "true")}
_HEADER = re.compile(r"^[ \t]*\[[ \t]*([^\]]*?)[ \t]*\][ \t]*(?:[;#].*)?$")
_SECTION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")


def _value(key: str, text: str) -> str:
    if any(c in text for c in ";#\r\n") or text != text.strip() or not text:
        raise TargetError(f"preset value for '{key}' ({text!r}) has ';', '#', a line break or edge spaces, which "
                          "llama.cpp's INI reader cuts off: rename the file or folder")
    return text


def section_lines(name: str, argv: Sequence[str]) -> list[str]:
    """``[name]`` and one ``key = value`` line per flag of ``argv`` (``-ot`` values joined with commas)."""
    if not _SECTION_NAME.fullmatch(name):
        raise TargetError(f"preset name {name!r}: use letters, digits and . _ + - (no ':' or ']')")
    pairs: dict[str, list[str]] = {}
    i = 0
    while i < len(argv):
        flag = argv[i]
        if flag in _SWITCHES:
            key, val = _SWITCHES[flag]
            pairs.setdefault(key, []).append(val)
            i += 1
            continue
        if flag not in _KEYS or i + 1 >= len(argv):
            raise TargetError(f"argument {flag!r} has no preset key here: remove it from the extra arguments")
        pairs.setdefault(_KEYS[flag], []).append(argv[i + 1])
        i += 2
    lines = [f"[{name}]"]
    for key, values in pairs.items():
        if len(values) > 1 and key != "override-tensor":
            raise TargetError(f"'{key}' given twice; a preset holds one value per option")
        lines.append(f"{key} = {_value(key, ','.join(values))}")
    return lines


def parse_sections(text: str) -> list[tuple[str | None, list[str]]]:
    """The file's lines grouped by section as llama.cpp reads them: ``(name, lines)``, the first group with
    name None holding whatever precedes the first header (the ``default`` section and comments)."""
    groups: list[tuple[str | None, list[str]]] = [(None, [])]
    for line in text.splitlines():
        m = _HEADER.match(line)
        if m:
            groups.append((m.group(1), [line]))
        else:
            groups[-1][1].append(line)
    return groups


def merge(existing: str, name: str, lines: Sequence[str]) -> str:
    """``existing`` with section ``name`` replaced by ``lines`` (or appended), every other line kept as it was.
    Blank lines and comments after a replaced section's last option stay with it only if they were inside it."""
    groups = parse_sections(existing)
    out: list[str] = []
    replaced = False
    for sec, body in groups:
        if sec == name:
            if replaced:
                continue  # a duplicate of our section: llama.cpp would merge them; we keep one
            trailing = []
            while body and (not body[-1].strip() or body[-1].lstrip().startswith((";", "#"))):
                trailing.insert(0, body.pop())
            out += [*lines, *trailing]
            replaced = True
        else:
            out += body
    if not replaced:
        if out and out[-1].strip():
            out.append("")
        out += lines
    return "\n".join(out).lstrip("\n") + "\n"


class LlamaServerPreset:
    name = "llama-server-preset"
    granularity = Granularity.TENSOR
    layer_order = LayerOrder.CONTIGUOUS_RUNS
    buffer_names = BUFFER_FORMS
    binaries = ("llama-server",)
    tunes_run_settings = False
    expert_cache = False
    launch_scripts = False

    def default_build(self) -> EngineBuild:
        return LLAMACPP.default_build()

    def check(self, model: ModelDescription, cfg: RunConfig, devices: Sequence[str]) -> None:
        pass

    def baselines(self, ctx: BaselineContext) -> list[Baseline]:
        return LLAMACPP.baselines(ctx)

    def section(self, plan: Plan, args: LlamaArgs) -> tuple[str, list[str]]:
        from moeplace.emit.scripts import model_id_for

        name = model_id_for(plan.model).replace(":", "-")
        return name, section_lines(name, args.argv)

    def emit(self, plan: Plan, settings: RunSettings, build: EngineBuild, out_dir: Path | None = None) -> Emission:
        """The plan's section merged into ``out_dir/models-preset.ini`` if that file exists."""
        from dataclasses import replace

        from moeplace.emit.args import build_args

        if not build.has("--models-preset"):
            raise TargetError(f"{build.describe()} has no --models-preset (router mode): use a newer llama-server")
        model_path = os.path.abspath(os.fspath(settings.model_path))
        args = build_args(plan.model, plan.placement, replace(settings, model_path=model_path), build)
        name, lines = self.section(plan, args)
        path = Path(out_dir or ".") / FILE_NAME
        try:
            existing = path.read_text(encoding="utf-8") if path.is_file() else ""
        except (OSError, UnicodeDecodeError) as e:
            raise TargetError(f"{path}: cannot read the existing presets ({e}); fix or move it") from None
        text = merge(existing, name, lines)
        command = shlex.join(["llama-server", "--models-preset", os.path.abspath(path)])
        return Emission(self.name, command, {FILE_NAME: text}, document={"section": name, "build": build.describe()},
                        notes=(f"section [{name}] in {FILE_NAME}; other sections are kept as they were",),
                        replaceable=(FILE_NAME,))


TARGET = LlamaServerPreset()
