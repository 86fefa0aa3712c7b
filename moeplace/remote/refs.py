"""What a MODEL argument names: a local path, an ``http(s)://`` URL, ``hf://owner/repo/path/file.gguf`` or
``owner/repo[:QUANT]`` (llama.cpp's ``-hf`` form); and the quant a GGUF's file name states."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from moeplace.errors import MoeplaceError
from moeplace.gguf_file import SPLIT_PATTERN

_HF_REF = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?::(?P<tag>[\w.-]+))?$")
# A quant label in a file name: Q4_K_M, IQ2_XXS, UD-Q2_K_XL, Q8_0, BF16, F16, MXFP4_MOE, TQ1_0...
_QUANT = re.compile(r"(?i)(?<![A-Za-z0-9])((?:UD-)?(?:I?Q\d(?:_[A-Z0-9]+)*|TQ\d_\d|BF16|F16|F32|MXFP4(?:_MOE)?))"
                    r"(?![A-Za-z0-9])")


class RemoteError(MoeplaceError):
    """A remote model that cannot be read: one line naming the address, the problem and the fix."""



@dataclass(frozen=True)
class HfRef:
    """A file or a quant in a Hub repository; ``path`` is empty when only a tag names the file."""

    repo: str
    path: str = ""
    tag: str = ""
    revision: str = "main"


def parse_ref(text: str) -> str | HfRef | None:
    """What a MODEL argument names: a URL (str), a Hub reference, or None for a local path.

    ``owner/repo[:QUANT]`` is a Hub reference only when it does not end in .gguf and neither it nor its first
    part exists here, so a relative path such as ``models/x.gguf`` or a mistyped ``models/x`` stays a path."""
    if text.startswith(("http://", "https://")):
        return text
    if text.startswith("hf://"):
        parts = text[5:].split("/", 2)
        if len(parts) < 3 or not all(parts):
            raise RemoteError(f"{text}: a Hub file is hf://owner/repo/path/file.gguf")
        repo, revision = f"{parts[0]}/{parts[1]}", "main"
        if "@" in parts[1]:
            name, revision = parts[1].split("@", 1)
            repo = f"{parts[0]}/{name}"
        return HfRef(repo, parts[2], revision=revision)
    m = _HF_REF.match(text)
    if m and not text.lower().endswith(".gguf") and not os.path.exists(text) \
            and not os.path.isdir(m.group("repo").split("/")[0]):
        return HfRef(m.group("repo"), tag=m.group("tag") or "")
    return None


def quant_label(file_name: str) -> str:
    """The quant a GGUF's file name states (the last label in it, upper case), or the name's stem."""
    stem = SPLIT_PATTERN.sub(r"\g<prefix>.gguf", file_name).rsplit("/", 1)[-1].removesuffix(".gguf")
    found = _QUANT.findall(stem)
    return found[-1].upper() if found else stem


