#!/usr/bin/env bash
# The main job: a local cluster of five real mpc-node processes on loopback
# (scripts/cluster.sh) and a regtest bitcoind (scripts/bitcoind.sh), driven
# through mpc-cli, bitcoin-cli and the HTTP API: DKG, the presignature pool,
# the cluster address funded by mining to it, a PSBT made by a watch-only
# wallet of that address, approved and signed by the five processes,
# broadcast by them and confirmed in a block; and a report anyone can verify.
#
#   scripts/demo.sh [OUT]            fresh safe primes per node (a minute or two on two cores)
#   scripts/demo.sh --fixture-primes [OUT]
#                                    the TEST-ONLY public primes of sim/fixtures (what CI runs)
#
# OUT defaults to demo-out. It holds the cluster directory (configs, keys,
# databases, logs: OUT/cluster), the bitcoind (OUT/bitcoind, with a
# ready-made OUT/bitcoind/bitcoin-cli), the PSBTs and OUT/report.json. Binaries
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
btc() { "$out/bitcoind/bitcoin-cli" "$@"; }
json() { python3 -c "import json,sys; v=json.load(sys.stdin); print($1)"; }
destination=bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080 # the policy's allowed destination

echo "== a regtest bitcoind"
bitcoind_env=$(scripts/bitcoind.sh start "$out/bitcoind")
eval "$bitcoind_env"
trap 'scripts/bitcoind.sh stop "$out/bitcoind" || true' EXIT
# The nodes log in with the node's user and a password file (never the
# password on a command line or in node.toml).
(umask 077 && printf '%s\n' "$MPC_TEST_BITCOIND_PASSWORD" >"$out/bitcoind.password")

scripts/cluster.sh up "$cluster" "${primes[@]}" -- --bitcoin-rpc-url "$MPC_TEST_BITCOIND_URL" \
    --bitcoin-rpc-user "$MPC_TEST_BITCOIND_USER" --bitcoin-rpc-password-file "$out/bitcoind.password" \
    --bitcoin-poll-secs 1
trap 'scripts/cluster.sh down "$cluster" || true; scripts/bitcoind.sh stop "$out/bitcoind" || true' EXIT

echo "== DKG: aux info (Paillier keys, ZK proofs), then 3-of-5 keygen"
cli dkg run --nodes 1,2,3,4,5
key="$(cli --json dkg status | json 'v["public_key_hex"]')"
address="$(cli --json dkg status | json 'v["address"]')"
dkg_done=$(date +%s)

echo "== presignature pool"
cli presig wait --ready 3
pool_done=$(date +%s)

echo "== a watch-only wallet of the cluster key, funded by mining two blocks to $address"
descriptor="$(btc getdescriptorinfo "wpkh($key)" | json 'v["descriptor"]')"
# disable_private_keys, blank: the wallet never holds a key, it only watches.
btc -named createwallet wallet_name=cluster disable_private_keys=true blank=true >/dev/null
btc -rpcwallet=cluster importdescriptors "[{\"desc\": \"$descriptor\", \"timestamp\": \"now\"}]" |
    json 'all(r["success"] for r in v) or sys.exit("importdescriptors failed: %s" % v)' >/dev/null
btc -named createwallet wallet_name=miner >/dev/null
miner="$(btc -rpcwallet=miner getnewaddress)"
btc generatetoaddress 2 "$address" >/dev/null
btc generatetoaddress 100 "$miner" >/dev/null # coinbase outputs mature after 100 blocks
btc -rpcwallet=cluster getbalances | json '"the cluster wallet holds %s BTC" % v["mine"]["trusted"]'

echo "== the wallet's PSBT: both coinbase outputs in, 1 BTC to $destination, change back"
inputs="$(btc -rpcwallet=cluster listunspent | json 'json.dumps([{"txid": u["txid"], "vout": u["vout"]} for u in v])')"
btc -rpcwallet=cluster -named walletcreatefundedpsbt inputs="$inputs" outputs="[{\"$destination\": 1}]" \
    options="{\"changeAddress\": \"$address\", \"add_inputs\": false}" | json 'v["psbt"]' >"$out/wallet.psbt"
btc decodepsbt "$(cat "$out/wallet.psbt")" | json '"%d inputs, %d outputs, fee %s BTC" % (len(v["inputs"]), len(v["outputs"]), v["fee"])'

echo "== submitted to node 2, approved and signed"
tx="$(cli --node 2 --json tx submit "$out/wallet.psbt" | json 'v["tx_id"]')"
echo "transaction $tx"
cli --node 2 tx wait "$tx"
signed=$(date +%s)
cli --node 2 tx status "$tx" --signed-psbt "$out/signed.psbt" >/dev/null
btc analyzepsbt "$(base64 -w0 "$out/signed.psbt")" | json '"bitcoind on the signed PSBT: next role %s" % v["next"]'

echo "== broadcast by the nodes, then a block"
cli --node 2 tx wait "$tx" --until broadcast
txid="$(cli --node 2 --json tx status "$tx" | json 'v["txid"]')"
btc getmempoolentry "$txid" | json '"in the mempool: %s vbytes" % v["vsize"]'
btc generatetoaddress 1 "$miner" >/dev/null
for i in 1 2 3 4 5; do cli --node "$i" tx wait "$tx" --until confirmed >/dev/null; done
confirmed=$(date +%s)
cli --node 2 --json tx status "$tx" | json '"confirmed in block %s (height %s, %s confirmation)" % (v["block_hash"], v["block_height"], v["confirmations"])'

"$bin/mpc-demo" report --chain --cluster "$cluster/mpc-cli.toml" --tx "$tx" --out "$out/report.json" \
    --timings "dkg=$((dkg_done - started)),pool=$((pool_done - dkg_done)),signing=$((signed - pool_done)),confirmation=$((confirmed - signed))"
"$bin/mpc-node" verify-report "$out/report.json"
python3 scripts/verify_report.py "$out/report.json"

scripts/cluster.sh down "$cluster"
scripts/bitcoind.sh stop "$out/bitcoind"
trap - EXIT
echo "report: $out/report.json (check it: python3 scripts/verify_report.py $out/report.json)"
