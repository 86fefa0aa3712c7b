"""How long ``moeplace choose`` takes to rank a repository of DeepSeek-V3-shape quants, cold and from the cache.

Writes six full-scale header-only quants of the 671B DeepSeek-V3 shape (Q4_0, Q4_K_M, Q8_0, MXFP4_MOE, BF16, F16;
9 shards each, data regions are sparse holes) into a repository folder, serves it with the local Hub endpoint
(moeplace.servers.HubServer, reached through HF_ENDPOINT, so the real huggingface_hub code runs), and times the
command as a user runs it (a fresh process each time): once with an empty header cache, once from the cache.
Prints the seconds, the bytes the server sent and what the command printed.

    python benchmarks/bench_choose.py [--gpu rtx3090 --ram 512G ...]
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from gguf import LlamaFileType

from moeplace.servers import HubServer
from moeplace.testing import SPECS, write_model

QUANTS = {"Q4_0": LlamaFileType.MOSTLY_Q4_0, "Q4_K_M": LlamaFileType.MOSTLY_Q4_K_M,
          "Q8_0": LlamaFileType.MOSTLY_Q8_0, "MXFP4_MOE": LlamaFileType.MOSTLY_MXFP4_MOE,
          "BF16": LlamaFileType.MOSTLY_BF16, "F16": LlamaFileType.MOSTLY_F16}
REPO = "bench/DeepSeek-V3-GGUF"


def write_repo(root: Path) -> None:
    base = SPECS["deepseek-v3"]
    for label, ftype in QUANTS.items():
        write_model(replace(base, ftype=ftype), root / label / f"DeepSeek-V3-{label}.gguf", split=9)


def main(argv: list[str]) -> int:
    hardware = argv or ["--gpu", "rtx3090", "--ram", "512G", "--ram-bw", "epyc-9004", "-c", "16384"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "repo"
        write_repo(root)
        with HubServer({REPO: root}) as hub:
            env = {**os.environ, "HF_ENDPOINT": hub.url, "MOEPLACE_CACHE": str(Path(tmp) / "cache"),
                   "HF_HUB_DISABLE_TELEMETRY": "1"}
            cmd = [sys.executable, "-m", "moeplace", "choose", REPO, *hardware]
            for run in ("cold", "from cache"):
                hub.reset_counts()
                cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
                start = time.perf_counter()
                out = subprocess.run(cmd, env=env, capture_output=True, text=True)
                seconds = time.perf_counter() - start
                cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu = cpu1.ru_utime - cpu0.ru_utime + cpu1.ru_stime - cpu0.ru_stime
                if out.returncode:
                    print(out.stderr, file=sys.stderr)
                    return out.returncode
                print(f"{run}: {seconds:.2f} s wall ({cpu:.2f} s CPU of the command), {hub.state.requests} "
                      f"requests, {hub.bytes_served / 2**20:.2f} MiB served for {len(QUANTS)} quants x 9 shards")
            print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (a busy machine inflates wall time)")
            print()
            print(out.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
