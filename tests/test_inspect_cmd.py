"""``moeplace inspect`` through click's CliRunner: the numbers it prints, JSON, and one-line errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from moeplace.cli import main
from moeplace.testing import expected


def run(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(main, list(args))
    return r.exit_code, r.stdout, r.stderr


def test_summary_of_qwen3_30b(model_path: Callable[[str], Path]) -> None:
    code, out, _ = run("inspect", str(model_path("qwen3-30b-a3b")))
    assert code == 0
    assert "qwen3moe" in out
    assert "48 blocks, n_embd 2048, 32 heads / 4 KV heads" in out
    assert "experts: 128 routed (8 used per token)" in out
    assert "Routed experts are" in out and "One token reads" in out


def test_json_numbers_match_factory(model_path: Callable[[str], Path]) -> None:
    code, out, _ = run("inspect", "--json", "--tensors", str(model_path("deepseek-v3-split")))
    assert code == 0
    s = json.loads(out)
    e = expected("deepseek-v3-split")
    assert s["tensor_count"] == e.n_tensors == len(s["tensors"])
    assert s["total_bytes"] == e.total_bytes
    assert len(s["files"]) == 9
    assert {k: v for k, v in s["bytes_by_role"].items() if v} == {k: v for k, v in e.bytes_by_role.items() if v}
    assert [r["kind"] for r in s["layers"]][:4] == ["dense", "dense", "dense", "moe"]


def test_dense_model_says_so(model_path: Callable[[str], Path]) -> None:
    code, out, _ = run("inspect", str(model_path("llama-tiny")))
    assert code == 0
    assert "no routed experts: this is a dense model" in out


def test_nextn_counted_apart(model_path: Callable[[str], Path]) -> None:
    code, out, _ = run("inspect", str(model_path("glm-4.5-air")))
    assert code == 0
    assert "NextN/MTP block(s) at the end: llama.cpp does not load them" in out
    assert "not loaded" in out


def test_tensor_listing(model_path: Callable[[str], Path]) -> None:
    code, out, _ = run("inspect", "--tensors", str(model_path("gpt-oss-tiny")))
    assert code == 0
    assert "blk.0.ffn_up_exps.bias" in out and "routed_expert" in out


@pytest.mark.parametrize(("content", "message"), [
    (b"hello world, not a model", "not a GGUF file"),
    (b"GGUF\x03\x00\x00\x00\x01", "truncated"),
])
def test_bad_files_one_line_exit_2(tmp_path: Path, content: bytes, message: str) -> None:
    p = tmp_path / "x.gguf"
    p.write_bytes(content)
    code, out, err = run("inspect", str(p))
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("Error: ") and message in err and str(p) in err
    assert "Traceback" not in err


def test_truncated_real_model(tmp_path: Path, model_path: Callable[[str], Path]) -> None:
    data = model_path("qwen3moe-tiny").read_bytes()
    p = tmp_path / "cut.gguf"
    p.write_bytes(data[: len(data) // 2])
    code, _, err = run("inspect", str(p))
    assert code == 2 and "truncated" in err and err.count("\n") == 1


def test_missing_file(tmp_path: Path) -> None:
    code, _, err = run("inspect", str(tmp_path / "none.gguf"))
    assert code == 2 and "no such file" in err
