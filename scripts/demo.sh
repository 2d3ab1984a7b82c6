#!/usr/bin/env bash
# The main job: a local cluster of five real mpc-node processes on loopback
# (scripts/cluster.sh), driven through mpc-cli and the HTTP API from DKG to
# a signed transaction, and a report anyone can verify.
#
#   scripts/demo.sh [OUT]            fresh safe primes per node (a minute or two on two cores)
#   scripts/demo.sh --fixture-primes [OUT]
#                                    the TEST-ONLY public primes of sim/fixtures (what CI runs)
#
# OUT defaults to demo-out. It holds the cluster directory (configs, keys,
# databases, logs: OUT/cluster), the PSBT and OUT/report.json. Binaries
# come from target/${MPC_PROFILE:-release}; this script builds them.
set -euo pipefail
cd "$(dirname "$0")/.."

primes=()
if [ "${1:-}" = "--fixture-primes" ]; then
    primes=(--fixture-primes)
    shift
fi
out="${1:-demo-out}"
export MPC_PROFILE="${MPC_PROFILE:-release}"

scripts/setup.sh
if [ "$MPC_PROFILE" = release ]; then
    cargo build --locked --release -p mpc-node -p mpc-tests --bins
else
    cargo build --locked -p mpc-node -p mpc-tests --bins
fi
bin="${CARGO_TARGET_DIR:-target}/$MPC_PROFILE" # cargo builds there when it is set

mkdir -p "$out"
out="$(cd "$out" && pwd)"
cluster="$out/cluster"
if [ -e "$cluster" ]; then
    echo "demo: $cluster exists from an earlier run; remove it first (rm -rf $cluster)" >&2
    exit 2
fi
started=$(date +%s)
cli() { "$bin/mpc-cli" --cluster "$cluster/mpc-cli.toml" "$@"; }

scripts/cluster.sh up "$cluster" "${primes[@]}"
trap 'scripts/cluster.sh down "$cluster" || true' EXIT

echo "== DKG: aux info (Paillier keys, ZK proofs), then 3-of-5 keygen"
cli dkg run --nodes 1,2,3,4,5
key="$(cli --json dkg status | python3 -c 'import json,sys; print(json.load(sys.stdin)["public_key_hex"])')"
dkg_done=$(date +%s)

echo "== presignature pool"
cli presig wait --ready 3
pool_done=$(date +%s)

echo "== a PSBT paying from the cluster address, submitted to node 2"
"$bin/mpc-demo" psbt --public-key "$key" --out "$out/demo.psbt"
tx="$(cli --node 2 --json tx submit "$out/demo.psbt" | python3 -c 'import json,sys; print(json.load(sys.stdin)["tx_id"])')"
echo "transaction $tx"
cli --node 2 tx wait "$tx"
signed=$(date +%s)

"$bin/mpc-demo" report --cluster "$cluster/mpc-cli.toml" --tx "$tx" --out "$out/report.json" \
    --timings "dkg=$((dkg_done - started)),pool=$((pool_done - dkg_done)),signing=$((signed - pool_done))"
"$bin/mpc-node" verify-report "$out/report.json"
python3 scripts/verify_report.py "$out/report.json"

scripts/cluster.sh down "$cluster"
trap - EXIT
echo "report: $out/report.json (check it: python3 scripts/verify_report.py $out/report.json)"
