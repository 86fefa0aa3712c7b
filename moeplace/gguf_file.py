"""Read a GGUF header fast: metadata and tensor infos of one file or of every shard of a split model.

gguf-py's ``GGUFReader`` parses every metadata value in Python, which costs 10-25 s on a Qwen-size
vocabulary; moeplace needs the header only, so this reader walks the same format with ``struct`` over an
``mmap`` and keeps large arrays as :class:`ArrayInfo` stubs (type and length, no items). Tensor data is never
read. Every count, length and offset is checked before it is trusted, with the same rules llama.cpp's own
loader (``ggml/src/gguf.cpp``) applies, so a file this reader accepts is one llama.cpp would accept too.

A shard is a local path (read through ``mmap``) or a :class:`ByteSource`, which holds the first bytes of a
file whose total size it knows (a remote file read with HTTP range requests: ``moeplace.remote``). The parser
is the same for both: when it needs bytes beyond what a source holds, it asks the source for more and parses
again from the start, so the bounds checks against the file's size stay exactly those of the local case.
"""

from __future__ import annotations

import math
import mmap
import os
import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType, Keys

from moeplace.errors import MoeplaceError
from moeplace.infiles import check_regular, printable

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
GGML_MAX_DIMS = 4
GGML_MAX_NAME = 64  # llama.cpp refuses tensor names of 64 bytes or more

# Arrays longer than this are kept as stubs: only vocabularies and merges are this long, and moeplace needs
# their length, not their items.
ARRAY_KEEP_LIMIT = 4096
# Bounds that keep memory and time proportional to a real model's header on hostile input. The largest real
# vocabularies have ~260k tokens and headers hold ~2k tensors; these limits sit orders of magnitude above.
MAX_ARRAY_LENGTH = 1 << 24
MAX_STRING_LENGTH = 1 << 24
MAX_COUNT = 1 << 20

SPLIT_PATTERN = re.compile(r"^(?P<prefix>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")

_SCALARS: dict[int, struct.Struct] = {
    GGUFValueType.UINT8: struct.Struct("<B"),
    GGUFValueType.INT8: struct.Struct("<b"),
    GGUFValueType.UINT16: struct.Struct("<H"),
    GGUFValueType.INT16: struct.Struct("<h"),
    GGUFValueType.UINT32: struct.Struct("<I"),
    GGUFValueType.INT32: struct.Struct("<i"),
    GGUFValueType.FLOAT32: struct.Struct("<f"),
    GGUFValueType.BOOL: struct.Struct("<?"),
    GGUFValueType.UINT64: struct.Struct("<Q"),
    GGUFValueType.INT64: struct.Struct("<q"),
    GGUFValueType.FLOAT64: struct.Struct("<d"),
}
_NUMPY: dict[int, str] = {
    GGUFValueType.UINT8: "<u1",
    GGUFValueType.INT8: "<i1",
    GGUFValueType.UINT16: "<u2",
    GGUFValueType.INT16: "<i2",
    GGUFValueType.UINT32: "<u4",
    GGUFValueType.INT32: "<i4",
    GGUFValueType.FLOAT32: "<f4",
    GGUFValueType.BOOL: "?",
    GGUFValueType.UINT64: "<u8",
    GGUFValueType.INT64: "<i8",
    GGUFValueType.FLOAT64: "<f8",
}
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_I64 = struct.Struct("<q")


class ByteSource(Protocol):
    """The front of a file that is not on disk. ``name`` is what messages call it; ``size`` is the whole file's
    size; ``grow(n)`` makes at least the first ``min(n, size)`` bytes available and returns everything held so
    far; ``keep(n)`` says the header is the first ``n`` bytes (a source may cache them)."""

    name: str
    size: int

    def grow(self, n: int) -> bytes | bytearray | memoryview: ...

    def keep(self, n: int) -> None: ...


class _NeedMore(Exception):
    """The parser reached the end of the bytes a source holds, before the end of the file."""

    def __init__(self, end: int) -> None:
        super().__init__(end)
        self.end = end


class GGUFError(MoeplaceError):
    """A GGUF file that cannot be read: the message names the file and the problem, on one line.

    Names quoted from a corrupt file can hold any bytes; control characters are escaped so the message stays
    one printable line."""

    def __init__(self, message: str) -> None:
        text = printable(message)
        # A corrupt key can be megabytes long; the message must stay readable.
        super().__init__(text if len(text) <= 400 else text[:300] + " … " + text[-90:])


@dataclass(frozen=True)
class ArrayInfo:
    """A metadata array too long to keep: its element type and length, not its items."""

    item_type: GGUFValueType
    length: int

    def __len__(self) -> int:
        return self.length


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's header entry. ``shape`` is in ggml order (ne0 first, the row length)."""

    name: str
    shape: tuple[int, ...]
    ggml_type: GGMLQuantizationType
    nbytes: int
    offset: int  # absolute byte offset of the data in its shard
    shard: int  # index into GGUFFile.paths

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class GGUFFile:
    """Metadata and tensor infos of a model, merged over its shards (metadata comes from the first)."""

    paths: tuple[Path | RemoteName, ...]  # RemoteName: a shard read over the network
    version: int
    alignment: int
    metadata: Mapping[str, Any]
    tensors: tuple[TensorInfo, ...]
    file_sizes: tuple[int, ...]

    @property
    def total_size(self) -> int:
        return sum(self.file_sizes)


def tensor_nbytes(shape: tuple[int, ...], ggml_type: GGMLQuantizationType) -> int:
    """Exact bytes of a tensor of this ggml shape and type (rows must hold whole blocks)."""
    block_size, type_size = GGML_QUANT_SIZES[ggml_type]
    return math.prod(shape) // block_size * type_size


class _Cursor:
    """Bounds-checked little-endian reads over one shard's bytes: ``size`` is the file's size, ``limit`` how many
    of its bytes ``buf`` holds (all of them for a local file)."""

    def __init__(self, buf: Any, size: int, path: Path | str, limit: int | None = None) -> None:
        self.buf = buf
        self.size = size
        self.limit = size if limit is None else limit
        self.pos = 0
        self.path = path

    def fail(self, problem: str) -> GGUFError:
        return GGUFError(f"{self.path}: {problem}")

    def need(self, n: int, what: str) -> None:
        if n > self.limit - self.pos:
            if n > self.size - self.pos:
                raise self.fail(f"file is truncated: {what} needs {n} bytes at offset {self.pos}, "
                                f"but the file ends at {self.size}")
            raise _NeedMore(self.pos + n)

    def unpack(self, st: struct.Struct, what: str) -> Any:
        self.need(st.size, what)
        (value,) = st.unpack_from(self.buf, self.pos)
        self.pos += st.size
        return value

    def string(self, what: str) -> str:
        n = self.unpack(_U64, what)
        if n > MAX_STRING_LENGTH:
            raise self.fail(f"{what} claims a string of {n} bytes (limit {MAX_STRING_LENGTH}): corrupt header")
        self.need(n, what)
        raw = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        # llama.cpp does not validate UTF-8 either; a stray byte in a token string is no reason to refuse a model.
        return raw.decode("utf-8", errors="replace")

    def skip_strings(self, count: int, what: str) -> None:
        # Fast path: no bounds check per string. unpack_from refuses to read past the buffer, and a final
        # position past the limit is caught below; either way the checked walk then finds the exact problem.
        buf, pos, size, unpack = self.buf, self.pos, self.limit, _U64.unpack_from
        if len(buf) == size:
            try:
                for _ in range(count):
                    pos += 8 + unpack(buf, pos)[0]
            except (struct.error, OverflowError):  # OverflowError: a corrupt length beyond any offset
                pos = size + 1
            if pos <= size:
                self.pos = pos
                return
            pos = self.pos
        for _ in range(count):
            if pos + 8 > size:
                self.pos = pos
                self.need(8, what)
            n = unpack(buf, pos)[0]
            pos += 8 + n
            if pos > size:
                self.pos = pos - n
                self.need(n, what)
        self.pos = pos


def _read_value(cur: _Cursor, vtype: int, key: str) -> Any:
    if vtype == GGUFValueType.STRING:
        return cur.string(f"value of key '{key}'")
    if vtype == GGUFValueType.ARRAY:
        item_type = cur.unpack(_U32, f"array type of key '{key}'")
        count = cur.unpack(_U64, f"array length of key '{key}'")
        if item_type == GGUFValueType.ARRAY:
            raise cur.fail(f"key '{key}' is an array of arrays, which GGUF files do not use: corrupt header")
        if item_type not in _SCALARS and item_type != GGUFValueType.STRING:
            raise cur.fail(f"key '{key}' has an array of unknown value type {item_type}: corrupt header")
        if count > MAX_ARRAY_LENGTH:
            raise cur.fail(f"key '{key}' claims an array of {count} items (limit {MAX_ARRAY_LENGTH}): corrupt header")
        if item_type == GGUFValueType.STRING:
            cur.need(8 * count, f"array of key '{key}'")
            if count > ARRAY_KEEP_LIMIT:
                cur.skip_strings(count, f"array of key '{key}'")
                return ArrayInfo(GGUFValueType(item_type), count)
            return [cur.string(f"item of key '{key}'") for _ in range(count)]
        width = _SCALARS[item_type].size
        cur.need(width * count, f"array of key '{key}'")
        start = cur.pos
        cur.pos += width * count
        if count > ARRAY_KEEP_LIMIT:
            return ArrayInfo(GGUFValueType(item_type), count)
        return np.frombuffer(cur.buf, dtype=_NUMPY[item_type], count=count, offset=start).tolist()
    st = _SCALARS.get(vtype)
    if st is None:
        raise cur.fail(f"key '{key}' has unknown value type {vtype}: corrupt header")
    return cur.unpack(st, f"value of key '{key}'")


# How much of a remote shard to ask for first: the first shard holds the vocabulary (5 MB for DeepSeek-V3),
# the others only their tensor infos (~8 KB). The read then doubles until the header is whole, so it never
# fetches more than twice the header.
FIRST_READ = 1 << 20
LATER_READ = 1 << 16


def _read_source(src: ByteSource, shard: int) -> tuple[int, int, dict[str, Any], list[TensorInfo], int]:
    if src.size < 4:
        raise GGUFError(f"{src.name}: not a GGUF file (only {src.size} bytes)")
    want = FIRST_READ if shard == 0 else LATER_READ
    held = -1
    while True:
        buf = src.grow(want)
        if len(buf) <= held:
            raise GGUFError(f"{src.name}: the header goes past the {held} bytes this source holds "
                            "(a cached copy that is cut short?)")
        cur = _Cursor(buf, src.size, src.name, limit=len(buf))
        try:
            result = _parse(cur, shard)
        except _NeedMore as e:
            want, held = max(e.end, 2 * len(buf)), len(buf)
            continue
        src.keep(_data_start(cur.pos, result[1], len(result[3])))
        return result


def _data_start(header_end: int, alignment: int, n_tensors: int) -> int:
    return -(-header_end // alignment) * alignment if n_tensors else header_end


def _read_shard(path: Path | ByteSource, shard: int) -> tuple[int, int, dict[str, Any], list[TensorInfo], int]:
    """Parses one file; returns (version, alignment, metadata, tensors, file size)."""
    if not isinstance(path, Path):
        return _read_source(path, shard)
    check_regular(path, "GGUF model", GGUFError)
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size < 4:
                raise GGUFError(f"{path}: not a GGUF file (only {size} bytes)")
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                return _parse(_Cursor(mm, size, path), shard)
    except PermissionError:  # check_regular has refused a missing file, a directory, a FIFO and a device
        raise GGUFError(f"{path}: permission denied") from None


def _parse(cur: _Cursor, shard: int) -> tuple[int, int, dict[str, Any], list[TensorInfo], int]:
    magic = bytes(cur.buf[0:4])
    if len(magic) < 4:
        cur.need(4, "magic")
    if magic != GGUF_MAGIC:
        raise cur.fail(f"not a GGUF file (starts with {magic!r}, expected b'GGUF')")
    cur.pos = 4
    version = cur.unpack(_U32, "version")
    if version & 0xFFFF == 0 and version != 0:
        raise cur.fail("big-endian GGUF files are not supported: convert the model on a little-endian machine")
    if version not in SUPPORTED_VERSIONS:
        raise cur.fail(f"unsupported GGUF version {version} (this reader handles versions 2 and 3)")
    n_tensors = cur.unpack(_I64, "tensor count")
    n_kv = cur.unpack(_I64, "metadata count")
    for what, n in (("tensor count", n_tensors), ("metadata count", n_kv)):
        if n < 0 or n > MAX_COUNT:
            raise cur.fail(f"absurd {what} {n} (limit {MAX_COUNT}): corrupt header")

    metadata: dict[str, Any] = {}
    for i in range(n_kv):
        key = cur.string(f"metadata key #{i}")
        if not key:
            raise cur.fail(f"metadata key #{i} is empty: corrupt header")
        if key in metadata:
            raise cur.fail(f"duplicate metadata key '{key}'")
        vtype = cur.unpack(_U32, f"type of key '{key}'")
        metadata[key] = _read_value(cur, vtype, key)

    alignment = metadata.get(Keys.General.ALIGNMENT, DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or isinstance(alignment, bool) or alignment <= 0 \
            or alignment & (alignment - 1):
        raise cur.fail(f"general.alignment {alignment!r} is not a power of two")

    raw: list[tuple[str, tuple[int, ...], GGMLQuantizationType, int, int]] = []
    seen: set[str] = set()
    for i in range(n_tensors):
        name = cur.string(f"name of tensor #{i}")
        if len(name.encode()) >= GGML_MAX_NAME:
            raise cur.fail(f"tensor name '{name[:80]}' is {len(name)} bytes; llama.cpp allows at most "
                           f"{GGML_MAX_NAME - 1}")
        if name in seen:
            raise cur.fail(f"duplicate tensor name '{name}'")
        seen.add(name)
        n_dims = cur.unpack(_U32, f"dimension count of tensor '{name}'")
        if n_dims > GGML_MAX_DIMS:
            raise cur.fail(f"tensor '{name}' has {n_dims} dimensions (ggml allows {GGML_MAX_DIMS})")
        cur.need(8 * n_dims, f"shape of tensor '{name}'")
        shape = tuple(_I64.unpack_from(cur.buf, cur.pos + 8 * j)[0] for j in range(n_dims))
        cur.pos += 8 * n_dims
        if any(d < 0 for d in shape):
            raise cur.fail(f"tensor '{name}' has a negative dimension in {shape}")
        if math.prod(shape) >= 1 << 63:
            raise cur.fail(f"tensor '{name}' has an absurd shape {shape}: corrupt header")
        type_id = cur.unpack(_U32, f"type of tensor '{name}'")
        try:
            ggml_type = GGMLQuantizationType(type_id)
        except ValueError:
            raise cur.fail(f"tensor '{name}' has unknown ggml type {type_id}") from None
        block_size, _ = GGML_QUANT_SIZES[ggml_type]
        row = shape[0] if shape else 1
        if row % block_size:
            raise cur.fail(f"tensor '{name}' of type {ggml_type.name} has rows of {row} elements, "
                           f"not a multiple of its block size {block_size}")
        offset = cur.unpack(_U64, f"offset of tensor '{name}'")
        raw.append((name, shape, ggml_type, tensor_nbytes(shape, ggml_type), offset))

    data_start = _data_start(cur.pos, alignment, n_tensors)
    tensors: list[TensorInfo] = []
    expected = 0
    for name, shape, ggml_type, nbytes, offset in raw:
        # llama.cpp requires the data section packed in header order with alignment padding; an offset
        # anywhere else means overlapping or misplaced data.
        if offset != expected:
            raise cur.fail(f"tensor '{name}' has data offset {offset}, expected {expected} "
                           "(tensor data out of range, overlapping or out of order)")
        end = data_start + offset + nbytes
        if end > cur.size:
            raise cur.fail(f"file is truncated: tensor '{name}' needs bytes up to {end}, "
                           f"but the file ends at {cur.size}")
        tensors.append(TensorInfo(name, shape, ggml_type, nbytes, data_start + offset, shard))
        expected += -(-nbytes // alignment) * alignment
    return version, alignment, metadata, tensors, cur.size


def shard_names(name: str, count: int, where: object = None) -> list[str]:
    """File names of every shard of a split model, given its first shard's file name (llama.cpp's naming);
    ``where`` is what an error calls the first shard (default: its name)."""
    m = SPLIT_PATTERN.match(name)
    if m is None:
        raise GGUFError(f"{where or name}: metadata says the model is split into {count} files, but the name does "
                        "not follow llama.cpp's '<name>-00001-of-0000N.gguf' pattern, so the other shards cannot "
                        "be found: rename the shards as gguf-split wrote them")
    return [f"{m.group('prefix')}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1)]


def shard_paths(path: Path, count: int) -> list[Path]:
    """Paths of every shard of a split model, given its first shard (llama.cpp's naming)."""
    return [path.with_name(n) for n in shard_names(path.name, count, path)]


class RemoteName(str):
    """The address of a shard that is not on disk (a URL or an ``hf://`` reference), with the file name that
    :class:`~pathlib.Path` would give, and the llama.cpp arguments that fetch the model (``-mu``, ``-hf``)."""

    llama_args: tuple[str, ...] = ()

    def __new__(cls, address: str, llama_args: tuple[str, ...] = ()) -> RemoteName:
        self = super().__new__(cls, address)
        self.llama_args = llama_args
        return self

    @property
    def name(self) -> str:
        return self.rsplit("/", 1)[-1]

    def absolute(self) -> RemoteName:
        """An address needs no working folder (Path.absolute's place in the emitters)."""
        return self


def read_gguf(path: str | os.PathLike[str]) -> GGUFFile:
    """Reads the header of a GGUF model, following split shards from the first one.

    Raises :class:`GGUFError` with a one-line message for anything malformed or missing.
    """
    first = Path(path)

    def shard(i: int, count: int) -> tuple[Path, Path]:
        p = shard_paths(first, count)[i]
        if not p.exists():
            raise GGUFError(f"{first}: shard {i + 1} of {count} is missing: expected {p}")
        return p, p

    return read_shards(first, first, shard)


def read_shards(name: Path | RemoteName, first: Path | ByteSource,
                shard: Callable[[int, int], tuple[Path | RemoteName, Path | ByteSource]]) -> GGUFFile:
    """Reads a model from its first shard, named ``name``; ``shard(i, count)`` gives the name and the bytes
    of shard ``i`` (0-based) of ``count``, for a local or a remote model alike."""
    version, alignment, metadata, tensors, size = _read_shard(first, 0)
    count = metadata.get(Keys.Split.LLM_KV_SPLIT_COUNT, 1)
    number = metadata.get(Keys.Split.LLM_KV_SPLIT_NO, 0)
    if not isinstance(count, int) or count < 1 or count > 99999:
        raise GGUFError(f"{name}: split.count {count!r} is not a valid shard count")
    if number != 0:
        m = SPLIT_PATTERN.match(name.name)
        hint = f" ({m.group('prefix')}-00001-of-{count:05d}.gguf)" if m else ""
        raise GGUFError(f"{name}: this is shard {number + 1} of {count}; pass the first shard{hint}")
    if count == 1:
        return GGUFFile((name,), version, alignment, metadata, tuple(tensors), (size,))

    names: list[Path | RemoteName] = [name]
    all_tensors = list(tensors)
    sizes = [size]
    seen = {t.name for t in tensors}
    for i in range(1, count):
        p, src = shard(i, count)
        _, _, shard_meta, shard_tensors, shard_size = _read_shard(src, i)
        if shard_meta.get(Keys.Split.LLM_KV_SPLIT_NO) != i or shard_meta.get(Keys.Split.LLM_KV_SPLIT_COUNT) != count:
            raise GGUFError(f"{p}: split keys say shard {shard_meta.get(Keys.Split.LLM_KV_SPLIT_NO)!r} of "
                            f"{shard_meta.get(Keys.Split.LLM_KV_SPLIT_COUNT)!r}, expected shard {i} of {count}: "
                            "shards from different models are mixed")
        for t in shard_tensors:
            if t.name in seen:
                raise GGUFError(f"{p}: tensor '{t.name}' appears in more than one shard")
            seen.add(t.name)
        names.append(p)
        all_tensors.extend(shard_tensors)
        sizes.append(shard_size)
    declared = metadata.get(Keys.Split.LLM_KV_SPLIT_TENSORS_COUNT)
    if declared is not None and declared != len(all_tensors):
        raise GGUFError(f"{name}: split.tensors.count says {declared} tensors but the {count} shards hold "
                        f"{len(all_tensors)}")
    return GGUFFile(tuple(names), version, alignment, metadata, tuple(all_tensors), tuple(sizes))
