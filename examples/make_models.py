"""Writes example models into examples/models/ (or the folder given): real GGUF headers of popular MoE models
with the data region left as a sparse hole, so they take almost no disk yet inspect and solve like the real files.

    python examples/make_models.py [OUTDIR] [NAMES...]

No weights are downloaded: the shapes and quant mix come from moeplace.testing, the model factory the tests use.
"""

from __future__ import annotations

import sys
from pathlib import Path

from moeplace.testing import write_all

DEFAULT = ("qwen3-30b-a3b", "gpt-oss-20b", "deepseek-v3-split", "glm-4.5-air", "qwen3moe-tiny")


def main(argv: list[str]) -> None:
    out = Path(argv[0]) if argv else Path(__file__).parent / "models"
    names = argv[1:] or list(DEFAULT)
    for name, paths in write_all(out, names).items():
        print(f"{name}: {paths[0]}" + (f" (+{len(paths) - 1} shards)" if len(paths) > 1 else ""))


if __name__ == "__main__":
    main(sys.argv[1:])
