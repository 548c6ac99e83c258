#!/usr/bin/env bash
# Build llama.cpp's llama-server from PyPI's llama-cpp-python sdist (which vendors the whole
# llama.cpp tree) into a cache directory, with the converters it ships beside it:
#
#   scripts/build_llama_server.sh VERSION DEST [PIP]
#
# DEST ends up holding bin/llama-server (static, 127.0.0.1-only in our tests) and llama.cpp/
# (convert_hf_to_gguf.py, convert_lora_to_gguf.py, conversion/, gguf-py/). Installing the
# llama-cpp-python wheel would not build the server; this builds only the server target, offline
# once the sdist is here: about 11 minutes on 2 cores. The build happens in a temporary directory
# and DEST appears only when it succeeded, so an interrupted build is redone, never half-used.
set -euo pipefail

version=${1:?version}
dest=${2:?destination}
pip=${3:-pip}
jobs=$(nproc 2>/dev/null || echo 2)

work=$(mktemp -d "${TMPDIR:-/tmp}/llama-server-build.XXXXXX")
trap 'rm -rf "$work"' EXIT

echo "llama-server: fetching the llama-cpp-python $version sdist" >&2
"$pip" download -q --no-deps --no-binary :all: -d "$work" "llama-cpp-python==$version"
tar -xzf "$work"/llama_cpp_python-"$version".tar.gz -C "$work"
src="$work/llama_cpp_python-$version/vendor/llama.cpp"

echo "llama-server: building with $jobs jobs (about 11 minutes on 2 cores)" >&2
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_COMMON=ON \
    -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF >"$work/cmake.log" \
    || { tail -40 "$work/cmake.log" >&2; exit 1; }
cmake --build "$work/build" --target llama-server -j "$jobs" >"$work/build.log" 2>&1 \
    || { tail -40 "$work/build.log" >&2; exit 1; }

staged="$work/staged"
mkdir -p "$staged/bin" "$staged/llama.cpp"
cp "$work/build/bin/llama-server" "$staged/bin/"
cp -r "$src/convert_hf_to_gguf.py" "$src/convert_lora_to_gguf.py" "$src/conversion" \
    "$src/gguf-py" "$src/LICENSE" "$staged/llama.cpp/"
"$staged/bin/llama-server" --version >"$staged/VERSION" 2>&1 || true
rm -rf "$dest"
mkdir -p "$(dirname "$dest")"
mv "$staged" "$dest"
echo "llama-server: built into $dest" >&2
