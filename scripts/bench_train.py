#!/usr/bin/env python3
"""PyTorch side of scripts/bench_train.sh: transformers (+ peft) training throughput on the
same GGUF, float32, eager, micro-batch 4 x 256, loss on every position.

usage: bench_train.py MODEL.gguf SETUP(lora-qv|lora-all|full) STEPS THREADS
Prints one JSON line: setup, tokens_per_s (median over steps after the first), peak_rss_gib."""
import json, os, resource, sys, time

model_path, setup, steps, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
import torch
torch.set_num_threads(threads)
from transformers import AutoModelForCausalLM

d, name = os.path.split(os.path.abspath(model_path))
model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32)
model.config.use_cache = False
if setup.startswith("lora"):
    from peft import LoraConfig, get_peft_model
    targets = ["q_proj", "v_proj"] if setup == "lora-qv" else \
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    r = 8 if setup == "lora-qv" else 16
    model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.05,
                                             target_modules=targets, task_type="CAUSAL_LM"))
model.train()
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
g = torch.Generator().manual_seed(0)
ids = torch.randint(3, model.config.vocab_size, (4, 256), generator=g)
times = []
for s in range(steps):
    t = time.perf_counter()
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    times.append(time.perf_counter() - t)
steady = sorted(times[1:]) or times
tps = ids.numel() / steady[len(steady) // 2]
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print(json.dumps({"impl": "pytorch", "setup": setup, "tokens_per_s": round(tps, 1),
                  "peak_rss_gib": round(peak, 2), "torch": torch.__version__}))
