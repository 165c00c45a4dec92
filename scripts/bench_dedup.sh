#!/usr/bin/env bash
# Self-instruct ROUGE-L dedup benchmark (docs/BENCHMARKS.md, "Self-instruct dedup").
#
# `alpaca data dedup` against the Python reference (scripts/selfinstruct_reference.py: the
# original O(N^2) loop over Google's rouge_score) on the same inputs; the kept sets must be equal.
#
#   scripts/bench_dedup.sh [OUT_DIR]
#
# Environment: ALPACA (binary, default target/release/alpaca), DATA (default ../shared/data),
# PY_BIG_LIMIT (candidates of the 20,000-instruction set the Python side runs, default 2000;
# set it to 20000 to run it fully: about two hours), SKIP_PY=1 to reuse earlier Python results.
set -euo pipefail
cd "$(dirname "$0")/.."
ALPACA=${ALPACA:-target/release/alpaca}
DATA=${DATA:-../shared/data}
OUT=${1:-/tmp/alpaca-bench-dedup}
PY_BIG_LIMIT=${PY_BIG_LIMIT:-2000}
mkdir -p "$OUT"

python3 scripts/bench_dedup_sets.py "$DATA/instructions_20k.jsonl.gz" "$OUT"
head -n "$PY_BIG_LIMIT" "$OUT/big.jsonl" > "$OUT/big_head.jsonl"

echo "== alpaca data dedup"
for set in rows big big_head; do
  for t in 1 2; do
    /usr/bin/time -f "   $set -t $t: %e s wall, %U s user + %S s sys CPU, %M KB max RSS" \
      "$ALPACA" data dedup "$OUT/$set.jsonl" -o "$OUT/$set.rs.jsonl" -t "$t"
  done
done

if [ "${SKIP_PY:-0}" != 1 ]; then
  echo "== Python reference (one core; CPU time is what counts on a busy machine)"
  python3 scripts/selfinstruct_reference.py dedup --input "$OUT/rows.jsonl" \
    > "$OUT/rows.py.idx" 2> "$OUT/rows.py.log"
  python3 scripts/selfinstruct_reference.py dedup --input "$OUT/big_head.jsonl" \
    > "$OUT/big_head.py.idx" 2> "$OUT/big_head.py.log"
fi

echo "== comparison"
python3 - "$OUT" <<'EOF'
import json, sys
out = sys.argv[1]

def instructions(path):
    return [json.loads(l)["instruction"] for l in open(path) if l.strip()]

def kept_indices(inp, kept):
    # The output is an order-preserving subsequence of the input.
    idx, j = [], 0
    for i, t in enumerate(inp):
        if j < len(kept) and kept[j] == t:
            idx.append(i)
            j += 1
    assert j == len(kept)
    return idx

def calls(n, kept):
    # LCS calls of the reference loop: each candidate against every instruction kept before it.
    total, k, ks = 0, 0, set(kept)
    for i in range(n):
        total += k
        k += i in ks
    return total

for name in ["rows", "big_head"]:
    inp = instructions(f"{out}/{name}.jsonl")
    rs = kept_indices(inp, instructions(f"{out}/{name}.rs.jsonl"))
    py = [int(l) for l in open(f"{out}/{name}.py.idx")]
    log = json.loads(open(f"{out}/{name}.py.log").read().strip().splitlines()[-1])
    print(f"   {name}: {len(inp)} candidates, alpaca kept {len(rs)}, reference kept {len(py)}, "
          f"same kept set: {rs == py}; reference {log['cpu_seconds']:.1f} s CPU ({log['seconds']:.1f} s wall), "
          f"{log['lcs_calls']} LCS calls, "
          f"{log['us_per_call']:.1f} us/call")
    if name == "big_head":
        big = instructions(f"{out}/big.jsonl")
        full = kept_indices(big, instructions(f"{out}/big.rs.jsonl"))
        c = calls(len(big), full)
        print(f"   big: {len(big)} candidates, alpaca kept {len(full)}; the reference would make {c} LCS calls, "
              f"about {c * log['us_per_call'] / 1e6:.0f} s CPU at the measured {log['us_per_call']:.1f} us/call")
EOF
