"""Version awareness: flags read from a build's --help decide what is written."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import pytest

from moeplace.emit.args import RunSettings, SettingsError, build_args
from moeplace.model import load_model
from moeplace.placement import all_on
from moeplace.targets.builds import BuildError, EngineBuild, help_flags, read_build
from moeplace.targets.llamacpp_baselines import n_cpu_moe_placement
from moeplace.targets.registry import TARGETS, get_target


def stored_help(name: str) -> str:
    return resources.files("moeplace").joinpath("data").joinpath("help").joinpath(name).read_text()


def test_flags_come_from_the_option_column_only() -> None:
    text = ("-fit,  --fit [on|off]                   whether to adjust unset arguments (--foo in prose)\n"
            "-ctk,  --cache-type-k TYPE          KV cache data type for K\n"
            "       --version                    show version\n")
    assert help_flags(text) == {"-fit", "--fit", "-ctk", "--cache-type-k", "--version"}


def test_the_stored_llama_cpp_help_is_that_builds() -> None:
    b = get_target("llama.cpp").default_build()
    assert "0c1e570" in b.version
    for flag in ("-ot", "-ngl", "-ts", "--fit", "--n-cpu-moe", "--n-cpu-ffn", "--load-mode", "--models-preset"):
        assert b.has(flag), flag
    assert not b.has("--moe-cache-mib")  # newer than this build


def _fake_binary(tmp_path: Path, help_text: str, version: str) -> Path:
    (tmp_path / "help.txt").write_text(help_text)
    exe = tmp_path / "llama-server"
    exe.write_text(f'#!/bin/sh\nif [ "$1" = --version ]; then echo "{version}" >&2; exit 0; fi\n'
                   f'cat "{tmp_path / "help.txt"}"\n')
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return exe


def test_a_binary_is_asked(tmp_path: Path) -> None:
    text = "\n".join(x for x in stored_help("llama-server-0c1e570.txt").splitlines() if not x.startswith("# "))
    old = "\n".join(x for x in text.splitlines() if "--fit" not in x and "-fit" not in x)
    b = read_build("llama.cpp", _fake_binary(tmp_path, old, "version: 4000 (abcdef0)"))
    assert b.version == "version: 4000 (abcdef0)" and not b.has("--fit") and b.has("-ot")
    assert b.source == f"binary {tmp_path / 'llama-server'}"


def test_not_executable_is_an_error(tmp_path: Path) -> None:
    p = tmp_path / "x"
    p.write_text("")
    with pytest.raises(BuildError, match="not an executable"):
        read_build("llama.cpp", p)
    p.write_text("#!/bin/sh\necho usage: nothing here\n")
    os.chmod(p, 0o755)
    with pytest.raises(BuildError, match="lists no options"):
        read_build("llama.cpp", p)


def test_fit_off_only_where_fit_exists(model_path: Callable[[str], Path]) -> None:
    m = load_model(model_path("qwen3-30b-a3b"))
    p = n_cpu_moe_placement(m, 10, ["CUDA0"])
    s = RunSettings(model_path=m.paths[0], n_ctx=4096, devices=("CUDA0",))
    full = get_target("llama.cpp").default_build()
    assert "--fit" in build_args(m, p, s, full).argv
    no_fit = EngineBuild("llama.cpp", "old", full.flags - {"--fit", "-fit"}, "test")
    argv = build_args(m, p, s, no_fit).argv
    assert "--fit" not in argv and "off" not in argv and "-ot" in argv
    no_ot = EngineBuild("llama.cpp", "older", full.flags - {"-ot", "--override-tensor"}, "test")
    with pytest.raises(SettingsError, match="has no -ot"):
        build_args(m, p, s, no_ot)
    assert "-ot" not in build_args(m, all_on(m, "CUDA0"), s, no_ot).argv  # nothing to override: fine


def test_every_registered_target_loads() -> None:
    for name in TARGETS:
        t = get_target(name)
        assert t.name == name
        assert t.default_build().flags
