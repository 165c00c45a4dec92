#!/usr/bin/env python3
"""Python reference of the self-instruct post-processing of the Alpaca generator.

This re-states the original algorithm (RECIPE.md, stage 1) on top of Google's `rouge_score`
package, so that `alpaca data` can be checked against it:

  rouge    --pairs PAIRS.jsonl           ROUGE-L F of {"a","b"} pairs, one repr() per line
  process  --replies R.jsonl --seeds S   parse + filter + dedup of teacher replies, exactly as
                                         the original (strict numbering), kept items as JSONL
  dedup    --input I.jsonl [--limit N]   the original O(N^2) dedup loop over instructions;
                                         prints kept indices as JSONL and timing on stderr

Requires: pip install rouge_score
"""

import argparse
import json
import re
import string
import sys
import time
from functools import partial

from rouge_score import rouge_scorer

BLACKLIST = [
    "image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps",
    "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram",
]


def scorer():
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def has_word(word, s):
    return re.compile(r"\b({0})\b".format(word), flags=re.IGNORECASE).search(s) is not None


def parse_reply(text, finish_reason, num_prompt_instructions=3):
    """Original parsing: returns (items, rejected) where rejected counts chunks by reason."""
    raw = f"{num_prompt_instructions + 1}. Instruction:" + text
    chunks = re.split("###", raw)
    items, rejected = [], {"truncated": 0, "unparseable": 0}
    for idx, chunk in enumerate(chunks):
        if idx == len(chunks) - 1 and finish_reason == "length":
            rejected["truncated"] += 1
            continue
        idx += num_prompt_instructions + 1
        parts = re.split(rf"{idx}\.\s+(Instruction|Input|Output):", chunk)
        if len(parts) != 7:
            rejected["unparseable"] += 1
            continue
        inst = parts[2].strip()
        inp = parts[4].strip()
        inp = "" if inp.lower() == "<noinput>" else inp
        out = parts[6].strip()
        items.append({"instruction": inst, "input": inp, "output": out})
    return items, rejected


def instruction_reject(inst):
    """The original's instruction filters, in its order; None when the instruction passes."""
    n = len(inst.split())
    if n <= 3:
        return "too_short"
    if n > 150:
        return "too_long"
    if any(has_word(w, inst) for w in BLACKLIST):
        return "blacklist"
    if inst.startswith("Write a program"):
        return "write_a_program"
    if inst[0] in string.punctuation:
        return "punctuation"
    if not inst[0].isascii():
        return "non_ascii"
    return None


def cmd_rouge(args):
    sc = scorer()
    out = sys.stdout
    with open(args.pairs) as f:
        for line in f:
            p = json.loads(line)
            # score(target, prediction): the original scores (new, existing) this way round.
            out.write(repr(sc.score(p["a"], p["b"])["rougeL"].fmeasure) + "\n")


def cmd_process(args):
    import numpy as np

    sc = scorer()
    tok = sc._tokenizer
    seeds = [json.loads(l) for l in open(args.seeds) if l.strip()]
    all_instructions = [s["instruction"] for s in seeds]
    all_tokens = [tok.tokenize(i) for i in all_instructions]
    rejected = {}
    kept = []
    for line in open(args.replies):
        r = json.loads(line)
        items, rej = parse_reply(r["text"], r["finish_reason"])
        for k, v in rej.items():
            rejected[k] = rejected.get(k, 0) + v
        for item in items:
            why = instruction_reject(item["instruction"])
            if why:
                rejected[why] = rejected.get(why, 0) + 1
                continue
            new_tokens = tok.tokenize(item["instruction"])
            scores = [rouge_scorer._score_lcs(new_tokens, t).fmeasure for t in all_tokens]
            if max(scores) > args.threshold:
                rejected["duplicate"] = rejected.get("duplicate", 0) + 1
                continue
            top = [(all_instructions[i], scores[i]) for i in np.argsort(scores)[-10:][::-1]]
            item["most_similar_instructions"] = top
            item["avg_similarity_score"] = float(np.mean(scores))
            kept.append(item)
            all_instructions.append(item["instruction"])
            all_tokens.append(new_tokens)
    for item in kept:
        print(json.dumps(item))
    print(json.dumps(rejected, sort_keys=True), file=sys.stderr)


def cmd_dedup(args):
    sc = scorer()
    tok = sc._tokenizer
    rows = [json.loads(l) for l in open(args.input) if l.strip()]
    insts = [r["instruction"] if isinstance(r, dict) else r for r in rows]
    if args.limit:
        insts = insts[: args.limit]
    all_tokens = []
    kept = []
    calls = 0
    t0, c0 = time.perf_counter(), time.process_time()
    for i, inst in enumerate(insts):
        new_tokens = tok.tokenize(inst)
        if args.pool:
            # The original started a process pool per candidate.
            from multiprocessing import Pool

            with Pool(args.pool) as p:
                scores = p.map(partial(rouge_scorer._score_lcs, new_tokens), all_tokens)
            scores = [s.fmeasure for s in scores]
        else:
            scores = [rouge_scorer._score_lcs(new_tokens, t).fmeasure for t in all_tokens]
        calls += len(all_tokens)
        if scores and max(scores) > args.threshold:
            continue
        kept.append(i)
        all_tokens.append(new_tokens)
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    for i in kept:
        print(i)
    print(json.dumps({"candidates": len(insts), "kept": len(kept), "lcs_calls": calls,
                      "seconds": secs, "cpu_seconds": cpu,
                      "us_per_call": 1e6 * cpu / max(calls, 1)}), file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("rouge")
    p.add_argument("--pairs", required=True)
    p = sub.add_parser("process")
    p.add_argument("--replies", required=True)
    p.add_argument("--seeds", required=True)
    p.add_argument("--threshold", type=float, default=0.7)
    p = sub.add_parser("dedup")
    p.add_argument("--input", required=True)
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--threshold", type=float, default=0.7)
    p.add_argument("--pool", type=int, default=0, help="processes per candidate, as the original")
    args = ap.parse_args()
    {"rouge": cmd_rouge, "process": cmd_process, "dedup": cmd_dedup}[args.cmd](args)


if __name__ == "__main__":
    main()
