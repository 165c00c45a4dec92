#!/usr/bin/env python3
"""Interop check: our Hugging Face / PEFT / GGUF exports against transformers and peft.

    python3 scripts/hf_check.py                       # everything (trains a 20-step adapter)
    python3 scripts/hf_check.py --skip peft           # only the model checks
    python3 scripts/hf_check.py --adapter RUN_DIR     # reuse an `alpaca train` run

Steps (all outputs under --work, default /tmp/alpaca-hf-check):
  1. `alpaca export --format hf` of the default model -> hf/; transformers loads it
     (AutoModelForCausalLM, AutoTokenizer). For 4 prompts: HF tokenizer ids == ours, and
     transformers' logits == ours (`alpaca run -m hf/ --dump-logits`) within 1e-3 relative
     (max |ours - theirs| / max |theirs| over every prompt position). Also: 9 tokenizer
     stress texts give the same ids as our GGUF tokenizer, and greedy 32-token generation
     is the same on the HF dir, on the source GGUF, and in transformers (argmax loop).
     The reverse too: transformers' own save_pretrained() directories (sharded F32, BF16)
     load in ours with matching logits.
  2. `alpaca export --quant Q` (f16, q8_0, q4_k) -> model.Q.gguf; transformers loads each
     with `from_pretrained(dir, gguf_file=...)` (dequantizing to f32); tokenizer ids and
     logits vs ours on the same file.
  3. `alpaca train --lora` (20 steps on alpaca_en_demo.json, targets q,v) -> run/;
     `alpaca export --format peft` -> peft/; `PeftModel.from_pretrained(hf model, peft/)`;
     logits vs `alpaca run -m hf/ --lora peft/`, and the adapter must move the logits.
Exit status 0 only when every check passes. Needs torch, transformers, peft, gguf.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BIN = ROOT / "target" / "release" / "alpaca"
DEFAULT_MODEL = Path.home() / ".cache/alpaca/models/SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "alpaca_en_demo.json"

PROMPTS = [
    "The capital of France is",
    "Give three tips for staying healthy.",
    "<|im_start|>user\nWhat is 12 * 34? Answer with digits only.<|im_end|>\n<|im_start|>assistant\n",
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\nTranslate 'good morning' into Spanish.\n\n"
    "### Response:\n",
]
TOL = 1e-3
# Tokenizer stress texts: digits, unicode, whitespace runs, contractions, special tokens.
TOKENIZER_TEXTS = PROMPTS + [
    "In 2023, 1,234,567 people paid $3.50 each.",
    "naïve café — 東京 🦙 emoji\ttab  two  spaces\n\n\nnewlines",
    "don't you'll WE'RE it's   ",
    "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nx<|im_end|>",
    "    indented code:\n\tif x == 1:\n\t\treturn [a, b]  # ok",
]

failures: list[str] = []


def log(msg: str) -> None:
    print(msg, flush=True)


def check(ok: bool, what: str) -> None:
    log(("  PASS  " if ok else "  FAIL  ") + what)
    if not ok:
        failures.append(what)


def sh(cmd: list, **kw) -> subprocess.CompletedProcess:
    log("$ " + " ".join(str(c) for c in cmd))
    t = time.time()
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if r.returncode != 0:
        sys.stderr.write(r.stdout[-4000:] + r.stderr[-4000:])
        raise SystemExit(f"command failed ({r.returncode}): {cmd}")
    log(f"  ({time.time() - t:.1f}s)")
    return r


def our_logits(args, model: Path, prompt: str, work: Path, tag: str, lora: Path | None = None):
    import numpy as np

    out = work / f"logits-{tag}.json"
    cmd = [args.alpaca, "run", "-m", model, "-p", prompt, "--template", "raw", "-n", "0",
           "--dump-logits", out, "-t", str(args.threads), "--f32-activations"]
    if lora:
        cmd += ["--lora", lora]
    sh(cmd)
    j = json.loads(out.read_text())
    return j["ids"], np.asarray(j["logits"], dtype=np.float32)


def rel_err(ours, theirs) -> float:
    import numpy as np

    return float(np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1e-30))


def hf_logits(model, ids):
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def greedy(model, ids, n: int) -> list:
    """n argmax steps in transformers, EOS included (as `alpaca run --ignore-eos`)."""
    import torch

    seq = list(ids)
    with torch.no_grad():
        for _ in range(n):
            seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
    return seq[len(ids):]


def compare_model(args, hf_model, ours_path: Path, work: Path, tag: str, tokenizer=None,
                  lora: Path | None = None) -> list:
    import numpy as np

    results = []
    for i, p in enumerate(PROMPTS):
        ids, ours = our_logits(args, ours_path, p, work, f"{tag}{i}", lora)
        if tokenizer is not None:
            theirs_ids = tokenizer(p, add_special_tokens=True)["input_ids"]
            check(theirs_ids == ids, f"[{tag}] prompt {i}: HF tokenizer ids == ours ({len(ids)} ids)")
        theirs = hf_logits(hf_model, ids)
        err = rel_err(ours, theirs)
        same_top = bool((ours.argmax(-1) == theirs.argmax(-1)).all())
        check(err <= TOL and ours.shape == theirs.shape,
              f"[{tag}] prompt {i}: logits {ours.shape} rel err {err:.2e} <= {TOL:g}"
              f" (argmax equal at every position: {same_top})")
        results.append((ids, ours, theirs))
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--alpaca", type=Path, default=DEFAULT_BIN)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--work", type=Path, default=Path("/tmp/alpaca-hf-check"))
    ap.add_argument("--adapter", type=Path, help="existing `alpaca train --lora` run directory")
    ap.add_argument("--max-steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gguf-quants", default="f16,q8_0,q4_k",
                    help="GGUF export types to load in transformers")
    ap.add_argument("--skip", action="append", default=[], choices=["hf", "gguf", "peft"])
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    hf_dir = work / "hf"
    log(f"alpaca: {args.alpaca}\nmodel:  {args.model}\nwork:   {work}")

    need_hf = "hf" not in args.skip or "peft" not in args.skip
    if need_hf:
        sh([args.alpaca, "export", "-m", args.model, "--format", "hf", "-o", hf_dir, "--force"])
        tok = AutoTokenizer.from_pretrained(hf_dir)
        model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
        log(f"transformers loaded {hf_dir}: {type(model).__name__}, {type(tok).__name__}")

    if "hf" not in args.skip:
        log("\n== 1. --format hf export in transformers ==")
        log(f"  tokenizer: {type(tok).__name__}, {len(tok)} tokens")
        for i, text in enumerate(TOKENIZER_TEXTS):
            r = sh([args.alpaca, "tokenize", "-m", args.model, "--json", "--text", text])
            ours = json.loads(r.stdout)
            theirs = tok(text, add_special_tokens=True)["input_ids"]
            check(ours == theirs, f"[tokenizer] text {i}: HF ids == ours on the GGUF ({len(ours)} ids)")
            check(tok.decode(theirs) == text, f"[tokenizer] text {i}: HF decode round-trips")
        compare_model(args, model, hf_dir, work, "hf", tokenizer=tok)
        # Greedy generation: ours on the HF dir == ours on the source GGUF == transformers.
        for i, p in enumerate(PROMPTS[1:3]):
            gen = []
            for m in (args.model, hf_dir):
                r = sh([args.alpaca, "run", "-m", m, "-p", p, "--template", "raw", "--temp", "0",
                        "-n", "32", "--ignore-eos", "--ids", "-t", str(args.threads),
                        "--f32-activations"])
                gen.append(json.loads(r.stdout))
            ids = json.loads((work / f"logits-hf{i + 1}.json").read_text())["ids"]
            hf_gen = greedy(model, ids, 32)
            check(gen[0] == gen[1], f"[greedy] prompt {i + 1}: 32 tokens on HF dir == on source GGUF")
            check(gen[1] == hf_gen, f"[greedy] prompt {i + 1}: 32 tokens ours == transformers argmax")
        # Ours on the source GGUF (quantized kernels) against the same transformers model.
        for i, p in enumerate(PROMPTS[:1]):
            ids, ours = our_logits(args, args.model, p, work, f"src{i}")
            err = rel_err(ours, hf_logits(model, ids))
            log(f"  info  source GGUF (quantized kernels) vs transformers: rel err {err:.2e}")
        # The reverse: directories written by transformers itself (sharded F32; BF16) load
        # in ours and give transformers' logits.
        for dtype, shard in ((torch.float32, "100MB"), (torch.bfloat16, "2GB")):
            name = str(dtype).split(".")[-1]
            saved = work / f"hf-saved-{name}"
            # A fresh copy: converting `model` in place would round its weights.
            AutoModelForCausalLM.from_pretrained(hf_dir, dtype=dtype).save_pretrained(
                saved, max_shard_size=shard)
            tok.save_pretrained(saved)
            files = sorted(f.name for f in saved.iterdir())
            log(f"  transformers wrote {saved}: {', '.join(files)}")
            smodel = AutoModelForCausalLM.from_pretrained(saved, dtype=torch.float32).eval()
            compare_model(args, smodel, saved, work, f"saved-{name}",
                          tokenizer=AutoTokenizer.from_pretrained(saved))
            del smodel
        # The chat template survives: transformers renders what our template renders.
        msgs = [{"role": "user", "content": "Hi"}]
        rendered = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        check("<|im_start|>user\nHi<|im_end|>" in rendered, "chat template renders in transformers")

    if "gguf" not in args.skip:
        log("\n== 2. GGUF exports in transformers (gguf_file=) ==")
        for quant in args.gguf_quants.split(","):
            gguf = work / f"model.{quant}.gguf"
            sh([args.alpaca, "export", "-m", args.model, "--quant", quant, "-o", gguf, "--force"])
            gmodel = AutoModelForCausalLM.from_pretrained(work, gguf_file=gguf.name,
                                                          dtype=torch.float32).eval()
            gtok = AutoTokenizer.from_pretrained(work, gguf_file=gguf.name)
            log(f"transformers loaded {gguf}: {type(gmodel).__name__}")
            compare_model(args, gmodel, gguf, work, f"gguf-{quant}", tokenizer=gtok)
            del gmodel

    if "peft" not in args.skip:
        log("\n== 3. --format peft adapter in peft ==")
        from peft import PeftModel

        run = args.adapter
        if run is None:
            run = work / "run"
            sh([args.alpaca, "train", "-m", args.model, "--data", args.data, "-o", run, "--lora",
                "--lora-targets", "q,k,v,o", "--max-steps", args.max_steps, "--batch-size", "8",
                "--micro-batch-size", "4", "--cutoff-len", "128", "--val-size", "0",
                "--lr", "2e-3", "--seed", "1", "-t", str(args.threads)])
        peft_dir = work / "peft"
        sh([args.alpaca, "export", "-m", args.model, "--lora", run, "--format", "peft",
            "-o", peft_dir, "--force"])
        base_logits = {}
        for i, p in enumerate(PROMPTS):
            ids, _ = our_logits(args, hf_dir, p, work, f"base{i}")
            base_logits[i] = hf_logits(model, ids)
        pmodel = PeftModel.from_pretrained(model, peft_dir).eval()
        log(f"peft loaded {peft_dir}: {type(pmodel).__name__}")
        res = compare_model(args, pmodel, hf_dir, work, "peft", lora=peft_dir)
        moved = max(rel_err(theirs, base_logits[i]) for i, (_, _, theirs) in enumerate(res))
        check(moved > 10 * TOL, f"[peft] the adapter changes the logits (rel change {moved:.2e})")

    log("")
    if failures:
        log(f"{len(failures)} check(s) FAILED:\n  " + "\n  ".join(failures))
        raise SystemExit(1)
    log("all checks passed")


if __name__ == "__main__":
    main()
