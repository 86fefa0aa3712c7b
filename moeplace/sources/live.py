"""Live routing capture: run prompts through llama.cpp and record the experts every MoE layer selects.

llama.cpp's ``build_moe_ffn`` (``src/llama-graph.cpp``) names the selected expert ids ``ffn_moe_topk-<il>``:
an I32 tensor ``[n_expert_used, n_tokens]``, a *view* of the argsort result (``ggml_argsort_top_k`` in
``ggml/src/ggml.c``), so its rows are strided, not contiguous. The scheduler's eval callback
(``ggml_backend_sched_compute_splits`` in ``ggml/src/ggml-backend.cpp``) first asks about every node; each
"yes" splits the graph there, so we answer yes only for those tensors and copy them out with
``ggml_backend_tensor_get`` when called again with ``ask=False``. Returning false from that second call stops
the rest of the split, so it always returns true.

In every architecture's graph the last block processes only the tokens whose logits are requested
(``inp_out_ids``, e.g. ``src/models/qwen3moe.cpp``); like ``llama-imatrix`` we request logits for every token so
that the last MoE layer is measured on all of them.

llama-cpp-python is optional (``pip install 'moeplace[profile]'``): it is imported only when a capture runs.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from moeplace import oracle
from moeplace.errors import MoeplaceError
from moeplace.memory import RunConfig
from moeplace.model import ModelDescription
from moeplace.routing import ModelIdentity, RoutingProfile, Source, make_profile, moe_layers, utc_now

TOPK_PREFIX = b"ffn_moe_topk-"
GGML_TYPE_I32 = 26  # ggml/include/ggml.h, enum ggml_type
PROMPT_SUFFIXES = (".txt", ".md", ".jsonl", ".text", ".prompt")

Progress = Callable[[int, int], None]  # (tokens done, tokens expected)


class LiveError(MoeplaceError):
    """The live profiler cannot run or llama.cpp failed."""


class _TensorHead(ctypes.Structure):
    """The first fields of ``struct ggml_tensor`` (ggml/include/ggml.h), unchanged since 2023."""

    _fields_ = (
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * 4),
        ("nb", ctypes.c_size_t * 4),
    )


def load_llama() -> ModuleType:
    """Imports llama_cpp (through :mod:`moeplace.oracle`), or explains how to get it."""
    try:
        return oracle.load_llama()
    except oracle.EngineError as e:
        raise LiveError(str(e)) from None


# --- prompts -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptSet:
    """Prompts read from a file or directory, with a hash identifying them in the profile."""

    name: str
    sha256: str
    prompts: tuple[str, ...]


def _split_text(text: str, suffix: str, origin: Path) -> list[str]:
    if suffix == ".jsonl":
        out = []
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as e:
                raise LiveError(f"{origin}:{i}: not a JSON line ({e.msg})") from None
            if isinstance(item, dict):
                item = item.get("prompt", item.get("text"))
            if not isinstance(item, str):
                raise LiveError(f"{origin}:{i}: a JSONL prompt must be a string or an object with 'prompt' or 'text'")
            out.append(item)
        return out
    lines = text.splitlines()
    if any(not line.strip() for line in lines) and sum(1 for line in lines if line.strip()) > 1:
        paragraphs, cur = [], []
        for line in lines:
            if line.strip():
                cur.append(line)
            elif cur:
                paragraphs.append("\n".join(cur))
                cur = []
        if cur:
            paragraphs.append("\n".join(cur))
        return paragraphs
    return [line for line in lines if line.strip()]


def read_prompts(path: str | os.PathLike[str]) -> PromptSet:
    """Reads prompts. A text file holds prompts separated by blank lines (or, without blank lines, one per line);
    a ``.jsonl`` file one JSON string or ``{"prompt": ...}`` per line; a directory every such file in it, in name
    order."""
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith(".")
                       and f.suffix.lower() in PROMPT_SUFFIXES)
        if not files:
            raise LiveError(f"{p}: no prompt files ({', '.join(PROMPT_SUFFIXES)}) in this directory")
    elif p.is_file():
        files = [p]
    else:
        raise LiveError(f"{p}: no such prompts file or directory")
    prompts: list[str] = []
    digest = hashlib.sha256()
    for f in files:
        raw = f.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise LiveError(f"{f}: prompts must be UTF-8 text") from None
        # A directory's hash covers each file's name and content, so renaming a prompt file changes it too.
        digest.update((f.name.encode() + b"\0" + hashlib.sha256(raw).digest()) if p.is_dir() else raw)
        prompts.extend(_split_text(text, f.suffix.lower(), f))
    if not prompts:
        raise LiveError(f"{p}: holds no prompts")
    return PromptSet(p.name, digest.hexdigest(), tuple(prompts))


# --- capture -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunOptions:
    """How the prompts are run."""

    generate: int = 0  # greedy tokens generated after each prompt
    n_ctx: int = 2048
    n_batch: int = 512  # also n_ubatch: routing per physical batch is what PCIe copies follow
    n_threads: int = 0  # 0: every core
    n_gpu_layers: int = 0
    coactivation: bool = False
    # Logits for every n-th prompt token (1: all, as llama-imatrix asks; 0: only those sampling needs). llama.cpp's
    # last block routes only tokens whose logits are computed, so this is the share of tokens the last MoE layer
    # is measured on; each costs one output-matrix product.
    logit_every: int = 1
    # Tokens whose per-layer expert ids are kept in order (the profile's routing trace, which an expert cache's
    # hit rate is simulated from); 0 keeps none. 4096 tokens of a 48-layer, top-8 model: about 1.5 MB.
    trace_tokens: int = 4096


@dataclass(frozen=True)
class CaptureResult:
    """What a run produced. ``profile`` is None for a plain (unrecorded) run."""

    profile: RoutingProfile | None
    prompt_tokens: int
    generated_tokens: int
    seconds: float
    interrupted: bool
    split_prompts: int  # prompts longer than the context, evaluated in pieces

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.generated_tokens

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


class _Collector:
    """The eval callback and what it gathers (per capture, never shared).

    Selections of the batch being decoded are staged and committed only when llama_decode succeeds, so a batch
    cut short (second Ctrl-C, or an engine error) never leaves some layers counted and others not.
    """

    def __init__(self, ggml: ctypes.CDLL, n_layer: int, n_expert: int, coactivation: bool,
                 abort: threading.Event, trace_tokens: int = 0) -> None:
        self.get_name = ggml.ggml_get_name
        self.nbytes = ggml.ggml_nbytes
        self.tensor_get = ggml.ggml_backend_tensor_get
        self.n_expert = n_expert
        self.coactivation = coactivation
        self.abort = abort
        self.counts = np.zeros((n_layer, n_expert), dtype=np.int64)
        self.tokens = np.zeros(n_layer, dtype=np.int64)
        self.pairs = np.zeros((n_layer, n_expert * n_expert), dtype=np.int64) if coactivation else None
        self.staged: list[tuple[int, np.ndarray]] = []  # (layer, ids [n_tokens, k]) of the current batch
        self.errors: list[str] = []
        self.trace_cap = trace_tokens
        self.traced = 0  # tokens in the trace so far
        self.trace: dict[int, list[np.ndarray]] = {}
        self.untraced: set[int] = set()  # layers that saw only part of some batch: no aligned order to keep

    def __call__(self, t: int, ask: bool, user_data: Any) -> bool:
        if self.abort.is_set():
            # Asking for every node and then answering false ends the graph split at once.
            return ask
        # Called for every graph node of every batch: reject most nodes by their type before reading the name.
        if ctypes.c_int.from_address(t).value != GGML_TYPE_I32:
            return not ask
        name = self.get_name(t)
        if not name.startswith(TOPK_PREFIX):
            return not ask  # never split the graph for other tensors
        if ask:
            return True
        try:
            self._take(t, int(name[len(TOPK_PREFIX):]))
        except Exception as e:  # an exception must not escape into C: it would stop the graph
            self.errors.append(f"{name.decode(errors='replace')}: {e}")
        return True

    def _take(self, t: int, layer: int) -> None:
        head = _TensorHead.from_address(t)
        if head.type != GGML_TYPE_I32:
            raise ValueError(f"type {head.type}, expected I32")
        k, n_tokens, n2, n3 = (int(x) for x in head.ne)
        nbytes = int(self.nbytes(t))
        buf = np.empty(nbytes, dtype=np.uint8)
        self.tensor_get(t, buf.ctypes.data, 0, nbytes)
        # The view's rows are strided (nb[1] = n_expert * 4): index it with ggml's own strides.
        ids = np.ndarray((n3, n2, n_tokens, k), dtype=np.int32, buffer=buf,
                         strides=(head.nb[3], head.nb[2], head.nb[1], head.nb[0])).reshape(-1, k)
        if ids.size and (ids.min() < 0 or ids.max() >= self.n_expert):
            raise ValueError(f"expert id {int(ids.min() if ids.min() < 0 else ids.max())} outside "
                             f"0..{self.n_expert - 1}")
        if not 0 <= layer < len(self.tokens):
            raise ValueError(f"layer {layer} outside the model's {len(self.tokens)} blocks")
        self.staged.append((layer, ids.copy()))

    def commit(self) -> None:
        """Counts the batch just decoded (and keeps its order in the trace while there is room)."""
        n = self.n_expert
        if self.staged and self.traced < self.trace_cap:
            full = max(ids.shape[0] for _, ids in self.staged)
            take = min(full, self.trace_cap - self.traced)
            for layer, ids in self.staged:
                if ids.shape[0] == full:
                    self.trace.setdefault(layer, []).append(ids[:take].astype(np.uint16))
                else:
                    self.untraced.add(layer)
            self.traced += take
        for layer, ids in self.staged:
            self.counts[layer] += np.bincount(ids.ravel(), minlength=n)
            self.tokens[layer] += ids.shape[0]
            if self.pairs is not None:
                k = ids.shape[1]
                for i in range(k):
                    for j in range(i + 1, k):
                        self.pairs[layer] += np.bincount(ids[:, i] * n + ids[:, j], minlength=n * n)
        self.staged.clear()

    def discard(self) -> None:
        self.staged.clear()


@contextmanager
def _sigint_sets(stop: threading.Event, abort: threading.Event) -> Iterator[None]:
    """The first Ctrl-C sets ``stop`` (finish the current batch), the second ``abort`` (cut it short); after
    that Ctrl-C raises as usual. Raising at once is not an option: the exception would surface inside the eval
    callback, where ctypes swallows it and the evaluation goes on corrupted."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set():
            abort.set()
            signal.signal(signal.SIGINT, previous)
        stop.set()

    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _tokenize(llama: ModuleType, vocab: Any, text: str) -> list[int]:
    data = text.encode("utf-8")
    n = len(data) + 8
    for _ in range(2):
        buf = (llama.llama_token * n)()
        got = llama.llama_tokenize(vocab, data, len(data), buf, n, True, False)
        if got >= 0:
            return list(buf[:got])
        n = -got
    raise LiveError("llama.cpp failed to tokenize a prompt")


def _run(llama: ModuleType, ctx: Any, vocab: Any, n_vocab: int, batch: Any, prompts: PromptSet,
         options: RunOptions, collector: _Collector, stop: threading.Event, abort: threading.Event,
         log: oracle.LogSink, progress: Progress | None) -> tuple[int, int, int, float]:
    """Evaluates every prompt (in pieces of the context's room) and its greedy continuation; returns the prompt
    tokens and generated tokens evaluated, the prompts that had to be split, and the seconds it took."""
    room = options.n_ctx - options.generate
    tokenized = [_tokenize(llama, vocab, text) for text in prompts.prompts]
    expected = sum(len(t) for t in tokenized) + options.generate * len(tokenized)
    done = generated = split = 0
    memory = llama.llama_get_memory(ctx)
    start = time.perf_counter()

    def decode(tokens: Sequence[int], pos: int, every: int) -> bool:
        """Evaluates one batch; False when Ctrl-C cut it short (nothing of it is counted)."""
        batch.n_tokens = len(tokens)
        for i, tok in enumerate(tokens):
            batch.token[i] = tok
            batch.pos[i] = pos + i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = (every > 0 and (pos + i) % every == 0) or i == len(tokens) - 1
        rc = llama.llama_decode(ctx, batch)
        if abort.is_set():
            collector.discard()
            return False
        if rc != 0:
            raise LiveError(f"llama_decode failed with code {rc}: {oracle.last_error(log)}")
        if collector.errors:
            raise LiveError(f"reading the selected experts failed: {collector.errors[0]}")
        collector.commit()
        return True

    for tokens in tokenized:
        if stop.is_set():
            break
        pieces = [tokens[i:i + room] for i in range(0, len(tokens), room)] or [[]]
        split += len(pieces) > 1
        for piece in pieces:
            llama.llama_memory_clear(memory, True)
            for i in range(0, len(piece), options.n_batch):
                if stop.is_set():
                    break
                part = piece[i:i + options.n_batch]
                if not decode(part, i, options.logit_every):
                    break
                done += len(part)
                if progress:
                    progress(done + generated, expected)
        pos = len(pieces[-1])
        if not pos:
            continue
        for _ in range(options.generate):
            if stop.is_set():
                break
            logits = np.ctypeslib.as_array(llama.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))
            tok = int(np.argmax(logits))
            if llama.llama_vocab_is_eog(vocab, tok):
                break
            if not decode([tok], pos, 1):
                break
            pos += 1
            generated += 1
            if progress:
                progress(done + generated, expected)
    return done, generated, split, time.perf_counter() - start


def capture(model: ModelDescription, prompts: PromptSet, options: RunOptions = RunOptions(), *,
            progress: Progress | None = None, record: bool = True) -> CaptureResult:
    """Runs every prompt (and ``options.generate`` greedy tokens after it) through llama.cpp, recording the
    experts every MoE layer selects for every token. ``record=False`` runs the same work without the callback
    (with ``logit_every=0``: plain evaluation) to measure the profiler's overhead.

    Ctrl-C stops after the current batch and returns what was gathered (``interrupted=True``); a second Ctrl-C
    also drops the batch under way.
    """
    llama = load_llama()
    hp = model.hparams
    if not model.is_moe or hp.n_expert < 1:
        raise LiveError(f"{model.name} has no routed experts: there is no routing to profile")
    if options.generate < 0 or options.n_ctx < 8 or options.n_batch < 1 or options.logit_every < 0:
        raise LiveError("--generate and --logit-every must be >= 0, the context at least 8 tokens and the batch "
                        "at least 1")
    room = options.n_ctx - options.generate
    if room < 1:
        raise LiveError(f"--generate {options.generate} leaves no room for the prompt in a context of "
                        f"{options.n_ctx} tokens: raise --ctx")
    ggml = oracle.ggml_base()
    stop, abort = threading.Event(), threading.Event()
    collector = _Collector(ggml, hp.n_layer, hp.n_expert, options.coactivation, abort,
                           options.trace_tokens if record else 0)
    callback = llama.ggml_backend_sched_eval_callback(collector)  # referenced until the context is freed
    threads = options.n_threads or os.cpu_count() or 1

    cfg = RunConfig(n_ctx=options.n_ctx, n_batch=options.n_batch, n_ubatch=options.n_batch)
    try:
        with oracle.captured_log(2000) as log, _sigint_sets(stop, abort), oracle.load(
                model.paths[0], cfg, n_gpu_layers=options.n_gpu_layers, no_alloc=False, n_threads=threads,
                eval_callback=callback if record else None, sink=log) as loaded:
            lm, ctx = loaded.model, loaded.ctx
            vocab = llama.llama_model_get_vocab(lm)
            n_vocab = llama.llama_vocab_n_tokens(vocab)
            batch = llama.llama_batch_init(options.n_batch, 0, 1)
            try:
                done, generated, split, seconds = _run(llama, ctx, vocab, n_vocab, batch, prompts, options,
                                                       collector, stop, abort, log, progress)
            finally:
                llama.llama_batch_free(batch)
    except oracle.EngineError as e:
        raise LiveError(str(e)) from None

    profile = None
    if record:
        if done + generated == 0:
            raise LiveError("interrupted before any token was evaluated: nothing to save" if stop.is_set()
                            else f"{prompts.name}: the prompts tokenize to nothing")
        layers = moe_layers(model)
        silent = [il for il in layers if collector.tokens[il] == 0]
        if silent:
            raise LiveError(f"llama.cpp reported no expert selections (ffn_moe_topk) for MoE layers {silent}: "
                            "this llama.cpp build names its graph differently; update llama-cpp-python")
        source = Source(
            kind="live", tokens=float(max(collector.tokens[il] for il in layers)), created=utc_now(),
            engine=f"llama-cpp-python {getattr(llama, '__version__', '?')}", prompts=prompts.name,
            prompts_sha256=prompts.sha256, prompt_count=len(prompts.prompts),
            generated_per_prompt=options.generate, generated_tokens=generated, interrupted=stop.is_set(),
            notes=tuple(f"layer {il} routed only {collector.tokens[il]} tokens, those whose logits were computed "
                        f"(logit_every {options.logit_every})"
                        for il in layers if collector.tokens[il] < max(collector.tokens)),
        )
        co = None
        if collector.pairs is not None:
            n = hp.n_expert
            co = {il: (m := collector.pairs[il].reshape(n, n)) + m.T for il in layers}
        traced = [il for il in layers if il in collector.trace and il not in collector.untraced]
        trace = {il: np.concatenate(collector.trace[il]) for il in traced} or None
        if trace and len(traced) < len(layers):
            source = replace(source, notes=(*source.notes, "routing trace left out for layers "
                                            f"{[il for il in layers if il not in traced]}: they routed only part of "
                                            "some batches"))
        profile = make_profile(ModelIdentity.of(model), source, {il: collector.counts[il] for il in layers},
                               {il: float(collector.tokens[il]) for il in layers}, co, trace=trace)
    return CaptureResult(profile, done, generated, seconds, stop.is_set(), split)
