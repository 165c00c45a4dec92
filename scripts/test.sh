#!/usr/bin/env bash
# The whole default test suite: formatting, lints, unit and integration tests.
# Tests that need the real default model fetch it first (scripts/fetch-model.sh).
# Slow tests are opt-in: ALPACA_SLOW_TESTS=1 scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-model.sh
cargo fmt --all --check
cargo clippy --all-targets -- -D warnings
cargo test --all-targets
