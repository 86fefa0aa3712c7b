"""moeplace.outfiles: whole files, whole sets, nothing of the user's replaced or deleted."""

from __future__ import annotations

import os
import signal
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from moeplace.outfiles import MARKERS, OutFile, OutputError, _held_interrupts, encode_text, write_file, write_set

OURS = MARKERS[0] + b"\n"


def _set(tag: bytes) -> dict[str, OutFile]:
    return {"a.sh": OutFile(b"#!/bin/sh\n# " + OURS + tag, executable=True), "b.json": OutFile(OURS + tag)}


def test_set_lands_beside_the_users_files(tmp_path: Path) -> None:
    (tmp_path / "model.gguf").write_bytes(b"GGUF weights")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    write_set(tmp_path, _set(b"one"))
    write_set(tmp_path, _set(b"two"))  # moeplace's own files are replaced
    assert (tmp_path / "model.gguf").read_bytes() == b"GGUF weights"
    assert (tmp_path / ".git" / "HEAD").read_text() == "ref: refs/heads/main\n"
    assert (tmp_path / "a.sh").read_bytes().endswith(b"two")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".git", "a.sh", "b.json", "model.gguf"]


def test_foreign_file_of_the_same_name_stops_everything(tmp_path: Path) -> None:
    (tmp_path / "b.json").write_text('{"mine": true}\n')
    with pytest.raises(OutputError, match=r"b\.json exists and was not written by moeplace"):
        write_set(tmp_path, _set(b"x"))
    assert (tmp_path / "b.json").read_text() == '{"mine": true}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.json"]  # a.sh not written either, no temp left


def test_symlink_or_folder_in_the_way_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("keep")
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.sh").symlink_to(secret)
    with pytest.raises(OutputError, match="not a regular file"):
        write_set(out, _set(b"x"))
    assert secret.read_text() == "keep"
    (out / "a.sh").unlink()
    (out / "b.json").mkdir()
    with pytest.raises(OutputError, match="not a regular file"):
        write_set(out, _set(b"x"))


@pytest.mark.parametrize("bad", ["", "  "])
def test_empty_path_is_refused(bad: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OutputError, match="empty output folder path"):
        write_set(bad, _set(b"x"))
    assert list(tmp_path.iterdir()) == []


def test_folder_that_is_a_file_or_under_a_file(tmp_path: Path) -> None:
    f = tmp_path / "plain"
    f.write_text("data")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        write_set(f, _set(b"x"))
    with pytest.raises(OutputError, match="a part of this path is a file"):
        write_set(f / "sub", _set(b"x"))
    assert f.read_text() == "data"


def test_unwritable_places_give_one_line(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="choose another output path"):
        write_file("/proc/moeplace-test/x.json", b"{}")
    with pytest.raises(OutputError, match="choose another output path"):
        write_file(tmp_path / ("x" * 300) / "y", b"{}")


def test_failure_midway_leaves_the_old_set_and_no_temp(tmp_path: Path) -> None:
    write_set(tmp_path, _set(b"old"))
    files = {**_set(b"new"), "missing/c.txt": OutFile(OURS)}  # the third temp file cannot be created
    with pytest.raises(OutputError):
        write_set(tmp_path, files)
    assert (tmp_path / "a.sh").read_bytes().endswith(b"old")
    assert (tmp_path / "b.json").read_bytes().endswith(b"old")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.sh", "b.json"]


def test_interrupt_during_the_renames_is_delivered_after() -> None:
    reached = []
    with pytest.raises(KeyboardInterrupt), _held_interrupts():
        os.kill(os.getpid(), signal.SIGINT)
        reached.append("after the signal")
    assert reached == ["after the signal"]


def test_modes_follow_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        d = write_set(tmp_path / "new" / "dir", _set(b"x"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(d.stat().st_mode) == 0o755
    assert stat.S_IMODE((d / "a.sh").stat().st_mode) == 0o755
    assert stat.S_IMODE((d / "b.json").stat().st_mode) == 0o644


@given(st.text(max_size=200))
def test_encoding_is_explicit(text: str) -> None:
    crlf = encode_text(text, crlf=True, bom=True)
    assert crlf.startswith(b"\xef\xbb\xbf")
    body = crlf[3:]
    assert b"\n" not in body.replace(b"\r\n", b"")
    assert body.decode("utf-8").replace("\r\n", "\n") == text.replace("\r\n", "\n")
    assert encode_text(text) == text.encode("utf-8")


def test_unwritable_parent_gives_one_line(tmp_path: Path) -> None:
    """A folder the user may not write into: mode 0555 for an ordinary user; root ignores modes, so there sysfs,
    which refuses even root."""
    if os.geteuid() == 0:
        parent = Path("/sys/kernel")
    else:
        parent = tmp_path / "ro"
        parent.mkdir()
        parent.chmod(0o555)
    with pytest.raises(OutputError, match="choose another output path"):
        write_file(parent / "plan.json", b"{}")
    with pytest.raises(OutputError, match="choose another output path"):
        write_set(parent / "scripts", _set(b"x"))
    assert not (parent / "plan.json").exists()
