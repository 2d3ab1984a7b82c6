#!/usr/bin/env bash
# The main job: a local five-node cluster on embedded defaults, from fresh
# safe primes to a signed transaction and a report anyone can verify.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo run --release -p mpc-node -- demo "$@"
