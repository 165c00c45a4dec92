#!/usr/bin/env python3
"""Reference tokenizations for the alpaca tokenizer tests.

Encodes a fixed list of texts with
  (a) a `tokenizers` BPE built from the raw GGUF vocabulary/merges with
      llama.cpp's "smollm" pre-tokenizer (digits isolated first, then the GPT-2
      regex; see _refcommon.py) -- this is the canonical "ids", and
  (b) the transformers tokenizer loaded from the GGUF (add_special_tokens=False;
      control tokens such as <|im_start|> in the text are matched as specials).
Writes {"generated_by", ..., "cases": [{"text", "ids"}]} to the fixture.

Known disagreement: transformers (5.x) does not know the GGUF pre-tokenizer
"smollm" and falls back to the plain GPT-2 split without isolating digits, so
it differs on whitespace runs before digits ("  4") and on non-ASCII \p{N}
characters ("½"). Such entries also carry "ids_hf_gguf". (a) matches llama.cpp
(check with --llama-tokenize PATH, built by scripts/llamacpp.sh) and the
original SmolLM2 tokenizer.json (Digits(individual_digits) + ByteLevel).
The script exits non-zero if (a) disagrees with llama-tokenize.

Optionally (--llama-tokenize PATH) also compares against llama.cpp's
llama-tokenize binary (scripts/llamacpp.sh builds it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _refcommon as c  # noqa: E402

TEXTS: list[str] = [
    # --- empty / whitespace -------------------------------------------------
    "",
    " ",
    "  ",
    "   ",
    "\t",
    "\n",
    "\n\n",
    "\n\n\n",
    " \n",
    "\n ",
    "\t\t\tindented with tabs",
    "\r\n",
    "line one\r\nline two\r\n",
    " leading space",
    "   three leading spaces",
    "trailing space ",
    "trailing spaces   ",
    "trailing newline\n",
    "  both sides  ",
    "multiple   spaces    between     words",
    "tab\tseparated\tvalues",
    "mixed \t \n whitespace\n\t end",
    "a\n\nb\n\n\nc",
    "word\n    indented line\n        deeper",
    # --- plain English -------------------------------------------------------
    "Hello",
    "Hello world",
    "Hello, world!",
    "hello WORLD HeLLo",
    "The quick brown fox jumps over the lazy dog.",
    "Give three tips for staying healthy.",
    "What is the capital of France?",
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
    "A sentence. Another one! And a question? Yes...",
    "semi;colon, comma: colon - dash -- double dash --- triple",
    "(parentheses) [brackets] {braces} <angles>",
    "quotes \"double\" 'single' `back`",
    "hyphenated-words and under_scores and CamelCaseWords",
    "e-mail: someone@example.com, url: https://example.com/path?q=1&x=y#frag",
    "ALL CAPS SENTENCE WITH SHOUTING",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    # --- contractions ---------------------------------------------------------
    "I'm don't",
    "I'm fine, you're late, he's here, we've gone, they'll see, I'd go, can't won't",
    "I'M DON'T YOU'RE",
    "it’s curly apostrophe’s",
    "rock 'n' roll 'quoted' ''double''",
    "the dog's bone and the dogs' bones",
    # --- digits and numbers ---------------------------------------------------
    "0",
    "7",
    "42",
    "123",
    "2024",
    "1234567890",
    "3.14159265358979323846",
    "-17 +42 1e-9 6.02e23",
    "Call 555-0123 or +1 (800) 555-0199.",
    "Version 1.2.3-beta.4",
    "In 2024 there were 1234567 people.",
    "100,000,000 and 99.99%",
    "0x1F 0b1010 0o777",
    "2024-01-15T12:34:56Z",
    "12345678901234567890123456789012345678901234567890",
    " 1 2 3  4   5",
    "abc123def456",
    "Here are three tips:\n\n1. Eat well.\n\n2. Sleep.\n\n3. Move.",
    "x\n\n\n3",
    "  42",
    "\t7\t\t8",
    "a  1",
    "①②③ ½ ¾ ² ³ Ⅻ",
    "٠١٢٣٤٥٦٧٨٩ arabic-indic digits",
    # --- code -----------------------------------------------------------------
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "def add(a, b):\n    return a + b\n\nprint(add(1, 2))",
    "for i in range(10):\n\tif i % 2 == 0:\n\t\tprint(i)",
    "fn main() {\n    let x: Vec<u32> = vec![1, 2, 3];\n    println!(\"{:?}\", x);\n}",
    "impl<'a> Iterator for Foo<'a> { type Item = &'a str; }",
    "#include <stdio.h>\nint main(void) { printf(\"hi\\n\"); return 0; }",
    "const f = async (x) => { await g(x ?? 0); };",
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name DESC;",
    "<div class=\"box\"><p>Hello &amp; welcome</p></div>",
    "{\"key\": [1, 2, {\"nested\": null}], \"ok\": true}",
    "#!/bin/bash\nset -euo pipefail\necho \"$HOME\" | grep -q root && exit 1",
    "x += 1; y -= 2; z *= 3; w /= 4; a <<= 1; b >>= 2; c != d; e == f",
    "    indented code line with four spaces",
    "if (a && b || !c) { return a->b.c[0]; }",
    "public static void main(String[] args) throws Exception {}",
    "   \n   \n",
    "/* block comment */ // line comment\n# python comment",
    "$$ \\frac{a}{b} = \\sum_{i=0}^{n} x_i^2 $$",
    # --- accents / Latin ----------------------------------------------------
    "Café, naïve, résumé, façade, jalapeño, Ångström, Øresund",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Straße Größe Äpfel Übermut",
    "¿Dónde está la biblioteca? ¡Olé!",
    "Ça va? Où est l'hôtel? C'est déjà l'été.",
    "Zażółć gęślą jaźń",
    "Příliš žluťoučký kůň úpěl ďábelské ódy",
    "e\u0301 combining acute vs é precomposed",
    "ﬁ ligature and ẞ capital sharp s",
    # --- other scripts ------------------------------------------------------
    "Привет, мир! Как дела?",
    "Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "مرحبا بالعالم",
    "اللغة العربية جميلة جدا.",
    "שלום עולם",
    "Γειά σου Κόσμε",
    "नमस्ते दुनिया",
    "สวัสดีชาวโลก",
    "안녕하세요 세계",
    "你好，世界！",
    "日本語の文章も少し書きます。",
    "東京タワーは333メートルです。",
    "中文和English混合text",
    "Tiếng Việt có dấu",
    "Բարեւ աշխարհ",
    "ქართული ენა",
    # --- emoji and symbols --------------------------------------------------
    "😀",
    "😀😃😄",
    "I ❤️ emoji 🎉🎉",
    "👨‍👩‍👧‍👦 family ZWJ sequence",
    "👩🏽‍💻 woman technologist medium skin tone",
    "🏳️‍🌈 rainbow flag",
    "🇫🇷🇯🇵 flags",
    "👍🏻👍🏿",
    "→ ← ↑ ↓ ⇒ ∀ ∃ ∈ ∑ ∫ √ ∞ ≠ ≤ ≥",
    "€100 £50 ¥1000 ₹500 $20 ₿",
    "© ® ™ § ¶ † ‡ • … ‰",
    "—em dash– en dash ‐ hyphen",
    "«guillemets» „Anführungszeichen“ “curly” ‘single’",
    "\u00a0non-breaking\u00a0space and\u2009thin\u2009space",
    "zero\u200bwidth\u200bspace",
    "Der schnelle braune Fuchs springt über den faulen Hund. 日本語の文章も少し書きます。Café, naïve, 😀 —",
    # --- special tokens embedded in text ------------------------------------
    "<|im_start|>user\nhi<|im_end|>",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "text before<|endoftext|>text after",
    "<|im_end|><|im_end|>",
    " <|im_start|> spaced special ",
    "<|im_start|",
    "<im_start> not special",
    "<repo_name>alpaca<file_sep>src/main.rs",
    "<|endoftext|>",
    # --- misc ---------------------------------------------------------------
    "a",
    "ab",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "!!!???...,,,;;;",
    "====================",
    "----------------------------------------",
    "__init__ __main__ __name__",
    "C:\\Users\\name\\file.txt and /usr/local/bin",
    "key=value&other=thing",
    "### Instruction:\nGive three tips.\n\n### Response:",
    "1. First\n2. Second\n3. Third",
    "- bullet one\n- bullet two\n  - nested",
    "| col1 | col2 |\n|------|------|\n| a    | b    |",
    "**bold** _italic_ `code` ~~strike~~",
    "Mr. Smith's U.S.A. trip cost $1,234.56 on 3/4/2021.",
    "\u0000 nul and \u0007 bell",
    "\ufeffBOM at start",
]


def llama_tokenize_ids(binary: str, model: str, text: str) -> list[int]:
    # text via stdin (verbatim bytes, no escape processing); specials are parsed
    # by default in llama-tokenize; BOS is not added since add_bos=false.
    out = subprocess.run(
        [binary, "-m", model, "--stdin", "--ids", "--log-disable", "--no-escape"],
        input=text.encode("utf-8"), check=True, capture_output=True,
    ).stdout.decode("utf-8")
    line = [ln for ln in out.splitlines() if ln.startswith("[")][-1]
    return json.loads(line)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=c.DEFAULT_MODEL)
    ap.add_argument("--out", default=c.fixture_path("tokenizer_smollm2.json"))
    ap.add_argument("--llama-tokenize", default=None, help="path to llama.cpp's llama-tokenize to cross-check")
    ap.add_argument("--allow-mismatch", action="store_true")
    args = ap.parse_args()

    assert len(TEXTS) == len(set(TEXTS)), "duplicate texts"
    hf = c.load_hf_tokenizer(args.model)
    tk = c.build_llamacpp_style_tokenizer(args.model)

    entries = []
    mismatches = 0
    ll_mismatches = 0
    for text in TEXTS:
        a = tk.encode(text, add_special_tokens=False).ids
        b = hf(text, add_special_tokens=False)["input_ids"]
        e = {"text": text, "ids": a}
        if a != b:
            mismatches += 1
            e["ids_hf_gguf"] = b
            print(f"note: transformers-GGUF differs: {text!r}\n  ids: {a}\n  hf:  {b}", file=sys.stderr)
        # round trip (byte-level BPE is lossless)
        dec = hf.decode(a, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if dec != text:
            print(f"note: decode(encode(x)) != x for {text!r}: {dec!r}", file=sys.stderr)
        if args.llama_tokenize:
            ll = llama_tokenize_ids(os.path.expanduser(args.llama_tokenize), os.path.expanduser(args.model), text)
            if ll != a:
                ll_mismatches += 1
                print(f"MISMATCH ids vs llama-tokenize: {text!r}\n  ids: {a}\n  ll:  {ll}", file=sys.stderr)
        entries.append(e)

    print(f"{len(entries)} texts, {mismatches} differ in transformers-GGUF (expected, see doc)"
          + (f", {ll_mismatches} differ from llama-tokenize" if args.llama_tokenize else ""), file=sys.stderr)
    c.write_json(args.out, {
        "generated_by": c.command_line(),
        "model": os.path.basename(args.model),
        "add_special_tokens": False,
        "parse_special": True,
        "note": "ids: tokenizers BPE from the GGUF vocab/merges with llama.cpp's smollm pre-tokenizer "
                "(regex \\p{N} isolated, then GPT-2 regex); control tokens in text parsed as specials. "
                "ids_hf_gguf (only where different): transformers' GGUF tokenizer, which lacks the digit split.",
        "cases": entries,
    })
    return 1 if ll_mismatches and not args.allow_mismatch else 0


if __name__ == "__main__":
    sys.exit(main())
