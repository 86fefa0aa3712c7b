#!/usr/bin/env bash
# Build (once per machine) or reuse a CPU wheel of llama-cpp-python, the engine behind moeplace's
# llama.cpp oracle tests and live profiler. The wheel is cached outside the repo, keyed by version,
# so only the first run on a machine pays the ~25 minute compile.
# Usage: .ci/llama-cpp.sh [PYTHON]   installs the wheel into PYTHON's environment (default: python3)
# It then runs .ci/llama-cpp-vulkan.sh, the second build (Vulkan, its own virtualenv) that the GPU-backend oracle
# tests use; that step never fails the chain (where it cannot build, those tests skip with its reason), and
# MOEPLACE_VULKAN=0 skips it. Both are here so that the README's test command, which .ci/run runs, covers both.
set -euo pipefail
version="${MOEPLACE_LLAMA_CPP_VERSION:-0.3.36}"
py="${1:-python3}"
cache="${MOEPLACE_CACHE:-$HOME/.cache/moeplace}/wheels/llama-cpp-python-$version"
"$(dirname "$0")/build-wheel.sh" "$cache" "$py" "$version" "${CMAKE_ARGS:-}" "CPU, ~25 min"
"$py" -m pip install -q "$cache"/llama_cpp_python-*.whl
"$(dirname "$0")/llama-cpp-vulkan.sh"
