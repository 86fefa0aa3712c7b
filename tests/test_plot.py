"""Pictures: the placement map's cells follow the placement exactly, and the SVG is well-formed."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

from click.testing import CliRunner

from moeplace.cli import main
from moeplace.llamacpp import n_cpu_moe_placement
from moeplace.model import load_model
from moeplace.placement import HOST
from moeplace.plot import HOST_COLOUR, placement_grid, render_svg


def test_placement_map_follows_the_placement(model_path: Callable[[str], Path]) -> None:
    m = load_model(model_path("gpt-oss-20b"))
    p = n_cpu_moe_placement(m, 10, ["CUDA0", "CUDA1"], -1, [1, 1])
    g = placement_grid(m, p)
    rows = list(g.row_labels)
    assert rows[0] == "attention + KV" and "ffn_up_exps" in rows
    colour = {label: c for c, label in g.legend}
    up = g.colours[rows.index("ffn_up_exps")]
    attn = g.colours[rows.index("attention + KV")]
    for il in range(m.hparams.n_layer):
        assert up[il] == (HOST_COLOUR if il < 10 else colour[p.layer_devices[il]])
        assert attn[il] == colour[p.layer_devices[il]]
    assert {p.layer_devices[0], p.layer_devices[-1]} == {"CUDA0", "CUDA1"}
    ET.fromstring(render_svg(g))  # well-formed


def test_solve_draws_the_map(model_path: Callable[[str], Path], tmp_path: Path) -> None:
    out = tmp_path / "map.svg"
    r = CliRunner().invoke(main, ["solve", str(model_path("qwen3-30b-a3b")), "--vram", "12G", "--no-scripts",
                                  "--map", str(out)])
    assert r.exit_code == 0, r.stderr
    svg = out.read_text()
    ET.fromstring(svg)
    assert "CUDA0" in svg and f"{HOST} (RAM)" in svg and "ffn_down_exps" in svg
    bad = CliRunner().invoke(main, ["solve", str(model_path("qwen3-30b-a3b")), "--vram", "12G", "--no-scripts",
                                    "--map", str(tmp_path / "map.gif")])
    assert bad.exit_code == 2 and "write the picture as .svg or .png" in bad.stderr
