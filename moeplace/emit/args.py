"""From a placement and run settings to the llama.cpp argument list (argv), verified.

The argument list is the same for ``llama-server`` and ``llama-cli``; the scripts add the program and, for the
server, ``--host``/``--port``. Choices, each for a reason:

* ``-ngl`` is a number: ``n_layer + 1`` when every layer slot is on a GPU (llama.cpp clamps anything larger to
  that, so it is the same as ``999`` but says what it means), else the count of offloaded slots.
* ``-ts`` (one integer per GPU: its slot count) whenever more than one GPU is declared, because without it
  llama.cpp splits by free memory at start-up. Declare every GPU llama.cpp sees, in its order.
* ``--rpc host:port,..`` for RPC devices, which llama.cpp only knows when told.
* ``-ot`` once per target device, its patterns comma-joined (``p1=CPU,p2=CPU``): one flag per device reads as
  "what goes where"; the patterns of different devices select disjoint tensors, and successive ``-ot`` flags
  append in order, so grouping cannot change llama.cpp's first-match result. The grouping is checked by the
  same verification as the patterns themselves.
* ``-c``, ``-ctk``/``-ctv``, ``-fa on|off``, ``-ub``, ``-b``, ``-np`` always, explicitly: the memory model's
  figures hold for these values only (llama-server's own ``-np`` default is automatic). ``-kvu``,
  ``--no-mmap`` and ``-t`` when the plan chose them.
* ``--fit off``: llama.cpp's ``--fit`` is on by default and, seeing ``-ngl``/``-ts``/``-ot``, gives up with a
  warning; turning it off says the plan is deliberate. Builds from before ``--fit`` existed reject the flag;
  ``RunSettings(fit_off=False)`` leaves it out for them, and so does a ``build`` whose help has no ``--fit``.
* Version awareness: given an :class:`~moeplace.targets.builds.EngineBuild`, optional flags the build lacks are
  left out and a flag the plan needs (``-ot``, ``-ts``) that it lacks is an error naming the flag.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from moeplace.errors import MoeplaceError
from moeplace.gguf_file import RemoteName
from moeplace.memory import CACHE_TYPES, RunConfig, cache_type_refusal
from moeplace.model import ModelDescription
from moeplace.placement import Placement
from moeplace.targets.builds import EngineBuild
from moeplace.targets.llamacpp_rules import MAINLINE, LayerRules, Override, parse_override_arg, rpc_endpoint
from moeplace.targets.patterns import Expression, express


class SettingsError(MoeplaceError):
    """Run settings llama.cpp would refuse or silently change."""


@dataclass(frozen=True)
class RunSettings:
    """Everything besides the placement that goes on llama.cpp's command line.

    ``devices`` are the GPU buffer names (``CUDA0``, ``RPC[host:port]``...) in llama.cpp's device order: RPC
    servers first, then local GPUs as ``--list-devices`` shows them."""

    model_path: str | os.PathLike[str]
    n_ctx: int
    devices: tuple[str, ...] = ()
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"
    flash_attn: bool = True
    n_ubatch: int = 512
    n_batch: int = 2048
    n_parallel: int = 1
    kv_offload: bool = True
    kv_unified: bool = False
    no_mmap: bool = False
    threads: int | None = None  # -t; None leaves llama.cpp's default (its count of physical cores)
    fit_off: bool = True
    extra_args: tuple[str, ...] = ()

    @classmethod
    def of(cls, cfg: RunConfig, model_path: str | os.PathLike[str], n_ctx: int, devices: Sequence[str],
           threads: int | None = None, extra_args: Sequence[str] = ()) -> RunSettings:
        """The command-line settings that launch run configuration ``cfg`` (what solve and choose write)."""
        return cls(model_path=model_path, n_ctx=n_ctx, devices=tuple(devices), cache_type_k=cfg.type_k,
                   cache_type_v=cfg.type_v, flash_attn=cfg.flash_attn, n_ubatch=cfg.n_ubatch, n_batch=cfg.n_batch,
                   n_parallel=cfg.n_seq_max, kv_offload=not cfg.no_kv_offload, kv_unified=cfg.kv_unified,
                   no_mmap=cfg.no_mmap, threads=threads, extra_args=tuple(extra_args))

    def check(self) -> RunSettings:
        """Raises :class:`SettingsError` for values llama.cpp would refuse or change behind our back."""
        for flag, ctype in (("-ctk", self.cache_type_k), ("-ctv", self.cache_type_v)):
            if ctype not in CACHE_TYPES:
                raise SettingsError(f"{flag} {ctype}: llama.cpp accepts {', '.join(CACHE_TYPES)}")
        if self.n_ctx < 1:
            raise SettingsError(f"context {self.n_ctx}: give a positive number of tokens")
        if self.n_ubatch < 1 or self.n_batch < 1:
            raise SettingsError("-ub and -b must be at least 1")
        if self.n_ubatch > self.n_batch:
            raise SettingsError(f"-ub {self.n_ubatch} exceeds -b {self.n_batch}: llama.cpp would lower -ub to "
                                f"{self.n_batch}; raise -b or lower -ub")
        if self.n_parallel < 1:
            raise SettingsError(f"-np {self.n_parallel}: give at least 1 parallel sequence")
        if self.threads is not None and self.threads < 1:
            raise SettingsError(f"-t {self.threads}: give at least 1 thread")
        check_text(os.fspath(self.model_path), "model path")
        for a in self.extra_args:
            check_text(a, "extra argument")
        return self


def check_text(text: str, what: str = "argument") -> str:
    """Text that can be an argv element and be written into a UTF-8 script (the one copy of this check: the
    script writers ask it for every word they write)."""
    if "\0" in text:
        raise SettingsError(f"{what} {text!r} contains a NUL character, which no command line can carry")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise SettingsError(f"{what} {text!r} is not valid UTF-8 (undecodable bytes in a file name?): "
                            "rename the file") from None
    return text


@dataclass(frozen=True)
class LlamaArgs:
    """A verified llama.cpp argument list (without the program name) and how it was derived."""

    argv: tuple[str, ...]
    expression: Expression
    settings: RunSettings

    def command(self, program: str = "llama-server") -> list[str]:
        """The full argv: the program, then the arguments."""
        return [program, *self.argv]

    def shell_line(self, program: str = "llama-server") -> str:
        """The command as one POSIX-shell line, every element quoted so it stays a literal."""
        return shlex.join(self.command(program))

    def override_groups(self) -> list[tuple[str, tuple[str, ...]]]:
        """``(buffer, patterns)`` per ``-ot`` flag, in argument order."""
        return _groups(self.expression.overrides)


def _groups(overrides: Sequence[Override]) -> list[tuple[str, tuple[str, ...]]]:
    groups: dict[str, list[str]] = {}
    for o in overrides:
        groups.setdefault(o.buffer, []).append(o.pattern)
    return [(b, tuple(ps)) for b, ps in groups.items()]


# Flags without which the plan changes meaning; the others are left out where a build lacks them.
_REQUIRED = frozenset({"-m", "-c", "-ngl", "-ts", "-ot", "--rpc", "-ctk", "-ctv", "-nkvo", "-kvu"})


def build_args(model: ModelDescription, placement: Placement, settings: RunSettings,
               build: EngineBuild | None = None, rules: LayerRules = MAINLINE,
               engine_args: tuple[str, ...] = ()) -> LlamaArgs:
    """The llama.cpp arguments that run ``model`` with ``placement`` and ``settings``. The layer and tensor part
    is verified (see :func:`moeplace.targets.patterns.express`) under ``rules`` (mainline llama.cpp's, or a
    fork's): a plan the arguments would not reproduce exactly is refused with an error, never emitted.
    ``engine_args`` (an engine's own flags with their values) go before the user's extra arguments; with a
    ``build``, only flags it lists are written."""
    settings.check()
    refusal = cache_type_refusal(model, settings.cache_type_k, settings.cache_type_v, settings.flash_attn)
    if refusal:
        raise SettingsError(refusal)
    expr = express(model, placement, settings.devices, rules)
    # A remote model is fetched by llama.cpp itself (-mu URL, or -hf repo -hff file), every shard with it.
    source = settings.model_path
    model_flags = list(source.llama_args) if isinstance(source, RemoteName) else ["-m", os.fspath(source)]
    argv: list[str] = [*model_flags, "-c", str(settings.n_ctx), "-ngl", str(expr.ngl)]
    if len(expr.devices) > 1 and expr.ngl > 0:
        assert expr.tensor_split is not None
        argv += ["-ts", ",".join(str(n) for n in expr.tensor_split)]
    endpoints = list(dict.fromkeys(e for d in expr.devices if (e := rpc_endpoint(d)) is not None))
    if endpoints:
        argv += ["--rpc", ",".join(endpoints)]
    for buffer, patterns in _groups(expr.overrides):
        argv += ["-ot", ",".join(f"{p}={buffer}" for p in patterns)]
    argv += ["-ctk", settings.cache_type_k, "-ctv", settings.cache_type_v,
             "-fa", "on" if settings.flash_attn else "off",
             "-ub", str(settings.n_ubatch), "-b", str(settings.n_batch), "-np", str(settings.n_parallel)]
    if settings.kv_unified:
        argv.append("-kvu")
    if not settings.kv_offload:
        argv.append("-nkvo")
    if settings.no_mmap:
        # Builds that replaced --no-mmap by --load-mode (e.g. 0c1e570, llama-cpp-python 0.3.36's) read the model
        # into buffers with "none" ("no special loading mode", i.e. neither mmap nor mlock).
        lm = build is not None and not build.has("--no-mmap") and build.has("--load-mode")
        argv += ["--load-mode", "none"] if lm else ["--no-mmap"]
    if settings.threads is not None:
        argv += ["-t", str(settings.threads)]
    if settings.fit_off:
        argv += ["--fit", "off"]
    argv += list(engine_args)
    if build is not None:
        argv = _for_build(argv, build)
    argv += list(settings.extra_args)
    return LlamaArgs(tuple(argv), expr, settings)


def _for_build(argv: list[str], build: EngineBuild) -> list[str]:
    """Drops optional flags ``build`` lacks (with their value); raises for a required one. Every flag written
    here takes one value except the switches in ``_NO_VALUE_FLAGS``."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        flag = argv[i]
        n = 1 if flag in _NO_VALUE_FLAGS else 2
        if build.has(flag):
            out += argv[i:i + n]
        elif flag in _REQUIRED:
            raise SettingsError(f"{build.describe()} has no {flag}, which this plan needs: use a newer build "
                                "(--engine-bin PATH)")
        i += n
    return out


_NO_VALUE_FLAGS = frozenset({"-nkvo", "--no-kv-offload", "-cmoe", "--cpu-moe", "-rtr", "-fmoe", "--no-mmap",
                             "-kvu", "--kv-unified", "--mlock"})


def parse_ot_args(argv: Sequence[str]) -> tuple[Override, ...]:
    """The overrides an argument list (without the program) gives llama.cpp, in order: every
    ``-ot``/``--override-tensor`` value split the way llama.cpp splits it. Every flag but the switches moeplace
    emits (``-nkvo``) is taken to have one value, as all flags moeplace emits do."""
    out: list[Override] = []
    i = 0
    while i < len(argv):
        flag = argv[i]
        if flag in _NO_VALUE_FLAGS:
            i += 1
            continue
        if flag in ("-ot", "--override-tensor") and i + 1 < len(argv):
            out.extend(parse_override_arg(argv[i + 1]))
        i += 2
    return tuple(out)
