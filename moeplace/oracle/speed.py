"""Measured speed: :func:`measure_speed` runs prompt processing and generation on a model with real data and times
them the way ``llama-bench`` does (``tools/llama-bench/llama-bench.cpp``: random tokens, ``llama_batch_get_one``,
a warm-up, the memory cleared before each test)."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from moeplace.llamacpp import Override
from moeplace.memory import RunConfig
from moeplace.oracle.loading import EngineError, captured_log, last_error, load, load_llama, version


def sparse_files(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The files among ``paths`` whose disk blocks cover far less than their length: header-only (sparse)
    models such as the factory's full-scale ones, whose weights read back as zeros. Where the platform does not
    report blocks (Windows) nothing is flagged."""
    out = []
    for p in map(Path, paths):
        st = p.stat()
        blocks = getattr(st, "st_blocks", None)
        # A real file occupies at least its length (rounded up to blocks); transparent compression can shrink
        # that, but not below an eighth for quantized weights, which do not compress.
        if blocks is not None and st.st_size > (1 << 20) and blocks * 512 < st.st_size / 8:
            out.append(p)
    return out


@dataclass(frozen=True)
class EngineSpeed:
    """Measured tokens per second: prompt processing of ``n_prompt`` tokens and generation of ``n_gen`` tokens
    from an empty context, each the mean over ``repetitions`` runs after a warm-up (llama-bench's pp/tg)."""

    pp_tps: float
    tg_tps: float
    n_prompt: int
    n_gen: int
    repetitions: int
    n_threads: int
    pp_runs: tuple[float, ...]  # tokens/s of each run
    tg_runs: tuple[float, ...]
    engine: str


def _decode_tokens(llama: ModuleType, ctx: Any, tokens: np.ndarray) -> None:
    arr = (llama.llama_token * len(tokens))(*(int(t) for t in tokens))
    rc = llama.llama_decode(ctx, llama.llama_batch_get_one(arr, len(tokens)))
    if rc != 0:
        raise EngineError(f"llama_decode failed with code {rc}")


def measure_speed(model_path: str | os.PathLike[str], cfg: RunConfig, overrides: Sequence[Override] = (),
                  n_prompt: int = 512, n_gen: int = 128, *, n_gpu_layers: int = 0,
                  tensor_split: Sequence[float] | None = None, repetitions: int = 3, n_threads: int | None = None,
                  seed: int = 0) -> EngineSpeed:
    """Prompt-processing and generation tokens/s of a model with real data under ``cfg`` and a placement
    (``overrides``, ``n_gpu_layers``, ``tensor_split``), timed like llama-bench: random tokens (a BOS first where
    the vocabulary adds one), the prompt in ``n_batch`` pieces, generation one token at a time, the context's
    memory cleared before every run, one warm-up run first."""
    if n_prompt < 1 or n_gen < 1 or repetitions < 1:
        raise EngineError("the prompt and generation lengths and the repetitions must be at least 1")
    if cfg.n_ctx and max(n_prompt, n_gen) > cfg.n_ctx:
        raise EngineError(f"{max(n_prompt, n_gen)} tokens in one run exceed the context of {cfg.n_ctx}: "
                          "raise -c or lower the lengths")
    sparse = sparse_files([model_path])
    if sparse:
        raise EngineError(f"{sparse[0]} is header-only (a sparse file: its weights are not on disk), so its speed "
                          "cannot be measured: use a model with real weights")
    llama = load_llama()
    threads = n_threads or os.cpu_count() or 1
    rng = np.random.default_rng(seed)
    with captured_log() as sink, load(model_path, cfg, overrides=overrides, n_gpu_layers=n_gpu_layers,
                                      tensor_split=tensor_split, no_alloc=False, n_threads=threads,
                                      sink=sink) as loaded:
        ctx = loaded.ctx
        vocab = llama.llama_model_get_vocab(loaded.model)
        n_vocab = int(llama.llama_vocab_n_tokens(vocab))
        bos = int(llama.llama_vocab_bos(vocab)) if llama.llama_vocab_get_add_bos(vocab) else None
        memory = llama.llama_get_memory(ctx)
        n_batch = min(cfg.n_batch, n_prompt)

        def tokens(n: int, first: bool) -> np.ndarray:
            t = rng.integers(0, n_vocab, size=n)
            if first and bos is not None:
                t[0] = bos
            return t

        def prompt(n: int) -> float:
            llama.llama_memory_clear(memory, False)
            t0 = time.perf_counter()
            for i in range(0, n, n_batch):
                _decode_tokens(llama, ctx, tokens(min(n_batch, n - i), i == 0))
            llama.llama_synchronize(ctx)
            return n / (time.perf_counter() - t0)

        def generate(n: int) -> float:
            llama.llama_memory_clear(memory, False)
            t0 = time.perf_counter()
            for i in range(n):
                _decode_tokens(llama, ctx, tokens(1, i == 0))
            llama.llama_synchronize(ctx)
            return n / (time.perf_counter() - t0)

        try:
            prompt(n_batch)  # warm-up, as llama-bench does
            generate(1)
            pp = tuple(prompt(n_prompt) for _ in range(repetitions))
            tg = tuple(generate(n_gen) for _ in range(repetitions))
        except EngineError as e:
            raise EngineError(f"{e}: {last_error(sink)}") from None
    return EngineSpeed(pp_tps=float(np.mean(pp)), tg_tps=float(np.mean(tg)), n_prompt=n_prompt, n_gen=n_gen,
                       repetitions=repetitions, n_threads=threads, pp_runs=pp, tg_runs=tg, engine=version())

