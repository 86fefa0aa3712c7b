"""Which flags an engine build has: read from its ``--version`` and ``--help``, or from a stored help text.

Emitters ask :meth:`EngineBuild.has` before writing an optional flag (``--fit off`` only where ``--fit`` exists;
``--moe-cache-mib``, ``--n-cpu-ffn``, ``--load-mode`` where present) and refuse a plan whose required flags
(``-ot``) the build lacks. Without ``--engine-bin`` and without the binary on PATH, a target's stated default
build is used: a help text stored in ``moeplace/data/help/`` with where it came from in its first line.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from moeplace.errors import MoeplaceError

# A flag as help texts print it: at a line start or after a comma/space, one or two dashes, then a name.
_FLAG = re.compile(r"(?:^|(?<=[\s,]))(--?[A-Za-z][A-Za-z0-9_-]*)")
HELP_TIMEOUT = 20.0


class BuildError(MoeplaceError):
    """An engine binary that cannot be run or whose help text says nothing usable."""


@dataclass(frozen=True)
class EngineBuild:
    """An engine build: its version line, the flags its help lists, and where that knowledge came from."""

    engine: str
    version: str
    flags: frozenset[str]
    source: str  # "binary /usr/bin/llama-server" or "stored help text of ... (no binary given)"

    def has(self, flag: str) -> bool:
        return flag in self.flags

    def describe(self) -> str:
        """Engine, version and the short form of the source (``binary PATH`` or ``stored help text NAME``)."""
        return f"{self.engine} {self.version} ({self.source.split(':', 1)[0]})"


def help_flags(text: str) -> frozenset[str]:
    """Every flag named in the option column of a help text. Only the part of each line before the
    description counts (llama.cpp aligns descriptions after at least two spaces), so a flag mentioned in prose
    (``"--fit off to disable"``) is not taken for an option."""
    out: set[str] = set()
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped.startswith("-"):
            continue
        head = re.split(r"(?:\s{2,}|\t)(?=[^\s-])", stripped, maxsplit=1)[0]
        out.update(m.group(1) for m in _FLAG.finditer(head))
    return frozenset(out)


def parse_build(engine: str, version_text: str, help_text: str, source: str) -> EngineBuild:
    flags = help_flags(help_text)
    if not flags:
        raise BuildError(f"{source}: its --help lists no options; give the engine's server binary with --engine-bin")
    lines = [x.strip() for x in version_text.splitlines() if x.strip()]
    version = next((x for x in lines if x.startswith("version")), lines[0] if lines else "unknown version")
    return EngineBuild(engine, version, flags, source)


def _run(argv: list[str]) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=HELP_TIMEOUT, errors="replace",
                           stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as e:
        raise BuildError(f"cannot run {argv[0]}: {e}; give a working binary with --engine-bin") from None
    return r.stdout + r.stderr


def read_build(engine: str, binary: str | os.PathLike[str]) -> EngineBuild:
    """Runs ``binary --version`` and ``binary --help`` (llama.cpp prints both and exits without loading a model)."""
    path = Path(binary)
    if not path.is_file() or not os.access(path, os.X_OK):
        raise BuildError(f"--engine-bin {path}: not an executable file")
    return parse_build(engine, _run([str(path), "--version"]), _run([str(path), "--help"]), f"binary {path}")


def stored_build(engine: str, resource: str) -> EngineBuild:
    """A build from a stored help text; its first line (``# source: ...``) says where the text came from and
    ``# version: ...`` the version line."""
    text = resources.files("moeplace").joinpath("data").joinpath("help").joinpath(resource).read_text(encoding="utf-8")
    meta = dict(re.findall(r"^# (\w+): (.*)$", text, flags=re.M))
    body = "\n".join(x for x in text.splitlines() if not x.startswith("# "))
    return parse_build(engine, meta.get("version", "unknown"), body,
                       f"stored help text {resource}: {meta.get('source', 'unknown origin')}; no binary given")


def find_binary(names: tuple[str, ...]) -> str | None:
    """The first of ``names`` on PATH."""
    for n in names:
        found = shutil.which(n)
        if found:
            return found
    return None
