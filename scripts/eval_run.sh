#!/usr/bin/env bash
# The evaluation of docs/RESULTS.md ("Evaluation"): LoRA-tune the default model on
# alpaca_en_demo.json with a held-out split, score the held-out response loss before and
# after, answer the 252 user-oriented instructions with both models, and judge them pairwise
# (both orders) with the largest offline model. Every step is resumable: rerun to continue.
#
#   scripts/eval_run.sh            # WORK=/tmp/alpaca-eval, ALPACA=target/release/alpaca
#
# Needs: ~/.cache/alpaca/models/{SmolLM2-135M-Instruct.Q4_1.gguf,gemma-3-270m-q4_k_m.gguf}
# and ../shared/data/{alpaca_en_demo.json,user_oriented_instructions.jsonl}.
set -euo pipefail
cd "$(dirname "$0")/.."
ALPACA=${ALPACA:-target/release/alpaca}
WORK=${WORK:-/tmp/alpaca-eval}
T=${THREADS:-2}
MODELS=${MODELS:-$HOME/.cache/alpaca/models}
M=$MODELS/SmolLM2-135M-Instruct.Q4_1.gguf
JUDGE=$MODELS/gemma-3-270m-q4_k_m.gguf
DATA=${DATA:-../shared/data/alpaca_en_demo.json}
USER_SET=${USER_SET:-../shared/data/user_oriented_instructions.jsonl}
mkdir -p "$WORK"

# 1. LoRA (r8, q,v) on 900 examples, 99 held out (seed 42), 200 steps of batch 1.
if [ ! -f "$WORK/run/adapter_model.safetensors" ]; then
  "$ALPACA" train -m "$M" --data "$DATA" -o "$WORK/run" --max-steps 200 --batch-size 1 \
    --micro-batch-size 1 --val-size 99 --eval-every 200 --save-every 50 --warmup-steps 10 \
    --lr 1e-3 --schedule cosine -t "$T" -q
fi

# 2. Held-out response loss before and after, on the run's own validation split.
"$ALPACA" eval loss -m "$M" --split-from "$WORK/run" --label base --json "$WORK/loss_base.json" -t "$T"
"$ALPACA" eval loss -m "$M" --lora "$WORK/run" --label tuned --json "$WORK/loss_tuned.json" -t "$T"

# 3. Greedy answers (128 new tokens at most): the base model in its own chat template, the
#    tuned one in the Alpaca template it was trained on (read from the run directory).
"$ALPACA" eval predict -m "$M" --instructions "$USER_SET" -o "$WORK/pred_base.jsonl" \
  --name base -n 128 --temp 0 -t "$T"
"$ALPACA" eval predict -m "$M" --lora "$WORK/run" --instructions "$USER_SET" \
  -o "$WORK/pred_tuned.jsonl" --name tuned -n 128 --temp 0 -t "$T"
"$ALPACA" eval rouge "$WORK/pred_base.jsonl" "$WORK/pred_tuned.jsonl"

# 4. Pairwise, both orders. Main judge: gemma-3-270m (the largest model offline; a base
#    model, so the log-probability judge). Second opinions: SmolLM2-135M-Instruct (the only
#    instruct model, but it is the model under test) and the length baseline.
"$ALPACA" eval judge "$WORK/pred_base.jsonl" "$WORK/pred_tuned.jsonl" --judge "logprob:$JUDGE" \
  -o "$WORK/judge_gemma" --loss "$WORK/loss_base.json" --loss "$WORK/loss_tuned.json" \
  --title "tuned vs base, judged by gemma-3-270m (log-probability)" -t "$T"
"$ALPACA" eval judge "$WORK/pred_base.jsonl" "$WORK/pred_tuned.jsonl" --judge "logprob-chat:$M" \
  -o "$WORK/judge_smollm" --loss "$WORK/loss_base.json" --loss "$WORK/loss_tuned.json" \
  --title "tuned vs base, judged by SmolLM2-135M-Instruct (log-probability, chat)" -t "$T"
"$ALPACA" eval judge "$WORK/pred_base.jsonl" "$WORK/pred_tuned.jsonl" --judge length \
  -o "$WORK/judge_length" --title "tuned vs base, longer answer wins (baseline)"

# 5. Judge sanity check: the human reference answers of the set against the base model's.
#    A judge that cannot prefer these cannot be trusted on tuned vs base either.
python3 - "$USER_SET" "$WORK/pred_reference.jsonl" <<'PY'
import json, sys
with open(sys.argv[2], "w") as out:
    for line in open(sys.argv[1]):
        d = json.loads(line)
        i = d["instances"][0]
        out.write(json.dumps({"id": d["id"], "instruction": d["instruction"], "input": i["input"],
                              "response": i["output"], "generator": "reference"}) + "\n")
PY
"$ALPACA" eval judge "$WORK/pred_base.jsonl" "$WORK/pred_reference.jsonl" --judge "logprob:$JUDGE" \
  -o "$WORK/judge_ref_gemma" --title "human reference vs base, judged by gemma-3-270m" -t "$T"
"$ALPACA" eval judge "$WORK/pred_base.jsonl" "$WORK/pred_reference.jsonl" --judge "logprob-chat:$M" \
  -o "$WORK/judge_ref_smollm" --title "human reference vs base, judged by SmolLM2-135M-Instruct" -t "$T"
