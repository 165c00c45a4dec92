#!/usr/bin/env bash
# Decode and prompt speed of alpaca against llama.cpp on the same CPU, side by side.
#
#   scripts/bench_vs_llamacpp.sh                 # defaults below
#   ROUNDS=3 P=512 N=128 T=1,2 R=5 scripts/bench_vs_llamacpp.sh
#
# For each model file (default: the SmolLM2-135M Q4_1 file, plus q8_0 and q4_k_m
# re-quantizations of it made with llama-quantize when missing) it runs, ROUNDS times and
# interleaved (alpaca, llama.cpp, alpaca, llama.cpp, ...):
#   alpaca bench -m MODEL -p P -n N -t T -r R --json
#   llama-bench  -m MODEL -p P -n N -t T -r R -o json
# and prints, per file/test/threads, the median over rounds of each tool's median t/s
# (llama-bench: the median of its samples_ts), the ratio alpaca / llama.cpp, and for decode
# the measured memory bandwidth, the bound it implies and each tool's % of it.
# Interleaving matters on a shared machine: load changes minute to minute, so sequential
# runs would compare different machines.
#
# Environment: ALPACA (binary, default target/release/alpaca), LLAMACPP_BIN (dir with
# llama-bench and llama-quantize; default from scripts/llamacpp.sh), MODELS (space
# separated paths), OUT (directory for raw JSON, default a temp dir).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ALPACA="${ALPACA:-$ROOT/target/release/alpaca}"
LLAMACPP_BIN="${LLAMACPP_BIN:-$("$ROOT/scripts/llamacpp.sh")}"
P="${P:-512}"; N="${N:-128}"; T="${T:-1,2}"; R="${R:-5}"; ROUNDS="${ROUNDS:-3}"
MDIR="$HOME/.cache/alpaca/models"
BASE="$MDIR/SmolLM2-135M-Instruct.Q4_1.gguf"
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"

[[ -x "$ALPACA" ]] || { echo "build alpaca first: cargo build --release" >&2; exit 1; }
[[ -f "$BASE" ]] || { echo "missing $BASE (scripts/fetch-model.sh)" >&2; exit 1; }
for q in q8_0 q4_k_m; do
    f="$MDIR/SmolLM2-135M-Instruct.$q.gguf"
    if [[ ! -f "$f" ]]; then
        echo "making $f" >&2
        "$LLAMACPP_BIN/llama-quantize" --allow-requantize "$BASE" "$f" "$q" >/dev/null 2>&1
    fi
done
MODELS="${MODELS:-$BASE $MDIR/SmolLM2-135M-Instruct.q8_0.gguf $MDIR/SmolLM2-135M-Instruct.q4_k_m.gguf}"

echo "# $(date -u +%FT%TZ) $(nproc) cores, load: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for round in $(seq 1 "$ROUNDS"); do
    for m in $MODELS; do
        tag="$(basename "$m" .gguf)"
        echo "round $round: $tag" >&2
        "$ALPACA" bench -m "$m" -p "$P" -n "$N" -t "$T" -r "$R" --json \
            >"$OUT/alpaca.$tag.$round.json"
        "$LLAMACPP_BIN/llama-bench" -m "$m" -p "$P" -n "$N" -t "$T" -r "$R" -o json \
            >"$OUT/llamacpp.$tag.$round.json" 2>/dev/null
    done
done
echo "# done $(date -u +%FT%TZ), load: $(cut -d' ' -f1-3 /proc/loadavg); raw JSON in $OUT" >&2

python3 - "$OUT" <<'EOF'
import glob, json, os, statistics, sys
out = sys.argv[1]
res = {}  # (model, test, threads) -> {"alpaca": [...], "llama.cpp": [...]}
bound = {}
for path in sorted(glob.glob(os.path.join(out, "*.json"))):
    name = os.path.basename(path)
    tool = name.split(".")[0]
    tag = ".".join(name.split(".")[1:-2])
    rows = json.load(open(path))
    for r in rows:
        if tool == "alpaca":
            key = (tag, r["test"], r["threads"])
            val = r["tokens_per_second"]
            if r.get("bound_tokens_per_second"):
                bound.setdefault(key, []).append((r["mem_gbs"], r["bound_tokens_per_second"], r["pct_of_bound"]))
        else:
            test = f"pp{r['n_prompt']}" if r["n_prompt"] else f"tg{r['n_gen']}"
            key = (tag, test, r["n_threads"])
            val = statistics.median(r["samples_ts"])
        res.setdefault(key, {}).setdefault("alpaca" if tool == "alpaca" else "llama.cpp", []).append(val)
print("| model | test | threads | alpaca t/s | llama.cpp t/s | ratio | GB/s | bound t/s | alpaca % of bound | llama.cpp % of bound |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for key in sorted(res):
    a = statistics.median(res[key].get("alpaca", [float("nan")]))
    l = statistics.median(res[key].get("llama.cpp", [float("nan")]))
    b = bound.get(key)
    if b:
        gbs = statistics.median(x[0] for x in b)
        bt = statistics.median(x[1] for x in b)
        extra = f"{gbs:.1f} | {bt:.0f} | {100*a/bt:.0f}% | {100*l/bt:.0f}%"
    else:
        extra = " | | | "
    print(f"| {key[0]} | {key[1]} | {key[2]} | {a:.1f} | {l:.1f} | {a/l:.2f}x | {extra} |")
EOF
