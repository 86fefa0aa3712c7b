"""Remote models over real HTTP: a range-capable file server and a Hub endpoint on 127.0.0.1 (moeplace.servers),
the real huggingface_hub code path through HF_ENDPOINT, and every network failure's one-line error."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from moeplace.cli import main
from moeplace.gguf_file import read_gguf
from moeplace.remote import HfRef, ReadStats, RemoteError, RepoFile, parse_ref, pick_file, quant_label, read_remote
from moeplace.remote import http as remote_http
from moeplace.servers import Faults, FileServer, HubServer
from moeplace.testing import write_model

REPO = "org/DeepSeek-V3-GGUF"


@pytest.fixture(autouse=True)
def _env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOEPLACE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MOEPLACE_HTTP_RETRIES", "1")
    monkeypatch.setenv("MOEPLACE_HTTP_BACKOFF", "0")
    monkeypatch.setenv("MOEPLACE_HTTP_TIMEOUT", "5")
    for k in ("HF_TOKEN", "MOEPLACE_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny (real data), qwen3-30b (a 5 MB header: several range requests) and the 9-shard DeepSeek-V3 shape."""
    d = tmp_path_factory.mktemp("served")
    write_model("qwen3moe-tiny", d / "tiny.gguf")
    write_model("qwen3-30b-a3b", d / "qwen3-30b-a3b.gguf")
    write_model("deepseek-v3-split", d / "DeepSeek-V3-Q4_K_M.gguf")
    return d


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("repo")
    write_model("deepseek-v3-split", d / "Q4_K_M" / "DeepSeek-V3-Q4_K_M.gguf")
    write_model("qwen3moe-tiny", d / "DeepSeek-V3-Q8_0.gguf")  # a second quant, one file at the top
    (d / "mmproj-F16.gguf").write_bytes(b"not a model")
    (d / "README.md").write_text("readme")
    return d


def _served(server: FileServer | HubServer, expect: int) -> int:
    """The server's byte count once its handler threads have caught up with what the client received."""
    deadline = time.monotonic() + 2
    while server.bytes_served < expect and time.monotonic() < deadline:
        time.sleep(0.01)
    return server.bytes_served


def _run(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(main, list(args))
    if r.exception and not isinstance(r.exception, SystemExit):
        raise r.exception
    return r.exit_code, r.stdout, r.stderr


def _one_line_error(args: list[str], needle: str) -> str:
    code, out, err = _run(*args)
    assert code == 2, (out, err)
    assert err.startswith("Error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert needle in err, err
    return err


# -- references -----------------------------------------------------------------------------------------------


def test_parse_ref(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_ref("https://x.org/a.gguf") == "https://x.org/a.gguf"
    assert parse_ref("hf://o/r/dir/f.gguf") == HfRef("o/r", "dir/f.gguf")
    assert parse_ref("hf://o/r@v2/f.gguf") == HfRef("o/r", "f.gguf", revision="v2")
    assert parse_ref("o/r:Q4_K_M") == HfRef("o/r", tag="Q4_K_M")
    assert parse_ref("o/r") == HfRef("o/r")
    assert parse_ref("models/x.gguf") is None
    monkeypatch.chdir(tmp_path)
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "r").write_bytes(b"")
    assert parse_ref("o/r") is None  # an existing local file wins
    assert parse_ref("o/typo") is None  # so does an existing folder: a mistyped path is not a repository
    with pytest.raises(RemoteError, match="hf://owner/repo/path"):
        parse_ref("hf://o/r")


@pytest.mark.parametrize(("name", "label"), [
    ("Q4_K_M/DeepSeek-V3-Q4_K_M-00001-of-00009.gguf", "Q4_K_M"),
    ("UD-Q2_K_XL/DeepSeek-V3-0324-UD-Q2_K_XL-00001-of-00006.gguf", "UD-Q2_K_XL"),
    ("llama-2-7b.Q4_K_M.gguf", "Q4_K_M"),
    ("Qwen3-30B-A3B-IQ2_XXS.gguf", "IQ2_XXS"),
    ("gpt-oss-120b-mxfp4-00001-of-00003.gguf", "MXFP4"),
    ("model-bf16.gguf", "BF16"),
    ("plain.gguf", "plain"),
])
def test_quant_label(name: str, label: str) -> None:
    assert quant_label(name) == label


def test_pick_file_follows_llama_cpp_hf_tags() -> None:
    files = [RepoFile(p, 1, "") for p in (
        "Q2_K/m-Q2_K-00001-of-00002.gguf", "Q2_K/m-Q2_K-00002-of-00002.gguf", "m-Q4_0.gguf", "m-Q4_K_M.gguf",
        "m-Q8_0.gguf", "mmproj-Q8_0.gguf", "UD-Q3_K_XL/m-UD-Q3_K_XL-00001-of-00003.gguf")]
    assert pick_file("o/r", files, "") == "m-Q4_K_M.gguf"  # no tag: Q4_K_M first
    assert pick_file("o/r", files, "q8_0") == "m-Q8_0.gguf"  # case-insensitive; the projector is not a model
    assert pick_file("o/r", files, "Q2_K") == "Q2_K/m-Q2_K-00001-of-00002.gguf"  # the first shard
    assert pick_file("o/r", files, "Q3_K_XL") == "UD-Q3_K_XL/m-UD-Q3_K_XL-00001-of-00003.gguf"
    no_q4km = [f for f in files if "Q4_K_M" not in f.path]
    assert pick_file("o/r", no_q4km, "") == "m-Q8_0.gguf"  # then Q8_0
    assert pick_file("o/r", files[:3], "") == "Q2_K/m-Q2_K-00001-of-00002.gguf"  # then the first model file
    with pytest.raises(RemoteError, match=r"no GGUF for quant 'Q4'"):
        pick_file("o/r", files, "Q4")  # a tag must be followed by '.' or '-' in the name: Q4 is not Q4_K_M
    with pytest.raises(RemoteError, match="holds no GGUF model file"):
        pick_file("o/r", files[5:6], "")


# -- plain URLs ------------------------------------------------------------------------------------------------


def test_inspect_url_equals_local_file(files: Path) -> None:
    local = files / "qwen3-30b-a3b.gguf"
    with FileServer(files) as s:
        code, out, _ = _run("inspect", f"{s.url}/qwen3-30b-a3b.gguf", "--json", "--tensors")
        assert code == 0
        assert s.state.requests > 2  # the 5 MB header took more than one range request
    _, want, _ = _run("inspect", str(local), "--json", "--tensors")
    got, expect = json.loads(out), json.loads(want)
    assert got.pop("files") == [f"{s.url}/qwen3-30b-a3b.gguf"]
    assert expect.pop("files") == [str(local)]
    assert got == expect


def test_solve_url_prints_the_same_plan(files: Path, tmp_path: Path) -> None:
    url_args = ["--vram", "12G", "--ram", "32G", "-c", "8192", "--no-scripts"]
    with FileServer(files) as s:
        url = f"{s.url}/qwen3-30b-a3b.gguf"
        code, out, _ = _run("solve", url, *url_args)
    assert code == 0
    _, want, _ = _run("solve", str(files / "qwen3-30b-a3b.gguf"), *url_args)
    strip = [ln for ln in out.splitlines() if not ln.startswith(("solver:", "  llama-server"))]
    assert strip == [ln for ln in want.splitlines() if not ln.startswith(("solver:", "  llama-server"))]
    command = next(ln for ln in out.splitlines() if ln.startswith("  llama-server"))
    local_command = next(ln for ln in want.splitlines() if ln.startswith("  llama-server"))
    # llama.cpp fetches the model itself (-mu); every other argument is the local plan's.
    assert command.replace(f"-mu {url}", "-m " + str(files / "qwen3-30b-a3b.gguf")) == local_command


def test_split_url_reads_every_shard_and_caches(files: Path) -> None:
    local = read_gguf(files / "DeepSeek-V3-Q4_K_M-00001-of-00009.gguf")
    with FileServer(files) as s:
        stats = ReadStats()
        got = read_remote(f"{s.url}/DeepSeek-V3-Q4_K_M-00001-of-00009.gguf", stats)
        assert stats.from_network == 9 and stats.bytes_fetched == _served(s, stats.bytes_fetched)
    assert got.tensors == local.tensors and got.file_sizes == local.file_sizes
    assert dict(got.metadata) == dict(local.metadata)
    # The server is gone: the second run reads nothing from the network.
    stats = ReadStats()
    again = read_remote(f"{s.url}/DeepSeek-V3-Q4_K_M-00001-of-00009.gguf", stats)
    assert stats.from_cache == 9 and stats.bytes_fetched == 0
    assert again.tensors == local.tensors


def test_offline_without_cache_is_one_line(files: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOEPLACE_OFFLINE", "1")
    _one_line_error(["inspect", "http://127.0.0.1:9/x.gguf"], "not in the cache and the network is off")


def test_progress_line_on_slow_links(files: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(remote_http, "PROGRESS_AFTER", 0.0)
    monkeypatch.setattr(remote_http, "CHUNK", 1 << 16)
    with FileServer(files, Faults(delay=0.6)) as s:
        read_remote(f"{s.url}/qwen3-30b-a3b.gguf")
    assert "reading header of " + f"{s.url}/qwen3-30b-a3b.gguf" in capsys.readouterr().err


# -- failures: one line each, exit 2 ---------------------------------------------------------------------------


def test_server_without_range_support(files: Path) -> None:
    with FileServer(files, Faults(no_range=True)) as s:
        _one_line_error(["inspect", f"{s.url}/DeepSeek-V3-Q4_K_M-00001-of-00009.gguf"],
                        "the server ignores HTTP range requests")
        assert s.bytes_served < 16 << 20  # it hung up instead of reading a 46 GB answer


def test_whole_small_file_without_ranges_is_fine(files: Path) -> None:
    """A file shorter than the first range may come whole with 200: no range support is needed for it."""
    with FileServer(files, Faults(no_range=True)) as s:
        code, out, _ = _run("inspect", f"{s.url}/tiny.gguf", "--json")
    assert code == 0 and json.loads(out)["name"] == "qwen3moe-tiny"


def test_not_found(files: Path) -> None:
    with FileServer(files) as s:
        _one_line_error(["inspect", f"{s.url}/nope.gguf"], "not found (HTTP 404)")


def test_missing_shard_is_not_found(files: Path, tmp_path: Path) -> None:
    d = tmp_path / "partial"
    d.mkdir()
    (d / "DeepSeek-V3-Q4_K_M-00001-of-00009.gguf").symlink_to(files / "DeepSeek-V3-Q4_K_M-00001-of-00009.gguf")
    with FileServer(d) as s:
        _one_line_error(["inspect", f"{s.url}/DeepSeek-V3-Q4_K_M-00001-of-00009.gguf"],
                        "DeepSeek-V3-Q4_K_M-00002-of-00009.gguf: not found (HTTP 404)")


@pytest.mark.parametrize("status", [401, 403])
def test_access_denied(files: Path, status: int) -> None:
    with FileServer(files, Faults(status=status)) as s:
        _one_line_error(["inspect", f"{s.url}/tiny.gguf"], f"access denied (HTTP {status}): ")


def test_retries_with_backoff_get_through(files: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOEPLACE_HTTP_RETRIES", "2")
    monkeypatch.setenv("MOEPLACE_HTTP_BACKOFF", "0.2")
    with FileServer(files, Faults(fail_first=2)) as s:
        start = time.monotonic()
        code, _, err = _run("inspect", f"{s.url}/tiny.gguf")
        waited = time.monotonic() - start
    assert code == 0, err
    assert waited >= 0.2 + 0.4  # backed off 0.2 s, then 0.4 s
    with FileServer(files, Faults(fail_first=3)) as s:
        _one_line_error(["inspect", f"{s.url}/tiny.gguf"], "the server answered HTTP 503 after 3 tries")


def test_truncated_answer(files: Path) -> None:
    with FileServer(files, Faults(truncate=True)) as s:
        err = _one_line_error(["inspect", f"{s.url}/tiny.gguf"], "answer was cut short")
        assert "after 2 tries" in err


def test_changed_etag(files: Path) -> None:
    with FileServer(files, Faults(change_etag_after=1)) as s:
        _one_line_error(["inspect", f"{s.url}/qwen3-30b-a3b.gguf"], "the file changed on the server while it was read")


def test_no_server(files: Path) -> None:
    with FileServer(files) as s:
        url = f"{s.url}/tiny.gguf"
    _one_line_error(["inspect", url], "no answer (")


def test_timeout(files: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOEPLACE_HTTP_TIMEOUT", "0.2")
    with FileServer(files, Faults(delay=1.0)) as s:
        _one_line_error(["inspect", f"{s.url}/tiny.gguf"], "timed out")


def test_not_a_gguf_over_http(tmp_path: Path) -> None:
    (tmp_path / "x.gguf").write_bytes(b"<html>hello</html>" * 10)
    with FileServer(tmp_path) as s:
        _one_line_error(["inspect", f"{s.url}/x.gguf"], "not a GGUF file")


# -- the Hub, through huggingface_hub ---------------------------------------------------------------------------


def test_hub_deepseek_header_costs_under_16_mib(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with HubServer({REPO: repo}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        stats = ReadStats()
        gf = read_remote(parse_ref(f"{REPO}:Q4_K_M"), stats)  # type: ignore[arg-type]
        served = _served(hub, stats.bytes_fetched)
    assert stats.bytes_fetched > 5_000_000  # the vocabulary alone is 5 MB: the count is of real bytes
    assert len(gf.paths) == 9 and len(gf.tensors) == 1086
    assert gf.paths[0] == f"hf://{REPO}/Q4_K_M/DeepSeek-V3-Q4_K_M-00001-of-00009.gguf"
    assert served < 16 << 20, served
    local = read_gguf(repo / "Q4_K_M" / "DeepSeek-V3-Q4_K_M-00001-of-00009.gguf")
    assert gf.tensors == local.tensors


def test_hub_solve_emits_hf_flags_and_works_offline_after(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # --ram fixed: without it the plan is for the RAM available now, which moves between the two runs
    args = ["solve", "hf://org/DeepSeek-V3-GGUF/DeepSeek-V3-Q8_0.gguf", "--vram", "1G", "--ram", "32G", "--no-scripts"]
    with HubServer({REPO: repo}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        code, out, err = _run(*args)
        assert code == 0, err
    assert f"llama-server -hf {REPO} -hff DeepSeek-V3-Q8_0.gguf " in out
    code, again, _ = _run(*args)  # the endpoint is closed: all from the cache
    assert code == 0
    assert again.splitlines()[0] == out.splitlines()[0]


def test_hub_default_tag_picks_q4_k_m(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with HubServer({REPO: repo}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        code, out, _ = _run("inspect", REPO, "--json")
    assert code == 0
    assert json.loads(out)["files"][0].endswith("Q4_K_M/DeepSeek-V3-Q4_K_M-00001-of-00009.gguf")


def test_hub_repo_not_found(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with HubServer({REPO: repo}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        _one_line_error(["inspect", "org/missing:Q4_K_M"], "org/missing: repository not found")


def test_hub_file_not_found(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with HubServer({REPO: repo}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        _one_line_error(["inspect", f"hf://{REPO}/nope.gguf"], "not found (HTTP 404)")


def test_hub_gated_needs_hf_token(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with HubServer({REPO: repo}, gated={REPO: "hf_secret"}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_TOKEN", "hf_wrong")
        _one_line_error(["inspect", f"hf://{REPO}/DeepSeek-V3-Q8_0.gguf"], "gated")
        monkeypatch.setenv("HF_TOKEN", "hf_secret")
        code, _, err = _run("inspect", f"hf://{REPO}/DeepSeek-V3-Q8_0.gguf")
        assert code == 0, err
        # The bytes came from the "CDN" (another host name), which must never see the Hub token.
        assert hub.state.authorizations and not any(hub.state.authorizations)


def test_hub_unreachable(monkeypatch: pytest.MonkeyPatch, files: Path) -> None:
    with FileServer(files) as s:
        url = s.url
    monkeypatch.setenv("HF_ENDPOINT", url)
    # No retries: huggingface_hub's own back-off would wait 23 s (listings always retry; MOEPLACE_HTTP_RETRIES
    # covers the metadata request and the range requests).
    monkeypatch.setenv("MOEPLACE_HTTP_RETRIES", "0")
    _one_line_error(["inspect", "hf://org/some-GGUF/m-Q4_K_M.gguf"], "no answer from")


@pytest.mark.parametrize("cut", [3, 100, 3_000_000])
def test_truncated_file_over_http_keeps_the_local_checks(files: Path, tmp_path: Path, cut: int) -> None:
    data = (files / "qwen3-30b-a3b.gguf").open("rb").read(cut)
    (tmp_path / "cut.gguf").write_bytes(data)
    code, _, local_err = _run("inspect", str(tmp_path / "cut.gguf"))
    with FileServer(tmp_path) as s:
        err = _one_line_error(["inspect", f"{s.url}/cut.gguf"], "")
    assert code == 2
    # The same problem, found at the same offset, as for the local file.
    assert err.split(": ", 2)[2] == local_err.split(": ", 2)[2]
