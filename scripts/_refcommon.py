"""Shared helpers for the Python reference scripts (ref_*.py).

Loads the GGUF model / tokenizer through transformers (which de-quantizes the
weights to float32), and builds an independent `tokenizers` tokenizer from the
raw GGUF vocabulary that follows llama.cpp's pre-tokenizer for this model.
"""

from __future__ import annotations

import json
import os
import shlex
import sys

DEFAULT_MODEL = os.path.expanduser("~/.cache/alpaca/models/SmolLM2-135M-Instruct.Q4_1.gguf")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO_ROOT, "crates", "alpaca", "tests", "fixtures")


def fixture_path(name: str) -> str:
    return os.path.join(FIXTURES, name)


def command_line() -> str:
    """The command that produced a fixture, relative to the repo root, with the
    default model path written as in the argparse default (~ not expanded)."""
    script = os.path.relpath(os.path.abspath(sys.argv[0]), REPO_ROOT)
    args = [a.replace(os.path.expanduser("~"), "~", 1) if a.startswith(os.path.expanduser("~")) else a
            for a in sys.argv[1:]]
    return " ".join(["python3", script] + [shlex.quote(a) for a in args])


def split_model_path(path: str) -> tuple[str, str]:
    path = os.path.abspath(os.path.expanduser(path))
    return os.path.dirname(path), os.path.basename(path)


def load_hf_tokenizer(model_path: str):
    from transformers import AutoTokenizer

    d, f = split_model_path(model_path)
    return AutoTokenizer.from_pretrained(d, gguf_file=f)


def load_hf_model(model_path: str, threads: int | None = None):
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    if threads:
        torch.set_num_threads(threads)
    d, f = split_model_path(model_path)
    try:
        model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    except TypeError:  # transformers < 4.56 spells it torch_dtype
        model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32)
    model.eval()
    return model


def gguf_tokenizer_fields(model_path: str) -> dict:
    """tokens / merges / token types / special ids straight from the GGUF."""
    from gguf import GGUFReader

    r = GGUFReader(os.path.expanduser(model_path))

    def val(key):
        f = r.fields.get(key)
        return None if f is None else f.contents()

    return {
        "model": val("tokenizer.ggml.model"),
        "pre": val("tokenizer.ggml.pre"),
        "tokens": val("tokenizer.ggml.tokens"),
        "merges": val("tokenizer.ggml.merges"),
        "token_type": val("tokenizer.ggml.token_type"),
        "bos": val("tokenizer.ggml.bos_token_id"),
        "eos": val("tokenizer.ggml.eos_token_id"),
        "add_bos": val("tokenizer.ggml.add_bos_token"),
    }


def build_llamacpp_style_tokenizer(model_path: str):
    """A `tokenizers.Tokenizer` built from the GGUF vocabulary, with the
    pre-tokenizer llama.cpp uses for tokenizer.ggml.pre == "smollm"
    (regexes "\\p{N}" then the GPT-2 pattern), which is also what the original
    SmolLM2 tokenizer.json does (Digits(individual_digits) + ByteLevel).
    Control tokens (token_type 3) are added as special tokens so they are
    matched whole in the input text."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    g = gguf_tokenizer_fields(model_path)
    assert g["model"] == "gpt2", g["model"]
    vocab = {t: i for i, t in enumerate(g["tokens"])}
    merges = [tuple(m.split(" ", 1)) for m in g["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    gpt2_pat = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\p{N}"), behavior="isolated"),
        pre_tokenizers.Split(Regex(gpt2_pat), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    specials = [AddedToken(t, special=True, normalized=False)
                for t, ty in zip(g["tokens"], g["token_type"]) if ty == 3]
    tok.add_special_tokens(specials)
    return tok


def write_json(path: str, obj) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, ensure_ascii=False, indent=1)
        fh.write("\n")
    print(f"wrote {path}", file=sys.stderr)
