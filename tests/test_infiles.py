"""moeplace.infiles: input files refused before they are opened, strict JSON, names made printable."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from moeplace.infiles import (
    MAX_JSON_DEPTH,
    InputError,
    check_regular,
    json_depth,
    parse_json,
    printable,
    read_text,
)

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="needs FIFOs, /dev and /proc")


@posix_only
def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    t0 = time.perf_counter()
    with pytest.raises(InputError, match="named pipe"):
        check_regular(fifo, "GGUF model")
    with pytest.raises(InputError, match="named pipe"):
        read_text(fifo, "profile")
    assert time.perf_counter() - t0 < 1.0


@posix_only
@pytest.mark.parametrize("device", ["/dev/zero", "/dev/null"])
def test_a_device_is_refused(device: str) -> None:
    with pytest.raises(InputError, match="a device"):
        check_regular(device, "calibration")


def test_a_symlink_loop_is_named(tmp_path: Path) -> None:
    loop = tmp_path / "loop.gguf"
    loop.symlink_to(loop)
    with pytest.raises(InputError, match="loop of symbolic links"):
        check_regular(loop, "GGUF model")


@pytest.mark.parametrize(("make", "message"), [
    (lambda d: d / "missing.json", "no such file"),
    (lambda d: d, "is a directory"),
    (lambda d: d / "file.txt" / "below.json", "a part of the path is a file"),
    (lambda d: d / ("x" * 300), "too long"),
])
def test_bad_input_paths(tmp_path: Path, make, message: str) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(InputError, match=message):
        check_regular(make(tmp_path), "profile")


def test_read_text_limits_size_and_refuses_binary(tmp_path: Path) -> None:
    big = tmp_path / "big.json"
    big.write_text("1" * 101)
    with pytest.raises(InputError, match="limit 100"):
        read_text(big, "calibration", limit=100)
    binary = tmp_path / "bin.json"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(InputError, match="binary content"):
        read_text(binary, "profile")
    ok = tmp_path / "ok.json"
    ok.write_text('{"a": 1}')
    assert read_text(ok, "profile") == '{"a": 1}'


@pytest.mark.parametrize(("text", "message"), [
    ('{"x": NaN}', "NaN is not a JSON number"),
    ('[Infinity]', "Infinity is not a JSON number"),
    ('[-Infinity]', "Infinity is not a JSON number"),
    ('{"x": 1', "not valid JSON at line 1"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1), "nested too deeply"),
    ("1" * 5000, "not valid JSON"),  # past Python's int-digits limit
])
def test_strict_json(text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_json(text, "f.json")


def test_json_within_the_limits_parses() -> None:
    nested = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    assert json_depth(parse_json(nested, "f.json")) == MAX_JSON_DEPTH
    assert parse_json('{"a": [1, 2.5, {"b": null}]}', "f.json") == {"a": [1, 2.5, {"b": None}]}
    assert json_depth(5) == 0 and json_depth({"a": {"b": [1]}}) == 3


@pytest.mark.parametrize(("raw", "shown"), [
    ("Qwen3 30B", "Qwen3 30B"),
    ("evil\x1b[2J\x1b]0;owned\x07", "evil\\x1b[2J\\x1b]0;owned\\x07"),
    ("line\nbreak\rcr", "line\\nbreak\\rcr"),
    ("c1\x9bcsi", "c1\\x9bcsi"),
    ("bidi\u202eevil", "bidi\\u202eevil"),
    ("ünïcode ok", "ünïcode ok"),
])
def test_printable_escapes_what_a_terminal_acts_on(raw: str, shown: str) -> None:
    assert printable(raw) == shown

