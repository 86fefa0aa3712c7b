"""The header cache: headers under ``$XDG_CACHE_HOME/moeplace/headers`` (``~/.cache/...``) keyed by the file's etag
(the Hub's etag of a GGUF is its sha256), an index from address to etag, and repository listings, so a second run
reads nothing from the network for a day (``MOEPLACE_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``: always from cache)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from moeplace.errors import MoeplaceError
from moeplace.outfiles import write_file

# A day: long enough that planning several times in a session never waits on the network, short enough that a
# repository's new quants show up tomorrow. Headers themselves are immutable under their etag and never expire.
CACHE_TTL = 24 * 3600

def cache_root() -> Path:
    """Where headers are kept: $MOEPLACE_CACHE, else $XDG_CACHE_HOME/moeplace/headers (~/.cache/...)."""
    if os.environ.get("MOEPLACE_CACHE"):
        return Path(os.environ["MOEPLACE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "moeplace" / "headers"


def offline() -> bool:
    """Whether the user asked for no network at all."""
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes", "on")
               for k in ("MOEPLACE_OFFLINE", "HF_HUB_OFFLINE"))


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _blob_key(etag: str, address: str) -> str:
    """A sha256 etag (the Hub's, of the content) names the blob alone; any other etag (or Last-Modified) only
    together with the address it came from."""
    e = etag.strip('"').removeprefix("W/").strip('"')
    return e if re.fullmatch(r"[0-9a-f]{64}", e) else digest(address + "|" + e)


def load_json(path: Path) -> dict | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def fresh(doc: dict | None) -> bool:
    return doc is not None and (offline() or time.time() - float(doc.get("time", 0)) < CACHE_TTL)


def cached_header(address: str) -> tuple[bytes, int, str] | None:
    """(header bytes, file size, etag) of an address read before, if the index entry is fresh."""
    root = cache_root()
    entry = load_json(root / "index" / f"{digest(address)}.json")
    if not fresh(entry):
        return None
    assert entry is not None
    return cached_blob(str(entry["etag"]), int(entry["size"]), address)


def is_cached(sha256: str) -> bool:
    """Whether the header of the file with this sha256 (a Hub LFS file's id and etag) is in the cache."""
    return bool(sha256) and (cache_root() / "blobs" / _blob_key(sha256, "")).is_file()


def cached_blob(etag: str, size: int, address: str) -> tuple[bytes, int, str] | None:
    try:
        data = (cache_root() / "blobs" / _blob_key(etag, address)).read_bytes()
    except OSError:
        return None
    # The blob starts with the file size it was read from: a blob of another size is another file.
    if len(data) < 8 or int.from_bytes(data[:8], "little") != size:
        return None
    return data[8:], size, etag


def store(address: str, etag: str, size: int, header: bytes) -> None:
    root = cache_root()
    # A read-only cache makes every run go to the network, nothing worse.
    with contextlib.suppress(OSError, MoeplaceError):
        write_file(root / "blobs" / _blob_key(etag, address), size.to_bytes(8, "little") + header)
        write_file(root / "index" / f"{digest(address)}.json",
                      json.dumps({"address": address, "etag": etag, "size": size, "time": time.time()}).encode())





@dataclass
class CachedFile:
    """A header read before: the bytes from the cache, the file's size; nothing to fetch."""

    name: str
    size: int
    data: bytes

    def grow(self, n: int) -> bytes:
        return self.data  # the whole header: the parser stops before asking for more

    def keep(self, n: int) -> None:
        pass
