#!/usr/bin/env bash
# Greedy parity with llama.cpp on our q8_0 export through `--int8-activations` (docs/COMPAT.md,
# "q8_0 with --int8-activations"). With the flag, `alpaca run` follows llama.cpp's CPU
# arithmetic: Q8_0 activations and integer dots (model/int8.rs), and ggml's RoPE, RMSNorm,
# SwiGLU, f16 KV cache and flash attention (model/ggml_compat.rs). Compares llama.cpp's
# greedy 64 tokens (alpaca-llamacpp-greedy: argmax, no EOS stop) with alpaca's, with and
# without the flag, on the 4 prompts of scripts/export_check_llamacpp.sh plus a prompt of
# 64+ tokens (llama.cpp's tiled flash-attention kernel), and prints PASS when every prompt
# gives 64/64 equal tokens with the flag. Then the diagnosis: a probe built here from
# scripts/llamacpp_greedy.cpp (plus env switches: ALP_DUMP=FILE writes the first step's
# logits, ALP_KV_F32=1 an f32 KV cache, ALP_FA=0/1 flash attention off/on) compares
# llama.cpp's first-step logits with ours, and shows how llama.cpp's own greedy output moves
# with its attention settings (why the attention arithmetic has to be followed exactly).
#
#   scripts/export_check_q8_int8.sh [WORKDIR]
#
# Needs: the llama.cpp build of scripts/llamacpp.sh (LLAMACPP_DIR), g++, python3. ~3 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
W=${1:-/tmp/alpaca-q8-int8-check}
LD=${LLAMACPP_DIR:-$HOME/.cache/alpaca/llama.cpp}
L=${LLAMACPP_BIN:-$LD/build/bin}
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
printf 'The history of the printing press begins in the fifteenth century. Johannes Gutenberg, a goldsmith from Mainz, combined movable metal type, oil-based ink and a wooden press adapted from wine making. Within fifty years printing shops had opened in more than two hundred European cities, and the price of books fell sharply. Summarize this paragraph in one sentence:' >"$W/p-long.txt"
PROMPTS="alpaca chatml code unicode long"
fails=0
for p in $PROMPTS; do
  ll=$("$L/alpaca-llamacpp-greedy" "$Q" 64 "$T" <"$W/p-$p.txt" 2>/dev/null)
  f32=$("$A" run -m "$Q" -f "$W/p-$p.txt" --template raw --temp 0 -n 64 --ignore-eos --ids -t "$T" --f32-activations)
  i8=$("$A" run -m "$Q" -f "$W/p-$p.txt" --template raw --temp 0 -n 64 --ignore-eos --ids -t "$T" --int8-activations)
  python3 - "$ll" "$f32" "$i8" "$p" <<'PY' || fails=$((fails + 1))
import json, sys
def ids(s):
    v = json.loads(s)
    return v if isinstance(v, list) else (v.get("output_ids") or v.get("ids"))
ll, f32, i8 = (ids(s) for s in sys.argv[1:4])
n_prompt = len(json.loads(sys.argv[1])["prompt_ids"])
def cmp(b):
    n = next((i for i, (x, y) in enumerate(zip(ll, b)) if x != y), None)
    if n is None and len(ll) == len(b) == 64:
        return True, "64/64 equal"
    return False, f"differs: first difference at step {n} (llama.cpp {ll[n]} vs alpaca {b[n]})"
ok, msg = cmp(i8)
print(f"{sys.argv[4]} ({n_prompt} prompt tokens): --int8-activations: {msg}; f32 activations: {cmp(f32)[1]}")
sys.exit(0 if ok else 1)
PY
done
n=$(echo $PROMPTS | wc -w)
if [ "$fails" = 0 ]; then echo "PASS: $n/$n prompts 64/64 equal with --int8-activations"
else echo "FAIL: $fails of $n prompts differ with --int8-activations"; fi

echo "### first-step logits: llama.cpp (default: f16 KV cache, flash attention) vs alpaca, all logits"
python3 - scripts/llamacpp_greedy.cpp "$W/probe.cpp" <<'PY'
import sys
s = open(sys.argv[1]).read()
hooks = {
    "    cp.no_perf = true;\n": """    if (getenv("ALP_KV_F32")) { cp.type_k = GGML_TYPE_F32; cp.type_v = GGML_TYPE_F32; }
    if (getenv("ALP_FA")) cp.flash_attn_type = atoi(getenv("ALP_FA")) ? LLAMA_FLASH_ATTN_TYPE_ENABLED : LLAMA_FLASH_ATTN_TYPE_DISABLED;
""",
    "        if (step == 0) {\n": """            if (getenv("ALP_DUMP")) { FILE * f = fopen(getenv("ALP_DUMP"), "w"); for (int t = 0; t < n_vocab; t++) fprintf(f, "%.9g\\n", logits[t]); fclose(f); }
""",
}
for anchor, add in hooks.items():
    assert anchor in s, f"llamacpp_greedy.cpp changed: no {anchor!r}"
    s = s.replace(anchor, anchor + add, 1)
open(sys.argv[2], "w").write("#include <cstdlib>\n" + s)
PY
B=$LD/build; S=$LD/src/vendor/llama.cpp
omp=(); grep -q '^GGML_OPENMP:BOOL=ON' "$B/CMakeCache.txt" && omp=(-fopenmp)
"${CXX:-g++}" -O2 -std=c++17 -I"$S/include" -I"$S/ggml/include" "$W/probe.cpp" \
  "$B/src/libllama.a" "$B/ggml/src/libggml.a" "$B/ggml/src/libggml-cpu.a" "$B/ggml/src/libggml-base.a" \
  "${omp[@]}" -lpthread -ldl -o "$W/probe"
for p in $PROMPTS; do
  ALP_DUMP="$W/ll-$p.txt" "$W/probe" "$Q" 1 "$T" <"$W/p-$p.txt" >/dev/null 2>&1
  for f in --f32-activations --int8-activations; do
    "$A" run -m "$Q" -f "$W/p-$p.txt" --template raw --temp 0 -n 0 -t "$T" $f --dump-logits "$W/ours-$p$f.json" >/dev/null
  done
  python3 - "$W" "$p" <<'PY'
import json, sys
w, p = sys.argv[1:3]
ll = [float(l) for l in open(f"{w}/ll-{p}.txt")]
out = []
for f in ["--f32-activations", "--int8-activations"]:
    o = json.load(open(f"{w}/ours-{p}{f}.json"))["logits"][-1]
    d = max(abs(a - b) for a, b in zip(ll, o))
    out.append(f"{f}: max |difference| {d:.3g}")
print(f"{p}: " + "; ".join(out) + f" (over {len(ll)} logits)")
PY
done
echo "### llama.cpp against itself: greedy 64 tokens with other attention settings vs its default"
for p in alpaca chatml code unicode; do
  base=$("$W/probe" "$Q" 64 "$T" <"$W/p-$p.txt" 2>/dev/null)
  for cfg in "ALP_FA=0" "ALP_KV_F32=1 ALP_FA=0"; do
    other=$(env $cfg "$W/probe" "$Q" 64 "$T" <"$W/p-$p.txt" 2>/dev/null)
    python3 - "$base" "$other" "$p [$cfg]" <<'PY'
import json, sys
a, b = (json.loads(s)["output_ids"] for s in sys.argv[1:3])
n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
print(f"{sys.argv[3]}: " + ("64/64 equal" if n is None else f"first difference at step {n}"))
PY
  done
done
