#!/usr/bin/env bash
# One command from a fresh machine to a running model: install what the build needs, fetch
# the default model, build the release binary, and run the demo instruction on it.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
    echo "setup: cargo (Rust) is required: install it with rustup, then rerun" >&2
    exit 1
fi
if ! command -v cc >/dev/null && command -v apt-get >/dev/null; then
    apt-get update -qq && apt-get install -y -qq build-essential
fi
scripts/fetch-model.sh
cargo build --release --bin alpaca
echo
echo "\$ alpaca run -p \"Give three tips for staying healthy.\" --template alpaca --temp 0 -n 128"
target/release/alpaca run -p "Give three tips for staying healthy." --template alpaca --temp 0 -n 128 -v
