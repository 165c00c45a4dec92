#!/usr/bin/env python3
"""Interop check: a Gemma 3 LoRA adapter written by `alpaca train` against peft.

    python3 scripts/gemma3_lora_check.py --run RUN_DIR [--model GEMMA.gguf]

transformers loads the Gemma 3 GGUF (de-quantized to float32; it subtracts 1 from every
norm weight, as llama.cpp's converter stored Gemma's 1 + w), and
`PeftModel.from_pretrained(model, RUN_DIR)` attaches the adapter (adapter_config.json +
adapter_model.safetensors, PEFT key names `base_model.model.model.layers.{i}....`). For 3
Alpaca prompts, on the ids our tokenizer produces:
  - base: transformers' logits == `alpaca run -m GGUF --dump-logits` (every position);
  - adapter: peft's logits == `alpaca run -m GGUF --lora RUN_DIR --dump-logits`;
  - the adapter moves the logits (far more than the tolerance).
Tolerance: max |ours - theirs| / max |theirs| below 1e-4 (measured: ~2e-6 base, ~5e-6 with
the adapter, on the 270M Q4_K_M file). Exit status 0 only when all pass.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _refcommon as c  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = Path.home() / ".cache/alpaca/models/gemma-3-270m-q4_k_m.gguf"
ALPACA = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{}\n\n### Response:\n"
)
PROMPTS = [
    "Name a famous Italian singer.",
    "List the seven colours of the rainbow.",
    "Explain the term 'network latency' in one sentence.",
]
TOL = 1e-4
failures: list[str] = []


def check(ok: bool, what: str) -> None:
    print(("  PASS  " if ok else "  FAIL  ") + what, flush=True)
    if not ok:
        failures.append(what)


def ours(args, prompt: str, out: Path, lora: Path | None):
    import numpy as np

    cmd = [str(args.alpaca), "run", "-m", str(args.model), "-p", prompt, "--template", "alpaca",
           "-n", "0", "--dump-logits", str(out), "-t", str(args.threads)]
    if lora:
        cmd += ["--lora", str(lora)]
    subprocess.run(cmd, check=True, capture_output=True)
    j = json.loads(out.read_text())
    return j["ids"], np.asarray(j["logits"], dtype=np.float32)


def theirs(model, ids):
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def rel(a, b) -> float:
    import numpy as np

    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, required=True, help="`alpaca train` run directory")
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--alpaca", type=Path, default=ROOT / "target" / "release" / "alpaca")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    from peft import PeftModel

    base = c.load_hf_model(str(args.model), args.threads)
    work = Path(tempfile.mkdtemp(prefix="gemma3-lora-check-"))
    base_logits = []
    for i, p in enumerate(PROMPTS):
        ids, ol = ours(args, p, work / f"base-{i}.json", None)
        tl = theirs(base, ids)
        base_logits.append(tl)
        e = rel(ol, tl)
        check(e < TOL, f"[base] prompt {i}: {len(ids)} positions, rel err {e:.2e}")
    model = PeftModel.from_pretrained(base, str(args.run)).eval()
    print(f"peft loaded {args.run}: {type(model).__name__}", flush=True)
    for i, p in enumerate(PROMPTS):
        ids, ol = ours(args, p, work / f"lora-{i}.json", args.run)
        tl = theirs(model, ids)
        e, moved = rel(ol, tl), rel(tl, base_logits[i])
        check(e < TOL, f"[lora] prompt {i}: rel err {e:.2e}")
        check(moved > 100 * TOL, f"[lora] prompt {i}: the adapter moves the logits ({moved:.2e})")
    if failures:
        print(f"{len(failures)} check(s) FAILED", flush=True)
        return 1
    print("all checks passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
