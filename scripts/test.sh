#!/usr/bin/env bash
# Every test of the workspace, after installing what the build needs; then
# the planted-bug tests, which need mpc-core's TEST-ONLY `planted-bugs`
# feature (never enabled by the node binary).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo test --workspace --locked
cargo test --locked -p mpc-sim --features planted-bugs --test planted
