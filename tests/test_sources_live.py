"""Live capture through a real llama.cpp (llama-cpp-python) on the factory's tiny MoE models.

Tests that need the engine are skipped with a reason where llama-cpp-python is not installed (CI installs it
with .ci/llama-cpp.sh). Prompt reading and the missing-engine message are tested everywhere.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

from moeplace.model import ModelDescription, load_model
from moeplace.routing import check_profile, moe_layers
from moeplace.sources.live import LiveError, PromptSet, RunOptions, capture, read_prompts
from moeplace.testing import write_model

PROMPTS = PromptSet("test", "-", (
    "hello world the model expert layer token " * 12,
    "the of and to in is it that was for on are with as be at this",
    "one had by but not hello",
))


@pytest.fixture(scope="module")
def llama() -> object:
    import llama_cpp  # only tests marked llama take this fixture: conftest skips them where it is missing

    return llama_cpp


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("live")


def tiny(model_dir: Path, name: str) -> ModelDescription:
    path = model_dir / f"{name}.gguf"
    if not path.exists():
        write_model(name, path)
    return load_model(path)


def assert_consistent(model: ModelDescription, result, tokens_fed: int) -> None:
    """Every MoE layer routed every token it was fed to exactly n_expert_used experts, all in range."""
    prof = result.profile
    assert prof is not None
    check_profile(prof, model)
    k, n = model.hparams.n_expert_used, model.hparams.n_expert
    assert set(prof.layers) == set(moe_layers(model))
    for layer in prof.layers:
        c = prof.counts[layer]
        assert c.shape == (n,)  # an id >= n_expert would have raised LiveError
        assert c.sum() == tokens_fed * k
        assert prof.tokens[layer] == tokens_fed
        assert (c >= 0).all() and (c == np.round(c)).all()


@pytest.mark.llama
@pytest.mark.parametrize("name", ["qwen3moe-tiny", "deepseek2-tiny", "gpt-oss-tiny", "mixtral-tiny"])
def test_counts_are_consistent(llama: object, model_dir: Path, name: str) -> None:
    model = tiny(model_dir, name)
    result = capture(model, PROMPTS, RunOptions(generate=4, n_ctx=256, n_batch=32, n_threads=1))
    assert result.prompt_tokens > 3 * 10 and not result.interrupted
    assert_consistent(model, result, result.prompt_tokens + result.generated_tokens)
    assert result.profile.source.kind == "live"
    assert result.profile.source.engine.startswith("llama-cpp-python")
    assert result.profile.source.generated_tokens == result.generated_tokens


@pytest.mark.llama
def test_capture_is_deterministic_and_prompt_tokens_match_the_engine(llama: object, model_dir: Path) -> None:
    model = tiny(model_dir, "qwen3moe-tiny")
    a = capture(model, PROMPTS, RunOptions(generate=3, n_ctx=256, n_batch=16, n_threads=1))
    again = capture(model, PROMPTS, RunOptions(generate=3, n_ctx=256, n_batch=16, n_threads=1))
    b = capture(model, PROMPTS, RunOptions(generate=3, n_ctx=256, n_batch=64, n_threads=1))
    assert a.prompt_tokens == b.prompt_tokens
    for layer in a.profile.layers:
        assert np.array_equal(a.profile.counts[layer], again.profile.counts[layer])
        # Another batch size changes kernels and rounding, so near-ties may flip: routing stays almost the same.
        diff = np.abs(a.profile.counts[layer] - b.profile.counts[layer]).sum()
        assert diff <= 0.05 * a.profile.counts[layer].sum()
    # The tokens fed are what llama.cpp's own tokenizer makes of the prompts (BOS included).
    from llama_cpp import Llama

    lm = Llama(str(model.paths[0]), vocab_only=True, verbose=False)
    assert a.prompt_tokens == sum(len(lm.tokenize(p.encode())) for p in PROMPTS.prompts)


@pytest.mark.llama
def test_last_layer_sees_only_tokens_with_logits(llama: object, model_dir: Path) -> None:
    """Why the profiler requests all logits by default: llama.cpp's last block routes only the output tokens."""
    model = tiny(model_dir, "qwen3moe-tiny")
    last = max(moe_layers(model))
    r = capture(model, PROMPTS, RunOptions(n_ctx=256, n_batch=64, n_threads=1, logit_every=0, trace_tokens=0))
    assert r.profile.tokens[min(moe_layers(model))] == r.prompt_tokens
    from llama_cpp import Llama

    lm = Llama(str(model.paths[0]), vocab_only=True, verbose=False)
    batches = sum(-(-len(lm.tokenize(p.encode())) // 64) for p in PROMPTS.prompts)
    assert r.profile.tokens[last] == batches < r.prompt_tokens  # one output token per batch
    assert r.profile.source.notes == (f"layer {last} routed only {batches} tokens, those whose logits were "
                                      "computed (logit_every 0)",)
    # Every 4th token (plus each batch's last, which sampling needs): the last layer sees about a quarter.
    q = capture(model, PROMPTS, RunOptions(n_ctx=256, n_batch=64, n_threads=1, logit_every=4))
    assert q.profile.tokens[min(moe_layers(model))] == q.prompt_tokens
    assert q.prompt_tokens / 4 <= q.profile.tokens[last] <= q.prompt_tokens / 4 + batches + len(PROMPTS.prompts)
    c = q.profile.counts[last]
    assert c.sum() == q.profile.tokens[last] * model.hparams.n_expert_used


@pytest.mark.llama
def test_prompt_longer_than_context_runs_in_pieces(llama: object, model_dir: Path) -> None:
    model = tiny(model_dir, "qwen3moe-tiny")
    long = PromptSet("long", "-", ("expert layer token model " * 60,))
    r = capture(model, long, RunOptions(generate=2, n_ctx=64, n_batch=16, n_threads=1))
    assert r.split_prompts == 1 and r.prompt_tokens > 64
    assert_consistent(model, r, r.prompt_tokens + r.generated_tokens)


@pytest.mark.llama
def test_coactivation_counts(llama: object, model_dir: Path) -> None:
    model = tiny(model_dir, "deepseek2-tiny")
    r = capture(model, PROMPTS, RunOptions(generate=2, n_ctx=256, n_batch=32, n_threads=1, coactivation=True))
    k = model.hparams.n_expert_used
    assert r.profile.coactivation is not None
    for layer in r.profile.layers:
        co = r.profile.coactivation[layer]
        assert np.array_equal(co, co.T) and (np.diag(co) == 0).all()
        # Each time an expert is chosen it is chosen together with k-1 others.
        assert np.array_equal(co.sum(axis=1), r.profile.counts[layer] * (k - 1))


@pytest.mark.llama
@pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX signals")
def test_ctrl_c_keeps_what_was_gathered(llama: object, model_dir: Path) -> None:
    model = tiny(model_dir, "qwen3moe-tiny")
    many = PromptSet("many", "-", PROMPTS.prompts * 5)
    calls = []

    def progress(done: int, expected: int) -> None:
        calls.append(done)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)

    r = capture(model, many, RunOptions(generate=2, n_ctx=256, n_batch=8, n_threads=1), progress=progress)
    assert r.interrupted and r.profile.source.interrupted
    assert 0 < r.tokens < calls[0] * 15  # stopped early
    assert_consistent(model, r, r.tokens)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored


@pytest.mark.llama
@pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX signals")
def test_second_ctrl_c_stops_at_once_and_counts_stay_consistent(llama: object, model_dir: Path) -> None:
    model = tiny(model_dir, "qwen3moe-tiny")
    many = PromptSet("many", "-", PROMPTS.prompts * 5)
    calls = []

    def progress(done: int, expected: int) -> None:
        calls.append(done)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)

    r = capture(model, many, RunOptions(generate=2, n_ctx=256, n_batch=8, n_threads=1), progress=progress)
    assert r.interrupted and r.tokens == calls[-1]
    assert_consistent(model, r, r.tokens)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.llama
def test_dense_model_and_bad_options_are_refused(llama: object, model_dir: Path) -> None:
    with pytest.raises(LiveError, match="no routed experts"):
        capture(tiny(model_dir, "llama-tiny"), PROMPTS)
    with pytest.raises(LiveError, match="raise --ctx"):
        capture(tiny(model_dir, "qwen3moe-tiny"), PROMPTS, RunOptions(generate=300, n_ctx=256))


def test_missing_engine_is_explained(monkeypatch: pytest.MonkeyPatch, model_dir: Path) -> None:
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # makes 'import llama_cpp' fail
    path = model_dir / "q.gguf"
    write_model("qwen3moe-tiny", path)
    with pytest.raises(LiveError, match=r"pip install 'moeplace\[profile\]'"):
        capture(load_model(path), PROMPTS)


# --- prompts -----------------------------------------------------------------------------------------------


def test_prompt_files(tmp_path: Path) -> None:
    (tmp_path / "para.txt").write_text("first prompt\nstill first\n\nsecond prompt\n\n\nthird\n")
    assert read_prompts(tmp_path / "para.txt").prompts == ("first prompt\nstill first", "second prompt", "third")
    (tmp_path / "lines.txt").write_text("one\ntwo\nthree\n")
    assert read_prompts(tmp_path / "lines.txt").prompts == ("one", "two", "three")
    (tmp_path / "p.jsonl").write_text('"a"\n{"prompt": "b"}\n\n{"text": "c"}\n')
    assert read_prompts(tmp_path / "p.jsonl").prompts == ("a", "b", "c")
    d = read_prompts(tmp_path)
    assert d.prompts == ("one", "two", "three", "a", "b", "c", "first prompt\nstill first", "second prompt", "third")
    assert len(d.sha256) == 64 and d.sha256 != read_prompts(tmp_path / "lines.txt").sha256
    (tmp_path / "lines.txt").write_text("one\ntwo\nthree!\n")
    assert read_prompts(tmp_path).sha256 != d.sha256


@pytest.mark.parametrize(("content", "needle"), [
    (b"", "holds no prompts"),
    (b"\xff\xfe", "UTF-8"),
])
def test_bad_prompt_files(tmp_path: Path, content: bytes, needle: str) -> None:
    (tmp_path / "p.txt").write_bytes(content)
    with pytest.raises(LiveError, match=needle):
        read_prompts(tmp_path / "p.txt")


def test_bad_prompt_paths(tmp_path: Path) -> None:
    with pytest.raises(LiveError, match="no such prompts file"):
        read_prompts(tmp_path / "none.txt")
    with pytest.raises(LiveError, match="no prompt files"):
        read_prompts(tmp_path)
    (tmp_path / "x.jsonl").write_text('{"other": 1}\n')
    with pytest.raises(LiveError, match=r"x\.jsonl:1"):
        read_prompts(tmp_path / "x.jsonl")


@pytest.mark.llama
def test_trace_keeps_the_order_of_routing(llama: object, model_dir: Path) -> None:
    """The trace is the counts in token order: every layer's ids, token by token, adding up to the counts when it
    covers every token; capped, it keeps the first tokens of every layer alike; a layer that routed only part
    of a batch (logit_every > 1 on the last block) has no aligned order and is left out, with a note."""
    model = tiny(model_dir, "qwen3moe-tiny")
    full = capture(model, PROMPTS, RunOptions(generate=3, n_ctx=256, n_batch=16, n_threads=1)).profile
    assert full.trace is not None and set(full.trace) == set(full.layers)
    for layer, ids in full.trace.items():
        assert ids.shape == (full.tokens[layer], model.hparams.n_expert_used)
        assert (np.bincount(ids.ravel(), minlength=model.hparams.n_expert) == full.counts[layer]).all()
    capped = capture(model, PROMPTS, RunOptions(generate=3, n_ctx=256, n_batch=16, n_threads=1,
                                                trace_tokens=20)).profile
    assert all((capped.trace[il] == full.trace[il][:20]).all() for il in full.layers)
    sparse = capture(model, PROMPTS, RunOptions(n_ctx=256, n_batch=64, n_threads=1, logit_every=4)).profile
    last = max(sparse.layers)
    assert last not in sparse.trace and any("routing trace left out" in n for n in sparse.source.notes)
    none = capture(model, PROMPTS, RunOptions(n_ctx=256, n_batch=64, n_threads=1, trace_tokens=0)).profile
    assert none.trace is None
