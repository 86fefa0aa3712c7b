#!/usr/bin/env bash
# The oracle on a real GPU, prepared for a machine that has one (none was available where this was written, so it
# has not run on an NVIDIA or AMD GPU; its Python half was run on the software Vulkan device, see below).
#
#   benchmarks/gpu_oracle.sh [cuda|rocm|vulkan]      (default: cuda if nvidia-smi sees a GPU, rocm if rocminfo
#                                                      sees a gfx agent, else vulkan)
#
# 1. Builds llama-cpp-python 0.3.36 for that backend once per machine (CUDA: -DGGML_CUDA=on for the GPU's own
#    architecture only, which keeps the compile to minutes; ROCm: -DGGML_HIP=on for the agent's gfx target;
#    Vulkan: .ci/llama-cpp-vulkan.sh), caches the wheel in ~/.cache/moeplace/wheels/llama-cpp-python-0.3.36-<backend>
#    and installs it with moeplace into ~/.cache/moeplace/venv-<backend>-0.3.36.
# 2. Runs the memory oracle on the device (benchmarks/memory_oracle.py --backend gpu: GPU placements, every buffer
#    per device) for a subset of models, which writes the device's section of docs/memory-oracle.md.
# 3. Runs the speed comparison (benchmarks/gpu_oracle.py: plan vs --fit vs --cpu-moe vs an --n-cpu-moe sweep on
#    qwen3-30b-a3b at its real size with random weights), which writes docs/gpu-oracle.md.
# Steps 2 and 3 are bounded by timeouts that leave the whole run under 10 minutes once the wheel is cached; a
# first build takes 5-15 minutes more depending on cores (not measured on a GPU machine).
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
version=0.3.36
backend="${1:-}"
if [ -z "$backend" ]; then
    if command -v nvidia-smi >/dev/null && nvidia-smi -L 2>/dev/null | grep -q GPU; then backend=cuda
    elif command -v rocminfo >/dev/null && rocminfo 2>/dev/null | grep -q 'gfx[0-9]'; then backend=rocm
    else backend=vulkan; fi
fi
root="${MOEPLACE_CACHE:-$HOME/.cache/moeplace}"
cache="$root/wheels/llama-cpp-python-$version-$backend"
venv="$root/venv-$backend-$version"
echo "gpu_oracle: backend $backend" >&2

case "$backend" in
    vulkan)
        .ci/llama-cpp-vulkan.sh
        [ -f "$cache/UNAVAILABLE" ] && { echo "gpu_oracle: $(cat "$cache/UNAVAILABLE")" >&2; exit 2; }
        ;;
    cuda|rocm)
        if [ "$backend" = cuda ]; then
            command -v nvcc >/dev/null || { echo "gpu_oracle: nvcc not found: install the CUDA toolkit" >&2; exit 2; }
            cmake_args="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=native"
        else
            command -v hipconfig >/dev/null || { echo "gpu_oracle: hipconfig not found: install ROCm" >&2; exit 2; }
            target="$(rocminfo | grep -o -m1 'gfx[0-9a-f]*')"
            export HIPCXX="$(hipconfig -l)/clang" HIP_PATH="$(hipconfig -R)"
            cmake_args="-DGGML_HIP=on -DAMDGPU_TARGETS=$target -DGPU_TARGETS=$target"
        fi
        .ci/build-wheel.sh "$cache" python3 "$version" "$cmake_args" "$backend"
        if [ ! -x "$venv/bin/python" ]; then
            python3 -m venv "$venv" && "$venv/bin/pip" install -q "$cache"/llama_cpp_python-*.whl "$repo"
        fi
        ;;
    *) echo "gpu_oracle: backend must be cuda, rocm or vulkan" >&2; exit 2 ;;
esac

export MOEPLACE_GPU_PYTHON="$venv/bin/python" PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
py="$venv/bin/python"
models="${MOEPLACE_GPU_ORACLE_MODELS:-qwen3-30b-a3b,gpt-oss-20b,deepseek-v3,glm-4.5-air,qwen3moe-tiny,gpt-oss-tiny}"
start=$SECONDS
timeout 240 "$py" benchmarks/memory_oracle.py --backend gpu --models "$models" \
    || echo "gpu_oracle: the memory oracle stopped (exit $?); its section may be missing" >&2
speed_model="${MOEPLACE_GPU_ORACLE_SPEED_MODEL:-qwen3-30b-a3b}"
# lavapipe (the software device) takes hours on a 30B model: only the tiny model makes sense there.
if [ "$backend" = vulkan ] && "$py" -c 'from moeplace.oracle import gpubuild as g; import sys; sys.exit(0 if any("llvmpipe" in d.description for d in g.devices()) else 1)'; then
    speed_model=qwen3moe-tiny
fi
left=$(( 570 - (SECONDS - start) ))
GGML_VK_VISIBLE_DEVICES="${GGML_VK_VISIBLE_DEVICES:-$("$py" -c 'from moeplace.oracle import gpubuild as g; print(g.worker_env().get("GGML_VK_VISIBLE_DEVICES", ""))')}"
export GGML_VK_VISIBLE_DEVICES
[ -n "$GGML_VK_VISIBLE_DEVICES" ] || unset GGML_VK_VISIBLE_DEVICES
timeout "$left" "$py" benchmarks/gpu_oracle.py --model "$speed_model" \
    || echo "gpu_oracle: the speed comparison stopped (exit $?)" >&2
echo "gpu_oracle: done in $(( SECONDS - start )) s; see docs/memory-oracle.md and docs/gpu-oracle.md" >&2
