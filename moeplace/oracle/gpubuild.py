"""The oracle on a GPU backend: the same measurements (:mod:`moeplace.oracle.memory`) made by a second llama.cpp
build with a GPU backend, which lives in its own virtualenv so that the CPU build keeps serving everything else.
By default that is llama-cpp-python compiled with ``-DGGML_VULKAN=on``, which ``.ci/llama-cpp-vulkan.sh`` builds
and installs once per machine (on a machine without a GPU, Mesa's software Vulkan device lavapipe runs it);
``MOEPLACE_GPU_PYTHON`` names another build's interpreter (``benchmarks/gpu_oracle.sh`` sets it to a CUDA or
ROCm build's).

The parent process never loads that build: it runs ``<venv>/bin/python -m moeplace.oracle.gpubuild`` with this
worktree first on ``PYTHONPATH``, sends requests as JSON lines on stdin and reads one JSON line back per request.
A request that makes llama.cpp abort (``GGML_ABORT`` kills the process) is answered with the abort message and the
worker is restarted for the rest.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

from moeplace.llamacpp import Override
from moeplace.memory import RunConfig
from moeplace.oracle.loading import DeviceInfo, EngineError
from moeplace.oracle.memory import CacheLine, EngineMemory, TensorBuffers
from moeplace.oracle.stdmap import BufferBytes

LLAMA_CPP_VERSION = "0.3.36"  # as pinned in pyproject.toml and .ci/llama-cpp*.sh
BUILD_HINT = "run .ci/llama-cpp-vulkan.sh (builds llama-cpp-python with Vulkan once per machine, ~10-20 min)"
_PACKAGE = Path(__file__).resolve().parents[1]


def cache_root() -> Path:
    return Path(os.environ.get("MOEPLACE_CACHE") or Path.home() / ".cache" / "moeplace")


def python() -> Path:
    """The GPU build's interpreter: ``MOEPLACE_GPU_PYTHON``, else the Vulkan virtualenv's."""
    override = os.environ.get("MOEPLACE_GPU_PYTHON")
    if override:
        return Path(override)
    return cache_root() / f"venv-vulkan-{LLAMA_CPP_VERSION}" / "bin" / "python"


@dataclass(frozen=True)
class MemoryRequest:
    """One load: a model, a context, and a placement as llama.cpp's options give it."""

    model: str
    cfg: RunConfig
    overrides: tuple[Override, ...] = ()
    n_gpu_layers: int = 0
    tensor_split: tuple[float, ...] | None = None
    no_alloc: bool = True

    def as_json(self, op: str) -> dict[str, Any]:
        return {"op": op, "model": self.model, "cfg": asdict(self.cfg),
                "overrides": [[o.pattern, o.buffer] for o in self.overrides], "n_gpu_layers": self.n_gpu_layers,
                "tensor_split": list(self.tensor_split) if self.tensor_split else None, "no_alloc": self.no_alloc}


# --- the parent's side ---------------------------------------------------------------------------------------


# ggml-vulkan skips a device of type CPU (lavapipe) unless it is named: "If only CPU devices are available, return
# without devices" (ggml_vk_instance_init), while GGML_VK_VISIBLE_DEVICES lists the devices to use whatever their type.
_SOFTWARE_DEVICE = {"GGML_VK_VISIBLE_DEVICES": "0"}


@cache
def _package_path() -> str:
    """A folder that holds this moeplace package and nothing else, for the worker's PYTHONPATH. The folder the
    package was imported from is no good when it is an installed site-packages (pip install .): its llama_cpp, the
    CPU build, would shadow the GPU build's own. A checkout holds no llama_cpp and serves as it is."""
    if (_PACKAGE.parent / "pyproject.toml").is_file():
        return str(_PACKAGE.parent)
    folder = Path(tempfile.mkdtemp(prefix="moeplace-package-"))
    (folder / "moeplace").symlink_to(_PACKAGE, target_is_directory=True)
    atexit.register(shutil.rmtree, folder, True)
    return str(folder)


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([_package_path(), *filter(None, [env.get("PYTHONPATH")])])
    env.update(extra if extra is not None else _status()[2])
    return env


def _ask_devices(py: Path, extra: dict[str, str]) -> tuple[tuple[DeviceInfo, ...], str]:
    try:
        p = subprocess.run([str(py), "-m", "moeplace.oracle.gpubuild", "--devices"], capture_output=True, text=True,
                           env=_env(extra), timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return (), f"does not start ({e})"
    if p.returncode != 0:
        return (), (p.stderr.strip().splitlines() or ["no message"])[-1]
    return tuple(DeviceInfo(**d) for d in json.loads(p.stdout)), ""


@cache
def _status() -> tuple[tuple[DeviceInfo, ...], str | None, dict[str, str]]:
    """The devices, why there are none, and the environment the worker needs (see _SOFTWARE_DEVICE)."""
    py = python()
    if not py.exists():
        marker = cache_root() / "wheels" / f"llama-cpp-python-{LLAMA_CPP_VERSION}-vulkan" / "UNAVAILABLE"
        why = marker.read_text().strip() if marker.is_file() else f"no GPU (Vulkan) build of llama.cpp at {py}"
        return (), f"{why}: {BUILD_HINT}", {}
    found, why = _ask_devices(py, {})
    if found:
        return found, None, {}
    if "GGML_VK_VISIBLE_DEVICES" not in os.environ:
        soft, _ = _ask_devices(py, _SOFTWARE_DEVICE)
        if soft:
            return soft, None, dict(_SOFTWARE_DEVICE)
    return (), (f"the GPU build at {py} sees no GPU device ({why}); without a GPU install mesa-vulkan-drivers "
                "for the software Vulkan device"), {}


def unavailable_reason() -> str | None:
    """Why the GPU oracle cannot run here (one line naming the fix), None when it can."""
    return _status()[1]


def worker_env() -> dict[str, str]:
    """Environment variables the build needs to see its device (the software device's selection, or nothing)."""
    return dict(_status()[2])


def devices() -> tuple[DeviceInfo, ...]:
    """The GPU devices the build sees, in llama.cpp's order (empty where it cannot run)."""
    return _status()[0]


def _memory_from(d: dict[str, Any]) -> EngineMemory:
    caches = tuple(CacheLine(c["source"], c["mib"], c["cells"], c["layers"], tuple(tuple(p) for p in c["parts"]))
                   for c in d["caches"])
    exact = None if d["exact"] is None else {k: BufferBytes(**v) for k, v in d["exact"].items()}
    return EngineMemory(model_mib=d["model_mib"], output_mib=d["output_mib"], caches=caches,
                        compute_mib=d["compute_mib"], exact=exact, file_bytes=d["file_bytes"], n_ctx=d["n_ctx"],
                        n_ctx_seq=d["n_ctx_seq"], no_alloc=d["no_alloc"], engine=d["engine"])


def _run(requests: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Answers for every request, restarting the worker after an abort."""
    reason = unavailable_reason()
    if reason:
        raise EngineError(reason)
    out: list[dict[str, Any]] = []
    while len(out) < len(requests):
        todo = requests[len(out):]
        p = subprocess.run([str(python()), "-m", "moeplace.oracle.gpubuild"], input="".join(
            json.dumps(r) + "\n" for r in todo), capture_output=True, text=True, env=_env(), check=False)
        got = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
        out += got
        if len(got) < len(todo):  # the worker died on todo[len(got)]
            lines = [x for x in p.stderr.splitlines() if x.strip()]
            abort = next((x for x in reversed(lines) if "error" in x.lower() or "abort" in x.lower()),
                         lines[-1] if lines else f"exit code {p.returncode}")
            out.append({"error": f"llama.cpp aborted: {abort.strip()}"})
    return out


def measure_memory_many(requests: Sequence[MemoryRequest]) -> list[EngineMemory | EngineError]:
    """:func:`moeplace.oracle.measure_memory` on the GPU build for each request (one worker for all); a
    request llama.cpp refused or aborted on gives an :class:`EngineError` in its place."""
    answers = _run([r.as_json("memory") for r in requests])
    return [EngineError(a["error"]) if "error" in a else _memory_from(a["memory"]) for a in answers]


def measure_memory(request: MemoryRequest) -> EngineMemory:
    got = measure_memory_many([request])[0]
    if isinstance(got, EngineError):
        raise got
    return got


def tensor_buffers(request: MemoryRequest) -> TensorBuffers:
    """:func:`moeplace.oracle.tensor_buffers` on the GPU build (the request's cfg is not used)."""
    a = _run([request.as_json("buffers")])[0]
    if "error" in a:
        raise EngineError(a["error"])
    return TensorBuffers(a["buffers"]["overridden"], tuple((int(i), d) for i, d in a["buffers"]["slots"]))


# --- the worker's side (runs inside the GPU build's virtualenv) ----------------------------------------------------


def _answer(req: dict[str, Any]) -> dict[str, Any]:
    from moeplace import oracle

    overrides = [Override(p, b) for p, b in req["overrides"]]
    ts = req.get("tensor_split")
    try:
        if req["op"] == "buffers":
            got = oracle.tensor_buffers(req["model"], overrides, req["n_gpu_layers"], ts)
            return {"buffers": {"overridden": dict(got.overridden), "slots": [list(s) for s in got.slots]}}
        m = oracle.measure_memory(req["model"], RunConfig(**req["cfg"]), overrides, req["n_gpu_layers"],
                                  tensor_split=ts, no_alloc=req["no_alloc"])
    except oracle.EngineError as e:
        return {"error": str(e)}
    d = asdict(m)
    d.pop("log")
    return {"memory": d}


def _requests(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    for line in lines:
        if line.strip():
            yield json.loads(line)


def main(argv: Sequence[str]) -> int:
    from moeplace import oracle

    if "--devices" in argv:
        found = [asdict(d) for d in oracle.device_info()]
        if not found:
            print(f"no GPU device in this build ({oracle.version()})", file=sys.stderr)
            return 1
        print(json.dumps(found))
        return 0
    for req in _requests(iter(sys.stdin)):
        print(json.dumps(_answer(req)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
