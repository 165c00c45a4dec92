#!/usr/bin/env bash
# Build a reference llama.cpp (CPU only) from the source vendored in the
# llama-cpp-python sdist, for benchmarking and cross-checking alpaca.
#
#   scripts/llamacpp.sh            # build (or reuse) and print the bin dir
#   BIN=$(scripts/llamacpp.sh)   # only the bin dir goes to stdout
#   $BIN/llama-bench -m ~/.cache/alpaca/models/SmolLM2-135M-Instruct.Q4_1.gguf \
#       -p 512 -n 128 -t 1,2 -r 3 -o json
#
# Environment:
#   LLAMACPP_DIR      work dir (default ~/.cache/alpaca/llama.cpp)
#   LLAMACPP_PY_VER   llama-cpp-python sdist version (default 0.3.36;
#                     "latest" = whatever pip resolves)
#   LLAMACPP_JOBS     parallel build jobs (default: nproc)
#   PYTHON            python interpreter with pip (default python3)
#
# Idempotent: each step is skipped when its output already exists; the
# build itself is skipped when all target binaries are present.
set -euo pipefail

LLAMACPP_DIR="${LLAMACPP_DIR:-$HOME/.cache/alpaca/llama.cpp}"
LLAMACPP_PY_VER="${LLAMACPP_PY_VER:-0.3.36}"
LLAMACPP_JOBS="${LLAMACPP_JOBS:-$(nproc 2>/dev/null || echo 2)}"
PYTHON="${PYTHON:-python3}"

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
GREEDY_SRC="$SCRIPT_DIR/llamacpp_greedy.cpp"
GREEDY_BIN_NAME=alpaca-llamacpp-greedy   # exact greedy, no EOS stop/bias (see the .cpp)

TARGETS=(llama-bench llama-completion llama-simple llama-perplexity llama-quantize llama-tokenize)

SDIST_DIR="$LLAMACPP_DIR/sdist"
SRC_DIR="$LLAMACPP_DIR/src"
BUILD_DIR="$LLAMACPP_DIR/build"
BIN_DIR="$BUILD_DIR/bin"

log() { echo "[llamacpp.sh] $*" >&2; }

all_built() {
    local t
    for t in "${TARGETS[@]}" "$GREEDY_BIN_NAME"; do
        [[ -x "$BIN_DIR/$t" ]] || return 1
    done
    # rebuild the greedy helper when its source changed
    [[ ! "$GREEDY_SRC" -nt "$BIN_DIR/$GREEDY_BIN_NAME" ]]
}

if all_built; then
    log "already built in $BIN_DIR"
    echo "$BIN_DIR"
    exit 0
fi

mkdir -p "$SDIST_DIR" "$SRC_DIR"

# 1. download the sdist by package name (only llama-cpp-python itself is
#    forced to source; its build backend may come as wheels, which keeps
#    pip's metadata step fast)
shopt -s nullglob
sdists=("$SDIST_DIR"/llama_cpp_python-*.tar.gz)
if [[ ${#sdists[@]} -eq 0 ]]; then
    spec="llama-cpp-python"
    [[ "$LLAMACPP_PY_VER" != "latest" ]] && spec="llama-cpp-python==$LLAMACPP_PY_VER"
    log "downloading sdist $spec"
    "$PYTHON" -m pip download --no-deps --no-binary llama-cpp-python "$spec" -d "$SDIST_DIR" >&2
    sdists=("$SDIST_DIR"/llama_cpp_python-*.tar.gz)
fi
[[ ${#sdists[@]} -ge 1 ]] || { log "no sdist found in $SDIST_DIR"; exit 1; }
SDIST="${sdists[-1]}"
log "sdist: $SDIST"

# 2. extract
LLAMA_SRC="$SRC_DIR/vendor/llama.cpp"
if [[ ! -f "$LLAMA_SRC/CMakeLists.txt" ]]; then
    log "extracting into $SRC_DIR"
    rm -rf "$SRC_DIR" && mkdir -p "$SRC_DIR"
    tar -xzf "$SDIST" -C "$SRC_DIR" --strip-components=1
fi
[[ -f "$LLAMA_SRC/CMakeLists.txt" ]] || { log "vendor/llama.cpp missing in sdist"; exit 1; }

# 3. configure + build (CPU only, native ISA, static, no network code)
command -v cmake >/dev/null || { log "cmake not found (apt-get install cmake)"; exit 1; }
if [[ ! -f "$BUILD_DIR/CMakeCache.txt" ]]; then
    log "configuring"
    cmake -S "$LLAMA_SRC" -B "$BUILD_DIR" \
        -DCMAKE_BUILD_TYPE=Release \
        -DGGML_NATIVE=ON \
        -DGGML_CUDA=OFF \
        -DLLAMA_CURL=OFF \
        -DLLAMA_OPENSSL=OFF \
        -DLLAMA_BUILD_SERVER=OFF \
        -DLLAMA_BUILD_TESTS=OFF \
        -DLLAMA_BUILD_EXAMPLES=ON \
        -DLLAMA_BUILD_TOOLS=ON \
        -DBUILD_SHARED_LIBS=OFF >&2
fi
log "building ${TARGETS[*]} with -j$LLAMACPP_JOBS"
nice -n 10 cmake --build "$BUILD_DIR" --config Release -j"$LLAMACPP_JOBS" --target "${TARGETS[@]}" >&2

# 4. the greedy helper, linked against the static libs just built
log "building $GREEDY_BIN_NAME"
omp=()
grep -q '^GGML_OPENMP:BOOL=ON' "$BUILD_DIR/CMakeCache.txt" && omp=(-fopenmp)
nice -n 10 "${CXX:-g++}" -O2 -std=c++17 -I"$LLAMA_SRC/include" -I"$LLAMA_SRC/ggml/include" \
    "$GREEDY_SRC" \
    "$BUILD_DIR/src/libllama.a" "$BUILD_DIR/ggml/src/libggml.a" \
    "$BUILD_DIR/ggml/src/libggml-cpu.a" "$BUILD_DIR/ggml/src/libggml-base.a" \
    "${omp[@]}" -lpthread -ldl -o "$BIN_DIR/$GREEDY_BIN_NAME" >&2

all_built || { log "build finished but some binaries are missing in $BIN_DIR"; exit 1; }
echo "$BIN_DIR"
