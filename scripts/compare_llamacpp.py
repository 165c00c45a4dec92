#!/usr/bin/env python3
"""Cross-check the transformers fixtures against llama.cpp (built by
scripts/llamacpp.sh) and write a plain-text report.

  * greedy: for every case in fixtures/greedy_smollm2.json, feed the raw prompt
    text to alpaca-llamacpp-greedy (exact argmax loop, no EOS stop or bias) and
    compare prompt_ids / output_ids; report the first divergent step and the
    transformers top1-top2 margin there. Also records llama-completion's text
    (--temp 0 -n N --ignore-eos -no-cnv; note --ignore-eos biases EOG tokens to
    -inf, so it differs from the exact loop wherever the argmax is an EOG).
  * perplexity: llama-perplexity -c 512 -b 512 on the text file, compared with
    fixtures/perplexity_smollm2.json.

  python3 scripts/make_ppl_text.py /tmp/ppl.txt
  python3 scripts/compare_llamacpp.py --text /tmp/ppl.txt --report /tmp/llamacpp_reference.txt
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _refcommon as c  # noqa: E402

DEFAULT_BIN = os.path.expanduser(os.path.join(os.environ.get("LLAMACPP_DIR", "~/.cache/alpaca/llama.cpp"),
                                              "build", "bin"))


def run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, capture_output=True, **kw)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=c.DEFAULT_MODEL)
    ap.add_argument("--bin", default=DEFAULT_BIN, help="llama.cpp bin dir (scripts/llamacpp.sh prints it)")
    ap.add_argument("--greedy", default=c.fixture_path("greedy_smollm2.json"))
    ap.add_argument("--ppl", default=c.fixture_path("perplexity_smollm2.json"))
    ap.add_argument("--text", required=True, help="perplexity text (scripts/make_ppl_text.py)")
    ap.add_argument("--report", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--greedy-json", default=None,
                    help="also write llama.cpp's greedy results in the greedy fixture's format here")
    args = ap.parse_args()
    model = os.path.expanduser(args.model)
    args.bin = os.path.expanduser(args.bin)
    hf = c.load_hf_tokenizer(model)

    lines: list[str] = []

    def say(s: str = "") -> None:
        print(s)
        lines.append(s)

    say(f"llama.cpp reference vs transformers fixtures; model {os.path.basename(model)}")
    say(f"llama.cpp bin: {args.bin}")
    say(f"command: {c.command_line()}")
    say()

    g = json.load(open(args.greedy, encoding="utf-8"))
    n_new = g["n_new"]
    ll_cases = []
    for case in g["cases"]:
        r = run([os.path.join(args.bin, "alpaca-llamacpp-greedy"), model, str(n_new), str(args.threads)],
                input=case["prompt"].encode("utf-8"))
        ll = json.loads(r.stdout)
        out_ll, out_hf = ll["output_ids"], case["output_ids"]
        div = next((i for i, (a, b) in enumerate(zip(out_ll, out_hf)) if a != b), None)
        say(f"=== {case['name']}")
        say(f"prompt ids equal: {ll['prompt_ids'] == case['prompt_ids']} ({len(ll['prompt_ids'])} tokens)")
        say(f"first-step top5 llama.cpp:    {ll['first_top5_ids']} {ll['first_top5_values']}")
        say(f"first-step top5 transformers: {case['first_logits_top5']['ids']} {case['first_logits_top5']['values']}")
        if div is None:
            say(f"greedy {n_new} tokens: IDENTICAL")
        else:
            say(f"greedy: first divergence at step {div} (llama.cpp {out_ll[div]} vs transformers {out_hf[div]}; "
                f"transformers top1-top2 margin there {case['step_margins'][div]})")
        ll_cases.append({"name": case["name"], "prompt": case["prompt"], "prompt_ids": ll["prompt_ids"],
                         "output_ids": out_ll, "output_text": hf.decode(out_ll, skip_special_tokens=False),
                         "first_logits_top5": {"ids": ll["first_top5_ids"], "values": ll["first_top5_values"]},
                         "first_divergence_vs_transformers": div})
        say(f"llama.cpp output_ids: {out_ll}")
        say(f"llama.cpp output_text: {hf.decode(out_ll, skip_special_tokens=False)!r}")
        say(f"transformers output_text: {case['output_text']!r}")
        try:
            r = run([os.path.join(args.bin, "llama-completion"), "-m", model, "-p", case["prompt"], "-n", str(n_new),
                     "--temp", "0", "--ignore-eos", "-no-cnv", "--no-display-prompt", "--special", "--no-warmup",
                     "-t", str(args.threads), "--simple-io", "--no-escape", "-s", "0", "-c", "512"],
                    stdin=subprocess.DEVNULL, timeout=300)
            say(f"llama-completion --temp 0 --ignore-eos text: {r.stdout.decode('utf-8', 'replace')!r}")
        except Exception as e:  # informational only
            say(f"llama-completion failed: {e}")
        say()

    if args.greedy_json:
        c.write_json(args.greedy_json, {
            "generated_by": c.command_line(),
            "model": os.path.basename(model),
            "engine": "llama.cpp (alpaca-llamacpp-greedy: argmax loop, no EOS stop, no logit bias)",
            "n_new": n_new, "add_bos": False, "stop_at_eos": False, "cases": ll_cases,
        })

    p = json.load(open(args.ppl, encoding="utf-8"))
    r = subprocess.run([os.path.join(args.bin, "llama-perplexity"), "-m", model, "-f", args.text,
                        "-c", str(p["n_ctx"]), "-b", str(p["n_ctx"]), "-t", str(args.threads)],
                       capture_output=True)
    log = (r.stdout + r.stderr).decode("utf-8", "replace")
    m = re.search(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)", log)
    chunks = re.search(r"calculating perplexity over (\d+) chunks", log)
    tok = re.search(r"tokenizes to only (\d+)|(\d+) tokens", log)
    say("=== perplexity (-c %d)" % p["n_ctx"])
    say(f"llama-perplexity: {m.group(0) if m else 'NOT FOUND (rc=%d)' % r.returncode}; "
        f"{chunks.group(0) if chunks else ''}")
    say(f"transformers: PPL = {p['ppl']} over {p['n_windows']} windows, {p['n_scored']} scored tokens, "
        f"{p['n_text_tokens']} text tokens")
    if m:
        ll_ppl = float(m.group(1))
        say(f"relative difference: {(ll_ppl - p['ppl']) / p['ppl'] * 100:+.3f}%")
    runs = re.findall(r"\[\d+\][0-9.]+", log)
    say(f"llama.cpp running PPL: {' '.join(runs)}")
    say(f"transformers running PPL: {' '.join('[%d]%.4f' % (i + 1, v) for i, v in enumerate(p['ppl_running_by_window']))}")

    with open(args.report, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    print(f"wrote {args.report}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
