"""Routing trace CSV import: aggregated counts, one row per routing event, headers, and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from moeplace.model import ModelDescription, load_model
from moeplace.routing import ProfileError, check_profile
from moeplace.sources.trace import TraceError, import_trace
from moeplace.testing import write_model


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> ModelDescription:
    """deepseek2-tiny: block 0 is dense, blocks 1-2 route over 8 experts, 2 per token."""
    return load_model(write_model("deepseek2-tiny", tmp_path_factory.mktemp("m") / "ds.gguf")[0])


def events(tokens: int, seed: int = 0) -> list[tuple[int, int, int]]:
    """(layer, expert, token) rows: every token picks 2 distinct experts in each MoE layer."""
    rng = np.random.default_rng(seed)
    rows = []
    for tok in range(tokens):
        for layer in (1, 2):
            for e in rng.choice(8, 2, replace=False, p=np.linspace(1, 3, 8) / 16):
                rows.append((layer, int(e), tok))
    return rows


def expected_counts(rows: list[tuple[int, int, int]]) -> dict[int, np.ndarray]:
    out = {1: np.zeros(8), 2: np.zeros(8)}
    for layer, e, _ in rows:
        out[layer][e] += 1
    return out


def write(tmp_path: Path, text: str, name: str = "trace.csv") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_event_rows_as_moe_trace_writes_them(tmp_path: Path, model: ModelDescription) -> None:
    rows = events(300)
    path = write(tmp_path, "layer,expert\n" + "".join(f"{la},{e}\n" for la, e, _ in rows))
    prof = import_trace(path, model)
    check_profile(prof, model)
    want = expected_counts(rows)
    for layer in (1, 2):
        assert np.array_equal(prof.counts[layer], want[layer])
        assert prof.tokens[layer] == 300
    assert prof.source.kind == "trace" and prof.source.file == "trace.csv"


def test_headerless_events_with_comments(tmp_path: Path, model: ModelDescription) -> None:
    rows = events(50, seed=1)
    text = "# moe trace\n# model=ds\n" + "".join(f"{la}, {e}\n" for la, e, _ in rows) + "\n"
    prof = import_trace(write(tmp_path, text), model)
    assert np.array_equal(prof.counts[2], expected_counts(rows)[2])


def test_events_with_token_column_in_any_order(tmp_path: Path, model: ModelDescription) -> None:
    rows = events(40, seed=2)
    text = "token,expert,layer,weight\n" + "".join(f"{t},{e},{la},0.5\n" for la, e, t in rows)
    prof = import_trace(write(tmp_path, text), model)
    assert np.array_equal(prof.counts[1], expected_counts(rows)[1])
    assert prof.tokens[1] == 40


def test_aggregated_counts(tmp_path: Path, model: ModelDescription) -> None:
    want = expected_counts(events(200, seed=3))
    lines = ["layer,expert,count"]
    for layer, c in want.items():
        for e, n in enumerate(c):
            # Split each count over two rows: repeated pairs add up.
            lines += [f"{layer},{e},{int(n) // 2}", f"{layer},{e},{int(n) - int(n) // 2}"]
    prof = import_trace(write(tmp_path, "\n".join(lines) + "\n"), model)
    for layer in (1, 2):
        assert np.array_equal(prof.counts[layer], want[layer])
        assert prof.tokens[layer] == 200


@pytest.mark.parametrize(("text", "needle"), [
    ("1,2,3\n", "ambiguous: add a first line 'layer,expert,count'"),
    ("layer,expert,count,token\n1,2,3,4\n", "both a count and a token column"),
    ("foo,bar\n1,2\n", "no 'layer' and 'expert' columns"),
    ("layer,expert\n1,9\n", "expert 9 is outside 0..7"),
    ("layer,expert\n0,1\n", "layer 0 is not a MoE layer"),
    ("layer,expert\n1,x\n", "is not 'layer,expert' integers"),
    ("layer,expert,count\n1,1,-4\n", "not a non-negative number"),
    ("layer,expert,count\n1,1,nan\n", "not a non-negative number"),
    ("layer,expert\n1,1\n1,2\n", "no routing for MoE layers [2]"),
    ("layer,expert\n", "no data rows"),
    ("layer,expert\n1\n", "1 columns, expected at least 2"),
])
def test_bad_traces_are_refused_in_one_line(tmp_path: Path, model: ModelDescription, text: str, needle: str) -> None:
    with pytest.raises(TraceError) as e:
        import_trace(write(tmp_path, text), model)
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_inconsistent_counts_are_refused(tmp_path: Path, model: ModelDescription) -> None:
    # Expert 0 taking every route: chosen twice per token, impossible for a top-2 router.
    text = "layer,expert,count\n1,0,10\n2,0,10\n"
    with pytest.raises(ProfileError, match="at most once per token"):
        import_trace(write(tmp_path, text), model)


def test_missing_and_binary_files(tmp_path: Path, model: ModelDescription) -> None:
    with pytest.raises(TraceError, match="no such file"):
        import_trace(tmp_path / "none.csv", model)
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\xfa" * 20)
    with pytest.raises(TraceError, match="binary"):
        import_trace(tmp_path / "bin.csv", model)
