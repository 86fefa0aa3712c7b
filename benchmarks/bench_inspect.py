"""Times `moeplace inspect --json` on the full-scale DeepSeek-V3-shape model in 9 shards (header-only files).

Prints the work beyond interpreter start-up: the command's wall time minus that of `python -c "import moeplace"`
... and, separately, load_model() in-process. Goal: < 1 s of work. Run: python benchmarks/bench_inspect.py
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from moeplace.model import load_model
from moeplace.testing import write_model


def wall(cmd: list[str], repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        paths = write_model("deepseek-v3", Path(d) / "DeepSeek-V3.gguf", split=9)
        print(f"wrote {len(paths)} shards ({sum(p.stat().st_size for p in paths) / 2**30:.1f} GiB apparent) "
              f"in {time.perf_counter() - t:.2f} s")
        t = time.perf_counter()
        model = load_model(paths[0])
        print(f"load_model in-process: {1000 * (time.perf_counter() - t):.1f} ms for {len(model.tensors)} tensors, "
              f"vocabulary {model.hparams.n_vocab}")
        base = wall([sys.executable, "-c", "import moeplace.cli"])
        full = wall([sys.executable, "-m", "moeplace.cli", "inspect", "--json", str(paths[0])])
        print(f"interpreter + imports: {base:.3f} s; inspect --json: {full:.3f} s; "
              f"work beyond start-up: {full - base:.3f} s (goal < 1 s)")


if __name__ == "__main__":
    main()
