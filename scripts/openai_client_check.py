#!/usr/bin/env python3
"""The official `openai` Python client against `alpaca serve`: chat and completions, whole
and streamed, plus the errors a client must see. Starts the server itself (release binary,
default model) unless --base-url is given. Prints a report; exits 1 on any failed check.

    pip install openai
    cargo build --release && python3 scripts/openai_client_check.py
"""

import argparse
import sys

import openai
from openai import OpenAI

from _serve import DEFAULT_BIN, DEFAULT_MODEL, AlpacaServer

KEY = "check-key"
failures = []


def check(name, ok, detail=""):
    print(f"- [{'x' if ok else ' '}] {name}" + (f": {detail}" if detail else ""))
    if not ok:
        failures.append(name)


def run(base_url):
    client = OpenAI(base_url=base_url + "/v1", api_key=KEY, max_retries=0)
    print(f"openai {openai.__version__} against {base_url}\n")

    models = client.models.list()
    model = models.data[0].id
    check("models.list", len(models.data) == 1, model)

    chat = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        temperature=0,
        max_tokens=32,
    )
    msg = chat.choices[0].message
    check(
        "chat.completions.create",
        msg.role == "assistant" and len(msg.content) > 0 and chat.usage.total_tokens > 0,
        f"{msg.content!r} finish={chat.choices[0].finish_reason} usage={chat.usage.model_dump()}",
    )

    pieces, usage, finish = [], None, None
    stream = client.chat.completions.create(
        model=model,
        messages=[
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Name three colors."},
        ],
        temperature=0,
        max_tokens=40,
        stream=True,
        stream_options={"include_usage": True},
    )
    for ev in stream:
        if ev.usage:
            usage = ev.usage
        for c in ev.choices:
            if c.delta.content:
                pieces.append(c.delta.content)
            finish = c.finish_reason or finish
    check(
        "chat.completions.create(stream=True)",
        len(pieces) > 1 and usage is not None and usage.completion_tokens > 0,
        f"{len(pieces)} chunks {''.join(pieces)!r} finish={finish} usage={usage.model_dump() if usage else None}",
    )

    comp = client.completions.create(
        model=model, prompt="The three primary colors are", max_tokens=16, temperature=0
    )
    check(
        "completions.create",
        len(comp.choices[0].text) > 0 and comp.usage.completion_tokens <= 16,
        f"{comp.choices[0].text!r} finish={comp.choices[0].finish_reason} usage={comp.usage.model_dump()}",
    )

    pieces = []
    for ev in client.completions.create(
        model=model, prompt="Once upon a time", max_tokens=24, temperature=0.8, seed=1, stream=True
    ):
        pieces.extend(c.text for c in ev.choices if c.text)
    check("completions.create(stream=True)", len(pieces) > 1, f"{len(pieces)} chunks {''.join(pieces)!r}")

    a, b = (
        client.completions.create(model=model, prompt="My favourite food is", max_tokens=20,
                                  temperature=0.9, top_p=0.95, seed=42).choices[0].text
        for _ in range(2)
    )
    check("seed gives the same sample twice", a == b, repr(a))

    stopped = client.completions.create(
        model=model, prompt="1, 2, 3, 4,", max_tokens=30, temperature=0, stop=[" 7", "\n\n"]
    )
    t = stopped.choices[0].text
    check("stop sequences", " 7" not in t and stopped.choices[0].finish_reason == "stop", repr(t))

    try:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], n=2)
        check("n=2 -> BadRequestError", False, "no error")
    except openai.BadRequestError as e:
        check("n=2 -> BadRequestError", e.status_code == 400, str(e.body))

    try:
        client.completions.create(model=model, prompt="hi", max_tokens=-1)
        check("max_tokens=-1 -> BadRequestError", False, "no error")
    except openai.BadRequestError as e:
        check("max_tokens=-1 -> BadRequestError", e.status_code == 400, str(e.body))

    bad = OpenAI(base_url=base_url + "/v1", api_key="wrong", max_retries=0)
    try:
        bad.models.list()
        check("wrong key -> AuthenticationError", False, "no error")
    except openai.AuthenticationError as e:
        check("wrong key -> AuthenticationError", e.status_code == 401, str(e.body))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-url", help="a running server (started with --api-key check-key)")
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--bin", default=DEFAULT_BIN)
    args = ap.parse_args()
    if args.base_url:
        run(args.base_url)
    else:
        with AlpacaServer(args.model, args.bin, api_key=KEY) as srv:
            run(srv.base_url)
        check("server exits 0 on SIGTERM", srv.returncode == 0, f"exit code {srv.returncode}")
    print(f"\n{'all checks passed' if not failures else 'FAILED: ' + ', '.join(failures)}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
