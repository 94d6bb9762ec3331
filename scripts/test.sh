#!/usr/bin/env bash
# The whole test suite: setup, formatting, lints, then every test of the workspace (optimised test
# profile; 2 build jobs, as these machines have 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --all -- --check
cargo clippy -j2 --workspace --all-targets -- -D warnings
cargo test -j2 --workspace
