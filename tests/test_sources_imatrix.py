"""imatrix import: real imatrix GGUF files written with gguf.GGUFWriter the way llama-imatrix lays them out
(tools/imatrix/imatrix.cpp, save_imatrix), the legacy .dat format, and files for other models."""

from __future__ import annotations

import dataclasses
import struct
from pathlib import Path

import gguf
import numpy as np
import pytest

from moeplace.errors import MoeplaceError
from moeplace.model import ModelDescription, Role, load_model
from moeplace.routing import check_profile, expert_probs
from moeplace.sources.imatrix import ImatrixError, import_imatrix
from moeplace.testing import SPECS, write_model


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> ModelDescription:
    return load_model(write_model("qwen3moe-tiny", tmp_path_factory.mktemp("m") / "qwen3moe-tiny.gguf")[0])


@pytest.fixture(scope="module", params=["deepseek2-tiny", "qwen3moe-wide", "qwen3moe-16e"])
def other(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> ModelDescription:
    """Models an imatrix of qwen3moe-tiny must not be mistaken for: other names, wider rows, more experts."""
    base = SPECS["qwen3moe-tiny"]
    spec = {"deepseek2-tiny": SPECS["deepseek2-tiny"],
            "qwen3moe-wide": dataclasses.replace(base, name="qwen3moe-wide", n_embd=128),
            "qwen3moe-16e": dataclasses.replace(base, name="qwen3moe-16e", n_expert=16)}[request.param]
    return load_model(write_model(spec, tmp_path_factory.mktemp("m") / f"{request.param}.gguf")[0])


def routing_counts(model: ModelDescription, tokens: int, seed: int = 0) -> dict[int, np.ndarray]:
    """Per MoE layer, what a top-k router selecting k distinct experts per token would count."""
    hp = model.hparams
    rng = np.random.default_rng(seed)
    out = {}
    for layer in (ly.index for ly in model.layers if ly.moe):
        weights = rng.dirichlet(np.full(hp.n_expert, 0.5))
        keys = np.log(weights + 1e-12) + rng.gumbel(size=(tokens, hp.n_expert))
        chosen = np.argpartition(-keys, hp.n_expert_used - 1, axis=1)[:, :hp.n_expert_used]
        out[layer] = np.bincount(chosen.ravel(), minlength=hp.n_expert).astype(np.float32)
    return out


def write_imatrix(path: Path, model: ModelDescription, counts: dict[int, np.ndarray], tokens: int, *,
                  chunk_size: int = 512, datasets: tuple[str, ...] = ("wiki.train.raw",),
                  per_expert: bool = True, with_in_sum: bool = True) -> Path:
    """An imatrix GGUF as llama-imatrix's save_imatrix writes it: general.type, imatrix.* keys, and for every
    matrix weight (sorted by name) '<w>.in_sum2' F32 [nval/nmat, nmat], '<w>.counts' F32 [1, nmat] and, in
    newer builds, '<w>.in_sum'. Dense weights keep one count; *_exps weights one per expert."""
    w = gguf.GGUFWriter(path, arch="")
    # arch="" writes no general.architecture (GGUFWriter skips empty strings), as llama-imatrix writes none
    w.add_type("imatrix")
    w.add_array("imatrix.datasets", list(datasets))
    w.add_uint32("imatrix.chunk_count", tokens // chunk_size)
    w.add_uint32("imatrix.chunk_size", chunk_size)
    rng = np.random.default_rng(1)
    weights = [t for t in model.tensors if t.name.endswith(".weight") and len(t.shape) >= 2
               and t.block is not None and t.role is not Role.NORM]
    for t in sorted(weights, key=lambda t: t.name):
        experts = t.role is Role.ROUTED_EXPERT
        nval = t.shape[0] * (t.shape[2] if experts else 1)  # input columns x matrices
        nmat = t.shape[2] if experts and per_expert else 1
        c = counts[t.block] if nmat > 1 else np.array([float(tokens)], dtype=np.float32)
        sums = rng.random((nmat, nval // nmat)).astype(np.float32)  # ggml [nval/nmat, nmat]
        w.add_tensor(f"{t.name}.in_sum2", sums)
        w.add_tensor(f"{t.name}.counts", c.reshape(nmat, 1).astype(np.float32))
        if with_in_sum:
            w.add_tensor(f"{t.name}.in_sum", sums)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_counts_round_trip(tmp_path: Path, model: ModelDescription) -> None:
    tokens = 2048
    counts = routing_counts(model, tokens)
    path = write_imatrix(tmp_path / "imatrix.gguf", model, counts, tokens, datasets=("a.txt", "b.txt"))
    prof = import_imatrix(path, model)
    check_profile(prof, model)
    assert prof.layers == tuple(sorted(counts))
    k = model.hparams.n_expert_used
    for layer, c in counts.items():
        assert np.array_equal(prof.counts[layer], c)
        assert prof.tokens[layer] == tokens
        assert expert_probs(prof)[layer].sum() == pytest.approx(k)
    assert prof.source.kind == "imatrix"
    assert prof.source.datasets == ("a.txt", "b.txt")
    assert prof.source.chunk_count == 4 and prof.source.chunk_size == 512
    assert prof.source.file == "imatrix.gguf"


def test_older_files_without_in_sum_are_read(tmp_path: Path, model: ModelDescription) -> None:
    counts = routing_counts(model, 512, seed=5)
    prof = import_imatrix(write_imatrix(tmp_path / "old.gguf", model, counts, 512, with_in_sum=False), model)
    for layer, c in counts.items():
        assert np.array_equal(prof.counts[layer], c)


def write_legacy_dat(path: Path, model: ModelDescription, tokens: int) -> Path:
    """save_imatrix_legacy: int32 n_entries, then per entry int32 name length, name, int32 ncall, int32 nval,
    nval floats; then int32 last chunk and the dataset name."""
    entries = [t for t in model.tensors if t.name.endswith(".weight") and len(t.shape) >= 2 and t.block is not None]
    out = bytearray(struct.pack("<i", len(entries)))
    for t in sorted(entries, key=lambda t: t.name):
        nval = t.shape[0] * (t.shape[2] if len(t.shape) > 2 else 1)
        out += struct.pack("<i", len(t.name)) + t.name.encode() + struct.pack("<ii", tokens // 512, nval)
        out += np.ones(nval, dtype="<f4").tobytes()
    out += struct.pack("<i", tokens // 512) + struct.pack("<i", 8) + b"wiki.raw"
    path.write_bytes(bytes(out))
    return path


def test_legacy_dat_is_refused_with_the_reason(tmp_path: Path, model: ModelDescription) -> None:
    for name in ("imatrix.dat", "imatrix.bin"):
        with pytest.raises(ImatrixError) as e:
            import_imatrix(write_legacy_dat(tmp_path / name, model, 1024), model)
        msg = str(e.value)
        assert "legacy .dat" in msg and "not per expert" in msg and "llama-imatrix" in msg
        assert "\n" not in msg


def test_gguf_converted_from_legacy_is_refused(tmp_path: Path, model: ModelDescription) -> None:
    path = write_imatrix(tmp_path / "converted.gguf", model, {}, 1024, per_expert=False, with_in_sum=False)
    with pytest.raises(ImatrixError, match=r"single count for all experts.*legacy \.dat"):
        import_imatrix(path, model)


def test_imatrix_of_another_model_is_refused(tmp_path: Path, model: ModelDescription,
                                             other: ModelDescription) -> None:
    path = write_imatrix(tmp_path / "other.gguf", other, routing_counts(other, 512), 512)
    with pytest.raises(ImatrixError, match="another model"):
        import_imatrix(path, model)


def test_imatrix_missing_a_layer_is_refused(tmp_path: Path, model: ModelDescription) -> None:
    counts = routing_counts(model, 512)
    path = tmp_path / "partial.gguf"
    write_imatrix(path, model, counts, 512)
    # Rewrite it without layer 1's expert entries.
    r = gguf.GGUFReader(path)
    w = gguf.GGUFWriter(tmp_path / "partial2.gguf", arch="")
    w.add_type("imatrix")
    for t in r.tensors:
        if not t.name.startswith("blk.1.ffn_") or "_exps" not in t.name:
            w.add_tensor(t.name, np.array(t.data).reshape(tuple(reversed([int(x) for x in t.shape]))))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ImatrixError, match=r"no expert counts for MoE layers \[1\]"):
        import_imatrix(tmp_path / "partial2.gguf", model)


def test_model_file_and_junk_are_refused(tmp_path: Path, model: ModelDescription) -> None:
    with pytest.raises(ImatrixError, match="model file, not an imatrix"):
        import_imatrix(model.paths[0], model)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00\x01not an imatrix at all" * 10)
    with pytest.raises(ImatrixError, match="not an imatrix file"):
        import_imatrix(junk, model)
    with pytest.raises(ImatrixError, match="no such file"):
        import_imatrix(tmp_path / "missing.gguf", model)


def test_truncated_imatrix_is_refused(tmp_path: Path, model: ModelDescription) -> None:
    path = write_imatrix(tmp_path / "imatrix.gguf", model, routing_counts(model, 512), 512)
    data = path.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: len(data) - 100])
    with pytest.raises(MoeplaceError, match="truncated"):
        import_imatrix(cut, model)
