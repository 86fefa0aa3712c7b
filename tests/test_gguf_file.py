"""The GGUF header reader: agreement with gguf-py's reader, split models, and every kind of bad input."""

from __future__ import annotations

import contextlib
import os
import struct
from pathlib import Path

import gguf
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moeplace.gguf_file import ArrayInfo, GGUFError, read_gguf
from moeplace.testing import write_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_model("qwen3moe-tiny", tmp_path_factory.mktemp("m") / "qwen3moe-tiny.gguf")[0]


@pytest.fixture(scope="module")
def tiny_bytes(tiny: Path) -> bytes:
    return tiny.read_bytes()


def _write(tmp_path: Path, data: bytes, name: str = "bad.gguf") -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def _data_start(data: bytes) -> int:
    """Where the tensor data region starts, found with gguf-py's own reader."""
    r = gguf.GGUFReader(_tmp_copy(data))
    return int(r.data_offset)


def _tmp_copy(data: bytes) -> str:
    import tempfile

    fd, name = tempfile.mkstemp(suffix=".gguf")
    os.write(fd, data)
    os.close(fd)
    return name


def test_agrees_with_gguf_py(tiny: Path) -> None:
    ours = read_gguf(tiny)
    theirs = gguf.GGUFReader(tiny)
    assert [t.name for t in ours.tensors] == [t.name for t in theirs.tensors]
    for a, b in zip(ours.tensors, theirs.tensors):
        assert a.shape == tuple(int(x) for x in b.shape)
        assert a.ggml_type == b.tensor_type
        assert a.nbytes == int(b.n_bytes)
        assert a.offset == int(b.data_offset)
    for key, field in theirs.fields.items():
        if key.startswith("GGUF."):
            continue
        ours_v = ours.metadata[key]
        if isinstance(ours_v, ArrayInfo):
            assert ours_v.length == len(field.data)
        else:
            assert ours_v == field.contents(), key


def test_split_model_is_found_from_first_shard(tmp_path: Path) -> None:
    paths = write_model("qwen3moe-tiny", tmp_path / "m.gguf", split=3)
    assert len(paths) == 3
    whole = read_gguf(write_model("qwen3moe-tiny", tmp_path / "whole.gguf")[0])
    split = read_gguf(paths[0])
    assert split.paths == tuple(paths)
    assert [(t.name, t.shape, t.nbytes) for t in split.tensors] == [(t.name, t.shape, t.nbytes) for t in whole.tensors]
    assert {t.shard for t in split.tensors} == {0, 1, 2}


def test_missing_shard(tmp_path: Path) -> None:
    paths = write_model("qwen3moe-tiny", tmp_path / "m.gguf", split=3)
    paths[1].unlink()
    with pytest.raises(GGUFError, match=r"shard 2 of 3 is missing: expected .*00002-of-00003"):
        read_gguf(paths[0])


def test_later_shard_names_the_first(tmp_path: Path) -> None:
    paths = write_model("qwen3moe-tiny", tmp_path / "m.gguf", split=3)
    with pytest.raises(GGUFError, match=r"shard 2 of 3; pass the first shard \(m-00001-of-00003.gguf\)"):
        read_gguf(paths[1])


@pytest.mark.parametrize(("data", "message"), [
    (b"", "not a GGUF file"),
    (b"PK\x03\x04" + b"\0" * 60, "not a GGUF file"),
    (b"GGUF" + struct.pack("<I", 1) + b"\0" * 16, "unsupported GGUF version 1"),
    (b"GGUF" + struct.pack("<I", 4) + b"\0" * 16, "unsupported GGUF version 4"),
    (b"GGUF" + struct.pack(">I", 3) + b"\0" * 16, "big-endian"),
    (b"GGUF" + struct.pack("<I", 3) + b"\0" * 3, "truncated"),
    (b"GGUF" + struct.pack("<Iqq", 3, 1 << 60, 0), "absurd tensor count"),
    (b"GGUF" + struct.pack("<Iqq", 3, 0, -1), "absurd metadata count"),
])
def test_bad_headers(tmp_path: Path, data: bytes, message: str) -> None:
    with pytest.raises(GGUFError, match=message):
        read_gguf(_write(tmp_path, data))


def test_not_found_and_directory(tmp_path: Path) -> None:
    with pytest.raises(GGUFError, match="no such file"):
        read_gguf(tmp_path / "nope.gguf")
    with pytest.raises(GGUFError, match="is a directory"):
        read_gguf(tmp_path)


def test_huge_string_length(tmp_path: Path, tiny_bytes: bytes) -> None:
    data = bytearray(tiny_bytes)
    data[24:32] = struct.pack("<Q", 1 << 40)  # the first key's length: a 1 TB string
    with pytest.raises(GGUFError, match="string of 1099511627776 bytes"):
        read_gguf(_write(tmp_path, bytes(data)))


def test_truncated_everywhere(tmp_path: Path, tiny_bytes: bytes) -> None:
    """Cut the file at many points of the header and data: always a one-line GGUFError saying truncated."""
    start = _data_start(tiny_bytes)
    cuts = sorted({*range(4, start, max(1, start // 200)), start - 1, start + 1, len(tiny_bytes) - 1})
    for cut in cuts:
        with pytest.raises(GGUFError, match=r"truncated|not a GGUF"):
            read_gguf(_write(tmp_path, tiny_bytes[:cut]))


def _offset_field(data: bytes, name: str) -> int:
    """Byte position of a tensor's data-offset field in the header."""
    i = data.index(name.encode()) + len(name)
    (n_dims,) = struct.unpack_from("<I", data, i)
    return i + 4 + 8 * n_dims + 4


def test_offsets_out_of_range_or_overlapping(tmp_path: Path, tiny_bytes: bytes) -> None:
    names = [t.name for t in read_gguf(_write(tmp_path, tiny_bytes, "ok.gguf")).tensors]
    second = _offset_field(tiny_bytes, names[1])
    for bad in (0, 1 << 50, 2**64 - 32):
        data = bytearray(tiny_bytes)
        data[second:second + 8] = struct.pack("<Q", bad)
        with pytest.raises(GGUFError, match="data offset"):
            read_gguf(_write(tmp_path, bytes(data)))


def test_unknown_tensor_type_and_too_many_dims(tmp_path: Path, tiny_bytes: bytes) -> None:
    name = read_gguf(_write(tmp_path, tiny_bytes, "ok.gguf")).tensors[0].name
    type_pos = _offset_field(tiny_bytes, name) - 4
    data = bytearray(tiny_bytes)
    data[type_pos:type_pos + 4] = struct.pack("<I", 999)
    with pytest.raises(GGUFError, match="unknown ggml type 999"):
        read_gguf(_write(tmp_path, bytes(data)))
    dims_pos = tiny_bytes.index(name.encode()) + len(name)
    data = bytearray(tiny_bytes)
    data[dims_pos:dims_pos + 4] = struct.pack("<I", 9)
    with pytest.raises(GGUFError, match="9 dimensions"):
        read_gguf(_write(tmp_path, bytes(data)))


def test_full_scale_header_only_reads_without_touching_data(tmp_path: Path) -> None:
    path = write_model("qwen3-30b-a3b", tmp_path / "q.gguf")[0]
    gf = read_gguf(path)
    assert gf.total_size == os.stat(path).st_size
    assert os.stat(path).st_blocks * 512 < gf.total_size / 100  # sparse: the data was never written
    assert isinstance(gf.metadata["tokenizer.ggml.tokens"], ArrayInfo)
    assert len(gf.metadata["tokenizer.ggml.tokens"]) == 151936


def _mutations(seed: int, data: bytes, n: int) -> list[bytes]:
    """Random corruptions of a real header: flipped bytes, overwritten words, truncations."""
    rng = np.random.default_rng(seed)
    start = _data_start(data)
    out = []
    for _ in range(n):
        d = bytearray(data[: start + 4096])
        kind = rng.integers(3)
        if kind == 0:
            for pos in rng.integers(0, start, size=rng.integers(1, 8)):
                d[pos] = int(rng.integers(256))
        elif kind == 1:
            pos = int(rng.integers(0, start - 8))
            words = [0, 1, 2**31, 2**32 - 1, 2**40, 2**63 - 1, 2**64 - 1]
            d[pos:pos + 8] = struct.pack("<Q", words[int(rng.integers(len(words)))])
        else:
            d = d[: int(rng.integers(0, len(d)))]
        out.append(bytes(d))
    return out


def test_thousands_of_corrupted_headers(tmp_path: Path, tiny_bytes: bytes) -> None:
    """Mutation fuzzing: the reader either accepts the file or raises GGUFError; nothing else escapes."""
    outcomes = {"ok": 0, "error": 0}
    path = tmp_path / "fuzz.gguf"
    for d in _mutations(1234, tiny_bytes, 3000):
        path.write_bytes(d)
        try:
            read_gguf(path)
            outcomes["ok"] += 1
        except GGUFError as e:
            assert "\n" not in str(e)
            outcomes["error"] += 1
    assert outcomes["error"] > 2000  # most corruptions must be caught, not silently accepted


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(min_size=0, max_size=512))
def test_arbitrary_bytes_after_magic(tmp_path: Path, tail: bytes) -> None:
    path = tmp_path / "h.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<I", 3) + tail)
    with contextlib.suppress(GGUFError):
        read_gguf(path)


def _long_string_array(tmp_path: Path) -> tuple[bytes, int]:
    """A GGUF whose metadata holds 5000 strings (a stub array, read by the fast skip); returns the bytes and the
    offset of the array's first string length."""
    w = gguf.GGUFWriter(tmp_path / "long.gguf", "llama")
    w.add_array("test.long", [f"s{i}" for i in range(5000)])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    data = (tmp_path / "long.gguf").read_bytes()
    key = b"test.long"
    first = data.index(key) + len(key) + 4 + 4 + 8  # key, value type, item type, count
    return data, first


def test_long_string_array_is_a_stub_and_its_damage_is_found(tmp_path: Path) -> None:
    data, first = _long_string_array(tmp_path)
    assert read_gguf(_write(tmp_path, data, "ok.gguf")).metadata["test.long"] == ArrayInfo(
        gguf.GGUFValueType.STRING, 5000)
    for cut in (first + 3, first + 20_000):
        with pytest.raises(GGUFError, match=r"file is truncated: array of key 'test.long' needs \d+ bytes at offset"):
            read_gguf(_write(tmp_path, data[:cut], "cut.gguf"))
    at = first
    for _ in range(100):  # the 101st string's length
        at += 8 + struct.unpack_from("<Q", data, at)[0]
    for length in (1 << 40, (1 << 64) - 1):  # a corrupt length: past the file, and past any offset
        bad = bytearray(data)
        bad[at:at + 8] = struct.pack("<Q", length)
        with pytest.raises(GGUFError, match=r"file is truncated: array of key 'test\.long'"):
            read_gguf(_write(tmp_path, bytes(bad), "corrupt.gguf"))
