"""The interface every engine implements, and what an engine hands back.

A target answers the questions the planner and the emitters would otherwise hard-code for mainline llama.cpp:

* **granularity**: what it can place. ``TENSOR``: single tensors by name (``-ot``), so a layer's routed experts
  may leave its device; ``LAYERS``: only whole-layer counts (``num_gpu``, a GPU-offload slider), plus at most a
  count of layers whose experts stay on the CPU; ``EXPERT``: single experts of a layer (kt-kernel).
* **layer_order**: the layer layout its arguments can express. ``CONTIGUOUS_RUNS`` (llama.cpp and its forks): a
  prefix of host layers, then one contiguous run per GPU in device order. This is the structure the solver's
  dynamic programme is exact for; a target with another order needs another solver, and the planner refuses it
  rather than emit something the engine would not reproduce.
* **baselines**: the placements its own options give, scored beside the plan.
* **KV rules** (:meth:`Target.check`), **buffer names**, and **how it writes arguments and files**
  (:meth:`Target.emit`), for a given :class:`~moeplace.targets.builds.EngineBuild` (the flags a build has).

Adding an engine is one module with a ``TARGET`` object and one line in :mod:`moeplace.targets.registry`. A target
whose rules depend on the build (ik_llama.cpp's ``--n-cpu-moe``) also has ``for_build(build)``, returning itself
bound to that build; ``solve`` calls it when present.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from moeplace.errors import MoeplaceError
from moeplace.hardware import Device
from moeplace.memory import RunConfig
from moeplace.model import ModelDescription
from moeplace.placement import Placement

if TYPE_CHECKING:
    from moeplace.emit.args import RunSettings
    from moeplace.planner import Candidate, Plan
    from moeplace.targets.builds import EngineBuild


class TargetError(MoeplaceError):
    """A request the chosen engine cannot carry out: the message names the engine and what to change."""


class Granularity(enum.Enum):
    TENSOR = "tensor"
    LAYERS = "layers"
    EXPERT = "expert"


class LayerOrder(enum.Enum):
    CONTIGUOUS_RUNS = "a host prefix, then one contiguous run of layers per GPU in device order"


@dataclass(frozen=True)
class Baseline:
    """A placement the engine's own options give, with the options that give it."""

    name: str
    placement: Placement
    note: str = ""


@dataclass(frozen=True)
class BaselineContext:
    """What a target needs to propose baselines: the GPUs in the engine's order, llama.cpp's default split, and
    the memory model as functions of a placement (so targets never restate it)."""

    model: ModelDescription
    devices: Mapping[str, Device]
    gpus: tuple[str, ...]
    split: tuple[float, ...] | None
    memory: Callable[[Placement], dict[str, int]]
    fits: Callable[[Placement], bool]


@dataclass(frozen=True)
class Emission:
    """What an engine gets from a plan: the command to run, the files it reads (name -> text, or bytes for binary
    formats), the approximation it runs when it cannot express the plan exactly (None when it can), and
    engine-specific data for plan.json."""

    target: str
    command: str
    files: Mapping[str, str | bytes]
    approximation: Candidate | None = None
    notes: tuple[str, ...] = ()
    document: Mapping[str, Any] = field(default_factory=dict)
    argv: tuple[str, ...] = ()
    # files an earlier one of which may be replaced without moeplace's marker: the target read it and carries its
    # content over (a merged presets INI), or its format has no room for a marker (LM Studio's config)
    replaceable: tuple[str, ...] = ()


class Target(Protocol):
    """One engine. Implementations are module-level objects named ``TARGET``."""

    name: str
    granularity: Granularity
    layer_order: LayerOrder
    buffer_names: str  # the device names its placement arguments take, for messages
    binaries: tuple[str, ...]  # programs on PATH whose --help tells the build's flags (none: stated default only)
    # Takes llama.cpp's run flags (-ub/-b, -ctk/-ctv, -np/-kvu, --no-mmap, -t), so a solve chooses them with the
    # placement; other targets run the settings given.
    tunes_run_settings: bool
    expert_cache: bool  # has llama.cpp's expert cache (--moe-cache-mib)
    launch_scripts: bool  # written as moeplace's llama-server launch-script set (host, port, plan.json)

    def default_build(self) -> EngineBuild:
        """The build assumed when no binary is given (stated in the output)."""
        ...

    def check(self, model: ModelDescription, cfg: RunConfig, devices: Sequence[str]) -> None:
        """Raises :class:`TargetError` for settings the engine refuses (KV types, device counts)."""
        ...

    def baselines(self, ctx: BaselineContext) -> list[Baseline]:
        """The placements the engine's own options give on this hardware."""
        ...

    def emit(self, plan: Plan, settings: RunSettings, build: EngineBuild, out_dir: Path | None = None) -> Emission:
        """The command and files that run ``plan`` in this engine, verified against its rules. ``out_dir`` is where
        the files will be written, for targets that merge into a file already there."""
        ...
