#!/usr/bin/env bash
# `alpaca export` against the real llama.cpp and gguf-py (docs/COMPAT.md, "Export").
#
#   scripts/export_check_llamacpp.sh [WORKDIR]
#
# 1. Exports the default model (SmolLM2-135M-Instruct Q4_1) to f32, f16, q8_0, q4_0, q4_1,
#    q4_k, q6_k; quantizes the f32 export with `llama-quantize --pure` and compares bytes
#    and RMSE tensor by tensor (scripts/export_compare_quants.py).
# 2. Greedy 64 tokens on 4 prompts: llama.cpp (alpaca-llamacpp-greedy: argmax, no EOS stop)
#    vs `alpaca run --temp 0 -n 64 --ignore-eos --ids` on the same file and prompt.
# 3. Perplexity: `llama-perplexity -c 512 --chunks 4` vs `alpaca perplexity --ctx 512
#    --chunks 4` on the text of scripts/make_ppl_text.py.
# 4. LoRA: a 20-step `alpaca train` run on ../shared/data/alpaca_en_demo.json (reused when
#    WORKDIR/run-lora exists), exported merged to f16; llama.cpp's greedy tokens on the
#    merged file vs `alpaca run --lora` on the base, on an Alpaca-template prompt.
# 5. gguf-py reads every file written here with warnings as errors.
#
# Needs: the llama.cpp tools of scripts/llamacpp.sh (LLAMACPP_BIN), python3 with gguf and
# numpy. Takes about 10 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
W=${1:-/tmp/alpaca-export-check}
L=${LLAMACPP_BIN:-$HOME/.cache/alpaca/llama.cpp/build/bin}
A=${ALPACA_BIN:-$ROOT/target/release/alpaca}
M=${ALPACA_MODEL:-$HOME/.cache/alpaca/models/SmolLM2-135M-Instruct.Q4_1.gguf}
T=${THREADS:-2}
DATA=${DATA:-$ROOT/../shared/data/alpaca_en_demo.json}
mkdir -p "$W"
[ -x "$A" ] || cargo build --release -p alpaca-cli
say() { printf '\n## %s\n' "$*"; }

say "1. exports and llama-quantize"
for q in f32 f16 q8_0 q4_0 q4_1 q4_k q6_k; do
  "$A" export -q -t "$T" -m "$M" -o "$W/smol-$q.gguf" --quant "$q" --force
done
for p in "q4_k Q4_K_S" "q6_k Q6_K" "q4_0 Q4_0" "q4_1 Q4_1" "q8_0 Q8_0"; do
  set -- $p
  "$L/llama-quantize" --pure "$W/smol-f32.gguf" "$W/ref-$1.gguf" "$2" "$T" >"$W/ref-$1.log" 2>&1
  echo "### $1: ours vs llama-quantize --pure $2 (from our f32 export)"
  python3 scripts/export_compare_quants.py "$W/smol-f32.gguf" "$W/smol-$1.gguf" "$W/ref-$1.gguf"
done

say "2. greedy 64 tokens, llama.cpp vs alpaca on the same file"
printf 'Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\nGive three tips for staying healthy.\n\n### Response:\n' >"$W/p-alpaca.txt"
printf '<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n' >"$W/p-chatml.txt"
printf 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n' >"$W/p-code.txt"
printf 'Grüße aus München! 日本語のテキスト, café, naïve 🙂. Translate to English:' >"$W/p-unicode.txt"
compare_greedy() { # MODEL PROMPT_FILE [LORA for alpaca]
  local ll ours
  ll=$("$L/alpaca-llamacpp-greedy" "$1" 64 "$T" <"$2" 2>/dev/null)
  if [ -n "${3:-}" ]; then
    ours=$("$A" run -m "$M" --lora "$3" -f "$2" --template raw --temp 0 -n 64 --ignore-eos --ids -t "$T" --f32-activations)
  else
    ours=$("$A" run -m "$1" -f "$2" --template raw --temp 0 -n 64 --ignore-eos --ids -t "$T" --f32-activations)
  fi
  python3 - "$ll" "$ours" "$(basename "$1") $(basename "$2")" <<'EOF'
import json, sys
a = json.loads(sys.argv[1])["output_ids"]; b = json.loads(sys.argv[2])
if isinstance(b, dict): b = b.get("ids") or b.get("output_ids")
n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
print(f"{sys.argv[3]}: " + ("64/64 tokens equal" if n is None and len(a) == len(b) == 64
      else f"first difference at step {n} (llama.cpp {a[n]} vs alpaca {b[n]})"))
EOF
}
for q in f16 q8_0 q4_k; do
  for p in alpaca chatml code unicode; do compare_greedy "$W/smol-$q.gguf" "$W/p-$p.txt"; done
done
echo "### llama.cpp on llama-quantize's own q8_0 file (bytes identical to ours) vs alpaca on ours"
for p in alpaca chatml code unicode; do
  ll=$("$L/alpaca-llamacpp-greedy" "$W/ref-q8_0.gguf" 64 "$T" <"$W/p-$p.txt" 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["output_ids"])')
  ll2=$("$L/alpaca-llamacpp-greedy" "$W/smol-q8_0.gguf" 64 "$T" <"$W/p-$p.txt" 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["output_ids"])')
  [ "$ll" = "$ll2" ] && echo "$p: llama.cpp gives the same 64 tokens on both files" || echo "$p: llama.cpp differs between the files"
done

say "3. perplexity, ctx 512, 4 chunks"
python3 scripts/make_ppl_text.py "$W/ppl.txt" >/dev/null
for q in f16 q8_0 q4_0 q4_1 q4_k; do
  ll=$("$L/llama-perplexity" -m "$W/smol-$q.gguf" -f "$W/ppl.txt" -c 512 --chunks 4 -t "$T" 2>&1 |
    sed -n 's/.*Final estimate: PPL = \([0-9.]*\).*/\1/p')
  ours=$("$A" perplexity -m "$W/smol-$q.gguf" -f "$W/ppl.txt" --ctx 512 --chunks 4 -t "$T" --f32-activations 2>/dev/null |
    sed -n 's/^PPL = //p')
  python3 -c "a,b=$ll,$ours; print(f'$q: llama.cpp {a:.4f}  alpaca {b:.4f}  ({100*(a-b)/b:+.2f}%)')"
done

say "4. LoRA: train 20 steps, export merged f16, llama.cpp vs alpaca run --lora"
RUN=$W/run-lora
if [ ! -f "$RUN/adapter_model.safetensors" ]; then
  "$A" train -m "$M" --data "$DATA" -o "$RUN" --max-steps 20 --batch-size 8 \
    --micro-batch-size 4 --val-size 16 --warmup-steps 2 --lr 1e-3 --lora-targets all \
    --cutoff-len 192 --quiet -t "$T"
fi
"$A" export -q -t "$T" -m "$M" --lora "$RUN" -o "$W/smol-lora-f16.gguf" --quant f16 --force
"$A" export -q -t "$T" -m "$M" --lora "$RUN" -o "$W/smol-lora-q8_0.gguf" --quant q8_0 --force
printf 'Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\nName three primary colors.\n\n### Response:\n' >"$W/p-lora2.txt"
for p in p-alpaca p-lora2; do
  echo "### $p: llama.cpp on the merged f16 vs alpaca run --lora on the base"
  compare_greedy "$W/smol-lora-f16.gguf" "$W/$p.txt" "$RUN"
  echo "### $p: llama.cpp vs alpaca, both on the merged f16"
  compare_greedy "$W/smol-lora-f16.gguf" "$W/$p.txt"
done
echo "### the adapter changes the answer:"
"$A" run -m "$M" -f "$W/p-lora2.txt" --template raw --temp 0 -n 24 -t "$T" | head -c 300; echo
"$A" run -m "$M" --lora "$RUN" -f "$W/p-lora2.txt" --template raw --temp 0 -n 24 -t "$T" | head -c 300; echo

say "5. gguf-py reads every file"
python3 - "$W"/smol-*.gguf <<'EOF'
import logging, sys, warnings
warnings.simplefilter("error")
class Fail(logging.Handler):
    def emit(self, r):
        if r.levelno >= logging.WARNING: raise SystemExit(f"gguf-py logged: {r.getMessage()}")
logging.getLogger().addHandler(Fail())
from gguf import GGUFReader
for p in sys.argv[1:]:
    r = GGUFReader(p)
    ft = r.fields["general.file_type"].contents() if "general.file_type" in r.fields else None
    print(f"{p.rsplit('/', 1)[-1]}: {len(r.tensors)} tensors, {len(r.fields)} fields, file_type {ft}: OK")
EOF
