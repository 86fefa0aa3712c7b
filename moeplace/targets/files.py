"""Writing a target's files: only the files named, into a folder created if missing, each atomically.

Nothing else in the folder is touched or deleted. Each file is written to a temporary name beside it, flushed,
and renamed over the old one (``os.replace``), so a reader or an interrupted run sees either the old file or
the new one. Text is UTF-8 with LF line endings, except ``.ps1`` files: UTF-8 with a byte-order mark and CRLF,
because Windows PowerShell 5.1 reads BOM-less files in the ANSI code page. ``.sh`` files get the x bits the
umask allows.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from moeplace.errors import MoeplaceError


class OutputError(MoeplaceError):
    """An output folder or file that cannot be written."""


def encode(name: str, content: str | bytes) -> bytes:
    if isinstance(content, bytes):
        return content
    if name.endswith(".ps1"):
        return "\ufeff".encode() + content.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")
    return content.encode("utf-8")


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Writes ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, mode & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_files(directory: str | os.PathLike[str], files: Mapping[str, str | bytes]) -> Path:
    """Writes ``files`` (name -> content) into ``directory`` and returns its path; nothing else is touched."""
    d = Path(directory)
    if os.fspath(directory) == "":
        raise OutputError("output folder is empty: give a folder name with -o")
    if d.exists() and not d.is_dir():
        raise OutputError(f"{d}: exists and is not a folder; choose another -o")
    try:
        d.mkdir(parents=True, exist_ok=True)
        for name, content in files.items():
            if "/" in name or "\\" in name or name in ("", ".", ".."):
                raise OutputError(f"file name {name!r} is not a plain name")
            write_atomic(d / name, encode(name, content), 0o755 if name.endswith(".sh") else 0o644)
    except OSError as e:
        raise OutputError(f"{d}: cannot write there ({e.strerror or e}); choose another -o") from None
    return d
