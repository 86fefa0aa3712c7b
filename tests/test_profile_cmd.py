"""``moeplace profile`` through click's CliRunner: import, show, merge, export, plot, run, and one-line errors."""

from __future__ import annotations

import dataclasses
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import gguf
import numpy as np
import pytest
from click.testing import CliRunner, Result

from moeplace.cli.profile_cmd import profile
from moeplace.model import ModelDescription, load_model
from moeplace.plot import DEAD, ratio_colour
from moeplace.routing import ModelIdentity, Source, make_profile
from moeplace.routing_file import load_profile, save_profile
from moeplace.testing import SPECS, write_model

SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("cli")
    out = {"model": write_model("qwen3moe-tiny", d / "qwen3moe-tiny.gguf")[0],
           "other": write_model("deepseek2-tiny", d / "deepseek2-tiny.gguf")[0],
           "deeper": write_model(dataclasses.replace(SPECS["qwen3moe-tiny"], name="qwen3moe-3l", n_layer=3),
                                 d / "qwen3moe-3l.gguf")[0]}
    model = load_model(out["model"])
    # A trace CSV with skewed routing: expert e chosen with weight e+1.
    rng = np.random.default_rng(0)
    rows = ["layer,expert"]
    for _ in range(400):
        for layer in (0, 1):
            rows += [f"{layer},{e}" for e in rng.choice(8, 2, replace=False, p=np.arange(1, 9) / 36)]
    out["trace"] = d / "trace.csv"
    out["trace"].write_text("\n".join(rows) + "\n")
    out["imatrix"] = write_exps_imatrix(d / "imatrix.gguf", model, {0: [50, 10, 0, 40, 20, 30, 25, 25],
                                                                    1: [100, 20, 20, 20, 10, 10, 10, 10]})
    return out


def write_exps_imatrix(path: Path, model: ModelDescription, counts: dict[int, list[int]]) -> Path:
    """An imatrix GGUF (llama-imatrix layout) holding only the expert tensors' entries."""
    w = gguf.GGUFWriter(path, arch="")  # an empty arch writes no general.architecture, as llama-imatrix
    w.add_type("imatrix")
    w.add_array("imatrix.datasets", ["calib.txt"])
    w.add_uint32("imatrix.chunk_count", 0)
    w.add_uint32("imatrix.chunk_size", 512)
    for t in sorted((t for t in model.tensors if t.n_expert), key=lambda t: t.name):
        w.add_tensor(f"{t.name}.in_sum2", np.ones((t.n_expert, t.shape[0]), dtype=np.float32))
        w.add_tensor(f"{t.name}.counts", np.array(counts[t.block], dtype=np.float32).reshape(-1, 1))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def cli(*args: str | Path) -> Result:
    return CliRunner().invoke(profile, [str(a) for a in args], catch_exceptions=False)


def assert_one_line_error(r: Result, needle: str) -> None:
    assert r.exit_code == 2, r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:") and needle in lines[0], r.output


def test_import_imatrix_then_show(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "p.json"
    r = cli("import", files["imatrix"], "--model", files["model"], "-o", out)
    assert r.exit_code == 0, r.output
    assert f"wrote {out}" in r.output
    prof = load_profile(out)
    assert prof.counts[0].tolist() == [50, 10, 0, 40, 20, 30, 25, 25]
    assert prof.tokens[1] == 100 and prof.source.datasets == ("calib.txt",)

    r = cli("show", out)
    assert r.exit_code == 0, r.output
    assert "top25%(2)" in r.output and "B=512" in r.output and "uniform" in r.output
    # layer 1: expert 0 takes 100 of 200 routes; the top 25% (2 experts) take 120 of 200.
    layer1 = next(line for line in r.output.splitlines() if line.split()[:1] == ["1"])
    assert "50.0%" in layer1 and "60.0%" in layer1
    layer0 = next(line for line in r.output.splitlines() if line.split()[:1] == ["0"])
    assert layer0.split()[5] == "1"  # one dead expert

    data = json.loads(cli("show", out, "--json").output)
    assert data["layers"][1]["top25_share"] == pytest.approx(0.6)
    assert data["layers"][0]["dead"] == 1
    assert data["uniform"]["distinct"]["8"] == pytest.approx(8 * (1 - (1 - 2 / 8) ** 8))
    assert set(data["layers"][0]["distinct"]) == {"1", "8", "32", "512"}
    assert data["layers"][0]["distinct"]["1"] == pytest.approx(2)


def test_import_trace_to_default_path(files: dict[str, Path], tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    r = cli("import", files["trace"], "--model", files["model"])
    assert r.exit_code == 0, r.output
    path = tmp_path / "profiles" / "qwen3moe-tiny-trace.json"
    assert path.exists()
    assert load_profile(path).tokens[0] == 400
    assert "skewed" in r.output or "uniform" in r.output


def test_show_checks_the_model(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "p.json"
    cli("import", files["trace"], "--model", files["model"], "-o", out)
    assert cli("show", out, "--model", files["model"]).exit_code == 0
    assert_one_line_error(cli("show", out, "--model", files["other"]), "architecture qwen3moe, but")
    assert_one_line_error(cli("show", out, "--model", files["deeper"]), "with 2 layers, but qwen3moe-3l has 3")


def test_bad_profiles_exit_2_with_one_line(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "p.json"
    cli("import", files["trace"], "--model", files["model"], "-o", out)
    text = out.read_text()
    (tmp_path / "cut.json").write_text(text[: len(text) // 2])
    assert_one_line_error(cli("show", tmp_path / "cut.json"), "truncated")
    (tmp_path / "neg.json").write_text(text.replace('"counts":[', '"counts":[-', 1))
    assert_one_line_error(cli("show", tmp_path / "neg.json"), "negative count")
    (tmp_path / "nan.json").write_text(text.replace('"counts":[', '"counts":[NaN,', 1))
    assert_one_line_error(cli("show", tmp_path / "nan.json"), "")
    assert_one_line_error(cli("show", tmp_path / "none.json"), "no such profile file")
    assert_one_line_error(cli("import", files["model"], "--model", files["model"]), "model file, not an imatrix")


def test_merge(files: dict[str, Path], tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    cli("import", files["trace"], "--model", files["model"], "-o", a)
    cli("import", files["imatrix"], "--model", files["model"], "-o", b)
    r = cli("merge", a, b, "--weights", "1,3", "-o", c)
    assert r.exit_code == 0, r.output
    pa, pb, pc = load_profile(a), load_profile(b), load_profile(c)
    for layer in pa.layers:
        want = 0.25 * pa.counts[layer] / pa.tokens[layer] + 0.75 * pb.counts[layer] / pb.tokens[layer]
        assert pc.counts[layer] / pc.tokens[layer] == pytest.approx(want)
    assert cli("merge", a, b, "--weights", "1,x", "-o", c).exit_code == 2
    assert_one_line_error(cli("merge", a, b, "--weights", "1", "-o", c), "one weight per profile")
    assert_one_line_error(cli("merge", a, "-o", c), "at least two profiles")
    other = tmp_path / "other.json"
    ident = ModelIdentity("qwen3moe", 2, 8, 2, "0" * 16, "x")
    save_profile(make_profile(ident, Source("synthetic", 4), {0: [1] * 8, 1: [1] * 8}), other)
    assert_one_line_error(cli("merge", a, other, "-o", c), "same model")


def test_export_hot_json(files: dict[str, Path], tmp_path: Path) -> None:
    p = tmp_path / "p.json"
    cli("import", files["imatrix"], "--model", files["model"], "-o", p)
    r = cli("export", p, "--format", "hot-json", "--cache", "2")
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["format"] == "moeplace-hot-experts"
    assert data["layers"][0]["experts"] == [0, 3] and data["layers"][0]["served"] == pytest.approx(0.45)
    assert data["layers"][1]["experts"] == [0, 1] and data["layers"][1]["served"] == pytest.approx(0.6)
    assert data["served"] == pytest.approx((0.45 + 0.6) / 2)
    out = tmp_path / "hot.json"
    r = cli("export", p, "--cache", "2", "-o", out)
    assert "serves 52.5% of routes" in r.output and json.loads(out.read_text()) == data
    assert_one_line_error(cli("export", p, "--cache", "9"), "outside 1..8")


def test_plot_svg(files: dict[str, Path], tmp_path: Path) -> None:
    p = tmp_path / "p.json"
    cli("import", files["imatrix"], "--model", files["model"], "-o", p)
    r = cli("plot", p, "-o", tmp_path / "heat.svg")
    assert r.exit_code == 0, r.output
    root = ET.parse(tmp_path / "heat.svg").getroot()
    cells = [e for e in root.iter(f"{SVG}rect") if e.find(f"{SVG}title") is not None]
    assert len(cells) == 2 * 8
    by_tip = {e.find(f"{SVG}title").text.split(":")[0]: e.get("fill") for e in cells}
    assert by_tip["layer 0, expert 2"] == DEAD
    assert by_tip["layer 1, expert 0"] == ratio_colour(np.log2(0.5 * 8))  # half of all routes: 4x uniform
    assert by_tip["layer 0, expert 6"] == ratio_colour(0.0)  # 25 of 200 routes: exactly uniform


def test_plot_png_needs_matplotlib_and_other_suffixes_are_refused(files: dict[str, Path], tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "p.json"
    cli("import", files["imatrix"], "--model", files["model"], "-o", p)
    assert_one_line_error(cli("plot", p, "-o", tmp_path / "heat.jpg"), ".svg or .png")
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert_one_line_error(cli("plot", p, "-o", tmp_path / "heat.png"), "needs matplotlib")


def test_plot_png_with_matplotlib(files: dict[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="matplotlib is optional")
    p = tmp_path / "p.json"
    cli("import", files["imatrix"], "--model", files["model"], "-o", p)
    assert cli("plot", p, "-o", tmp_path / "heat.png").exit_code == 0
    assert (tmp_path / "heat.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_run_without_engine_is_explained(files: dict[str, Path], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    (tmp_path / "p.txt").write_text("hello\n")
    assert_one_line_error(cli("run", files["model"], "--prompts", tmp_path / "p.txt"), "moeplace[profile]")


@pytest.mark.llama
@pytest.mark.parametrize("how", [["run"], []])
def test_run_live(files: dict[str, Path], tmp_path: Path, how: list[str]) -> None:
    """'profile run MODEL' and the design card's 'profile MODEL --prompts P' do the same."""
    (tmp_path / "p.txt").write_text("hello world the model\n\nexpert layer token\n")
    out = tmp_path / "live.json"
    r = cli(*how, files["model"], "--prompts", tmp_path / "p.txt", "--generate", "3", "--threads", "1", "-o", out)
    assert r.exit_code == 0, r.output
    assert "tok/s" in r.output and f"wrote {out}" in r.output
    prof = load_profile(out)
    assert prof.source.kind == "live" and prof.source.prompt_count == 2 and prof.source.generated_per_prompt == 3
    for layer in prof.layers:
        assert prof.counts[layer].sum() == prof.tokens[layer] * 2


def test_group_help_lists_subcommands() -> None:
    r = cli("--help")
    assert r.exit_code == 0
    for name in ("run", "import", "show", "merge", "export", "plot"):
        assert name in r.output
