"""A real ik_llama.cpp as the oracle for moeplace.targets.ik_llama: which tensors its ``-ot`` matching and its
``--n-cpu-moe`` select, read from its own log ("Tensor <name> ... buffer type overriden to CPU").

The build is the CPU wheel ik-llama-cpp-python 0.1.5 (``pip install 'moeplace[ik]'``); each load runs in a child
process because ik_llama.cpp aborts the process on models it rejects. That wheel predates ik_llama.cpp's PR 2262
(build 4797), so it checks the first-N ``--n-cpu-moe`` rule; the last-N rule of newer builds is ported from the
source (ikawrakow/ik_llama.cpp@8337e4cd3861) and has no oracle here. Skipped where the wheel is not importable."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from moeplace.model import Role, load_model
from moeplace.placement import HOST, all_on
from moeplace.targets import ik_llama as IK
from moeplace.targets.patterns import compact_patterns

SPEC = importlib.util.find_spec("ik_llama_cpp")
pytestmark = [pytest.mark.llama,
              pytest.mark.skipif(SPEC is None, reason="ik_llama_cpp (pip install 'moeplace[ik]') is not importable")]

LOADER = r"""
import ctypes, json, pathlib, sys
from ik_llama_cpp import _ctypes_api as A
path, ncmoe, patterns = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
A.llama_backend_init()
p = A.llama_model_default_params()
p.ncmoe = ncmoe
ggml = ctypes.CDLL(str(pathlib.Path(A.__file__).parent / "lib" / "libggml.so"))
ggml.ggml_backend_cpu_buffer_type.restype = ctypes.c_void_p
class O(ctypes.Structure):
    _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]
arr = (O * (len(patterns) + 1))()
keep = [x.encode() for x in patterns]
for i, x in enumerate(keep):
    arr[i].pattern = x
    arr[i].buft = ggml.ggml_backend_cpu_buffer_type()
if patterns:
    p.tensor_buft_overrides = ctypes.cast(arr, ctypes.c_void_p)
sys.exit(0 if A.llama_model_load_from_file(path.encode(), p) else 1)
"""
_OVERRIDDEN = re.compile(r"^Tensor (\S+) \(size = .*\) buffer type overriden to (\S+)$", re.M)


def overridden(path: Path, ncmoe: int = 0, patterns: tuple[str, ...] = ()) -> set[str]:
    """The tensors ik_llama.cpp logs as overridden for a load with ``ncmoe`` and CPU overrides ``patterns``."""
    assert SPEC is not None and SPEC.origin is not None
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(SPEC.origin).parent.parent),
                                                       os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-c", LOADER, str(path), str(ncmoe), json.dumps(list(patterns))],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    return {name for name, buft in _OVERRIDDEN.findall(r.stdout + r.stderr) if buft == "CPU"}


MODELS = ("qwen3moe-tiny", "glm4moe-tiny", "gpt-oss-tiny")


@pytest.mark.parametrize("name", MODELS)
def test_first_n_rule_of_pre_2262_builds(name: str, model_path: Callable[[str], Path]) -> None:
    path = model_path(name)
    m = load_model(path)
    loaded = {t.name for t in m.loaded_tensors}  # ik logs NextN tensors it then leaves unused ("ignoring")
    for n in range(1, m.hparams.n_layer + 1):
        want = IK.n_cpu_moe_placement(m, n, ["CUDA0"], from_back=False)
        expected = {t for t, d in want.tensor_devices.items() if d == HOST and not t.startswith("token_embd")}
        assert overridden(path, ncmoe=n) & loaded == expected, n


@pytest.mark.parametrize("name", MODELS)
def test_compact_patterns_select_the_same_tensors_in_ik(name: str, model_path: Callable[[str], Path]) -> None:
    path = model_path(name)
    m = load_model(path)
    rng = random.Random(7)
    experts = [t.name for t in m.loaded_tensors if t.role is Role.ROUTED_EXPERT]
    for _ in range(3):
        host = set(rng.sample(experts, rng.randint(1, len(experts))))
        base = all_on(m, "CUDA0")
        planned = IK.apply(m, -1, None, (), ["CUDA0"])
        planned = type(planned)(planned.layer_devices, planned.output_device,
                                {t: (HOST if t in host else d) for t, d in planned.tensor_devices.items()})
        patterns = tuple(o.pattern for o in compact_patterns(m, planned, base, ["CUDA0"]))
        assert overridden(path, patterns=patterns) & {t.name for t in m.loaded_tensors} == host
