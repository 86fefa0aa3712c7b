"""Every row of the published-measurement dataset is well-formed (benchmarks/published/README.md's schema)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

DATA = Path(__file__).resolve().parent.parent / "benchmarks" / "published" / "measurements.jsonl"
ROWS = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines() if line.strip()]

FIELDS = {"id", "source_url", "source_date", "source_kind", "engine", "build", "model", "quant", "file_gib", "flags",
          "gpus", "cpu", "cpu_cores", "numa_nodes", "ram_type", "ram_mts", "ram_channels", "ram_gib", "test",
          "pp_tps", "tg_tps", "pair_id", "varied", "confidence", "note"}
FLAGS = {"ngl", "ot", "n_cpu_moe", "cpu_moe", "ts", "ctx", "ub", "b", "ctk", "ctv", "fa", "threads", "mmap", "mlock",
         "other"}
GPU = {"name", "vram_gib", "pcie_gen", "pcie_lanes", "backend"}
TEST = {"tool", "pp_tokens", "tg_tokens", "depth"}


def _opt(value: Any, kind: type | tuple[type, ...]) -> bool:
    return value is None or (isinstance(value, kind) and not isinstance(value, bool))


def test_dataset_size_and_coverage() -> None:
    assert len(ROWS) >= 60
    assert len({r["source_url"] for r in ROWS}) >= 15
    pairs = {r["pair_id"] for r in ROWS if r["pair_id"]}
    assert sum(1 for p in pairs if sum(r["pair_id"] == p for r in ROWS) >= 2) >= 15
    assert len({r["id"] for r in ROWS}) == len(ROWS), "ids must be unique"


@pytest.mark.parametrize("row", ROWS, ids=[r["id"] for r in ROWS])
def test_row_is_well_formed(row: dict[str, Any]) -> None:
    assert set(row) == FIELDS
    assert re.fullmatch(r"https?://\S+", row["source_url"])
    assert row["source_date"] is None or re.fullmatch(r"\d{4}-\d{2}-\d{2}", row["source_date"])
    assert row["confidence"] in ("high", "medium", "low")
    assert isinstance(row["model"], str) and row["model"] and isinstance(row["engine"], str)
    assert _opt(row["file_gib"], (int, float)) and (row["file_gib"] is None or row["file_gib"] > 0)
    for k in ("cpu_cores", "numa_nodes", "ram_mts", "ram_channels"):
        assert _opt(row[k], int) and (row[k] is None or row[k] > 0), k
    assert _opt(row["ram_gib"], (int, float))
    assert set(row["flags"]) == FLAGS and isinstance(row["flags"]["ot"], list)
    assert isinstance(row["flags"]["other"], list)
    for g in row["gpus"]:
        assert set(g) == GPU and isinstance(g["name"], str)
        assert _opt(g["pcie_gen"], int) and _opt(g["pcie_lanes"], int)
    assert set(row["test"]) == TEST and row["test"]["tool"] in ("llama-bench", "llama-server", "other")
    for k in ("pp_tokens", "tg_tokens", "depth"):
        assert _opt(row["test"][k], int) and (row["test"][k] is None or row["test"][k] >= 0), k
    assert row["pp_tps"] is not None or row["tg_tps"] is not None, "a row measures something"
    for k in ("pp_tps", "tg_tps"):
        assert _opt(row[k], (int, float)) and (row[k] is None or row[k] > 0), k
    assert (row["pair_id"] is None) == (row["varied"] is None) or row["pair_id"] is not None
