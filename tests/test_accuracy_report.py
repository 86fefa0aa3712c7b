"""The accuracy report's tallies (benchmarks/accuracy.py): pair ordering, pairs no stated input tells apart,
thread series that change direction, and the share within a target with and without each source's offset."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "accuracy.py"


@pytest.fixture(scope="module")
def acc() -> Any:
    spec = importlib.util.spec_from_file_location("accuracy_report", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["accuracy_report"] = module
    spec.loader.exec_module(module)
    return module


def case(acc: Any, rid: str, source: str, series: str | None, tg: float, predicted: float,
         threads: int | None = None) -> Any:
    row = {"id": rid, "pair_id": series, "tg_tps": tg, "pp_tps": None, "flags": {"threads": threads}}
    return acc.Case(row=row, source=source, engine="llama.cpp", hw=None, new=(None, None), old=(None, None),
                    predicted={"m": {"tg": predicted}})


def test_pairs_skip_measured_ties_and_list_the_wrong_ones(acc: Any) -> None:
    cs = [case(acc, "a", "s", "g", 10.0, 1.0), case(acc, "b", "s", "g", 12.0, 2.0), case(acc, "c", "s", "g", 12.2, 3.0)]
    assert acc.pairs(cs, "m") == (2, 2, [])  # b-c differ by 1.7%: not a pair
    cs[0].predicted["m"]["tg"] = 2.5
    agree, total, wrong = acc.pairs(cs, "m")
    assert (agree, total) == (1, 2) and wrong == ["g tg: a 10 vs b 12 measured, predicted 2.5 vs 2"]
    cs[0].predicted["m"]["tg"] = 2.0
    cs[0].predicted["in-sample"] = cs[0].predicted["m"]
    for c in cs[1:]:
        c.predicted["in-sample"] = c.predicted["m"]
    assert acc._indistinct(cs) == ["g tg: a vs b"]


def test_thread_series_that_change_direction_twice(acc: Any) -> None:
    zig = [case(acc, f"z{t}", "s", "zig", v, 1.0, threads=t) for t, v in ((16, 8.29), (24, 9.49), (32, 6.89),
                                                                          (48, 10.27))]
    peak = [case(acc, f"p{t}", "s", "peak", v, 1.0, threads=t) for t, v in ((43, 3.7), (64, 4.9), (128, 6.6),
                                                                           (172, 5.1))]
    found = acc._zigzags(zig + peak)
    assert len(found) == 1 and found[0].startswith("zig tg (-t 16: 8.29")


def test_within_with_each_sources_offset_removed(acc: Any) -> None:
    cs = [case(acc, f"r{i}", src, None, 10.0, 10.0 * f) for i, (src, f) in enumerate(
        (("s1", 2.0), ("s1", 2.1), ("s2", 0.5), ("s2", 0.52)))]
    assert acc._within(cs, "m", "tg", 0.2) == 0.0
    assert acc._within(cs, "m", "tg", 0.2, scale=True) == 1.0


def test_coupled_parameters_also_move_together(acc: Any) -> None:
    """A backend's bandwidth and expert efficiencies are fixed by MoE rows mostly as a product: the search also
    moves them in opposite directions, pair by pair, and only where both are free."""
    moves = acc._moves(["efficiency:cuda", "expert:cuda", "efficiency:rocm", "thread_gbs"])
    assert (("efficiency:cuda", 1), ("expert:cuda", -1)) in moves
    assert [m for m in moves if len(m) == 2] == [(("efficiency:cuda", 1), ("expert:cuda", -1))]
    assert len(moves) == 5


def test_a_rows_chiplet_cpu_takes_its_ccds_from_cpus_json(acc: Any) -> None:
    """A dual-socket EPYC 9115 row: two CCDs per socket (cpus.json), four in all; the report names the CPUs whose
    RAM peak the CCD links cap, and a 16-CCD EPYC 9175F's is not."""
    def row(cpu: str) -> dict[str, Any]:
        return {"id": cpu, "gpus": [], "cpu": cpu, "numa_nodes": None, "ram_mts": None, "ram_channels": None,
                "cpu_cores": None, "ram_gib": 768, "flags": {"threads": 32}, "source_date": "2025-06-03",
                "engine": "llama.cpp"}

    two, wide = (acc._hardware(row(c)) for c in ("2x EPYC 9115 (dual socket)", "EPYC 9175F"))
    assert (two.ccds, two.numa_nodes, two.ram_bw) == (4, 2, 6000 * 8 * 24 / 1000)
    assert wide.ccds == 16
    cases = [acc.Case(row=row(c), source="s", engine="llama.cpp", hw=hw, new=(None, None), old=(None, None))
             for c, hw in (("2x EPYC 9115 (dual socket)", two), ("EPYC 9175F", wide))]
    assert acc._ccd_bound(cases, acc.speed_params()) == "2x EPYC 9115 (dual socket)"


def test_an_ik_llama_cpp_rows_host_work_is_costed_by_its_kernels(acc: Any, tmp_path: Path) -> None:
    """A CPU-only Q2_K row of ik_llama.cpp: its host decode work carries llama.cpp's Q2_K cost times ik_llama.cpp's
    measured factor for Q2_K; the same row run by llama.cpp carries llama.cpp's alone."""
    rows = acc.load_rows()
    row = next(r for r in rows if r["id"] == "ik259-6980p-ud-q2_k_xl-t64")
    assert row["engine"] == "ik_llama.cpp" and acc._qtype(row["quant"]) == "Q2_K" and not row["gpus"]
    p = acc.speed_params()
    models = acc.Models(tmp_path)
    ik = acc.make_case(row, models, p).new[0]
    lc = acc.make_case({**row, "engine": "llama.cpp"}, models, p).new[0]
    ratio = p.engine_cpu_quant_factor["ik_llama.cpp"]["Q2_K"]
    assert abs(ratio - 1.0) > 0.1
    assert ik.host_work.sum() / lc.host_work.sum() == pytest.approx(ratio, rel=0.05)


def _cases(acc: Any, tmp_path: Path, ids: list[str]) -> dict[str, Any]:
    rows = {r["id"]: r for r in acc.load_rows()}
    models, p = acc.Models(tmp_path), acc.speed_params()
    return {i: acc.make_case(rows[i], models, p) for i in ids}


def test_a_missed_rows_why_names_what_its_held_out_fit_rested_on(acc: Any, tmp_path: Path) -> None:
    """Three rows of the CUDA scoreboard and one other source's CUDA row: the H100's bandwidth is beyond every
    other source's card, the scoreboard holds most all-GPU CUDA rows, and rows whose source's other rows are all
    off the same way say so; a row within its target has no why."""
    cs = _cases(acc, tmp_path, ["sb15013-h100", "sb15013-rtx3060", "sb15013-rtx4090", "lc16991-pro6000-gptoss20b-d0"])
    for i, c in cs.items():
        c.predicted["new"] = {k: c.row[f"{k}_tps"] * (1.5 if i.startswith("sb") else 1.0) for k in ("tg", "pp")}
    apart = acc._fitted_apart(list(cs.values()))
    h100 = acc._why(acc._misses(cs["sb15013-h100"], apart))
    assert h100.startswith("tg +50%: ") and "; pp +50%: " in h100
    assert "card's GB/s (3350) above every other source's (at most 1792): extrapolated" in h100
    assert "its source holds 3 of the 4 all-GPU cuda rows" in h100
    assert "its source's other 2 tg rows off the same way (median +50%)" in h100
    assert "extrapolated" not in acc._why(acc._misses(cs["sb15013-rtx3060"], apart))
    assert acc._why(acc._misses(cs["lc16991-pro6000-gptoss20b-d0"], apart)) == ""
    cs["sb15013-rtx3060"].predicted["new"]["tg"] = cs["sb15013-rtx3060"].row["tg_tps"] * 0.5
    why = acc._why(acc._misses(cs["sb15013-rtx3060"], acc._fitted_apart(list(cs.values()))))
    tg, pp = why.split("; ")
    assert pp.startswith("pp +50%: ") and "other 2 pp rows off" in pp
    assert tg == ("tg -50%: its source holds 3 of the 4 all-GPU cuda rows: held out, that backend's efficiencies "
                  "rest on the rest")
    assert acc._why(acc._misses(cs["lc16991-pro6000-gptoss20b-d0"])) == ""
    cs["lc16991-pro6000-gptoss20b-d0"].predicted["new"]["tg"] *= 2
    assert acc._why(acc._misses(cs["lc16991-pro6000-gptoss20b-d0"])) == "tg +100%: none of the known gaps"


def test_a_series_with_wrong_pairs_says_what_it_varies_and_what_its_rows_share(acc: Any, tmp_path: Path) -> None:
    """ik629's two Q8_0 rows (one GPU against two) ran on Windows: a pair ordered wrong is listed under its series
    with the series' varied field and the hints both rows share."""
    cs = _cases(acc, tmp_path, ["ik629-q8-multi-d0", "ik629-q8-5090-d0"])
    multi, one = cs["ik629-q8-multi-d0"], cs["ik629-q8-5090-d0"]
    multi.predicted["new"], one.predicted["new"] = {"tg": 12.0}, {"tg": 11.0}
    _, _, wrong = acc.pairs(list(cs.values()), "new")
    assert len(wrong) == 1
    (line,) = acc._series_why(list(cs.values()), wrong)
    assert line.startswith("- ik629-q8-gpus tg: 1 (varies: gpus (5090 only vs 5090+4090)): ")
    assert "Windows (moeplace has no OS input)" in line and "ik_llama.cpp kernels" in line


def test_apple_decode_over_prediction_is_reported_by_chip_size(acc: Any, tmp_path: Path) -> None:
    cs = _cases(acc, tmp_path, ["nb3-m4-llama8b", "sb4167-m4pro", "sb4167-m1ultra", "sb4167-m2ultra"])
    for c, f in zip(cs.values(), (0.5, 0.8, 1.25, 2.0)):
        c.predicted["in-sample"] = {"tg": c.row["tg_tps"] * f}
    assert acc._metal_by_size(list(cs.values())) == "base 2.00 (1 rows), Pro 1.25 (1 rows), Ultra 0.65 (2 rows)"
