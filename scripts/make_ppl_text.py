#!/usr/bin/env python3
"""Build the perplexity evaluation text (not committed) from the local Alpaca
demo data: the "output" fields of the records, in file order, joined with a
blank line ("\\n\\n"), until the text has at least --min-chars characters.
The file is written as UTF-8 without a trailing newline (llama.cpp's -f reads
the file verbatim), so llama.cpp and the Python reference see the same bytes.

  python3 scripts/make_ppl_text.py /tmp/ppl.txt
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys

DEFAULT_DATA = "/work/shared/data/alpaca_en_demo.json"


def build_text(data_path: str, min_chars: int) -> tuple[str, int]:
    with open(data_path, encoding="utf-8") as fh:
        records = json.load(fh)
    parts: list[str] = []
    n = 0
    for rec in records:
        out = rec["output"].strip()
        if not out:
            continue
        parts.append(out)
        n += 1
        if len("\n\n".join(parts)) >= min_chars:
            break
    text = "\n\n".join(parts)
    if len(text) < min_chars:
        raise SystemExit(f"only {len(text)} chars available in {data_path}")
    return text, n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="where to write the text file")
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--min-chars", type=int, default=20000)
    args = ap.parse_args()
    text, n = build_text(args.data, args.min_chars)
    raw = text.encode("utf-8")
    with open(args.out, "wb") as fh:
        fh.write(raw)
    print(f"wrote {args.out}: {n} records, {len(text)} chars, {len(raw)} bytes, "
          f"sha256 {hashlib.sha256(raw).hexdigest()}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
