#!/usr/bin/env bash
# Training throughput and peak memory, alpaca vs PyTorch (transformers + peft, float32, eager),
# side by side in one run: micro-batch 4 x 256, loss on every position, N threads.
# Setups: LoRA r8 on q,v; LoRA r16 on all linears; full fine-tuning.
#
# usage: scripts/bench_train.sh [MODEL.gguf] [STEPS=4] [THREADS=2] [ROUNDS=1]
# With ROUNDS > 1 every setup runs ROUNDS times, alpaca and PyTorch back to back each time, and
# the table gives the median of each column and the ratio of every round (this machine is
# shared: a ratio from adjacent runs is what to read, the median of several the number to quote).
# needs: cargo, python3 with torch, transformers, peft, gguf; /usr/bin/time.
# Results: a markdown table on stdout (paste into docs/BENCHMARKS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-${ALPACA_MODELS:-$HOME/.cache/alpaca/models}/SmolLM2-135M-Instruct.Q4_1.gguf}
STEPS=${2:-4}
THREADS=${3:-2}
ROUNDS=${4:-1}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cargo build --release -q
BIN=target/release/alpaca

# 64 examples whose target alone fills the 256-token cutoff (train-on-inputs: every position has loss).
python3 - "$WORK/data.json" "${DATA:-../shared/data/alpaca_en_demo.json}" <<'PY'
import json, sys
rows = json.load(open(sys.argv[2]))
words = " ".join(r["output"] for r in rows).split()
json.dump([{"instruction": "Continue.", "input": "", "output": " ".join(words[i*300:(i+1)*300])} for i in range(64)], open(sys.argv[1], "w"))
PY

rust_side() { # setup flags...
  local setup=$1; shift
  local out="$WORK/$setup"
  /usr/bin/time -v -o "$WORK/$setup.time" "$BIN" train -m "$MODEL" --data "$WORK/data.json" -o "$out" \
    --max-steps "$STEPS" --batch-size 4 --micro-batch-size 4 --cutoff-len 256 --train-on-inputs \
    --val-size 0 --eval-every 0 --save-every 0 --warmup-steps 0 --lr 1e-5 -t "$THREADS" -q "$@" 2>/dev/null
  python3 - "$out/metrics.jsonl" "$WORK/$setup.time" "$setup" <<'PY'
import json, sys, re
m = [json.loads(l) for l in open(sys.argv[1])]
tps = sorted(r["tokens_per_s"] for r in m[1:]) or [m[0]["tokens_per_s"]]
rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", open(sys.argv[2]).read()).group(1)) / 2**20
print(json.dumps({"impl": "alpaca", "setup": sys.argv[3], "tokens_per_s": round(tps[len(tps)//2], 1), "peak_rss_gib": round(rss, 2)}))
PY
}

echo "| setup | alpaca tok/s | PyTorch tok/s | speed-up | alpaca peak GiB | PyTorch peak GiB | per-round speed-up |"
echo "|---|---|---|---|---|---|---|"
for setup in lora-qv lora-all full; do
  case $setup in
    lora-qv) flags=(--lora-r 8 --lora-alpha 16 --lora-targets q,v) ;;
    lora-all) flags=(--lora-r 16 --lora-alpha 32 --lora-targets all) ;;
    full) flags=(--full) ;;
  esac
  : > "$WORK/$setup.rounds"
  for _ in $(seq "$ROUNDS"); do
    a=$(rust_side "$setup" "${flags[@]}")
    p=$(OMP_NUM_THREADS=$THREADS python3 scripts/bench_train.py "$MODEL" "$setup" "$STEPS" "$THREADS" 2>/dev/null | tail -1)
    printf '[%s, %s]\n' "$a" "$p" >> "$WORK/$setup.rounds"
  done
  python3 - "$WORK/$setup.rounds" <<'PY'
import json, statistics, sys
rounds = [json.loads(l) for l in open(sys.argv[1])]
med = lambda side, key: statistics.median(r[side][key] for r in rounds)
ratios = [r[0]["tokens_per_s"] / r[1]["tokens_per_s"] for r in rounds]
print(f"| {rounds[0][0]['setup']} | {med(0, 'tokens_per_s'):.1f} | {med(1, 'tokens_per_s'):.1f} | "
      f"{statistics.median(ratios):.2f}x | {med(0, 'peak_rss_gib'):.2f} | {med(1, 'peak_rss_gib'):.2f} | "
      + ", ".join(f"{x:.2f}" for x in ratios) + " |")
PY
done
