#!/usr/bin/env bash
# The whole default test suite: formatting, lints, unit and integration tests.
# Tests that need the real default model fetch it first (scripts/fetch-model.sh).
# Slow tests are opt-in: ALPACA_SLOW_TESTS=1 scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-model.sh
cargo fmt --all --check
cargo clippy --all-targets -- -D warnings
# gguf-py for the export test that reads every file type we write (crates/alpaca-cli/tests/export.rs).
if command -v python3 >/dev/null; then
  python3 -c 'import gguf, numpy' 2>/dev/null || python3 -m pip install --quiet gguf
fi
cargo test --all-targets
