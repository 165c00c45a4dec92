#!/usr/bin/env python3
"""llama.cpp-style perplexity with transformers (float32 de-quantized GGUF).

Definition (same as llama.cpp's llama-perplexity with -c N_CTX, add_bos=false):
  * tokenize the whole text file (no BOS: the GGUF says add_bos_token=false;
    special-token syntax in the text is NOT parsed);
  * n_chunks = n_tokens // n_ctx non-overlapping windows; window k is
    tokens[k*n_ctx : (k+1)*n_ctx], evaluated from an empty KV cache at
    positions 0..n_ctx-1;
  * first = n_ctx // 2; for each window the logits at positions
    i = first .. n_ctx-2 predict token i+1 (n_ctx - 1 - first tokens scored);
  * PPL = exp(sum NLL / number of scored tokens).
(If the vocabulary had add_bos=true, llama.cpp would overwrite the first token
of every window with BOS; not the case here.)

  python3 scripts/make_ppl_text.py /tmp/ppl.txt
  python3 scripts/ref_perplexity.py /tmp/ppl.txt
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _refcommon as c  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("text", help="text file (build it with scripts/make_ppl_text.py)")
    ap.add_argument("--model", default=c.DEFAULT_MODEL)
    ap.add_argument("--out", default=c.fixture_path("perplexity_smollm2.json"),
                    help="fixture to write ('' to skip)")
    ap.add_argument("--n-ctx", type=int, default=512)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()

    import torch

    torch.use_deterministic_algorithms(True)
    with open(args.text, "rb") as fh:
        raw = fh.read()
    text = raw.decode("utf-8")

    # llama.cpp tokenizes with parse_special=false: use the GGUF BPE without
    # added specials (plain text has none anyway), and cross-check transformers.
    tk = c.build_llamacpp_style_tokenizer(args.model)
    tokens = tk.encode(text, add_special_tokens=False).ids
    hf = c.load_hf_tokenizer(args.model)
    hf_tokens = hf(text, add_special_tokens=False)["input_ids"]
    if hf_tokens != tokens:
        print(f"warning: transformers tokenizer gives {len(hf_tokens)} tokens vs {len(tokens)}", file=sys.stderr)

    n_ctx = args.n_ctx
    first = n_ctx // 2
    n_chunks = len(tokens) // n_ctx
    if n_chunks < 2:
        raise SystemExit(f"need at least {2 * n_ctx} tokens, have {len(tokens)}")

    model = c.load_hf_model(args.model, args.threads)
    nll_sum = 0.0
    count = 0
    per_chunk = []
    with torch.no_grad():
        for k in range(n_chunks):
            window = tokens[k * n_ctx:(k + 1) * n_ctx]
            logits = model(torch.tensor([window]), use_cache=False).logits[0].double()
            logp = torch.log_softmax(logits[first:n_ctx - 1], dim=-1)
            target = torch.tensor(window[first + 1:n_ctx])
            nll = -logp.gather(1, target[:, None]).squeeze(1)
            nll_sum += float(nll.sum())
            count += int(nll.numel())
            per_chunk.append(math.exp(nll_sum / count))
            print(f"[{k + 1}]{per_chunk[-1]:.4f}", end=" ", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    ppl = math.exp(nll_sum / count)
    print(f"PPL = {ppl:.6f}")
    print(f"windows = {n_chunks}, n_ctx = {n_ctx}, scored tokens = {count}, text tokens = {len(tokens)}")

    if args.out:
        c.write_json(args.out, {
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
            "add_bos": False,
            "n_ctx": n_ctx,
            "n_windows": n_chunks,
            "scored_per_window": n_ctx - 1 - first,
            "n_scored": count,
            "definition": "non-overlapping windows tokens[k*n_ctx:(k+1)*n_ctx] for k < n_tokens//n_ctx, "
                          "each from an empty cache; logits at positions i in [n_ctx/2, n_ctx-2] predict "
                          "token i+1; PPL = exp(mean NLL) over all scored tokens (llama-perplexity -c n_ctx)",
            "nll_sum": round(nll_sum, 6),
            "ppl": round(ppl, 6),
            "ppl_running_by_window": [round(p, 6) for p in per_chunk],
        })
    return 0


if __name__ == "__main__":
    sys.exit(main())
