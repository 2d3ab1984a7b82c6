#!/usr/bin/env bash
# A throwaway single-member etcd on loopback, for the coordination tests
# (tests/etcd.rs) and local runs.
#
#   eval "$(scripts/etcd.sh start [DIR])"   # prints: export MPC_TEST_ETCD=http://127.0.0.1:PORT
#                                            #         export MPC_TEST_ETCD_DIR=DIR
#   scripts/etcd.sh stop [DIR]               # DIR defaults to $MPC_TEST_ETCD_DIR
#
# Installs Debian's `etcd-server` (etcd 3.4) with apt if `etcd` is missing.
# Only the two `export` lines go to stdout, everything else to stderr, so the
# output can be eval'd. DIR (default ${TMPDIR:-/tmp}/mpc-etcd-$$) holds the
# data dir, the log and the pid file. Ports are picked free from 23790 up
# (client) and 23800 up (peer); the standard 2379/2380 are never used.
# Starting again with a DIR whose etcd is still running reuses it.
# MPC_ETCD_KEEP_DATA=1 keeps the data dir across stop/start (and reuses
# the same ports): a local cluster's fencing epochs must survive a restart
# of its etcd.
set -euo pipefail

log() { echo "etcd.sh: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root (or sudo) to run: $*"
    fi
}

install_etcd() {
    command -v etcd >/dev/null 2>&1 && return 0
    log "etcd not found: installing Debian's etcd-server with apt"
    local apt=(env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends etcd-server)
    if ! as_root "${apt[@]}" >&2; then
        log "apt-get install failed; updating the package lists and retrying"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update >&2
        as_root "${apt[@]}" >&2
    fi
    # The package's postinst enables and starts a system-wide etcd on the
    # standard ports when systemd runs (in a container it does nothing). We
    # never use that one: stop it so it does not hold resources.
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        as_root systemctl disable --now etcd >/dev/null 2>&1 || true
    elif [ -x /etc/init.d/etcd ]; then
        as_root /etc/init.d/etcd stop >/dev/null 2>&1 || true
    fi
    command -v etcd >/dev/null 2>&1 || die "etcd still missing after installing etcd-server"
}

# etcd 3.4 refuses to start on architectures it does not officially support
# unless ETCD_UNSUPPORTED_ARCH names the (Go) architecture.
set_arch_env() {
    case "$(uname -m)" in
    x86_64 | ppc64le) ;;
    aarch64 | arm64) export ETCD_UNSUPPORTED_ARCH=arm64 ;;
    armv7l | armv6l) export ETCD_UNSUPPORTED_ARCH=arm ;;
    i386 | i686) export ETCD_UNSUPPORTED_ARCH=386 ;;
    s390x) export ETCD_UNSUPPORTED_ARCH=s390x ;;
    riscv64) export ETCD_UNSUPPORTED_ARCH=riscv64 ;;
    *) export ETCD_UNSUPPORTED_ARCH="$(uname -m)" ;;
    esac
}

# True when something already listens on 127.0.0.1:$1.
port_busy() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

healthy() {
    local url="$1" body
    if command -v curl >/dev/null 2>&1; then
        body="$(curl -fsS --max-time 2 "$url/health" 2>/dev/null)" || return 1
    else
        local hostport="${url#http://}"
        body="$(
            exec 3<>"/dev/tcp/${hostport%:*}/${hostport##*:}" || exit 1
            printf 'GET /health HTTP/1.0\r\nHost: %s\r\n\r\n' "$hostport" >&3
            timeout 2 cat <&3
        )" 2>/dev/null || return 1
    fi
    [[ "$body" == *'"health":"true"'* ]]
}

running_pid() {
    local dir="$1" pid
    [ -f "$dir/etcd.pid" ] || return 1
    pid="$(cat "$dir/etcd.pid")"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

print_env() {
    echo "export MPC_TEST_ETCD=$1"
    echo "export MPC_TEST_ETCD_DIR=$2"
}

start() {
    local dir="${1:-${TMPDIR:-/tmp}/mpc-etcd-$$}"
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"

    if running_pid "$dir" >/dev/null && [ -f "$dir/endpoint" ]; then
        local url
        url="$(cat "$dir/endpoint")"
        if healthy "$url"; then
            log "reusing the etcd already running from $dir at $url"
            print_env "$url" "$dir"
            return 0
        fi
        log "the etcd from $dir does not answer: restarting it"
        stop "$dir"
    fi

    install_etcd
    set_arch_env

    local i client peer url pid keep="${MPC_ETCD_KEEP_DATA:-0}" previous=""
    if [ "$keep" = 1 ] && [ -f "$dir/ports" ] && [ -d "$dir/data" ]; then
        previous="$(cat "$dir/ports")"
    fi
    for i in $(seq -1 40); do
        if [ "$i" -lt 0 ]; then
            [ -n "$previous" ] || continue
            client="${previous% *}"
            peer="${previous#* }"
        elif [ -n "$previous" ]; then
            die "the kept etcd data in $dir/data needs its old ports ($previous), which are busy"
        else
            client=$((23790 + 20 * i))
            peer=$((23800 + 20 * i))
        fi
        if port_busy "$client" || port_busy "$peer"; then
            continue
        fi
        url="http://127.0.0.1:$client"
        [ "$keep" = 1 ] || rm -rf "$dir/data"
        echo "$client $peer" >"$dir/ports"
        log "starting etcd in $dir (client $url, peer 127.0.0.1:$peer)"
        # No inherited stdout: the caller's $(...) must not wait for etcd.
        nohup etcd \
            --name mpc-test \
            --data-dir "$dir/data" \
            --listen-client-urls "$url" \
            --advertise-client-urls "$url" \
            --listen-peer-urls "http://127.0.0.1:$peer" \
            --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
            --initial-cluster "mpc-test=http://127.0.0.1:$peer" \
            --initial-cluster-state new \
            --logger zap --log-outputs stderr \
            </dev/null >"$dir/etcd.log" 2>&1 &
        pid=$!
        echo "$pid" >"$dir/etcd.pid"
        echo "$url" >"$dir/endpoint"

        local waited=0
        while [ "$waited" -lt 300 ]; do
            if ! kill -0 "$pid" 2>/dev/null; then
                break
            fi
            if healthy "$url"; then
                log "etcd (pid $pid) is up at $url"
                print_env "$url" "$dir"
                return 0
            fi
            sleep 0.1
            waited=$((waited + 1))
        done
        if kill -0 "$pid" 2>/dev/null; then
            kill -9 "$pid" 2>/dev/null || true
            log "etcd did not become healthy within 30 s; last log lines:"
            tail -n 20 "$dir/etcd.log" >&2 || true
            rm -f "$dir/etcd.pid" "$dir/endpoint"
            die "etcd failed to start (log: $dir/etcd.log)"
        fi
        # It exited: most likely lost a race for the port. Try the next pair.
        log "etcd exited at start-up; last log lines:"
        tail -n 5 "$dir/etcd.log" >&2 || true
        rm -f "$dir/etcd.pid" "$dir/endpoint"
    done
    die "no free port pair found for etcd (log: $dir/etcd.log)"
}

stop() {
    local dir="${1:-${MPC_TEST_ETCD_DIR:-}}"
    [ -n "$dir" ] || die "usage: $0 stop DIR (or set MPC_TEST_ETCD_DIR)"
    local pid
    if pid="$(running_pid "$dir")"; then
        kill "$pid" 2>/dev/null || true
        local waited=0
        while kill -0 "$pid" 2>/dev/null && [ "$waited" -lt 100 ]; do
            sleep 0.1
            waited=$((waited + 1))
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "etcd (pid $pid) ignored SIGTERM; killing it"
            kill -9 "$pid" 2>/dev/null || true
        fi
        log "stopped etcd (pid $pid) from $dir"
    else
        log "no etcd running from $dir"
    fi
    rm -f "$dir/etcd.pid" "$dir/endpoint"
    [ "${MPC_ETCD_KEEP_DATA:-0}" = 1 ] || rm -rf "$dir/data"
}

case "${1:-}" in
start) start "${2:-}" ;;
stop) stop "${2:-}" ;;
*)
    echo "usage: $0 start [DIR] | stop [DIR]" >&2
    exit 2
    ;;
esac
