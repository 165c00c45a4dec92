#!/usr/bin/env python3
"""Build the inputs of the self-instruct dedup benchmark (scripts/bench_dedup.sh).

rows.jsonl: the 18,567 rows of instructions_20k.jsonl.gz, as they are (about 1,300 distinct
            instructions, so most rows are exact or near duplicates).
big.jsonl:  20,000 instructions: each row's instruction followed by the first sentence of its
            output, in file order, cut at 20,000 (about 10,000 distinct texts of 1-140 words).
"""
import gzip
import json
import re
import sys

src, out = sys.argv[1], sys.argv[2]
rows = [json.loads(l) for l in gzip.open(src, "rt")]


def first_sentence(t):
    return re.split(r"(?<=[.!?])\s+|\n", str(t).strip(), maxsplit=1)[0].strip()


with open(f"{out}/rows.jsonl", "w") as f:
    for r in rows:
        f.write(json.dumps({"instruction": r["instruction"], "input": str(r.get("input", "")), "output": str(r["output"])}) + "\n")
big = []
for r in rows:
    big.append(r["instruction"])
    big.append(first_sentence(r["output"]))
with open(f"{out}/big.jsonl", "w") as f:
    for t in big[:20000]:
        f.write(json.dumps({"instruction": t, "input": "", "output": ""}) + "\n")
