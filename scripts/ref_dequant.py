#!/usr/bin/env python3
"""Reference dequantization of every supported ggml block type, by the `gguf` package
(PyPI; it implements ggml's formulas in numpy). Writes random blocks and their values to
crates/alpaca/tests/fixtures/dequant_reference.json; `quant.rs` tests compare against it.

    python3 scripts/ref_dequant.py
"""
import json
import pathlib
import sys

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize

OUT = pathlib.Path(__file__).resolve().parent.parent / "crates/alpaca/tests/fixtures/dequant_reference.json"
rng = np.random.default_rng(1234)
cases = []
for ty, block_bytes, f16_offsets in [
    (T.Q4_0, 18, [0]), (T.Q4_1, 20, [0, 2]), (T.Q5_0, 22, [0]), (T.Q5_1, 24, [0, 2]),
    (T.Q8_0, 34, [0]), (T.Q4_K, 144, [0, 2]), (T.Q5_K, 176, [0, 2]), (T.Q6_K, 210, [208]),
]:
    n_blocks = 3
    raw = bytearray(rng.integers(0, 256, size=block_bytes * n_blocks, dtype=np.uint8).tobytes())
    # Keep the f16 scales finite and modest so values are comparable.
    for b in range(n_blocks):
        for off in f16_offsets:
            v = np.float16(rng.uniform(-0.05, 0.05))
            raw[b * block_bytes + off: b * block_bytes + off + 2] = v.tobytes()
    vals = dequantize(np.frombuffer(bytes(raw), dtype=np.uint8), ty).astype(np.float32).ravel()
    cases.append({"type": ty.name, "bytes_hex": bytes(raw).hex(), "values": [float(x) for x in vals]})
OUT.write_text(json.dumps({"generated_by": "python3 scripts/ref_dequant.py", "cases": cases}))
print(f"wrote {OUT} ({len(cases)} types)", file=sys.stderr)
