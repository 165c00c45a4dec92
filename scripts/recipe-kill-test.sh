#!/usr/bin/env bash
# Kill/resume check of `alpaca recipe` on a real config (docs/RESULTS.md, "Kill and resume"):
# moves the finished run directory aside as the reference, starts the recipe, kill -9s it once
# the generation store holds 4 items, reruns and kill -9s it once training has logged 35 steps,
# reruns to the end, and compares the artifacts' sha256 with the reference.
#
#   target/release/alpaca recipe configs/quickstart.toml    # the uninterrupted reference run
#   scripts/recipe-kill-test.sh [CONFIG] [RUN_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
config="${1:-configs/quickstart.toml}"
run="${2:-runs/quickstart}"
bin=target/release/alpaca
ref="$run.reference"
[ -f "$run/summary.md" ] || { echo "run the recipe once to the end first ($run/summary.md is missing)" >&2; exit 1; }
rm -rf "$ref"
mv "$run" "$ref"

lines() { if [ -f "$1" ]; then wc -l < "$1"; else echo 0; fi; }

"$bin" recipe "$config" > /dev/null 2>&1 & pid=$!
while [ "$(lines "$run/generate/store.jsonl")" -lt 4 ]; do sleep 1; done
kill -9 "$pid"; wait "$pid" 2>/dev/null || true
echo "killed during generation: $(lines "$run/generate/store.jsonl") items stored"

"$bin" recipe "$config" > /dev/null 2> "$run.resume1.log" & pid=$!
while [ "$(lines "$run/train/metrics.jsonl")" -lt 35 ]; do sleep 1; done
kill -9 "$pid"; wait "$pid" 2>/dev/null || true
echo "killed during training: $(lines "$run/train/metrics.jsonl") steps logged"
grep -h "resuming" "$run.resume1.log" || true

"$bin" recipe "$config" > /dev/null 2> "$run.resume2.log"
grep -h "resuming\|skipped" "$run.resume2.log" || true

status=0
for a in generate/store.jsonl data/train.json data/held_out.json train/adapter_model.safetensors \
         "$(basename "$(ls "$run"/model-*.gguf)")"; do
    x=$(sha256sum < "$ref/$a" | cut -c1-16); y=$(sha256sum < "$run/$a" | cut -c1-16)
    if [ "$x" = "$y" ]; then echo "same      $x  $a"; else echo "DIFFERENT $x $y  $a"; status=1; fi
done
exit $status
