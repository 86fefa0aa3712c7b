"""The files of llama-server-preset, LM Studio and Ollama: each parses with its consumer's format and replays to
the placement it stands for under llama.cpp's rules; presets merge without touching other sections."""

from __future__ import annotations

import configparser
import json
import math
import shlex
from collections.abc import Callable
from pathlib import Path

import pytest

from moeplace.cli.options import devices_from
from moeplace.emit.args import RunSettings, parse_ot_args
from moeplace.memory import RunConfig
from moeplace.model import load_model
from moeplace.planner import plan
from moeplace.targets import llama_server_preset as P
from moeplace.targets.base import TargetError
from moeplace.targets.layer_count import exact_ratio, placement_of
from moeplace.targets.llamacpp_rules import apply
from moeplace.targets.lmstudio import CONFIG_NAME, config_counts
from moeplace.targets.ollama import MODELFILE
from moeplace.targets.registry import get_target


@pytest.fixture(scope="module")
def qwen_plan(model_path: Callable[[str], Path]):
    m = load_model(model_path("qwen3-30b-a3b"))
    return plan(m, devices_from(("12G",), None, 32 << 30, "ddr5-6000x2"), RunConfig(n_ctx=16384))


def _settings(p) -> RunSettings:
    return RunSettings(model_path=p.model.paths[0], n_ctx=p.cfg.n_ctx, devices=("CUDA0",))


# --- llama-server presets ------------------------------------------------------------------------------------

OTHER = "[*]\nparallel = 2\n\n; someone else's model\n[other]\nhf = x/y  ; keep this comment\nctx-size = 8192\n"


def test_preset_section_parses_and_replays(qwen_plan, tmp_path: Path) -> None:
    t = get_target("llama-server-preset")
    (tmp_path / P.FILE_NAME).write_text(OTHER)
    e = t.emit(qwen_plan, _settings(qwen_plan), t.default_build(), tmp_path)
    text = e.files[P.FILE_NAME]
    ini = configparser.ConfigParser(interpolation=None, comment_prefixes=(";", "#"), inline_comment_prefixes=(";",))
    ini.read_string(text)
    name = e.document["section"]
    sec = ini[name]
    # the section as the argument list llama.cpp builds from it (common_preset::to_args)
    keys = {v: k for k, v in P._KEYS.items()}
    argv = [x for key, value in sec.items() for x in (keys[key], value)]
    overrides = parse_ot_args(argv)
    placed = apply(qwen_plan.model, int(sec["n-gpu-layers"]), None, overrides, ["CUDA0"])
    assert placed == qwen_plan.placement
    assert Path(sec["model"]).is_absolute()
    assert ini["other"]["hf"] == "x/y" and sec["fit"] == "off"


def test_merge_keeps_other_sections_byte_for_byte() -> None:
    lines = ["[m]", "ctx-size = 4096"]
    once = P.merge(OTHER, "m", lines)
    assert once.startswith(OTHER)
    again = P.merge(once.replace("ctx-size = 4096", "ctx-size = 1"), "m", ["[m]", "ctx-size = 8192"])
    assert again == once.replace("ctx-size = 4096", "ctx-size = 8192")
    assert [s for s, _ in P.parse_sections(again)] == [None, "*", "other", "m"]


def test_merge_replaces_in_place_and_keeps_what_follows() -> None:
    text = "[a]\nctx-size = 1\n\n[m]\nctx-size = 2\n; note about b\n[b]\nctx-size = 3\n"
    out = P.merge(text, "m", ["[m]", "ctx-size = 9"])
    assert out == "[a]\nctx-size = 1\n\n[m]\nctx-size = 9\n; note about b\n[b]\nctx-size = 3\n"


def test_values_llama_cpp_would_cut_are_refused() -> None:
    with pytest.raises(TargetError, match="';'"):
        P.section_lines("m", ["-m", "/models/a;b.gguf"])
    with pytest.raises(TargetError, match="preset name"):
        P.section_lines("m:Q4", ["-m", "/x.gguf"])


def test_preset_needs_a_router_build(qwen_plan) -> None:
    from moeplace.targets.builds import EngineBuild

    t = get_target("llama-server-preset")
    old = EngineBuild("llama.cpp", "old", t.default_build().flags - {"--models-preset"}, "test")
    with pytest.raises(TargetError, match="--models-preset"):
        t.emit(qwen_plan, _settings(qwen_plan), old)


# --- LM Studio and Ollama ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("count", "total"), [(k, n) for n in (1, 3, 7, 47, 48, 49, 62, 95) for k in range(n + 1)])
def test_exact_ratio_gives_the_count_back_truncated_or_rounded(count: int, total: int) -> None:
    r = exact_ratio(count, total)
    assert 0.0 <= r <= 1.0
    assert math.floor(r * total) == round(r * total) == count
    assert math.ceil(r * total) in (count, count + 1)


def test_lmstudio_config_replays_to_its_approximation(qwen_plan) -> None:
    t = get_target("lmstudio")
    e = t.emit(qwen_plan, _settings(qwen_plan), t.default_build())
    doc = json.loads(e.files[CONFIG_NAME])
    keys = [f["key"] for f in doc["load"]["fields"]]
    assert "llm.load.numCpuExpertLayersRatio" in keys and "llm.load.llama.acceleration.offloadRatio" in keys
    k, n = config_counts(doc, qwen_plan.model.hparams.n_layer)
    n_slots = qwen_plan.model.hparams.n_layer + 1
    assert placement_of(qwen_plan, "CUDA0", k, n) == e.approximation.placement
    assert e.approximation.fits
    words = shlex.split(e.command)
    assert words[:2] == ["lms", "load"] and words[words.index("--gpu") + 1] == (
        "max" if k == n_slots else repr(exact_ratio(k, n_slots)))


def parse_modelfile(text: str) -> list[tuple[str, list[str]]]:
    """Ollama's Modelfile grammar (ollama/ollama parser/parser.go) as far as moeplace writes it: one instruction a
    line, case-insensitive command, ``#`` comments, a value bare or in double quotes."""
    out = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        command, _, rest = line.strip().partition(" ")
        assert command.upper() in {"FROM", "PARAMETER", "TEMPLATE", "SYSTEM", "ADAPTER", "LICENSE", "MESSAGE"}
        out.append((command.upper(), shlex.split(rest)))
    return out


def test_ollama_modelfile_replays_to_its_approximation(qwen_plan) -> None:
    t = get_target("ollama")
    e = t.emit(qwen_plan, _settings(qwen_plan), t.default_build())
    instr = parse_modelfile(e.files[MODELFILE])
    assert instr[0][0] == "FROM" and Path(instr[0][1][0]).is_absolute()
    params = {a[0]: a[1] for c, a in instr if c == "PARAMETER"}
    assert int(params["num_ctx"]) == qwen_plan.cfg.n_ctx
    k = int(params["num_gpu"])
    assert apply(qwen_plan.model, k, None, (), ["CUDA0"]) == e.approximation.placement
    assert e.approximation.fits
    # one more layer would not fit: the approximation is the nearest configuration, not a cautious one
    assert not qwen_plan.score(apply(qwen_plan.model, k + 1, None, (), ["CUDA0"]), "k+1").fits
    assert e.approximation.decode_tps < qwen_plan.chosen.decode_tps
    assert "ollama create" in e.command


def test_ollama_refuses_what_it_cannot_set(model_path: Callable[[str], Path]) -> None:
    m = load_model(model_path("qwen3-30b-a3b"))
    with pytest.raises(TargetError, match="one KV cache type"):
        get_target("ollama").check(m, RunConfig(type_k="q8_0", type_v="f16"), ["CUDA0"])
    with pytest.raises(TargetError, match="one GPU"):
        get_target("lmstudio").check(m, RunConfig(), ["CUDA0", "CUDA1"])


def test_preset_section_takes_every_flag_the_plan_writes() -> None:
    """-kvu (batch workloads), --no-mmap/--load-mode (pinned host memory) and -t (detected cores) are written by
    build_args for llama.cpp; the preset section must hold them too, under llama.cpp's long option names."""
    lines = P.section_lines("m", ["-m", "/models/m.gguf", "-np", "8", "-kvu", "--no-mmap", "-t", "16"])
    assert lines[1:] == ["model = /models/m.gguf", "parallel = 8", "kv-unified = true", "no-mmap = true",
                         "threads = 16"]
    assert P.section_lines("m", ["--load-mode", "none"])[1:] == ["load-mode = none"]
