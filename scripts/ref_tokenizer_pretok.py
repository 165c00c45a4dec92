#!/usr/bin/env python3
"""Reference ids for the LLaMA-3 (`llama-bpe`) and Qwen2 pre-tokenizers, for the alpaca tests.

No small LLaMA-3 or Qwen2 GGUF is at hand, so this checks the pre-tokenizers alone: it takes
the SmolLM2 vocabulary and merges from its GGUF and builds `tokenizers` BPE tokenizers with
the pre-tokenizer of each model's original tokenizer.json (the regexes exactly as HF ships
them, Split(Isolated) + ByteLevel(add_prefix_space=False, use_regex=False); LLaMA-3 also has
BPE ignore_merges=True). Qwen2's NFC normalizer is left out: llama.cpp does not apply it
either. Control tokens are added as specials, as in ref_tokenizer.py.

Writes {"generated_by", ..., "variants": {"llama-bpe": [{"text","ids"}], "qwen2": [...]}}
to tests/fixtures/tokenizer_pretok_variants.json.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _refcommon as c  # noqa: E402
from ref_tokenizer import TEXTS  # noqa: E402

PATTERNS = {
    # meta-llama/Meta-Llama-3-8B tokenizer.json
    "llama-bpe": (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+", True),
    # Qwen/Qwen2-0.5B tokenizer.json
    "qwen2": (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+", False),
}


def build(fields: dict, pattern: str, ignore_merges: bool):
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(fields["tokens"])}
    merges = [tuple(m.split(" ", 1)) for m in fields["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False,
                               ignore_merges=ignore_merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(fields["tokens"], fields["token_type"]) if ty == 3])
    return tok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=c.DEFAULT_MODEL)
    ap.add_argument("--out", default=c.fixture_path("tokenizer_pretok_variants.json"))
    args = ap.parse_args()

    fields = c.gguf_tokenizer_fields(args.model)
    variants = {}
    for name, (pattern, ignore_merges) in PATTERNS.items():
        tok = build(fields, pattern, ignore_merges)
        variants[name] = [{"text": t, "ids": tok.encode(t, add_special_tokens=False).ids} for t in TEXTS]
    c.write_json(args.out, {
        "generated_by": c.command_line(),
        "model": os.path.basename(args.model),
        "note": "SmolLM2 vocabulary and merges with each model's original pre-tokenizer; checks the "
                "pre-tokenizer regexes (and LLaMA-3's ignore_merges), not those models' vocabularies.",
        "variants": variants,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
