"""Models that are not on disk: GGUF headers read over HTTP with range requests, from a URL or the Hugging Face Hub.

A model reference is a local path, an ``http(s)://`` URL, ``hf://owner/repo/path/file.gguf`` or
``owner/repo[:QUANT]`` (llama.cpp's ``-hf`` form). Only the header is fetched: the first shard's first MiB, then
twice as much until :mod:`moeplace.gguf_file` has every tensor info (5 MB for DeepSeek-V3's vocabulary), and
64 KiB of each further shard. The Hub is reached only through ``huggingface_hub`` (``HF_ENDPOINT`` and
``HF_TOKEN`` honoured): it lists repositories and resolves a file to its etag, size and download location; the
range requests themselves go to that location with the standard library.

Headers are cached under ``$XDG_CACHE_HOME/moeplace/headers`` (``~/.cache/...``) by the file's etag (the Hub's
etag of a GGUF is its sha256), with an index from address to etag and the repository listings, so a second run
reads nothing from the network for a day (``MOEPLACE_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``: always from cache).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

from moeplace.gguf_file import GGUFFile, RemoteName, read_shards, shard_names
from moeplace.remote.cache import CachedFile, cache_root, cached_header, is_cached, offline
from moeplace.remote.http import Http, HttpFile
from moeplace.remote.hub import DEFAULT_TAGS, RepoFile, hf_endpoint, hf_source, is_model_file, list_gguf, pick_file
from moeplace.remote.refs import HfRef, RemoteError, parse_ref, quant_label

__all__ = ["DEFAULT_TAGS", "CachedFile", "GGUFFile", "HfRef", "Http", "HttpFile", "ReadStats", "RemoteError",
           "RepoFile", "cache_root", "hf_endpoint", "is_cached", "is_model_file", "list_gguf", "offline", "parse_ref",
           "pick_file", "quant_label", "read_model_file", "read_remote"]

@dataclass
class ReadStats:
    """What reading a remote model cost: bytes fetched and shards read from the network or the cache (shared by
    the threads of moeplace.choose, hence the lock)."""

    bytes_fetched: int = 0
    from_network: int = 0
    from_cache: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, network: int = 0, cache: int = 0, fetched: int = 0) -> None:
        with self.lock:
            self.from_network += network
            self.from_cache += cache
            self.bytes_fetched += fetched


def _url_source(url: str) -> tuple[RemoteName, HttpFile | CachedFile]:
    name = RemoteName(url, ("-mu", url))
    hit = cached_header(url)
    if hit is not None:
        return name, CachedFile(url, hit[1], hit[0])
    if offline():
        raise RemoteError(f"{url}: not in the cache and the network is off (MOEPLACE_OFFLINE/HF_HUB_OFFLINE)")
    return name, HttpFile(address=url, url=url)


def _opened(src: HttpFile | CachedFile, first: bool, stats: ReadStats) -> HttpFile | CachedFile:
    from moeplace.gguf_file import FIRST_READ, LATER_READ

    if isinstance(src, HttpFile):
        src.open(FIRST_READ if first else LATER_READ)
        stats.add(network=1)
    else:
        stats.add(cache=1)
    return src


def read_remote(ref: str | HfRef, stats: ReadStats | None = None,
                listing: list[RepoFile] | None = None) -> GGUFFile:
    """Reads the header of a remote model (every shard of a split one) without downloading it."""
    stats = stats if stats is not None else ReadStats()
    sources: list[HttpFile | CachedFile] = []

    def track(src: HttpFile | CachedFile, first: bool) -> HttpFile | CachedFile:
        sources.append(src)
        return _opened(src, first, stats)

    try:
        if isinstance(ref, str):
            name, src = _url_source(ref)
            base = ref.rsplit("/", 1)[0]

            def shard(i: int, count: int) -> tuple[RemoteName, HttpFile | CachedFile]:
                n, s = _url_source(f"{base}/{shard_names(name.name, count, ref)[i]}")
                return n, track(s, False)

            return read_shards(name, track(src, True), shard)

        path = ref.path
        known = {f.path: f for f in listing or []}
        if not path:
            listing = listing or list_gguf(ref.repo, ref.revision)
            known = {f.path: f for f in listing}
            path = pick_file(ref.repo, listing, ref.tag)

        def hf(p: str) -> tuple[RemoteName, HttpFile | CachedFile]:
            f = known.get(p)
            return hf_source(ref, p, f.sha256 if f else "", f.size if f else -1)

        name, src = hf(path)
        folder = path.rsplit("/", 1)[0] + "/" if "/" in path else ""

        def hf_shard(i: int, count: int) -> tuple[RemoteName, HttpFile | CachedFile]:
            n, s = hf(folder + shard_names(name.name, count, name)[i])
            return n, track(s, False)

        return read_shards(name, track(src, True), hf_shard)
    finally:
        stats.add(fetched=sum(s.bytes_read for s in sources if isinstance(s, HttpFile)))


def read_model_file(text: str | os.PathLike[str]) -> GGUFFile:
    """The header of whatever a MODEL argument names: a local path, a URL or a Hub reference."""
    from moeplace.gguf_file import read_gguf

    ref = parse_ref(os.fspath(text))
    return read_gguf(text) if ref is None else read_remote(ref)
