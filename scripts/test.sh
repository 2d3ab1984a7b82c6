#!/usr/bin/env bash
# Every test of the workspace, after installing what the build needs; then
# the planted-bug tests, which need mpc-core's TEST-ONLY `planted-bugs`
# feature, and the reduced-level test, which needs its TEST-ONLY
# `reduced-security-test-only` feature (the node binary enables neither;
# the last line checks it refuses to start when built with the latter).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# Real servers for the storage tests: a throwaway PostgreSQL cluster and a
# single-member etcd on loopback, stopped when this script exits.
services=$(mktemp -d "${TMPDIR:-/tmp}/mpc-services.XXXXXX")
chmod 755 "$services" # the server runs as the `postgres` user when we are root
trap 'scripts/postgres.sh stop "$services/postgres"; scripts/etcd.sh stop "$services/etcd"' EXIT
eval "$(scripts/postgres.sh start "$services/postgres")"
eval "$(scripts/etcd.sh start "$services/etcd")"
cargo test --workspace --locked
cargo test --locked -p mpc-sim --features planted-bugs --test planted
cargo test --locked -p mpc-sim --features reduced-security --test reduced_level
# Bulk live seeds at the reduced level: live presigning and live keygen
# under faults, cheap enough for twenty-odd seeds.
MPC_SIM_LIVE_SEEDS=0..12 MPC_SIM_KEYGEN_SEEDS=0..6 \
  cargo test --locked -p mpc-sim --features reduced-security --test sweep live_
cargo test --locked -p mpc-node --features mpc-sim/reduced-security --test level
