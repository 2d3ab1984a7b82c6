#!/usr/bin/env bash
# Every test of the workspace, after installing what the build needs
# (and promtool, which the metrics tests require); then the planted-bug
# tests, which need mpc-core's TEST-ONLY `planted-bugs` feature, the
# reduced-level tests, which need its TEST-ONLY `reduced-security-test-only`
# feature, the README's main command on five real processes (with the
# TEST-ONLY fixture primes to keep it short) and its report verified, and
# last the node's refusal to start when built with the reduced level.
set -euo pipefail
cd "$(dirname "$0")/.."
export MPC_REQUIRE_PROMTOOL=1
# A whole run from a clean tree gains nothing from rustc's incremental
# caches, and they cost disk (16 GB of a 55 GB target dir, measured): off,
# unless the caller asks for them.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
scripts/setup.sh --promtool
# Real servers for the storage and multi-process tests: a throwaway
# PostgreSQL cluster, a single-member etcd and a regtest bitcoind
# (scripts/bitcoind.sh) on loopback, stopped when this
# script exits.
services=$(mktemp -d "${TMPDIR:-/tmp}/mpc-services.XXXXXX")
chmod 755 "$services" # the server runs as the `postgres` user when we are root
trap 'du -sh "$target_dir" >&2 || true; scripts/postgres.sh stop "$services/postgres"; scripts/etcd.sh stop "$services/etcd"; scripts/bitcoind.sh stop "$services/bitcoind"' EXIT
# An assignment carries the command's exit status (`eval "$(...)"` would
# not), so a server that fails to start stops the run here.
postgres_env=$(scripts/postgres.sh start "$services/postgres")
eval "$postgres_env"
etcd_env=$(scripts/etcd.sh start "$services/etcd")
eval "$etcd_env"
bitcoind_env=$(scripts/bitcoind.sh start "$services/bitcoind")
eval "$bitcoind_env"
[ -n "${MPC_TEST_POSTGRES:-}" ] && [ -n "${MPC_TEST_ETCD:-}" ] && [ -n "${MPC_TEST_BITCOIND_URL:-}" ] || { echo "test.sh: a test server did not report its address" >&2; exit 1; }
# Builds every binary too: the multi-process suites (mpc-tests) run the
# mpc-node and mpc-cli of this target directory.
cargo test --workspace --locked
cargo test --locked -p mpc-sim --features planted-bugs --test planted --test chain
cargo test --locked -p mpc-sim --features reduced-security --test reduced_level
# Bulk live seeds at the reduced level: live presigning and live keygen
# under faults, cheap enough for twenty-odd seeds.
MPC_SIM_LIVE_SEEDS=0..12 MPC_SIM_KEYGEN_SEEDS=0..6 \
  cargo test --locked -p mpc-sim --features reduced-security --test sweep live_
# The main command (README), on the test build, and its report checked by
# both verifiers (demo.sh runs them and fails if either does).
MPC_PROFILE=debug scripts/demo.sh --fixture-primes "$services/demo"
# Last: this rebuilds mpc-node with the TEST-ONLY level to see it refuse.
cargo test --locked -p mpc-node --features mpc-core/reduced-security-test-only --test level
