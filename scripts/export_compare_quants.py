#!/usr/bin/env python3
"""Compare our quantized export with llama-quantize's, tensor by tensor.

  python3 scripts/export_compare_quants.py SOURCE_F32.gguf OURS.gguf THEIRS.gguf

For every tensor: both files must hold the same type; prints the share of blocks whose
bytes are identical, and the RMSE of each file's dequantized weights against the f32
source (ours must not be meaningfully worse). Exits 1 on a type mismatch or when our
total RMSE exceeds theirs by more than 1%.
"""

from __future__ import annotations

import sys

import numpy as np
from gguf import GGUFReader
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize


def tensors(path: str) -> dict:
    return {t.name: t for t in GGUFReader(path).tensors}


def main() -> int:
    src, ours, theirs = (tensors(p) for p in sys.argv[1:4])
    per_type: dict[str, list[float]] = {}
    bad = 0
    for name, s in src.items():
        a, b = ours[name], theirs[name]
        if a.tensor_type != b.tensor_type:
            print(f"{name}: type {a.tensor_type.name} (ours) vs {b.tensor_type.name} (llama.cpp)")
            bad += 1
            continue
        ty = a.tensor_type.name
        _, type_size = GGML_QUANT_SIZES[a.tensor_type]
        ab = np.asarray(a.data).view(np.uint8).reshape(-1, type_size)
        bb = np.asarray(b.data).view(np.uint8).reshape(-1, type_size)
        same = int((ab == bb).all(axis=1).sum())
        x = dequantize(s.data, s.tensor_type).astype(np.float64).ravel()
        ea = float(((dequantize(a.data, a.tensor_type).ravel() - x) ** 2).sum())
        eb = float(((dequantize(b.data, b.tensor_type).ravel() - x) ** 2).sum())
        acc = per_type.setdefault(ty, [0, 0, 0.0, 0.0, 0])
        acc[0] += same
        acc[1] += ab.shape[0]
        acc[2] += ea
        acc[3] += eb
        acc[4] += x.size
    worse = False
    for ty, (same, n, ea, eb, n_el) in sorted(per_type.items()):
        ra, rb = (ea / n_el) ** 0.5, (eb / n_el) ** 0.5
        rel = (ra - rb) / rb if rb > 0 else 0.0
        worse |= rel > 0.01
        print(
            f"{ty:6} blocks identical {same}/{n} ({100 * same / n:.3f}%)  "
            f"RMSE ours {ra:.6e}  llama.cpp {rb:.6e}  ({100 * rel:+.3f}%)"
        )
    return 1 if bad or worse else 0


if __name__ == "__main__":
    sys.exit(main())
