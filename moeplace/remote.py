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

import contextlib
import hashlib
import json
import os
import re
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.client import HTTPException
from pathlib import Path

from moeplace.errors import MoeplaceError
from moeplace.gguf_file import SPLIT_PATTERN, GGUFFile, RemoteName, read_shards, shard_names

# A day: long enough that planning several times in a session never waits on the network, short enough that a
# repository's new quants show up tomorrow. Headers themselves are immutable under their etag and never expire.
CACHE_TTL = 24 * 3600
DEFAULT_TIMEOUT = 30.0
DEFAULT_RETRIES = 3
DEFAULT_BACKOFF = 0.5
CHUNK = 1 << 18  # bytes read per socket read, so the progress line moves on slow links
PROGRESS_AFTER = 2.0  # seconds before a read shows a progress line
HF_DEFAULT_ENDPOINT = "https://huggingface.co"

_HF_REF = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?::(?P<tag>[\w.-]+))?$")
# A quant label in a file name: Q4_K_M, IQ2_XXS, UD-Q2_K_XL, Q8_0, BF16, F16, MXFP4_MOE, TQ1_0...
_QUANT = re.compile(r"(?i)(?<![A-Za-z0-9])((?:UD-)?(?:I?Q\d(?:_[A-Z0-9]+)*|TQ\d_\d|BF16|F16|F32|MXFP4(?:_MOE)?))"
                    r"(?![A-Za-z0-9])")


class RemoteError(MoeplaceError):
    """A remote model that cannot be read: one line naming the address, the problem and the fix."""


@dataclass(frozen=True)
class Http:
    """How patiently to talk to a server; the environment can override each (MOEPLACE_HTTP_TIMEOUT, ...)."""

    timeout: float = DEFAULT_TIMEOUT
    retries: int = DEFAULT_RETRIES
    backoff: float = DEFAULT_BACKOFF

    @classmethod
    def from_env(cls) -> Http:
        env = os.environ
        return cls(timeout=float(env.get("MOEPLACE_HTTP_TIMEOUT", DEFAULT_TIMEOUT)),
                   retries=int(env.get("MOEPLACE_HTTP_RETRIES", DEFAULT_RETRIES)),
                   backoff=float(env.get("MOEPLACE_HTTP_BACKOFF", DEFAULT_BACKOFF)))


# --------------------------------------------------------------------------------------------------------
# References.


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


# --------------------------------------------------------------------------------------------------------
# Cache.


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


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _blob_key(etag: str, address: str) -> str:
    """A sha256 etag (the Hub's, of the content) names the blob alone; any other etag (or Last-Modified) only
    together with the address it came from."""
    e = etag.strip('"').removeprefix("W/").strip('"')
    return e if re.fullmatch(r"[0-9a-f]{64}", e) else _digest(address + "|" + e)


def _load_json(path: Path) -> dict | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _fresh(doc: dict | None) -> bool:
    return doc is not None and (offline() or time.time() - float(doc.get("time", 0)) < CACHE_TTL)


def _cached_header(address: str) -> tuple[bytes, int, str] | None:
    """(header bytes, file size, etag) of an address read before, if the index entry is fresh."""
    root = cache_root()
    entry = _load_json(root / "index" / f"{_digest(address)}.json")
    if not _fresh(entry):
        return None
    assert entry is not None
    return _cached_blob(str(entry["etag"]), int(entry["size"]), address)


def is_cached(sha256: str) -> bool:
    """Whether the header of the file with this sha256 (a Hub LFS file's id and etag) is in the cache."""
    return bool(sha256) and (cache_root() / "blobs" / _blob_key(sha256, "")).is_file()


def _cached_blob(etag: str, size: int, address: str) -> tuple[bytes, int, str] | None:
    try:
        data = (cache_root() / "blobs" / _blob_key(etag, address)).read_bytes()
    except OSError:
        return None
    # The blob starts with the file size it was read from: a blob of another size is another file.
    if len(data) < 8 or int.from_bytes(data[:8], "little") != size:
        return None
    return data[8:], size, etag


def _store(address: str, etag: str, size: int, header: bytes) -> None:
    root = cache_root()
    with contextlib.suppress(OSError):  # a read-only cache makes every run go to the network, nothing worse
        _write_atomic(root / "blobs" / _blob_key(etag, address), size.to_bytes(8, "little") + header)
        _write_atomic(root / "index" / f"{_digest(address)}.json",
                      json.dumps({"address": address, "etag": etag, "size": size, "time": time.time()}).encode())


# --------------------------------------------------------------------------------------------------------
# Byte sources.


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


class _NoCrossHostAuth(urllib.request.HTTPRedirectHandler):
    """A redirect to another host (a CDN's signed URL) must not carry the Hub token."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and urllib.parse.urlsplit(newurl).netloc != urllib.parse.urlsplit(req.full_url).netloc:
            new.remove_header("Authorization")
        return new


_OPENER = urllib.request.build_opener(_NoCrossHostAuth())


class _Progress:
    """One line on stderr, rewritten in place, once a read has taken longer than PROGRESS_AFTER seconds."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.start = time.monotonic()
        self.shown = False
        self.last = 0.0

    def update(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.start < PROGRESS_AFTER or now - self.last < 0.5:
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        line = f"reading header of {self.name}: {done / 2**20:.1f} of {total / 2**20:.1f} MiB, {rate / 2**10:.0f} KiB/s"
        tty = sys.stderr.isatty()
        sys.stderr.write(("\r" + line + "\x1b[K") if tty else line + "\n")
        sys.stderr.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown and sys.stderr.isatty():
            sys.stderr.write("\n")
            sys.stderr.flush()


@dataclass
class HttpFile:
    """The front of a file on an HTTP server, fetched with range requests as the parser asks for more.

    ``address`` names it in messages and in the cache index (a URL or an hf:// reference); ``url`` is where the
    bytes are. ``size`` and ``etag`` come from the Hub's metadata when known, else from the first answer."""

    address: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    size: int = -1
    etag: str | None = None
    http: Http = field(default_factory=Http.from_env)
    data: bytearray = field(default_factory=bytearray)
    bytes_read: int = 0
    served_etag: str | None = None  # the ETag of the first range answer; every later one must match it

    @property
    def name(self) -> str:
        return self.address

    def open(self, first: int) -> HttpFile:
        """Fetches the first bytes: learns the size and etag, and proves the server honours ranges."""
        self._fetch(0, first - 1 if self.size < 0 else min(first, self.size) - 1)
        return self

    def grow(self, n: int) -> bytearray:
        n = min(n, self.size)
        if n > len(self.data):
            self._fetch(len(self.data), n - 1)
        return self.data

    def keep(self, n: int) -> None:
        if self.etag:
            _store(self.address, self.etag, self.size, bytes(self.data[:n]))

    def _fetch(self, start: int, end: int) -> None:
        for attempt in range(self.http.retries + 1):
            try:
                self._fetch_once(start, end)
                return
            except _Retry as e:
                if attempt == self.http.retries:
                    raise RemoteError(f"{self.name}: {e.problem} after {attempt + 1} tries: {e.fix}") from None
                time.sleep(self.http.backoff * 2 ** attempt)

    def _fetch_once(self, start: int, end: int) -> None:
        req = urllib.request.Request(self.url, headers={**self.headers, "Range": f"bytes={start}-{end}",
                                                        "Accept-Encoding": "identity"})
        try:
            resp = _OPENER.open(req, timeout=self.http.timeout)
        except urllib.error.HTTPError as e:
            e.close()
            _http_status_error(self.name, e.code)
            raise _Retry(f"the server answered HTTP {e.code}", "try again later") from None
        except (urllib.error.URLError, TimeoutError, OSError, HTTPException) as e:
            reason = getattr(e, "reason", e)
            raise _Retry(f"no answer ({reason})", "check the address and the network") from None
        with resp:
            length = resp.headers.get("Content-Length")
            whole = resp.status == 200 and start == 0 and length is not None and length.isdigit() \
                and int(length) <= end + 1
            if resp.status != 206 and not whole:
                raise RemoteError(f"{self.name}: the server ignores HTTP range requests (it answered "
                                  f"{resp.status} with the whole file), so the header cannot be read alone: "
                                  "download the file and pass its path")
            # A file no longer than the range asked for may come whole, with 200: that is the same answer.
            total = int(length) if whole else _content_range_total(resp.headers.get("Content-Range"), self.name)
            etag = resp.headers.get("ETag")
            if self.size >= 0 and total != self.size:
                raise RemoteError(f"{self.name}: the file changed on the server while it was read (size "
                                  f"{self.size} became {total}): run again")
            if self.served_etag and etag != self.served_etag:
                raise RemoteError(f"{self.name}: the file changed on the server while it was read (etag "
                                  f"{self.served_etag} became {etag}): run again")
            self.served_etag = self.served_etag or etag
            self.size = total
            self.etag = self.etag or etag or resp.headers.get("Last-Modified")
            want = min(end, total - 1) - start + 1
            got = bytearray()
            progress = _Progress(self.name)
            try:
                while len(got) < want:
                    chunk = resp.read(min(CHUNK, want - len(got)))
                    if not chunk:
                        break
                    got += chunk
                    progress.update(len(self.data) + len(got), len(self.data) + want)
            except (TimeoutError, OSError, HTTPException):
                pass  # reported as a short answer below
            finally:
                progress.close()
        self.bytes_read += len(got)
        if len(got) < want:
            raise _Retry(f"the server's answer was cut short ({len(got)} of {want} bytes)",
                         "check the network or try again later")
        if len(self.data) != start:
            raise AssertionError("ranges are fetched in order")
        self.data += got


class _Retry(Exception):
    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.fix = fix


def _http_status_error(address: str, code: int) -> None:
    """Raises the one-line error of a status that no retry will change; returns for those worth a retry."""
    if code in (401, 403):
        raise RemoteError(f"{address}: access denied (HTTP {code}): for a gated or private Hugging Face repository "
                          "accept its licence on the model page and set HF_TOKEN to a token that can read it")
    if code in (404, 410):
        raise RemoteError(f"{address}: not found (HTTP {code}): check the address")
    if code == 416:
        raise RemoteError(f"{address}: the server refused the byte range (HTTP 416): the file is shorter than "
                          "its header says, or the server cannot serve ranges")
    if code < 500 and code != 429:
        raise RemoteError(f"{address}: the server answered HTTP {code}")


def _content_range_total(value: str | None, address: str) -> int:
    m = re.fullmatch(r"bytes \d+-\d+/(\d+)", (value or "").strip())
    if m is None:
        raise RemoteError(f"{address}: the server answered a range request without a valid Content-Range "
                          f"({value!r}), so the file's size is unknown: download the file and pass its path")
    return int(m.group(1))


# --------------------------------------------------------------------------------------------------------
# The Hub, through huggingface_hub.


def hf_endpoint() -> str:
    """HF_ENDPOINT as set now (huggingface_hub reads it once, at import)."""
    return (os.environ.get("HF_ENDPOINT") or HF_DEFAULT_ENDPOINT).rstrip("/")


def _hf_token() -> str | None:
    from huggingface_hub import get_token

    return os.environ.get("HF_TOKEN") or get_token()


@contextlib.contextmanager
def _hub_errors(address: str) -> Iterator[None]:
    """huggingface_hub's exceptions as one-line errors."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        yield
    except GatedRepoError:
        raise RemoteError(f"{address}: the repository is gated (HTTP 401/403): accept its licence on the model page "
                          "and set HF_TOKEN to a token of that account") from None
    except RepositoryNotFoundError:
        raise RemoteError(f"{address}: repository not found (or private: set HF_TOKEN to a token that can read it)"
                          ) from None
    except RevisionNotFoundError:
        raise RemoteError(f"{address}: no such revision in the repository") from None
    except EntryNotFoundError:
        raise RemoteError(f"{address}: not found (HTTP 404): no such file in the repository") from None
    except OfflineModeIsEnabled:
        raise RemoteError(f"{address}: not in the cache and HF_HUB_OFFLINE is set: run once online") from None
    except HfHubHTTPError as e:
        code = e.response.status_code if e.response is not None else 0
        _http_status_error(address, code)
        raise RemoteError(f"{address}: the Hub answered HTTP {code}: try again later") from None
    except OSError as e:  # timeouts and refused connections (httpx's errors are not OSErrors: see below)
        raise RemoteError(f"{address}: no answer from {hf_endpoint()} ({e}): check the network or HF_ENDPOINT"
                          ) from None
    except Exception as e:
        # httpx2's transport errors (ConnectError, ReadTimeout...) share no base class with the stdlib's.
        if type(e).__module__.startswith(("httpx", "httpcore")):
            raise RemoteError(f"{address}: no answer from {hf_endpoint()} ({type(e).__name__}: {e}): check the "
                              "network or HF_ENDPOINT") from None
        raise


@dataclass(frozen=True)
class RepoFile:
    """A GGUF in a Hub repository: its path, size and sha256 (the Hub's etag of an LFS file)."""

    path: str
    size: int
    sha256: str


def list_gguf(repo: str, revision: str = "main") -> list[RepoFile]:
    """Every .gguf file of a Hub repository (cached for a day, like headers)."""
    key = cache_root() / "repos" / f"{_digest(hf_endpoint() + '|' + repo + '@' + revision)}.json"
    doc = _load_json(key)
    if not _fresh(doc):
        if offline():
            raise RemoteError(f"{repo}: the repository listing is not in the cache and the network is off "
                              "(MOEPLACE_OFFLINE/HF_HUB_OFFLINE): run once online")
        from huggingface_hub import HfApi

        api = HfApi(endpoint=hf_endpoint(), token=_hf_token())
        with _hub_errors(repo):
            entries = [{"path": f.path, "size": f.size, "sha256": f.lfs.sha256 if f.lfs else ""}
                       for f in api.list_repo_tree(repo, recursive=True, revision=revision)
                       if f.path.endswith(".gguf") and hasattr(f, "size")]
        doc = {"repo": repo, "revision": revision, "files": entries, "time": time.time()}
        with contextlib.suppress(OSError):
            _write_atomic(key, json.dumps(doc).encode())
    assert doc is not None
    return [RepoFile(e["path"], int(e["size"]), e["sha256"]) for e in doc["files"]]


# File names llama.cpp's downloader does not take for the model itself (common/download.cpp,
# gguf_filename_is_model): vision projectors, importance matrices and draft/speculative sidecars.
_NOT_MODEL = ("mmproj", "imatrix", "mtp-", "eagle3-", "dflash-", "dspark-")
# The tags llama.cpp tries, in order, when ``owner/repo`` has none (find_best_model).
DEFAULT_TAGS = ("Q4_K_M", "Q8_0")


def is_model_file(path: str) -> bool:
    """A model GGUF, not a vision projector, an importance matrix or a sidecar kept beside it."""
    name = path.rsplit("/", 1)[-1]
    return name.endswith(".gguf") and not any(x in name for x in _NOT_MODEL)


def _is_first_shard(path: str) -> bool:
    m = SPLIT_PATTERN.match(path.rsplit("/", 1)[-1])
    return m is None or int(m.group("no")) == 1


def pick_file(repo: str, files: list[RepoFile], tag: str) -> str:
    """The first shard that ``owner/repo[:TAG]`` means, as llama.cpp's ``-hf`` picks it (common/download.cpp,
    find_best_model): in listing order, the first model file whose path contains TAG followed by '.' or '-'
    (case-insensitive); with no tag, Q4_K_M, then Q8_0, then the first model file."""
    models = [f.path for f in files if is_model_file(f.path) and _is_first_shard(f.path)]
    for t in (tag,) if tag else DEFAULT_TAGS:
        pattern = re.compile(re.escape(t) + r"[.-]", re.IGNORECASE)
        hit = next((p for p in models if pattern.search(p)), None)
        if hit is not None:
            return hit
    if not tag and models:
        return models[0]
    if not models:
        raise RemoteError(f"{repo}: the repository holds no GGUF model file")
    raise RemoteError(f"{repo}: no GGUF for quant '{tag}'; the repository has "
                      f"{', '.join(sorted({quant_label(p) for p in models}))}")


def _hf_source(ref: HfRef, path: str, sha256: str = "", size: int = -1) -> tuple[RemoteName, HttpFile | CachedFile]:
    """The bytes of one file of a Hub repository: from the cache, else resolved with huggingface_hub's
    ``get_hf_file_metadata`` (etag, size, location) and read with range requests from that location."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    address = f"hf://{ref.repo}/{path}"
    name = RemoteName(address, ("-hf", ref.repo, "-hff", path))
    keyed = address + "@" + ref.revision
    hit = _cached_blob(sha256, size, keyed) if sha256 and size >= 0 else None
    hit = hit or _cached_header(keyed)
    if hit is not None:
        return name, CachedFile(address, hit[1], hit[0])
    if offline():
        raise RemoteError(f"{address}: not in the cache and the network is off (MOEPLACE_OFFLINE/HF_HUB_OFFLINE)")
    url = hf_hub_url(ref.repo, path, revision=ref.revision, endpoint=hf_endpoint())
    token = _hf_token()
    http = Http.from_env()
    with _hub_errors(address):
        meta = get_hf_file_metadata(url, token=token, timeout=http.timeout, endpoint=hf_endpoint(),
                                    retry_on_errors=http.retries > 0)
    if meta.etag is None or meta.size is None:
        raise RemoteError(f"{address}: the Hub gave no etag or size for the file: try again later")
    hit = _cached_blob(meta.etag, meta.size, keyed)
    if hit is not None:
        _store(keyed, meta.etag, meta.size, hit[0])
        return name, CachedFile(address, hit[1], hit[0])
    location = meta.location or url
    same_host = urllib.parse.urlsplit(location).netloc == urllib.parse.urlsplit(hf_endpoint()).netloc
    headers = {"Authorization": f"Bearer {token}"} if token and same_host else {}
    src = _CachingHfFile(address=keyed, url=location, headers=headers, size=meta.size,
                         etag=meta.etag, http=http)
    return name, src


class _CachingHfFile(HttpFile):
    """An HttpFile whose messages name the hf:// address without the revision the cache index keys on."""

    @property
    def name(self) -> str:
        return self.address.rsplit("@", 1)[0]


# --------------------------------------------------------------------------------------------------------
# Opening a model.


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
    hit = _cached_header(url)
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
            return _hf_source(ref, p, f.sha256 if f else "", f.size if f else -1)

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
