"""Files the user names as input (models, profiles, calibrations, traces), checked before they are opened, and JSON
parsed strictly (what moeplace writes goes through :mod:`moeplace.outfiles`).

A FIFO or a character device as "the model" would block ``open`` or never reach end of file, a symlink loop
fails deep inside a parser, and a JSON document can claim anything: ``NaN`` and ``Infinity`` (which Python's
``json`` accepts and no other parser does), nesting deep enough to exhaust the stack, or gigabytes of numbers.
Every reader calls :func:`check_regular` first (``stat`` only, so nothing blocks) and parses JSON with
:func:`parse_json`; each problem is one :class:`~moeplace.errors.MoeplaceError` line of the caller's own type.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path
from typing import Any

from moeplace.errors import MoeplaceError

# A routing profile with co-activation counts for 512 experts over 128 layers is about 200 MiB of JSON.
MAX_JSON_BYTES = 256 << 20
# moeplace's own JSON files nest four levels; anything past this is not one of them.
MAX_JSON_DEPTH = 32


class InputError(MoeplaceError):
    """An input file that cannot be read as what it claims to be."""


def check_regular(path: str | os.PathLike[str], what: str, error: type[MoeplaceError] = InputError) -> int:
    """The size of ``path`` if it is a regular file (symlinks followed); otherwise ``error`` naming why.
    Only ``stat`` is called: a FIFO or device is refused without being opened."""
    p = Path(path)
    if str(path) == "":
        raise error(f"empty path given for the {what}")
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise error(f"{p}: no such file") from None
    except NotADirectoryError:
        raise error(f"{p}: a part of the path is a file, not a folder") from None
    except PermissionError:
        raise error(f"{p}: permission denied") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise error(f"{p}: a loop of symbolic links, which leads to no file") from None
        if e.errno == errno.ENAMETOOLONG:
            raise error(f"{p}: the path is too long for this system") from None
        raise error(f"{p}: cannot read it ({e.strerror or e})") from None
    if stat.S_ISDIR(st.st_mode):
        raise error(f"{p}: is a directory; pass the {what} file itself")
    if not stat.S_ISREG(st.st_mode):
        kind = ("a named pipe (FIFO)" if stat.S_ISFIFO(st.st_mode) else "a device" if
                stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode)
                else "not a regular file")
        raise error(f"{p}: is {kind}; pass the {what} file itself")
    return st.st_size


def read_text(path: str | os.PathLike[str], what: str, error: type[MoeplaceError] = InputError,
              limit: int = MAX_JSON_BYTES) -> str:
    """The UTF-8 text of a regular file of at most ``limit`` bytes."""
    size = check_regular(path, what, error)
    if size > limit:
        raise error(f"{path}: {size} bytes is more than the {what} can be (limit {limit}); is this the right file?")
    try:
        with open(path, "rb") as fh:
            data = fh.read(size + 1)  # not limit + 1: read(n) allocates n bytes before it reads
    except OSError as e:
        raise error(f"{path}: cannot read it ({e.strerror or e})") from None
    if len(data) > size:
        raise error(f"{path}: the file grew while it was read; read it again when it is complete")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise error(f"{path}: binary content, not the {what} expected") from None


def printable(text: str) -> str:
    """``text`` with every character a terminal would act on (C0 and C1 controls, which start escape sequences;
    bidirectional overrides; other invisible formatting) written as a Python escape such as ``\\x1b``, for
    names read from files (``general.name``, tensor names) and messages that quote them."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def json_depth(value: Any) -> int:
    """How deeply lists and objects nest in ``value`` (a scalar is 0), without recursion."""
    depth, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            children: Any = v.values()
        elif isinstance(v, list):
            children = v
        else:
            continue
        depth = max(depth, d)
        if depth > MAX_JSON_DEPTH:
            return depth
        stack.extend((c, d + 1) for c in children if isinstance(c, dict | list))
    return depth


def parse_json(text: str, origin: str, error: type[MoeplaceError] = InputError, fix: str = "") -> Any:
    """Strict JSON: no NaN/Infinity, at most :data:`MAX_JSON_DEPTH` levels deep. ``fix`` ends the message."""
    tail = f"; {fix}" if fix else ""
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise error(f"{origin}: not valid JSON at line {e.lineno} column {e.colno} ({e.msg}){tail}") from None
    except ValueError as e:  # NaN / Infinity
        raise error(f"{origin}: not valid JSON ({e}){tail}") from None
    except RecursionError:
        raise error(f"{origin}: JSON nested too deeply (limit {MAX_JSON_DEPTH} levels){tail}") from None
    if json_depth(data) > MAX_JSON_DEPTH:
        raise error(f"{origin}: JSON nested too deeply (limit {MAX_JSON_DEPTH} levels){tail}")
    return data


