#!/usr/bin/env bash
# Builds a llama-cpp-python wheel once per machine into a cache folder (nothing to do when one is there): the one
# build step of .ci/llama-cpp.sh (CPU) and benchmarks/gpu_oracle.sh (CUDA, ROCm).
# Usage: .ci/build-wheel.sh CACHE_DIR PYTHON VERSION "EXTRA CMAKE ARGS" LABEL   (the extra args come last, so they
# override the defaults: CMAKE_ARGS=-DGGML_NATIVE=ON .ci/llama-cpp.sh builds for this CPU)
set -euo pipefail
cache="$1" py="$2" version="$3" cmake_args="$4" label="$5"
mkdir -p "$cache"
if ! ls "$cache"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    echo "moeplace: building llama-cpp-python $version ($label, once per machine) into $cache" >&2
    tmp="$(mktemp -d "$cache/.build.XXXXXX")"
    trap 'rm -rf "$tmp"' EXIT
    CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF $cmake_args" \
        "$py" -m pip wheel --no-deps --no-cache-dir -w "$tmp" "llama-cpp-python==$version"
    mv "$tmp"/llama_cpp_python-*.whl "$cache"/
fi
