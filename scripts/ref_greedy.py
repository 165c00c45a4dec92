#!/usr/bin/env python3
"""Reference greedy generations (transformers, float32 de-quantized GGUF weights).

For each prompt: tokenize without BOS (the GGUF says add_bos_token=false) and
with control tokens parsed as specials, then run a manual greedy loop of exactly
--n-new steps with a KV cache: argmax of the last logits, feed it back. EOS is
NOT a stop condition, so every case has exactly --n-new output ids.

Fixture: {"generated_by", ..., "cases": [{"name", "prompt", "prompt_ids",
"output_ids", "output_text", "first_logits_top5": {"ids", "values"},
"step_margins"}]} where step_margins[i] = top1 - top2 logit at generation
step i (small values mark near-ties where another engine may legitimately
pick the other token).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _refcommon as c  # noqa: E402

ALPACA_PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\nGive three tips for staying healthy.\n\n### Response:"
)
CODE_PROMPT = "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"
NON_ASCII_PROMPT = (
    "Der schnelle braune Fuchs springt über den faulen Hund. "
    "日本語の文章も少し書きます。Café, naïve, 😀 —"
)


def prompts(hf_tok) -> list[tuple[str, str]]:
    chat = hf_tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        tokenize=False, add_generation_prompt=True,
    )
    return [
        ("alpaca_healthy", ALPACA_PROMPT),
        ("chatml_capital_france", chat),
        ("code_fibonacci", CODE_PROMPT),
        ("non_ascii_mixed", NON_ASCII_PROMPT),
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=c.DEFAULT_MODEL)
    ap.add_argument("--out", default=c.fixture_path("greedy_smollm2.json"))
    ap.add_argument("--n-new", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()

    import torch

    torch.use_deterministic_algorithms(True)
    hf = c.load_hf_tokenizer(args.model)
    tk = c.build_llamacpp_style_tokenizer(args.model)
    model = c.load_hf_model(args.model, args.threads)

    import inspect

    # transformers >= 5.2x renamed past_key_values -> cache
    cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    cases = []
    for name, prompt in prompts(hf):
        ids = tk.encode(prompt, add_special_tokens=False).ids
        hf_ids = hf(prompt, add_special_tokens=False)["input_ids"]
        if ids != hf_ids:
            print(f"warning: transformers tokenizer differs on prompt {name}", file=sys.stderr)
        out_ids: list[int] = []
        margins: list[float] = []
        with torch.no_grad():
            res = model(torch.tensor([ids]), use_cache=True)
            logits = res.logits[0, -1].float()
            top = torch.topk(logits, 5)
            first_top5 = {"ids": top.indices.tolist(), "values": [round(v, 4) for v in top.values.tolist()]}
            pkv = getattr(res, cache_kw)
            for step in range(args.n_new):
                t2 = torch.topk(logits, 2)
                nxt = int(torch.argmax(logits))
                margins.append(round(float(t2.values[0] - t2.values[1]), 4))
                out_ids.append(nxt)
                if step + 1 == args.n_new:
                    break
                res = model(torch.tensor([[nxt]]), use_cache=True, **{cache_kw: pkv})
                pkv = getattr(res, cache_kw)
                logits = res.logits[0, -1].float()
        text = hf.decode(out_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        print(f"== {name}: {len(ids)} prompt tokens\n{text!r}\n", file=sys.stderr)
        cases.append({
            "name": name,
            "prompt": prompt,
            "prompt_ids": ids,
            "output_ids": out_ids,
            "output_text": text,
            "first_logits_top5": first_top5,
            "step_margins": margins,
        })

    c.write_json(args.out, {
        "generated_by": c.command_line(),
        "model": os.path.basename(args.model),
        "engine": "transformers (GGUF de-quantized to float32), manual greedy loop with KV cache",
        "n_new": args.n_new,
        "add_bos": False,
        "stop_at_eos": False,
        "cases": cases,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
