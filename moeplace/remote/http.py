"""The front of a file on an HTTP server, read with range requests as the GGUF parser asks for more: timeouts,
retries with back-off, a progress line on slow links, and each failure as one line."""

from __future__ import annotations

import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from http.client import HTTPException

from moeplace.remote.cache import store
from moeplace.remote.refs import RemoteError

DEFAULT_TIMEOUT = 30.0
DEFAULT_RETRIES = 3
DEFAULT_BACKOFF = 0.5
CHUNK = 1 << 18  # bytes read per socket read, so the progress line moves on slow links
PROGRESS_AFTER = 2.0  # seconds before a read shows a progress line


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
            store(self.address, self.etag, self.size, bytes(self.data[:n]))

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
            http_status_error(self.name, e.code)
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


def http_status_error(address: str, code: int) -> None:
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


