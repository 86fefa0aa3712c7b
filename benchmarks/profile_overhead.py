"""Overhead of the live routing profiler against plain llama.cpp evaluation of the same prompts.

Needs llama-cpp-python (pip install 'moeplace[profile]'). By default it writes a mid-size synthetic qwen3moe
(12 layers, 64 experts, top-8, n_embd 1024, Q8_0, 32k vocabulary: ~1.4 GB, written once into the cache folder);
pass --model to time a real model instead. Modes, interleaved and repeated (median and best reported):

  plain        no callback, logits only for the last token (what llama-cli does)
  all-logits   no callback, logits for every prompt token (what the profiler asks so the last layer routes
               every token)
  capture      the profiler as 'moeplace profile run' runs it (callback + all logits)
  capture-1/4  the profiler with --logit-every 4 (the last MoE layer measured on a quarter of the tokens)
  capture-last the profiler with --logit-every 0 (callback cost alone; the last MoE layer sees sampled tokens)

Two workloads: prompt processing only (--generate 0) and generation (--generate N after short prompts).
Goal: capture within 15% of plain. On a shared machine read the "best" column (least disturbed run).
Run: python benchmarks/profile_overhead.py [--model M] [--repeat 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import statistics
from pathlib import Path

from gguf import LlamaFileType

from moeplace.model import load_model
from moeplace.sources.live import PromptSet, RunOptions, capture
from moeplace.testing import SPECS, write_model

MODES = {  # (record, logit_every)
    "plain": (False, 0),
    "all-logits": (False, 1),
    "capture": (True, 1),
    "capture-1/4": (True, 4),
    "capture-last": (True, 0),
}
WORDS = ("the", "of", "and", "to", "in", "is", "it", "that", "was", "for", "on", "are", "with", "as", "be", "at",
         "this", "have", "from", "or", "one", "had", "by", "but", "not", "hello", "world", "model", "expert",
         "layer", "token")


def bench_model(cache: Path) -> Path:
    path = cache / "qwen3moe-bench.gguf"
    if not path.exists():
        spec = dataclasses.replace(
            SPECS["qwen3moe-tiny"], name="qwen3moe-bench", n_layer=12, n_embd=1024, n_head=16, n_head_kv=4,
            head_dim=64, n_ff=2048, n_expert=64, n_expert_used=8, n_ff_exp=512, n_vocab=32000,
            ftype=LlamaFileType.MOSTLY_Q8_0)
        write_model(spec, path)
    return path


def prompts(n: int, words: int, seed: int = 0) -> PromptSet:
    rnd = random.Random(seed)
    return PromptSet("bench", "-", tuple(" ".join(rnd.choice(WORDS) for _ in range(words)) for _ in range(n)))


def run(model_path: Path, workload: str, ps: PromptSet, options: RunOptions, repeat: int) -> None:
    model = load_model(model_path)
    times: dict[str, list[float]] = {m: [] for m in MODES}
    tokens = 0
    capture(model, ps, options, record=False)  # warm the page cache
    for _ in range(repeat):
        for mode, (record, every) in MODES.items():
            r = capture(model, ps, dataclasses.replace(options, logit_every=every), record=record)
            times[mode].append(r.seconds)
            tokens = r.tokens
    base, best = statistics.median(times["plain"]), min(times["plain"])
    print(f"\n{workload}: {tokens} tokens per run, {repeat} runs per mode, {options.n_threads or 'all'} threads")
    print(f"  {'mode':<13} {'median s':>9} {'best s':>8} {'tok/s':>8} {'overhead':>9} {'(best)':>8}")
    for mode, ts in times.items():
        med = statistics.median(ts)
        print(f"  {mode:<13} {med:9.3f} {min(ts):8.3f} {tokens / min(ts):8.1f} {100 * (med / base - 1):8.1f}% "
              f"{100 * (min(ts) / best - 1):7.1f}%")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path)
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "moeplace" / "bench")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--generate", type=int, default=32)
    args = ap.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    path = args.model or bench_model(args.cache)
    opts = RunOptions(n_ctx=2048, n_batch=512, n_threads=args.threads)
    run(path, "prompt processing", prompts(2, 200), opts, args.repeat)
    run(path, f"generation ({args.generate} tokens after each prompt)", prompts(4, 8, seed=1),
        dataclasses.replace(opts, generate=args.generate), args.repeat)


if __name__ == "__main__":
    main()
