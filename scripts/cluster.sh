#!/usr/bin/env bash
# A local cluster of five real `mpc-node` processes on loopback, each with
# its own SQLite database, against one etcd started here (DESIGN §7).
#
#   scripts/cluster.sh up DIR [--fixture-primes] [-- INIT_ARGS...]
#                                                  init DIR once (mpc-cli cluster init, with INIT_ARGS
#                                                  added, e.g. --bitcoin-rpc-url), start etcd and the nodes
#   scripts/cluster.sh status DIR                  each node's health, leader, key and pool (mpc-cli cluster status)
#   scripts/cluster.sh down DIR                    SIGTERM every node (graceful: exit 0), stop etcd
#
# The binaries come from target/${MPC_PROFILE:-release} (MPC_PROFILE=debug
# uses the test build); build them first:
#   cargo build --release -p mpc-node -p mpc-tests --bins
# --fixture-primes hands every node the TEST-ONLY public safe primes of
# sim/fixtures (regtest only), skipping a minute or two of prime search.
# Without it each node generates its own primes in the background at first
# start. Logs: DIR/node-N/node.log, DIR/etcd/etcd.log.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"

log() { echo "cluster.sh: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

profile_dir="${CARGO_TARGET_DIR:-$root/target}/${MPC_PROFILE:-release}"
node_bin="$profile_dir/mpc-node"
cli_bin="$profile_dir/mpc-cli"

cmd="${1:-}"
dir="${2:-}"
[ -n "$cmd" ] && [ -n "$dir" ] || {
    echo "usage: $0 up DIR [--fixture-primes] [-- INIT_ARGS...] | status DIR | down DIR" >&2
    exit 2
}
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
nodes=5

cli() { "$cli_bin" --cluster "$dir/mpc-cli.toml" "$@"; }

node_pid() {
    local f="$dir/node-$1/pid"
    [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null && cat "$f"
}

up() {
    [ -x "$node_bin" ] && [ -x "$cli_bin" ] || die "build first: cargo build --release -p mpc-node --bins (or set MPC_PROFILE)"
    local primes=() init_args=()
    if [ "${1:-}" = "--fixture-primes" ]; then
        primes=(--safe-primes "$root/sim/fixtures/test-only-safe-primes-5.json")
        shift
    fi
    if [ "${1:-}" = "--" ]; then
        shift
        init_args=("$@")
    fi
    local etcd_env
    etcd_env=$(MPC_ETCD_KEEP_DATA=1 scripts/etcd.sh start "$dir/etcd") || die "etcd did not start"
    eval "$etcd_env"
    if [ ! -f "$dir/mpc-cli.toml" ]; then
        "$cli_bin" cluster init --nodes "$nodes" --out "$dir" --etcd "$MPC_TEST_ETCD" \
            --cluster-id "local-$(basename "$dir")" --pool-low-water 2 --pool-target 4 --pool-max 6 \
            --allow-destination bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080 "${primes[@]}" "${init_args[@]}" >&2
    else
        # etcd may have moved to other ports: point the nodes at it.
        for i in $(seq 1 "$nodes"); do
            sed -i "s#^endpoints = .*#endpoints = [\"$MPC_TEST_ETCD\"]#" "$dir/node-$i/node.toml"
        done
    fi
    for i in $(seq 1 "$nodes"); do
        if node_pid "$i" >/dev/null; then
            log "node $i already running (pid $(node_pid "$i"))"
            continue
        fi
        RUST_LOG="${RUST_LOG:-info}" nohup "$node_bin" run --config "$dir/node-$i/node.toml" \
            </dev/null >>"$dir/node-$i/node.log" 2>&1 &
        echo $! >"$dir/node-$i/pid"
        log "node $i started (pid $!, log $dir/node-$i/node.log)"
    done
    local waited=0
    until cli cluster status >/dev/null 2>&1; do
        waited=$((waited + 1))
        if [ "$waited" -gt 120 ]; then
            for i in $(seq 1 "$nodes"); do tail -n 5 "$dir/node-$i/node.log" >&2 || true; done
            die "the nodes did not all answer within 60 s"
        fi
        for i in $(seq 1 "$nodes"); do
            node_pid "$i" >/dev/null || {
                tail -n 20 "$dir/node-$i/node.log" >&2
                die "node $i exited at start-up"
            }
        done
        sleep 0.5
    done
    log "all $nodes nodes answer"
}

down() {
    local failed=0 i pid
    for i in $(seq 1 "$nodes"); do
        pid="$(node_pid "$i")" || continue
        kill -TERM "$pid"
    done
    for i in $(seq 1 "$nodes"); do
        [ -f "$dir/node-$i/pid" ] || continue
        pid="$(cat "$dir/node-$i/pid")"
        local waited=0
        while kill -0 "$pid" 2>/dev/null; do
            waited=$((waited + 1))
            if [ "$waited" -gt 300 ]; then
                log "node $i ignored SIGTERM for 30 s: killing it"
                kill -9 "$pid" 2>/dev/null || true
                failed=1
                break
            fi
            sleep 0.1
        done
        rm -f "$dir/node-$i/pid"
        grep -q "stopped" "$dir/node-$i/node.log" || {
            log "node $i did not log a clean stop"
            failed=1
        }
    done
    MPC_ETCD_KEEP_DATA=1 scripts/etcd.sh stop "$dir/etcd"
    [ "$failed" -eq 0 ] || die "not every node stopped cleanly"
    log "cluster stopped"
}

case "$cmd" in
up)
    shift 2
    up "$@"
    ;;
status) cli cluster status ;;
down) down ;;
*)
    echo "usage: $0 up DIR [--fixture-primes] [-- INIT_ARGS...] | status DIR | down DIR" >&2
    exit 2
    ;;
esac
