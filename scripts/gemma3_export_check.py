#!/usr/bin/env python3
"""Interop check: a full Gemma 3 export of `alpaca train --full` loads in transformers and
computes our logits.

    ALPACA_GEMMA3_EXPORT_OUT=/tmp/g3x cargo test --release -p alpaca --test train_grad \\
        gemma3_full_export_has_hf_layout
    python3 scripts/gemma3_export_check.py /tmp/g3x

The test exports a tiny random Gemma 3 (6 layers, the last global, sliding window 4, random
norms of all six kinds) with `alpaca::train::export::save_full` to DIR/hf (model.safetensors
+ config.json), and writes our inference logits on 12 tokens to DIR/logits.json.
Here `Gemma3ForCausalLM.from_pretrained(DIR/hf)` runs the same ids; the check passes when
max |ours - theirs| / max |theirs| < 1e-4 at every position (both f32). This checks the
tensor names, the norms' `1 + w` convention, the unpermuted q/k rows, and the config
(layer types, RoPE bases, query_pre_attn_scalar, tied head).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TOL = 1e-4


def main() -> int:
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    d = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/g3x")
    j = json.loads((d / "logits.json").read_text())
    ours = np.asarray(j["logits"], dtype=np.float32)
    model = AutoModelForCausalLM.from_pretrained(d / "hf", dtype=torch.float32).eval()
    print(f"loaded {d / 'hf'}: {type(model).__name__}")
    with torch.no_grad():
        theirs = model(torch.tensor([j["ids"]])).logits[0].numpy()
    err = float(np.abs(ours - theirs).max() / np.abs(theirs).max())
    ok = err < TOL and ours.shape == theirs.shape
    print(f"{'PASS' if ok else 'FAIL'}: {ours.shape[0]} positions, rel err {err:.2e}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
