#!/usr/bin/env bash
# Every test of the workspace, after installing what the build needs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo test --workspace --locked
