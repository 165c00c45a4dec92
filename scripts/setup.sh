#!/usr/bin/env bash
# One command from a fresh clone to a tuned model that chats: install what the build needs,
# fetch the default model (SmolLM2-135M-Instruct) and the Alpaca-format top-up data, build the
# release binary, and run the quickstart recipe (configs/quickstart.toml; 7 minutes on 2 cores from
# a fresh clone). Rerunning it resumes where it stopped; finished stages are skipped.
#
#   scripts/setup.sh [CONFIG.toml]
set -euo pipefail
cd "$(dirname "$0")/.."
config="${1:-configs/quickstart.toml}"

if ! command -v cargo >/dev/null; then
    echo "setup: cargo (Rust) is required: install it with rustup, then rerun" >&2
    exit 1
fi
if ! command -v cc >/dev/null && command -v apt-get >/dev/null; then
    apt-get update -qq && apt-get install -y -qq build-essential
fi
scripts/fetch-model.sh
scripts/fetch-data.sh
cargo build --release --bin alpaca
echo
echo "\$ alpaca recipe $config"
target/release/alpaca recipe "$config"
