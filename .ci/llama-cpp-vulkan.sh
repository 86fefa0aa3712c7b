#!/usr/bin/env bash
# Build (once per machine) or reuse a Vulkan wheel of llama-cpp-python and install it into its own virtualenv,
# so that moeplace's memory and pattern oracles can run against a GPU backend: llama.cpp's Vulkan backend on
# whatever Vulkan device the machine has; on a machine without a GPU, Mesa's software device (lavapipe, Debian
# package mesa-vulkan-drivers). The CPU wheel (.ci/llama-cpp.sh) stays where it is; tests reach this one through
# a subprocess running "$MOEPLACE_CACHE/venv-vulkan-$version/bin/python" (moeplace/oracle/gpubuild.py).
#
# Usage: .ci/llama-cpp-vulkan.sh
# Never fails the calling chain: where the packages, the build or a device are missing, it writes the one-line
# reason to "$cache/UNAVAILABLE", which the `vulkan` tests print as their skip reason, and exits 0.
# Set MOEPLACE_VULKAN=0 to skip it entirely (the tests then skip saying so).
#
# -DLLAVA_BUILD=OFF (llama-cpp-python's switch for the multimodal library, which the oracle never loads) skips
# compiling tools/mtmd (dozens of files; the saving was not timed).
#
# The patch step: llama.cpp's ggml-vulkan.cpp (as bundled in llama-cpp-python 0.3.36) chains a
# vk::LayerSettingsCreateInfoEXT (VK_EXT_layer_settings, Vulkan headers >= 1.3.261) into its instance creation to
# switch on best-practice validation. Debian 12 ships headers 1.3.239, where those types do not exist. The patch
# wraps that block in `#if VK_HEADER_VERSION >= 261 ... #else <the plain InstanceCreateInfo> #endif`, which
# changes nothing on newer headers; with older ones only the validation layer's best-practice setting is lost.
set -uo pipefail
version="${MOEPLACE_LLAMA_CPP_VERSION:-0.3.36}"
root="${MOEPLACE_CACHE:-$HOME/.cache/moeplace}"
cache="$root/wheels/llama-cpp-python-$version-vulkan"
venv="$root/venv-vulkan-$version"
repo="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$cache"
rm -f "$cache/UNAVAILABLE"

unavailable() {
    echo "$1" > "$cache/UNAVAILABLE"
    echo "moeplace: Vulkan oracle unavailable: $1" >&2
    exit 0
}

if [ "${MOEPLACE_VULKAN:-1}" = "0" ]; then
    unavailable "MOEPLACE_VULKAN=0 (unset it and run .ci/llama-cpp-vulkan.sh)"
fi

# 1. Debian packages: the loader and headers, the shader compilers, and Mesa's drivers (lavapipe included).
packages="mesa-vulkan-drivers libvulkan-dev glslc spirv-headers glslang-tools"
missing=""
for p in $packages; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
        echo "moeplace: installing$missing (apt)" >&2
        { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing; } >"$cache/apt.log" 2>&1 \
            || unavailable "apt-get install$missing failed (see $cache/apt.log)"
    else
        unavailable "Debian packages missing:$missing (install them as root: apt-get install$missing)"
    fi
fi

# 2. The wheel, built once per machine from the patched sdist.
if ! ls "$cache"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    echo "moeplace: building llama-cpp-python $version (Vulkan, once per machine, ~10-20 min) into $cache" >&2
    tmp="$(mktemp -d "$cache/.build.XXXXXX")"
    trap 'rm -rf "$tmp"' EXIT
    python3 -m pip download -q --no-deps --no-binary :all: -d "$tmp" "llama-cpp-python==$version" \
        >"$cache/build.log" 2>&1 || unavailable "could not download the llama-cpp-python $version sdist (see $cache/build.log)"
    tar -xzf "$tmp"/llama_cpp_python-*.tar.gz -C "$tmp" || unavailable "could not unpack the sdist"
    src="$(echo "$tmp"/llama_cpp_python-"$version")"
    python3 - "$src/vendor/llama.cpp/ggml/src/ggml-vulkan/ggml-vulkan.cpp" <<'EOF' >>"$cache/build.log" 2>&1 \
        || unavailable "the VK_EXT_layer_settings guard did not apply to this llama.cpp (see $cache/build.log)"
import sys
from pathlib import Path

path = Path(sys.argv[1])
text = path.read_text()
start = text.find("    VkBool32 enable_best_practice = layer_settings;\n")
end_marker = "vk::InstanceCreateInfo instance_create_info(vk::InstanceCreateFlags{}, &app_info, layers, extensions, &layer_setting_info);\n"
end = text.find(end_marker, start)
if "#if VK_HEADER_VERSION >= 261" in text:
    sys.exit(0)  # already guarded
if start < 0 or end < 0:
    sys.exit("block using vk::LayerSettingEXT not found")
end += len(end_marker)
guarded = ("#if VK_HEADER_VERSION >= 261  // VK_EXT_layer_settings (moeplace .ci/llama-cpp-vulkan.sh)\n"
           + text[start:end]
           + "#else\n    vk::InstanceCreateInfo instance_create_info(vk::InstanceCreateFlags{}, &app_info, layers, "
             "extensions);\n#endif\n")
path.write_text(text[:start] + guarded + text[end:])
print(f"patched {path}")
EOF
    CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
    CMAKE_ARGS="-DGGML_VULKAN=on -DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAVA_BUILD=OFF" \
        python3 -m pip wheel --no-deps --no-cache-dir -w "$tmp/wheel" "$src" >>"$cache/build.log" 2>&1 \
        || unavailable "the Vulkan build of llama-cpp-python $version failed (see $cache/build.log)"
    mv "$tmp"/wheel/llama_cpp_python-*.whl "$cache"/
fi

# 3. Its own virtualenv: the wheel and moeplace's dependencies (the tests put the worktree first on PYTHONPATH),
# rebuilt when the wheel or pyproject.toml (the dependencies) change.
wheel="$(ls "$cache"/llama_cpp_python-*.whl | head -1)"
stamp="$venv/.moeplace-stamp"
want="$wheel $(sha256sum "$repo/pyproject.toml" | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    rm -rf "$venv"
    { python3 -m venv "$venv" && "$venv/bin/pip" install -q "$wheel" "$repo" && echo "$want" > "$stamp"; } \
        >"$cache/venv.log" 2>&1 || unavailable "could not install the Vulkan wheel into $venv (see $cache/venv.log)"
fi

# 4. A Vulkan device this build can see (the software device lavapipe is used where there is no other).
devices="$(cd "$repo" && MOEPLACE_GPU_PYTHON="$venv/bin/python" PYTHONPATH="$repo" "$venv/bin/python" -c '
import sys
from moeplace.oracle import gpubuild
reason = gpubuild.unavailable_reason()
if reason:
    sys.exit(reason)
print(", ".join(f"{d.name} ({d.description})" for d in gpubuild.devices()))
' 2>"$cache/device.log")" || unavailable "$(tail -1 "$cache/device.log")"
echo "moeplace: Vulkan oracle ready: $devices" >&2
