"""Tests of the test model factory (moeplace.testing): the files it writes are the files it says it writes."""

from __future__ import annotations

import itertools
import os
import struct
from dataclasses import replace
from pathlib import Path

import gguf
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from moeplace import testing as factory
from moeplace.testing import FULL, ROLES, SPECS, TINY, expected, write_all, write_model, writer

# Full-scale header-only files are a few MB of metadata each; anything beyond that means data got written.
HEADER_BUDGET = 64 << 20


def _field(reader: gguf.GGUFReader, key: str) -> object:
    field = reader.get_field(key)
    assert field is not None, key
    return field.contents()


def _header_counts(path: Path) -> tuple[int, int]:
    """(tensor count, kv count) from the fixed GGUF header, without parsing the vocabulary."""
    with path.open("rb") as f:
        magic, version, n_tensors, n_kv = struct.unpack("<IIQQ", f.read(24))
    assert magic == gguf.GGUF_MAGIC
    assert version == gguf.GGUF_VERSION
    return n_tensors, n_kv


def _check_tensors(reader: gguf.GGUFReader, want: list[factory.TensorSpec], file_size: int) -> None:
    got = [(t.name, tuple(int(x) for x in t.shape), t.tensor_type, int(t.n_bytes)) for t in reader.tensors]
    assert got == [(t.name, t.ne, t.ggml_type, t.nbytes) for t in want]
    align = int(_field(reader, gguf.Keys.General.ALIGNMENT)) if reader.get_field(
        gguf.Keys.General.ALIGNMENT) else gguf.GGUF_DEFAULT_ALIGNMENT
    assert reader.data_offset % align == 0
    for t in reader.tensors:
        assert t.data_offset % align == 0, t.name
        assert t.data_offset + int(t.n_bytes) <= file_size, t.name


def test_registry() -> None:
    assert set(SPECS) == set(TINY) | set(FULL)
    assert not set(TINY) & set(FULL)
    assert all(SPECS[name].name == name for name in SPECS)
    assert all(not SPECS[n].header_only for n in TINY)
    assert all(SPECS[n].header_only for n in FULL)
    for required in ("qwen3moe-tiny", "deepseek2-tiny", "gpt-oss-tiny", "mixtral-tiny", "glm4moe-tiny",
                     "llama-tiny"):
        assert required in TINY
    for required in ("qwen3-30b-a3b", "qwen3-235b-a22b", "deepseek-v3", "gpt-oss-20b", "gpt-oss-120b",
                     "mixtral-8x7b", "glm-4.5-air", "llama-3-8b"):
        assert required in FULL
    with pytest.raises(KeyError, match="unknown factory model"):
        expected("no-such-model")


@pytest.mark.parametrize("name", list(SPECS))
def test_expected_is_consistent(name: str) -> None:
    spec = SPECS[name]
    e = expected(name)
    assert tuple(e.bytes_by_role) == ROLES
    assert sum(e.bytes_by_role.values()) == e.total_bytes == sum(t.nbytes for t in e.tensors)
    assert e.n_tensors == len(e.tensors) == len({t.name for t in e.tensors})
    assert (e.n_layer, e.n_expert, e.n_expert_used) == (spec.n_layer, spec.n_expert, spec.n_expert_used)
    assert all(t.role in ROLES for t in e.tensors)
    assert all(t.name.endswith((".weight", ".bias")) or t.name.endswith(".ssm_a") for t in e.tensors)
    assert (e.bytes_by_role["routed_expert"] > 0) == (spec.n_expert > 0)
    assert (e.bytes_by_role["nextn"] > 0) == (spec.n_nextn > 0)
    assert (e.bytes_by_role["ssm"] > 0) == (spec.ssm_state_size > 0)
    assert (e.bytes_by_role["shared_expert"] > 0) == (spec.n_ff_shared > 0 or spec.arch == "llama4")
    for t in e.tensors:
        if t.role == "routed_expert" and t.name.endswith(".weight"):
            # experts are the outermost dimension: one contiguous byte range each
            assert t.ne[-1] == spec.n_expert and t.nbytes % spec.n_expert == 0
        if t.name.endswith("norm.weight") or t.name.endswith(".bias"):
            assert t.ggml_type == gguf.GGMLQuantizationType.F32, t.name
    nextn_blocks = {int(t.name.split(".")[1]) for t in e.tensors if t.role == "nextn"}
    assert nextn_blocks == set(range(spec.n_layer - spec.n_nextn, spec.n_layer))


def test_full_scale_numbers_match_published_files() -> None:
    # Tensor counts and sizes of the popular GGUFs (Q4_K_M; ggml-org MXFP4 for gpt-oss), within 1%.
    published = {"qwen3-30b-a3b": (579, 18.6e9), "gpt-oss-20b": (459, 12.1e9), "gpt-oss-120b": (687, 63.4e9),
                 "glm-4.5-air": (803, 72.9e9), "llama-3-8b": (291, 4.92e9), "deepseek-v3": (1086, 404e9)}
    for name, (n_tensors, size) in published.items():
        e = expected(name)
        assert e.n_tensors == n_tensors, name
        assert abs(e.total_bytes - size) / size < 0.01, (name, e.total_bytes)
    types = {t.name: t.ggml_type for t in expected("qwen3-30b-a3b").tensors}
    Q = gguf.GGMLQuantizationType
    assert types["output.weight"] == Q.Q6_K and types["token_embd.weight"] == Q.Q4_K
    assert types["blk.0.ffn_down_exps.weight"] == Q.Q6_K  # llama-quantize's use_more_bits layers
    assert types["blk.6.ffn_down_exps.weight"] == Q.Q4_K
    assert types["blk.0.ffn_gate_inp.weight"] == Q.F32
    oss = {t.name: t.ggml_type for t in expected("gpt-oss-20b").tensors}
    assert oss["blk.0.ffn_up_exps.weight"] == Q.MXFP4 and oss["blk.0.attn_q.weight"] == Q.Q8_0


@pytest.mark.parametrize("name", TINY)
def test_tiny_reads_back(name: str, tmp_path: Path) -> None:
    spec = SPECS[name]
    e = expected(name)
    (path,) = write_model(name, tmp_path / f"{name}.gguf")
    assert path == tmp_path / f"{name}.gguf"
    reader = gguf.GGUFReader(path)
    _check_tensors(reader, list(e.tensors), path.stat().st_size)
    assert sum(int(t.n_bytes) for t in reader.tensors) == e.total_bytes
    arch = spec.arch
    assert _field(reader, gguf.Keys.General.ARCHITECTURE) == arch
    assert _field(reader, gguf.Keys.LLM.BLOCK_COUNT.format(arch=arch)) == spec.n_layer
    assert _field(reader, gguf.Keys.LLM.EMBEDDING_LENGTH.format(arch=arch)) == spec.n_embd
    if spec.n_expert:
        assert _field(reader, gguf.Keys.LLM.EXPERT_COUNT.format(arch=arch)) == spec.n_expert
        assert _field(reader, gguf.Keys.LLM.EXPERT_USED_COUNT.format(arch=arch)) == spec.n_expert_used
    tokens = _field(reader, gguf.Keys.Tokenizer.LIST)
    assert isinstance(tokens, list) and len(tokens) == spec.n_vocab
    assert {"<unk>", "<s>", "</s>", "<0x00>", "<0x0A>", "<0xFF>"} <= set(tokens)
    assert _field(reader, gguf.Keys.Tokenizer.MODEL) == "llama"
    # real data: finite and not all zero
    for t in reader.tensors:
        if t.tensor_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            data = np.asarray(t.data, dtype=np.float32)
            assert np.isfinite(data).all() and np.any(data != 0), t.name


def test_tiny_files_are_deterministic(tmp_path: Path) -> None:
    for name in TINY:
        (a,) = write_model(name, tmp_path / "a" / f"{name}.gguf")
        (b,) = write_model(SPECS[name], tmp_path / "b" / f"{name}.gguf")
        assert a.read_bytes() == b.read_bytes(), name


def test_tiny_split(tmp_path: Path) -> None:
    name = "glm4moe-tiny"
    e = expected(name)
    paths = write_model(name, tmp_path / "glm.gguf", split=3)
    assert [p.name for p in paths] == [f"glm-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    seen: list[factory.TensorSpec] = []
    for i, path in enumerate(paths):
        reader = gguf.GGUFReader(path)
        assert _field(reader, gguf.Keys.Split.LLM_KV_SPLIT_NO) == i
        assert _field(reader, gguf.Keys.Split.LLM_KV_SPLIT_COUNT) == 3
        assert _field(reader, gguf.Keys.Split.LLM_KV_SPLIT_TENSORS_COUNT) == e.n_tensors
        assert reader.fields[gguf.Keys.Split.LLM_KV_SPLIT_NO].types == [gguf.GGUFValueType.UINT16]
        assert reader.fields[gguf.Keys.Split.LLM_KV_SPLIT_TENSORS_COUNT].types == [gguf.GGUFValueType.INT32]
        # only the first shard carries the model's metadata, as gguf-split writes it
        assert (reader.get_field(gguf.Keys.General.ARCHITECTURE) is not None) == (i == 0)
        assert (reader.get_field(gguf.Keys.Tokenizer.LIST) is not None) == (i == 0)
        want = list(e.tensors[len(seen):len(seen) + len(reader.tensors)])
        assert reader.tensors, "no shard may be empty"
        _check_tensors(reader, want, path.stat().st_size)
        seen += want
    assert seen == list(e.tensors)
    with pytest.raises(ValueError, match="cannot split"):
        write_model(name, tmp_path / "x.gguf", split=e.n_tensors + 1)


def test_header_only_layout(tmp_path: Path) -> None:
    # A full-scale model with a small vocabulary, so the gguf reader can check every offset quickly.
    spec = replace(SPECS["mixtral-8x7b"], name="mixtral-small-vocab", n_vocab=400)
    e = expected(spec)
    (path,) = write_model(spec, tmp_path / "m.gguf")
    st_ = path.stat()
    reader = gguf.GGUFReader(path)
    _check_tensors(reader, list(e.tensors), st_.st_size)
    last = reader.tensors[-1]
    pad = gguf.GGUFWriter.ggml_pad
    assert st_.st_size == pad(last.data_offset + int(last.n_bytes), gguf.GGUF_DEFAULT_ALIGNMENT)
    assert st_.st_blocks * 512 < HEADER_BUDGET


@pytest.fixture(scope="module")
def full_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    return write_all(tmp_path_factory.mktemp("full"), FULL)


@pytest.mark.parametrize("name", FULL)
def test_full_scale_files(name: str, full_files: dict[str, list[Path]]) -> None:
    e = expected(name)
    paths = full_files[name]
    assert len(paths) == e.n_files
    stats = [os.stat(p) for p in paths]
    apparent = sum(s.st_size for s in stats)
    assert e.total_bytes < apparent < e.total_bytes + HEADER_BUDGET
    assert sum(s.st_blocks * 512 for s in stats) < HEADER_BUDGET < e.total_bytes
    assert sum(_header_counts(p)[0] for p in paths) == e.n_tensors
    if name == "deepseek-v3-split":
        assert [p.name for p in paths] == [f"{name}-{i:05d}-of-00009.gguf" for i in range(1, 10)]
        offset = _header_counts(paths[0])[0]
        for i, path in enumerate(paths[1:], start=1):
            reader = gguf.GGUFReader(path)  # later shards carry no vocabulary: quick to read
            assert _field(reader, gguf.Keys.Split.LLM_KV_SPLIT_NO) == i
            assert _field(reader, gguf.Keys.Split.LLM_KV_SPLIT_COUNT) == 9
            assert _field(reader, gguf.Keys.Split.LLM_KV_SPLIT_TENSORS_COUNT) == e.n_tensors
            want = list(e.tensors[offset:offset + len(reader.tensors)])
            _check_tensors(reader, want, path.stat().st_size)
            offset += len(want)
        assert offset == e.n_tensors


def test_write_all_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = write_all(tmp_path, ["llama-tiny", "mixtral-tiny"])
    assert out == {n: [tmp_path / f"{n}.gguf"] for n in ("llama-tiny", "mixtral-tiny")}
    assert factory.main([str(tmp_path / "cli"), "qwen3moe-tiny"]) == 0
    assert (tmp_path / "cli" / "qwen3moe-tiny.gguf").is_file()
    assert factory.main(["--list"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in SPECS)
    with pytest.raises(SystemExit):
        factory.main([str(tmp_path), "no-such-model"])


@given(st.lists(st.integers(0, 1 << 40), min_size=1, max_size=60), st.integers(1, 60))
def test_shards_are_contiguous_and_never_empty(sizes: list[int], n: int) -> None:
    if n > len(sizes):
        with pytest.raises(ValueError):
            writer._shard_of(sizes, n)
        return
    shard = writer._shard_of(sizes, n)
    assert shard[0] == 0 and shard[-1] == n - 1
    assert all(b - a in (0, 1) for a, b in itertools.pairwise(shard))


@pytest.mark.llama
@pytest.mark.parametrize("name", TINY)
def test_tiny_runs_in_llama_cpp(name: str, tmp_path: Path) -> None:
    import llama_cpp
    (path,) = write_model(name, tmp_path / f"{name}.gguf")
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_threads=2, logits_all=True, verbose=False)
    tokens = llm.tokenize(b"Hello world, the expert layer.")
    llm.eval(tokens)
    logits = np.asarray(llm.scores[: len(tokens)])
    assert logits.shape == (len(tokens), SPECS[name].n_vocab)
    assert np.isfinite(logits).all() and logits.std() > 0
    out = llm.create_completion("the model", max_tokens=4, temperature=0.0)
    assert isinstance(out["choices"][0]["text"], str)


@pytest.mark.parametrize(("values", "item_type"), [
    (["<s>", "\u2581the", "Ġ", "t123", "日本"], gguf.GGUFValueType.STRING),
    ([1, 3, 6, 1, -5], gguf.GGUFValueType.INT32),
    ([0.0, -1.5, 3.25], gguf.GGUFValueType.FLOAT32),
])
def test_bulk_array_packing_matches_gguf(values: list[object], item_type: gguf.GGUFValueType) -> None:
    fast, stock = writer._Writer(None, "llama"), gguf.GGUFWriter(None, "llama")
    for add_vtype in (True, False):
        want = stock._pack_val(values, gguf.GGUFValueType.ARRAY, add_vtype, sub_type=item_type)
        assert fast._pack_val(values, gguf.GGUFValueType.ARRAY, add_vtype, sub_type=item_type) == want
