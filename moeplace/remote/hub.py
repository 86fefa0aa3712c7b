"""The Hugging Face Hub, reached only through ``huggingface_hub`` (``HF_ENDPOINT`` and ``HF_TOKEN`` honoured): it
lists repositories and resolves a file to its etag, size and download location; the range requests themselves go
to that location through :mod:`moeplace.remote.http`."""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass

from moeplace.errors import MoeplaceError
from moeplace.gguf_file import SPLIT_PATTERN, RemoteName
from moeplace.outfiles import write_file
from moeplace.remote.cache import (
    CachedFile,
    cache_root,
    cached_blob,
    cached_header,
    digest,
    fresh,
    load_json,
    offline,
    store,
)
from moeplace.remote.http import Http, HttpFile, http_status_error
from moeplace.remote.refs import HfRef, RemoteError, quant_label

HF_DEFAULT_ENDPOINT = "https://huggingface.co"

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
        http_status_error(address, code)
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
    key = cache_root() / "repos" / f"{digest(hf_endpoint() + '|' + repo + '@' + revision)}.json"
    doc = load_json(key)
    if not fresh(doc):
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
        with contextlib.suppress(OSError, MoeplaceError):
            write_file(key, json.dumps(doc).encode())
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


def hf_source(ref: HfRef, path: str, sha256: str = "", size: int = -1) -> tuple[RemoteName, HttpFile | CachedFile]:
    """The bytes of one file of a Hub repository: from the cache, else resolved with huggingface_hub's
    ``get_hf_file_metadata`` (etag, size, location) and read with range requests from that location."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    address = f"hf://{ref.repo}/{path}"
    name = RemoteName(address, ("-hf", ref.repo, "-hff", path))
    keyed = address + "@" + ref.revision
    hit = cached_blob(sha256, size, keyed) if sha256 and size >= 0 else None
    hit = hit or cached_header(keyed)
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
    hit = cached_blob(meta.etag, meta.size, keyed)
    if hit is not None:
        store(keyed, meta.etag, meta.size, hit[0])
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


