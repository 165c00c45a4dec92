#!/usr/bin/env bash
# Greedy parity with llama.cpp on our q8_0 export through `--int8-activations` (docs/COMPAT.md,
# "Export"): llama.cpp quantizes activations to Q8_0 and uses integer dots; so does
# `alpaca run --int8-activations`. Compares llama.cpp's greedy 64 tokens
# (alpaca-llamacpp-greedy: argmax, no EOS stop) with alpaca's, with and without the flag,
# on the 4 prompts of scripts/export_check_llamacpp.sh.
#
#   scripts/export_check_q8_int8.sh [WORKDIR]
#
# Needs: the llama.cpp tools of scripts/llamacpp.sh (LLAMACPP_BIN) and python3. ~2 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
W=${1:-/tmp/alpaca-q8-int8-check}
L=${LLAMACPP_BIN:-$HOME/.cache/alpaca/llama.cpp/build/bin}
A=${ALPACA_BIN:-$ROOT/target/release/alpaca}
M=${ALPACA_MODEL:-$HOME/.cache/alpaca/models/SmolLM2-135M-Instruct.Q4_1.gguf}
T=${THREADS:-2}
mkdir -p "$W"
[ -x "$A" ] || cargo build --release -p alpaca-cli
Q=$W/smol-q8_0.gguf
"$A" export -q -t "$T" -m "$M" -o "$Q" --quant q8_0 --force
printf 'Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\nGive three tips for staying healthy.\n\n### Response:\n' >"$W/p-alpaca.txt"
printf '<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n' >"$W/p-chatml.txt"
printf 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n' >"$W/p-code.txt"
printf 'Grüße aus München! 日本語のテキスト, café, naïve 🙂. Translate to English:' >"$W/p-unicode.txt"
for p in alpaca chatml code unicode; do
  ll=$("$L/alpaca-llamacpp-greedy" "$Q" 64 "$T" <"$W/p-$p.txt" 2>/dev/null)
  f32=$("$A" run -m "$Q" -f "$W/p-$p.txt" --template raw --temp 0 -n 64 --ignore-eos --ids -t "$T")
  i8=$("$A" run -m "$Q" -f "$W/p-$p.txt" --template raw --temp 0 -n 64 --ignore-eos --ids -t "$T" --int8-activations)
  python3 - "$ll" "$f32" "$i8" "$p" <<'PY'
import json, sys
def ids(s):
    v = json.loads(s)
    return v if isinstance(v, list) else (v.get("output_ids") or v.get("ids"))
ll, f32, i8 = (ids(s) for s in sys.argv[1:4])
def cmp(b):
    n = next((i for i, (x, y) in enumerate(zip(ll, b)) if x != y), None)
    if n is None and len(ll) == len(b) == 64:
        return "64/64 equal"
    return f"first difference at step {n} (llama.cpp {ll[n]} vs alpaca {b[n]})"
print(f"{sys.argv[4]}: f32 activations: {cmp(f32)}; --int8-activations: {cmp(i8)}")
PY
done
