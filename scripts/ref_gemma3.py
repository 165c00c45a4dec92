#!/usr/bin/env python3
"""Reference greedy generations and perplexity for Gemma-3 270M (transformers, float32
de-quantized GGUF weights).

transformers loads the gemma3 GGUF itself (it subtracts 1 from every norm weight, since
llama.cpp's converter stored Gemma's (1 + w) as w, and runs its own Gemma3 code with the
(1 + w) norms, QK-norm, 5 local : 1 global layers, local RoPE base 10000).

Greedy (-> tests/fixtures/greedy_gemma3.json): for each prompt, ids = [BOS] + the
transformers tokenization (add_bos_token = true in this GGUF; control tokens such as
<start_of_turn> are matched as specials), then a manual greedy loop of exactly --n-new
steps with a KV cache (EOS / <end_of_turn> are not stop conditions). Same layout as
greedy_smollm2.json (step_margins[i] = top1 - top2 logit at step i).

Perplexity (-> tests/fixtures/perplexity_gemma3.json): llama-perplexity's definition
(see ref_perplexity.py), with the first token of every window replaced by BOS, as
llama.cpp does when the vocabulary adds BOS. One entry per --n-ctx; a window of 1024
exercises the 512-token sliding window of the local layers.

  python3 scripts/make_ppl_text.py /tmp/ppl.txt
  python3 scripts/ref_gemma3.py --text /tmp/ppl.txt

The model (sha256 a5fd3b62...6818) is installed by scripts/fetch-gemma3.sh.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _refcommon as c  # noqa: E402
from ref_greedy import ALPACA_PROMPT, CODE_PROMPT, NON_ASCII_PROMPT  # noqa: E402

DEFAULT_MODEL = os.path.expanduser("~/.cache/alpaca/models/gemma-3-270m-q4_k_m.gguf")
BOS = 2

# The Gemma turn format (the 270M base GGUF carries no tokenizer.chat_template).
GEMMA_TURN = "<start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n"

PROMPTS = [
    ("alpaca_healthy", ALPACA_PROMPT),
    ("gemma_turn_capital_france", GEMMA_TURN),
    ("code_fibonacci", CODE_PROMPT),
    ("non_ascii_mixed", NON_ASCII_PROMPT),
]


def greedy(model, hf, n_new: int) -> list[dict]:
    import torch

    cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    cases = []
    for name, prompt in PROMPTS:
        ids = [BOS] + hf(prompt, add_special_tokens=False)["input_ids"]
        out_ids: list[int] = []
        margins: list[float] = []
        with torch.no_grad():
            res = model(torch.tensor([ids]), use_cache=True)
            logits = res.logits[0, -1].float()
            top = torch.topk(logits, 5)
            first_top5 = {"ids": top.indices.tolist(), "values": [round(v, 4) for v in top.values.tolist()]}
            pkv = getattr(res, cache_kw)
            for step in range(n_new):
                t2 = torch.topk(logits, 2)
                nxt = int(torch.argmax(logits))
                margins.append(round(float(t2.values[0] - t2.values[1]), 4))
                out_ids.append(nxt)
                if step + 1 == n_new:
                    break
                res = model(torch.tensor([[nxt]]), use_cache=True, **{cache_kw: pkv})
                pkv = getattr(res, cache_kw)
                logits = res.logits[0, -1].float()
        text = hf.decode(out_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        print(f"== {name}: {len(ids)} prompt tokens\n{text!r}\n", file=sys.stderr, flush=True)
        cases.append({
            "name": name,
            "prompt": prompt,
            "prompt_ids": ids,
            "output_ids": out_ids,
            "output_text": text,
            "first_logits_top5": first_top5,
            "step_margins": margins,
        })
    return cases


def perplexity(model, tokens: list[int], n_ctx: int) -> dict:
    import torch

    first = n_ctx // 2
    n_chunks = len(tokens) // n_ctx
    if n_chunks < 1:
        raise SystemExit(f"need at least {n_ctx} tokens, have {len(tokens)}")
    nll_sum, count, running = 0.0, 0, []
    with torch.no_grad():
        for k in range(n_chunks):
            window = [BOS] + tokens[k * n_ctx + 1:(k + 1) * n_ctx]
            logits = model(torch.tensor([window]), use_cache=False).logits[0].double()
            logp = torch.log_softmax(logits[first:n_ctx - 1], dim=-1)
            target = torch.tensor(window[first + 1:n_ctx])
            nll = -logp.gather(1, target[:, None]).squeeze(1)
            nll_sum += float(nll.sum())
            count += int(nll.numel())
            running.append(math.exp(nll_sum / count))
            print(f"[{n_ctx}:{k + 1}]{running[-1]:.4f}", end=" ", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    ppl = math.exp(nll_sum / count)
    print(f"n_ctx {n_ctx}: PPL = {ppl:.6f} over {count} tokens in {n_chunks} windows")
    return {
        "n_ctx": n_ctx,
        "n_windows": n_chunks,
        "scored_per_window": n_ctx - 1 - first,
        "n_scored": count,
        "nll_sum": round(nll_sum, 6),
        "ppl": round(ppl, 6),
        "ppl_running_by_window": [round(p, 6) for p in running],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--text", default=None, help="perplexity text (scripts/make_ppl_text.py); none: skip")
    ap.add_argument("--n-ctx", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--n-new", type=int, default=64, help="greedy steps (0: skip greedy)")
    ap.add_argument("--greedy-out", default=c.fixture_path("greedy_gemma3.json"))
    ap.add_argument("--ppl-out", default=c.fixture_path("perplexity_gemma3.json"))
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()

    import torch

    torch.use_deterministic_algorithms(True)
    hf = c.load_hf_tokenizer(args.model)
    model = c.load_hf_model(args.model, args.threads)
    print(f"layer types: {model.config.layer_types}", file=sys.stderr)
    print(f"rope: {model.config.rope_parameters}", file=sys.stderr)

    if args.n_new > 0:
        c.write_json(args.greedy_out, {
            "generated_by": c.command_line(),
            "model": os.path.basename(args.model),
            "engine": "transformers (GGUF de-quantized to float32), manual greedy loop with KV cache",
            "n_new": args.n_new,
            "add_bos": True,
            "stop_at_eos": False,
            "cases": greedy(model, hf, args.n_new),
        })

    if args.text:
        with open(args.text, "rb") as fh:
            raw = fh.read()
        text = raw.decode("utf-8")
        # Plain text: no special-token syntax is parsed (llama-perplexity does the same).
        tokens = hf(text, add_special_tokens=False)["input_ids"]
        runs = [perplexity(model, tokens, n) for n in args.n_ctx]
        c.write_json(args.ppl_out, {
            "generated_by": c.command_line(),
            "text_generated_by": "python3 scripts/make_ppl_text.py <TEXT>  (defaults: "
                                 "/work/shared/data/alpaca_en_demo.json, --min-chars 20000)",
            "model": os.path.basename(args.model),
            "engine": "transformers (GGUF de-quantized to float32)",
            "text_chars": len(text),
            "text_bytes": len(raw),
            "text_sha256": hashlib.sha256(raw).hexdigest(),
            "n_text_tokens": len(tokens),
            "first_tokens": tokens[:16],
            "tokens_sha256": hashlib.sha256(",".join(map(str, tokens)).encode()).hexdigest(),
            "add_bos": True,
            "definition": "non-overlapping windows tokens[k*n_ctx:(k+1)*n_ctx] for k < n_tokens//n_ctx, "
                          "first token replaced by BOS, each from an empty cache; logits at positions i in "
                          "[n_ctx/2, n_ctx-2] predict token i+1; PPL = exp(mean NLL) over all scored tokens "
                          "(llama-perplexity -c n_ctx)",
            "runs": runs,
        })
    return 0


if __name__ == "__main__":
    sys.exit(main())
