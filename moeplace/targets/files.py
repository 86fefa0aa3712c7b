"""Writing a target's files through :mod:`moeplace.outfiles`: only the files named, each whole, nothing deleted,
and a same-named file moeplace did not write left alone, except where the target has already taken that
file's content into its own (``replaceable``: the presets INI it merged section by section)."""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from pathlib import Path

from moeplace.emit.scripts import file_bytes
from moeplace.outfiles import OutFile, write_set, written_by_moeplace


def write_files(directory: str | os.PathLike[str], files: Mapping[str, str | bytes],
                replaceable: Collection[str] = ()) -> Path:
    """Writes ``files`` (name -> text or bytes) into ``directory``; ``.sh`` files are executable."""
    out = {name: OutFile(data if isinstance(data, bytes) else file_bytes(name, data), name.endswith(".sh"))
           for name, data in files.items()}

    def owned(path: Path) -> bool:  # outfiles' own marker test (one copy of that rule), plus the named files
        return path.name in replaceable or written_by_moeplace(path)

    return write_set(directory, out, owned).resolve()
