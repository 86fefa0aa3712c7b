"""moeplace choose against a Hub endpoint on 127.0.0.1 (the real huggingface_hub code path via HF_ENDPOINT)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner
from gguf import LlamaFileType

from moeplace.choose import group_quants
from moeplace.cli import main
from moeplace.remote import RepoFile
from moeplace.servers import HubServer
from moeplace.testing import SPECS, write_model

REPO = "org/Qwen3-30B-A3B-GGUF"
HW = ["--vram", "12G", "--ram", "24G", "-c", "8192"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("repo")
    base = SPECS["qwen3-30b-a3b"]
    write_model(replace(base, ftype=LlamaFileType.MOSTLY_Q4_0), d / "Qwen3-30B-A3B-Q4_0.gguf")
    write_model(base, d / "Qwen3-30B-A3B-Q4_K_M.gguf")
    write_model(replace(base, ftype=LlamaFileType.MOSTLY_Q8_0), d / "Q8_0" / "Qwen3-30B-A3B-Q8_0.gguf", split=2)
    write_model(replace(base, ftype=LlamaFileType.MOSTLY_BF16), d / "BF16" / "Qwen3-30B-A3B-BF16.gguf", split=3)
    (d / "mmproj-F16.gguf").write_bytes(b"a vision projector, not a model")
    return d


@pytest.fixture(autouse=True)
def _env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOEPLACE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    for k in ("HF_TOKEN", "MOEPLACE_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(k, raising=False)


def _run(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(main, list(args))
    if r.exception and not isinstance(r.exception, SystemExit):
        raise r.exception
    return r.exit_code, r.stdout, r.stderr


def test_group_quants_groups_shards_and_skips_projectors() -> None:
    files = [RepoFile("a/m-Q2_K-00002-of-00002.gguf", 5, ""), RepoFile("a/m-Q2_K-00001-of-00002.gguf", 7, ""),
             RepoFile("m-Q4_K_M.gguf", 20, ""), RepoFile("mmproj-F16.gguf", 1, ""), RepoFile("x.md", 1, "")]
    quants = group_quants(files)
    assert [(q.label, q.first, q.size) for q in quants] == [("Q2_K", "a/m-Q2_K-00001-of-00002.gguf", 12),
                                                            ("Q4_K_M", "m-Q4_K_M.gguf", 20)]
    assert quants[0].include() == "a/m-Q2_K-*-of-00002.gguf"
    assert quants[1].include() == "m-Q4_K_M.gguf"


def test_choose_ranks_every_quant(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with HubServer({REPO: repo}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        code, out, err = _run("choose", REPO, *HW, "--json")
        assert code == 0, err
        doc = json.loads(out)
        # The best plan's command is what 'moeplace solve' prints for that file.
        best = doc["quants"][0]
        code, solved, _ = _run("solve", f"hf://{REPO}/{best['files'][0]}", *HW, "--no-scripts")
    assert doc["schema"] == "moeplace.choose/1"
    q = {x["quant"]: x for x in doc["quants"]}
    assert set(q) == {"Q4_0", "Q4_K_M", "Q8_0", "BF16"}
    assert q["Q8_0"]["files"] == ["Q8_0/Qwen3-30B-A3B-Q8_0-00001-of-00002.gguf",
                                  "Q8_0/Qwen3-30B-A3B-Q8_0-00002-of-00002.gguf"]
    assert q["BF16"]["fits"] is False and "RAM short" in q["BF16"]["problem"]
    assert q["Q4_K_M"]["fits"] and q["Q4_0"]["fits"]
    fitting = [x for x in doc["quants"] if x["fits"]]
    assert doc["quants"][:len(fitting)] == fitting  # fitting quants first
    secs = [x["seconds_per_generated_token"] for x in fitting]
    assert secs == sorted(secs)  # fastest first
    assert q["Q8_0"]["download"] == f"hf download {REPO} --include 'Q8_0/Qwen3-30B-A3B-Q8_0-*-of-00002.gguf'"
    assert best["command"].startswith(f"llama-server -hf {REPO} -hff {best['files'][0]} -c 8192 ")
    assert "  " + best["command"] in solved.splitlines()
    assert doc["read"]["shards_from_network"] == 7


def test_choose_second_run_is_offline(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with HubServer({REPO: repo}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        code, first, _ = _run("choose", REPO, *HW)
    assert code == 0
    code, again, err = _run("choose", REPO, *HW, "--json")  # the endpoint is gone
    assert code == 0, err
    doc = json.loads(again)
    assert doc["read"] == {"bytes": 0, "shards_from_network": 0, "shards_from_cache": 7}
    assert "Fastest that fits: " + doc["quants"][0]["quant"] in first


def test_choose_rejects_a_file(monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, err = _run("choose", "org/repo:Q4_K_M")
    assert code == 2 and "is not a repository" in err
