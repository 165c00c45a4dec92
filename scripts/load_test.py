#!/usr/bin/env python3
"""Load test of `alpaca serve` over loopback: concurrent streaming clients (asyncio + httpx).

Phases (each on the same server, started here from the release binary):
  1 stream and 8 streams alternating for --rounds rounds (throughput scaling: the ratio per
  round and its median), then 32 streams for 60 s (the load run), and an overload run
  against a second server with a tiny queue (only 429s may fail).
Reports aggregate tokens/s (streamed chunks arriving inside the phase window), TTFT and
per-token latency percentiles, errors by kind, and the server's resident memory over time.
Every loop is bounded in time; traffic goes only to 127.0.0.1.

    pip install httpx
    cargo build --release && python3 scripts/load_test.py [--load-seconds 60] [--json OUT]
"""

import argparse
import asyncio
import json
import random
import statistics
import sys
import time

import httpx

from _serve import DEFAULT_BIN, DEFAULT_MODEL, AlpacaServer

PROMPTS = [
    "Give three tips for staying healthy.",
    "Explain why the sky is blue.",
    "Write a short poem about the sea.",
    "What are the benefits of reading books?",
    "Describe a cat to someone who has never seen one.",
    "List five fruits and their colors.",
    "How do airplanes stay in the air?",
    "Write a haiku about autumn leaves.",
]


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


class Phase:
    def __init__(self, name, clients, seconds):
        self.name, self.clients, self.seconds = name, clients, seconds
        self.chunks_in_window = 0
        self.ttft, self.gaps = [], []
        self.completed = 0
        self.usage_tokens = 0
        self.errors = {}
        self.rejected = 0

    def error(self, kind):
        self.errors[kind] = self.errors.get(kind, 0) + 1


async def client_loop(http, base, ph, t_start, t_end, max_tokens, rng):
    while time.monotonic() < t_end:
        body = {
            "messages": [{"role": "user", "content": rng.choice(PROMPTS)}],
            "max_tokens": max_tokens,
            "temperature": 0.8,
            "seed": rng.randrange(1 << 30),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        t0 = time.monotonic()
        last = None
        try:
            async with http.stream("POST", base + "/v1/chat/completions", json=body) as r:
                if r.status_code == 429:
                    ph.rejected += 1
                    await r.aread()
                    await asyncio.sleep(0.2 + rng.random() * 0.3)
                    continue
                if r.status_code != 200:
                    ph.error(f"http {r.status_code}")
                    await r.aread()
                    continue
                done = False
                async for line in r.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    data = line[6:]
                    if data == "[DONE]":
                        done = True
                        break
                    j = json.loads(data)
                    if "error" in j:
                        ph.error("stream error: " + j["error"]["message"][:60])
                        break
                    if j.get("usage"):
                        ph.usage_tokens += j["usage"]["completion_tokens"]
                    for c in j.get("choices", []):
                        if c.get("delta", {}).get("content"):
                            now = time.monotonic()
                            if last is None:
                                ph.ttft.append(now - t0)
                            else:
                                ph.gaps.append(now - last)
                            last = now
                            if t_start <= now <= t_end:
                                ph.chunks_in_window += 1
                if done:
                    ph.completed += 1
                else:
                    ph.error("stream ended without [DONE]")
        except (httpx.HTTPError, json.JSONDecodeError) as e:
            ph.error(type(e).__name__)


async def run_phase(base, ph, max_tokens, seed):
    limits = httpx.Limits(max_connections=ph.clients + 4, max_keepalive_connections=ph.clients + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(120.0), limits=limits) as http:
        t_start = time.monotonic()
        t_end = t_start + ph.seconds
        await asyncio.gather(
            *(client_loop(http, base, ph, t_start, t_end, max_tokens, random.Random(seed + i))
              for i in range(ph.clients))
        )
    return ph


async def sample_rss(srv, out, stop):
    while not stop.is_set():
        out.append((time.monotonic(), srv.rss_kib()))
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except asyncio.TimeoutError:
            pass


def summary(ph):
    tps = ph.chunks_in_window / ph.seconds
    return {
        "phase": ph.name,
        "clients": ph.clients,
        "seconds": ph.seconds,
        "tokens_per_s": round(tps, 1),
        "completed_requests": ph.completed,
        "ttft_p50_ms": round(1e3 * pct(ph.ttft, 50), 1),
        "ttft_p99_ms": round(1e3 * pct(ph.ttft, 99), 1),
        "token_latency_p50_ms": round(1e3 * pct(ph.gaps, 50), 1),
        "token_latency_p99_ms": round(1e3 * pct(ph.gaps, 99), 1),
        "rejected_429": ph.rejected,
        "errors": ph.errors,
    }


def print_row(s):
    print(
        f"| {s['phase']} | {s['clients']} | {s['seconds']} | {s['tokens_per_s']} | "
        f"{s['completed_requests']} | {s['ttft_p50_ms']} / {s['ttft_p99_ms']} | "
        f"{s['token_latency_p50_ms']} / {s['token_latency_p99_ms']} | {s['rejected_429']} | "
        f"{sum(s['errors'].values())} {s['errors'] or ''} |",
        flush=True,
    )


async def main_async(args):
    results = {"phases": []}
    header = ("| phase | clients | s | tokens/s | requests | TTFT p50 / p99 ms | "
              "per-token p50 / p99 ms | 429 | errors |\n|---|---|---|---|---|---|---|---|---|")
    extra = ["-t", str(args.threads)] if args.threads else []
    with AlpacaServer(args.model, args.bin, extra=extra + ["-q"]) as srv:
        base = srv.base_url
        print(f"server {base} ({args.model})\n\n{header}", flush=True)
        # Warm up (page in the weights).
        await run_phase(base, Phase("warmup", 1, 3), args.max_tokens, 999)
        rss, stop = [], asyncio.Event()
        sampler = asyncio.create_task(sample_rss(srv, rss, stop))
        # The scaling phases alternate, round by round, so that both see the same machine
        # (shared and noisy): the ratio is reported per round and as their median.
        plan = []
        for r in range(args.rounds):
            tag = f" (round {r + 1})" if args.rounds > 1 else ""
            plan += [("single stream" + tag, 1, args.scale_seconds),
                     ("8 streams" + tag, 8, args.scale_seconds)]
        plan.append(("32 streams (load)", 32, args.load_seconds))
        for name, clients, secs in plan:
            ph = await run_phase(base, Phase(name, clients, secs), args.max_tokens, clients * 1000)
            s = summary(ph)
            results["phases"].append(s)
            print_row(s)
            if name.startswith("32"):
                # Memory over the load run only: first/last 10 s means, and the peak.
                t0 = time.monotonic() - secs
                during = [k for (t, k) in rss if t >= t0]
                if during:
                    n = max(1, len(during) // 6)
                    results["rss_mib"] = {
                        "first_10s": round(statistics.mean(during[:n]) / 1024, 1),
                        "last_10s": round(statistics.mean(during[-n:]) / 1024, 1),
                        "peak": round(max(during) / 1024, 1),
                        "samples": len(during),
                    }
        stop.set()
        await sampler
    results["server_exit_code"] = srv.returncode
    scaling = results["phases"][:-1]
    singles = [p["tokens_per_s"] for p in scaling if p["clients"] == 1]
    eights = [p["tokens_per_s"] for p in scaling if p["clients"] == 8]
    ratios = [round(e / s, 2) if s else None for s, e in zip(singles, eights)]
    results["scaling_rounds"] = ratios
    results["single_stream_median_tokens_per_s"] = statistics.median(singles)
    results["8_streams_median_tokens_per_s"] = statistics.median(eights)
    valid = [r for r in ratios if r is not None]
    results["scaling_8_over_1"] = statistics.median(valid) if valid else None

    if args.overload_seconds > 0:
        with AlpacaServer(args.model, args.bin, extra=extra + ["-q", "--parallel", "4", "--queue", "4"]) as srv:
            ph = await run_phase(srv.base_url, Phase("overload: 48 clients, 4 slots + queue 4", 48,
                                                     args.overload_seconds), 32, 77)
            s = summary(ph)
            results["overload"] = s
            print_row(s)
        results["overload_server_exit_code"] = srv.returncode

    print(f"\nmemory during the load run (RSS MiB): {results.get('rss_mib')}")
    print(f"aggregate throughput, 8 streams / 1 stream: median {results['scaling_8_over_1']}x "
          f"over {len(ratios)} round(s) {ratios}; median tokens/s "
          f"{results['single_stream_median_tokens_per_s']} -> "
          f"{results['8_streams_median_tokens_per_s']}")
    print(f"server exit codes after SIGTERM: {results['server_exit_code']}, "
          f"{results.get('overload_server_exit_code')}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    errors = sum(sum(p["errors"].values()) for p in results["phases"])
    errors += sum(results.get("overload", {}).get("errors", {}).values())
    return 1 if errors else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--bin", default=DEFAULT_BIN)
    ap.add_argument("--threads", type=int, default=0, help="server -t (default: all cores)")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--scale-seconds", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3,
                    help="alternating single-stream / 8-stream rounds (median ratio reported)")
    ap.add_argument("--load-seconds", type=int, default=60)
    ap.add_argument("--overload-seconds", type=int, default=10)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    sys.exit(asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()
