#!/usr/bin/env bash
# A throwaway regtest Bitcoin node on loopback, for the chain tests and demos.
#
#   eval "$(scripts/bitcoind.sh install [PREFIX])"  # prints: export BITCOIND_EXE=PREFIX/bin/bitcoind
#   eval "$(scripts/bitcoind.sh start [DIR])"       # prints: export MPC_TEST_BITCOIND_URL=http://127.0.0.1:PORT
#                                                    #         export MPC_TEST_BITCOIND_USER=...
#                                                    #         export MPC_TEST_BITCOIND_PASSWORD=...
#                                                    #         export MPC_TEST_BITCOIND_DIR=DIR
#                                                    #         export BITCOIND_EXE=...
#   scripts/bitcoind.sh cli [DIR] -- ARGS...         # bitcoin-cli against the node of DIR
#   scripts/bitcoind.sh stop [DIR]                   # DIR defaults to $MPC_TEST_BITCOIND_DIR
#
# Only `export` lines go to stdout (and, for `cli`, bitcoin-cli's answer),
# everything else to stderr, so the output can be eval'd.
#
# install: Debian 12 ships no bitcoind, and sid's `bitcoin-knots` (Bitcoin
# Knots 29.x, Bitcoin Core's consensus code and JSON-RPC) needs a newer glibc
# and libstdc++ than the host has. So the package and the `lib*` packages it
# depends on (recursively, no recommends) are unpacked with `dpkg-deb -x` into
# PREFIX/root, and PREFIX/bin/{bitcoind,bitcoin-cli,...} are wrappers that run
# the binaries through that root's own loader and libraries. Nothing is
# installed system-wide and the host's apt state is not touched.
#   PREFIX defaults to $MPC_BITCOIND_PREFIX, else
#   ${XDG_CACHE_HOME:-$HOME/.cache}/mpc-custody/bitcoind.
#   The .deb files come from the cache folder $MPC_BITCOIND_CACHE (default:
#   ../shared/bitcoind next to the repository), checked against its
#   SHA256SUMS, when that folder exists (MPC_BITCOIND_CACHE=none skips it);
#   otherwise from the sid suite of the mirror named in the machine's apt
#   sources (or $MPC_BITCOIND_MIRROR), with a private apt state and the
#   Debian archive keyring.
#   With BITCOIND_EXE set, that bitcoind is used and nothing is installed
#   (bitcoin-cli: $BITCOIN_CLI_EXE, else next to it, else on PATH).
#   A second install finds the working wrappers and does nothing.
#
# start: runs `bitcoind -regtest -daemonwait -txindex -listen=0 -rest -server
# -fallbackfee=0.0001`, RPC (and REST) on 127.0.0.1 only, data in DIR/data.
# DIR defaults to ${TMPDIR:-/tmp}/mpc-bitcoind-$$. The RPC port is picked
# free from 24443 up; the standard 18443/18444 are never used, and P2P does
# not listen at all. Authentication is by user and password, fresh random
# ones at every start, kept in DIR/data/bitcoin.conf and DIR/env (both mode
# 600, never on a command line). The chain starts empty unless
# MPC_BITCOIND_KEEP_DATA=1. Waits up to $MPC_BITCOIND_START_TIMEOUT (60) s
# for the RPC to answer. Starting again with a DIR whose bitcoind is still
# running reuses it and prints the same exports. DIR/bitcoin-cli is a
# ready-made bitcoin-cli for the node.
#
# stop: `bitcoin-cli stop`, waits for the process to exit, else SIGTERM,
# then SIGKILL. Keeps DIR/debug.log, removes DIR/data unless
# MPC_BITCOIND_KEEP_DATA=1. Exits 0 when nothing runs.
set -euo pipefail

log() { echo "bitcoind.sh: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PORT_BASE=24443
PORT_TRIES=40
START_TIMEOUT="${MPC_BITCOIND_START_TIMEOUT:-60}"
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

# Set by resolve_exes: the bitcoind and bitcoin-cli to run.
BITCOIND=""
BITCOIN_CLI=""

cleanup_paths=()
cleanup() {
    local p
    for p in "${cleanup_paths[@]}"; do
        rm -rf -- "$p"
    done
}
trap cleanup EXIT

default_prefix() {
    echo "${MPC_BITCOIND_PREFIX:-${XDG_CACHE_HOME:-$HOME/.cache}/mpc-custody/bitcoind}"
}

# The multiarch triplet and loader of the native architecture.
arch_layout() {
    case "$1" in
    amd64) echo "x86_64-linux-gnu ld-linux-x86-64.so.2" ;;
    arm64) echo "aarch64-linux-gnu ld-linux-aarch64.so.1" ;;
    *) die "no private bitcoind install for architecture '$1'; set BITCOIND_EXE to your own bitcoind" ;;
    esac
}

# True when the wrappers in PREFIX/bin run.
wrappers_work() {
    local prefix="$1"
    [ -x "$prefix/bin/bitcoind" ] && [ -x "$prefix/bin/bitcoin-cli" ] &&
        "$prefix/bin/bitcoind" -version >/dev/null 2>&1 &&
        "$prefix/bin/bitcoin-cli" -version >/dev/null 2>&1
}

# The Debian mirror of the machine's apt sources: the first http(s) URI of
# a `deb` entry that is not the security archive (or $MPC_BITCOIND_MIRROR).
debian_mirror() {
    if [ -n "${MPC_BITCOIND_MIRROR:-}" ]; then
        echo "${MPC_BITCOIND_MIRROR%/}"
        return 0
    fi
    local f uri
    uri="$(
        {
            for f in /etc/apt/sources.list.d/*.sources; do
                [ -f "$f" ] || continue
                # deb822: one paragraph per entry; keys are case-insensitive.
                awk 'BEGIN { RS = ""; FS = "\n" }
                {
                    types = ""; uris = ""; enabled = "yes"
                    for (i = 1; i <= NF; i++) {
                        line = $i
                        if (line ~ /^[ \t]*#/) continue
                        key = tolower(line); sub(/:.*/, "", key)
                        val = line; sub(/^[^:]*:[ \t]*/, "", val)
                        if (key == "types") types = val
                        else if (key == "uris") uris = val
                        else if (key == "enabled") enabled = tolower(val)
                    }
                    if (enabled == "no" || (" " types " ") !~ /[ \t]deb[ \t]/) next
                    n = split(uris, u, /[ \t]+/)
                    for (j = 1; j <= n; j++) if (u[j] != "") print u[j]
                }' "$f"
            done
            for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
                [ -f "$f" ] || continue
                sed -e 's/#.*//' -e 's/\[[^]]*\]//' "$f" | awk '$1 == "deb" { print $2 }'
            done
        } | grep -E '^https?://' | grep -v -E 'security|debian-debug|debian-ports' | head -n 1
    )" || true
    [ -n "$uri" ] || die "no Debian mirror (http/https 'deb' entry) found in /etc/apt/sources.list{,.d}; set MPC_BITCOIND_MIRROR"
    echo "${uri%/}"
}

# Downloads bitcoin-knots and its lib* dependencies from sid into $1.
download_debs() {
    local into="$1" arch="$2" mirror work
    mirror="$(debian_mirror)"
    [ -r "$KEYRING" ] || die "$KEYRING is missing (install debian-archive-keyring)"
    work="$(mktemp -d "${TMPDIR:-/tmp}/mpc-bitcoind-apt.XXXXXX")"
    cleanup_paths+=("$work")
    mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/state"
    echo "deb [signed-by=$KEYRING] $mirror sid main" >"$work/sources.list"

    # A private configuration: none of the host's apt.conf.d (its hooks would
    # run, its extra index targets would be fetched for all of sid), only its
    # Acquire settings (proxies, certificates, ...).
    {
        echo 'Dir::Etc::Main "/dev/null";'
        echo 'Dir::Etc::Parts "/dev/null";'
        apt-config dump 2>/dev/null | grep -E '^Acquire::' | grep -v -E '^Acquire::(IndexTargets|Languages)' || true
        echo 'Acquire::Languages "none";'
        echo "APT::Architecture \"$arch\";"
        echo "APT::Architectures { \"$arch\"; };"
        # The files live in our private, root-only temporary folder.
        if [ "$(id -u)" -eq 0 ]; then echo 'APT::Sandbox::User "root";'; fi
    } >"$work/apt.conf"
    local apt_opts=(
        -o "Dir::Etc::SourceList=$work/sources.list"
        -o Dir::Etc::SourceParts=/dev/null
        -o Dir::Etc::Preferences=/dev/null
        -o Dir::Etc::PreferencesParts=/dev/null
        -o "Dir::State=$work/state"
        -o "Dir::State::Lists=$work/lists"
        -o Dir::State::status=/dev/null
        -o "Dir::Cache=$work/cache"
    )

    log "downloading the sid package lists from $mirror"
    APT_CONFIG="$work/apt.conf" apt-get -q "${apt_opts[@]}" --error-on=any update >&2 ||
        die "could not download the sid package lists from $mirror (no network? set MPC_BITCOIND_MIRROR or BITCOIND_EXE)"

    local pkgs
    pkgs="$(
        APT_CONFIG="$work/apt.conf" apt-cache "${apt_opts[@]}" depends --recurse \
            --no-recommends --no-suggests --no-conflicts --no-breaks --no-replaces --no-enhances \
            bitcoin-knots 2>/dev/null |
            grep -E '^[a-z0-9]' | sed 's/:.*//' | grep -E '^(bitcoin-knots|lib.*)$' | sort -u
    )" || true
    grep -qx bitcoin-knots <<<"$pkgs" || die "sid on $mirror has no bitcoin-knots package"
    log "downloading $(wc -l <<<"$pkgs") packages: $(tr '\n' ' ' <<<"$pkgs")"
    # apt checks every file against the signed package lists.
    # shellcheck disable=SC2086 # one package name per word
    (cd "$into" && APT_CONFIG="$work/apt.conf" apt-get -q "${apt_opts[@]}" download $pkgs >&2) ||
        die "could not download the packages from $mirror"
}

# Installs into PREFIX unless its wrappers already work.
install_private() {
    local prefix="$1"
    mkdir -p "$prefix"
    prefix="$(cd "$prefix" && pwd)"
    if wrappers_work "$prefix"; then
        BITCOIND="$prefix/bin/bitcoind"
        BITCOIN_CLI="$prefix/bin/bitcoin-cli"
        return 0
    fi
    local arch layout triplet loader
    arch="$(dpkg --print-architecture 2>/dev/null || echo unknown)"
    layout="$(arch_layout "$arch")" || exit 1
    read -r triplet loader <<<"$layout"
    command -v dpkg-deb >/dev/null 2>&1 || die "dpkg-deb is needed to unpack the packages"

    # One install at a time per prefix (parallel test runs).
    exec 9>"$prefix/.install.lock"
    if command -v flock >/dev/null 2>&1; then
        flock 9
    fi
    if wrappers_work "$prefix"; then
        exec 9>&-
        BITCOIND="$prefix/bin/bitcoind"
        BITCOIN_CLI="$prefix/bin/bitcoin-cli"
        return 0
    fi

    local debs cache="${MPC_BITCOIND_CACHE:-$repo/../shared/bitcoind}"
    debs="$(mktemp -d "${TMPDIR:-/tmp}/mpc-bitcoind-debs.XXXXXX")"
    cleanup_paths+=("$debs")
    if [ "$cache" != none ] && [ -d "$cache" ] && [ "$arch" = amd64 ]; then
        cache="$(cd "$cache" && pwd)"
        [ -f "$cache/SHA256SUMS" ] || die "the package cache $cache has no SHA256SUMS"
        log "using the cached packages of $cache"
        (cd "$cache" && sha256sum -c --quiet --strict SHA256SUMS >&2) ||
            die "checksum mismatch in the package cache $cache (see above); MPC_BITCOIND_CACHE=none downloads instead"
        local name
        while read -r _ name; do
            name="${name#\*}"
            cp -- "$cache/$name" "$debs/"
        done <"$cache/SHA256SUMS"
        # The copies are checked again: the cache might have changed meanwhile.
        (cd "$debs" && sha256sum -c --quiet --strict "$cache/SHA256SUMS" >&2) ||
            die "checksum mismatch after copying from $cache"
    else
        [ "$cache" = none ] || [ -d "$cache" ] || log "no package cache at $cache: downloading from the Debian mirror"
        download_debs "$debs" "$arch"
    fi
    compgen -G "$debs/bitcoin-knots_*.deb" >/dev/null || die "no bitcoin-knots package among the downloaded ones"

    log "unpacking into $prefix/root"
    rm -rf "$prefix/root.new" "$prefix/bin.new"
    mkdir -p "$prefix/root.new" "$prefix/bin.new"
    local deb
    : >"$prefix/packages.new"
    for deb in "$debs"/*.deb; do
        dpkg-deb -x "$deb" "$prefix/root.new" || die "could not unpack $(basename "$deb")"
        # shellcheck disable=SC2016 # dpkg-deb's own ${field} syntax
        dpkg-deb -W --showformat='${Package} ${Version}\n' "$deb" >>"$prefix/packages.new"
    done
    local lib="usr/lib/$triplet"
    [ -x "$prefix/root.new/$lib/$loader" ] || die "the unpacked packages have no $lib/$loader"
    [ -x "$prefix/root.new/usr/bin/bitcoind" ] || die "the unpacked packages have no usr/bin/bitcoind"

    # The wrappers find the root relative to themselves, so PREFIX can move.
    local exe
    for exe in "$prefix"/root.new/usr/bin/bitcoin*; do
        exe="$(basename "$exe")"
        cat >"$prefix/bin.new/$exe" <<EOF
#!/bin/sh
# $exe of Bitcoin Knots from Debian sid, unpacked by mpc-custody's
# scripts/bitcoind.sh: run through the private root's own loader and
# libraries, since the host's glibc and libstdc++ are too old for it.
prefix=\$(dirname "\$(dirname "\$(readlink -f "\$0")")")
L="\$prefix/root/$lib"
exec "\$L/$loader" --library-path "\$L" "\$prefix/root/usr/bin/$exe" "\$@"
EOF
        chmod 755 "$prefix/bin.new/$exe"
    done
    rm -rf "${prefix:?}/root" "${prefix:?}/bin"
    mv "$prefix/root.new" "$prefix/root"
    mv "$prefix/bin.new" "$prefix/bin"
    mv "$prefix/packages.new" "$prefix/packages"
    exec 9>&-

    local version
    version="$("$prefix/bin/bitcoind" -version 2>&1 | head -n 1)" ||
        die "the installed bitcoind does not run: $version"
    "$prefix/bin/bitcoin-cli" -version >/dev/null 2>&1 || die "the installed bitcoin-cli does not run"
    log "installed $version in $prefix"
    BITCOIND="$prefix/bin/bitcoind"
    BITCOIN_CLI="$prefix/bin/bitcoin-cli"
}

# Sets BITCOIND and BITCOIN_CLI: the user's ($BITCOIND_EXE) or ours.
resolve_exes() {
    local prefix="${1:-$(default_prefix)}"
    if [ -n "${BITCOIND_EXE:-}" ]; then
        local exe
        exe="$(command -v -- "$BITCOIND_EXE")" || die "BITCOIND_EXE=$BITCOIND_EXE is not executable"
        exe="$(cd "$(dirname "$exe")" && pwd)/$(basename "$exe")"
        "$exe" -version >/dev/null 2>&1 || die "BITCOIND_EXE=$exe does not run ($exe -version failed)"
        BITCOIND="$exe"
        if [ -n "${BITCOIN_CLI_EXE:-}" ]; then
            BITCOIN_CLI="$(command -v -- "$BITCOIN_CLI_EXE")" || die "BITCOIN_CLI_EXE=$BITCOIN_CLI_EXE is not executable"
        elif [ -x "$(dirname "$exe")/bitcoin-cli" ]; then
            BITCOIN_CLI="$(dirname "$exe")/bitcoin-cli"
        else
            BITCOIN_CLI="$(command -v bitcoin-cli)" || BITCOIN_CLI=""
        fi
        return 0
    fi
    install_private "$prefix"
}

need_cli() {
    [ -n "$BITCOIN_CLI" ] || die "no bitcoin-cli next to $BITCOIND nor on PATH; set BITCOIN_CLI_EXE"
}

# True when something already listens on 127.0.0.1:$1.
port_busy() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

random_hex() {
    od -An -vtx1 -N"$1" /dev/urandom | tr -d ' \n'
}

# The pid of the bitcoind whose data dir is DIR/data: its pid file, else a
# process with that -datadir on its command line.
running_pid() {
    local dir="$1" pid arg="-datadir=$1/data" p
    if [ -f "$dir/bitcoind.pid" ]; then
        pid="$(cat "$dir/bitcoind.pid" 2>/dev/null || true)"
        if [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] &&
            tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qxF -- "$arg"; then
            echo "$pid"
            return 0
        fi
    fi
    for p in /proc/[0-9]*; do
        if tr '\0' '\n' <"$p/cmdline" 2>/dev/null | grep -qxF -- "$arg"; then
            echo "${p#/proc/}"
            return 0
        fi
    done
    return 1
}

rpc_ready() {
    [ -x "$1/bitcoin-cli" ] && "$1/bitcoin-cli" -rpcclienttimeout=5 getblockchaininfo >/dev/null 2>&1
}

show_log() {
    local dir="$1"
    if [ -s "$dir/bitcoind.out" ]; then
        log "output of bitcoind:"
        tail -n 10 "$dir/bitcoind.out" >&2 || true
    fi
    if [ -f "$dir/data/regtest/debug.log" ]; then
        log "last lines of $dir/data/regtest/debug.log:"
        tail -n 25 "$dir/data/regtest/debug.log" >&2 || true
    fi
}

wait_exit() {
    local pid="$1" tenths="$2" waited=0
    while kill -0 "$pid" 2>/dev/null && [ "$waited" -lt "$tenths" ]; do
        sleep 0.1
        waited=$((waited + 1))
    done
    ! kill -0 "$pid" 2>/dev/null
}

kill_pid() {
    local pid="$1"
    kill "$pid" 2>/dev/null || true
    if ! wait_exit "$pid" 150; then
        log "bitcoind (pid $pid) ignored SIGTERM; killing it"
        kill -9 "$pid" 2>/dev/null || true
        wait_exit "$pid" 50 || true
    fi
}

start() {
    local dir="${1:-${TMPDIR:-/tmp}/mpc-bitcoind-$$}"
    (umask 077 && mkdir -p "$dir")
    dir="$(cd "$dir" && pwd)"

    if running_pid "$dir" >/dev/null && [ -f "$dir/env" ]; then
        if rpc_ready "$dir"; then
            log "reusing the bitcoind already running from $dir"
            cat "$dir/env"
            return 0
        fi
        log "the bitcoind from $dir does not answer: restarting it"
        stop "$dir"
    elif running_pid "$dir" >/dev/null; then
        log "a bitcoind runs from $dir without its state: restarting it"
        stop "$dir"
    fi

    resolve_exes ""
    need_cli

    if [ "${MPC_BITCOIND_KEEP_DATA:-0}" != 1 ]; then
        rm -rf "$dir/data"
    fi
    mkdir -p "$dir/data"
    rm -f "$dir/env" "$dir/bitcoind.pid" "$dir/bitcoind.out"

    # Fresh credentials, in the data dir's config file (read by bitcoind and
    # bitcoin-cli alike), so they never show on a command line.
    local user pass
    user="mpc$(random_hex 6)"
    pass="$(random_hex 24)"
    (
        umask 077
        rm -f "$dir/data/bitcoin.conf"
        {
            echo "# Written by mpc-custody scripts/bitcoind.sh: this throwaway node's RPC credentials."
            echo "[regtest]"
            echo "rpcuser=$user"
            echo "rpcpassword=$pass"
        } >"$dir/data/bitcoin.conf"
    )

    local i port url rc deadline remaining
    deadline=$((SECONDS + START_TIMEOUT))
    for i in $(seq 0 $((PORT_TRIES - 1))); do
        port=$((PORT_BASE + i))
        port_busy "$port" && continue
        url="http://127.0.0.1:$port"
        cat >"$dir/bitcoin-cli" <<EOF
#!/usr/bin/env bash
# bitcoin-cli for the regtest node of this folder (mpc-custody scripts/bitcoind.sh);
# the credentials come from data/bitcoin.conf.
exec $(printf '%q' "$BITCOIN_CLI") -regtest $(printf '%q' "-datadir=$dir/data") -rpcconnect=127.0.0.1 -rpcport=$port "\$@"
EOF
        chmod 700 "$dir/bitcoin-cli"

        remaining=$((deadline - SECONDS))
        [ "$remaining" -gt 0 ] || break
        log "starting bitcoind in $dir (RPC $url)"
        rc=0
        # -daemonwait returns once the node is initialised. No inherited
        # stdout: the caller's $(...) must not wait for the daemon.
        timeout "$remaining" "$BITCOIND" \
            -regtest -daemonwait -server -txindex -rest -listen=0 \
            -fallbackfee=0.0001 \
            -rpcbind=127.0.0.1 -rpcallowip=127.0.0.1 -rpcport="$port" \
            -datadir="$dir/data" -pid="$dir/bitcoind.pid" \
            </dev/null >"$dir/bitcoind.out" 2>&1 || rc=$?

        local pid=""
        pid="$(running_pid "$dir")" || pid=""
        if [ "$rc" -eq 0 ] && [ -n "$pid" ]; then
            while [ "$SECONDS" -lt "$deadline" ] && kill -0 "$pid" 2>/dev/null; do
                if rpc_ready "$dir"; then
                    (
                        umask 077
                        {
                            printf 'export %s=%q\n' MPC_TEST_BITCOIND_URL "$url"
                            printf 'export %s=%q\n' MPC_TEST_BITCOIND_USER "$user"
                            printf 'export %s=%q\n' MPC_TEST_BITCOIND_PASSWORD "$pass"
                            printf 'export %s=%q\n' MPC_TEST_BITCOIND_DIR "$dir"
                            printf 'export %s=%q\n' BITCOIND_EXE "$BITCOIND"
                        } >"$dir/env"
                    )
                    log "bitcoind (pid $pid) is up at $url"
                    cat "$dir/env"
                    return 0
                fi
                sleep 0.2
            done
        fi
        if [ -n "$pid" ]; then
            kill_pid "$pid"
        fi
        if [ "$rc" -eq 124 ] || [ "$SECONDS" -ge "$deadline" ]; then
            show_log "$dir"
            die "bitcoind did not answer RPC within $START_TIMEOUT s (log: $dir/data/regtest/debug.log)"
        fi
        if grep -qE 'Binding RPC on address .* failed|Unable to bind' \
            "$dir/bitcoind.out" "$dir/data/regtest/debug.log" 2>/dev/null; then
            # Most likely lost a race for the port: try the next one.
            log "bitcoind could not bind 127.0.0.1:$port; trying the next port"
            rm -f "$dir/data/regtest/debug.log"
            continue
        fi
        show_log "$dir"
        die "bitcoind failed to start (exit status $rc; log: $dir/data/regtest/debug.log)"
    done
    die "no free port for bitcoind's RPC in $PORT_BASE..$((PORT_BASE + PORT_TRIES - 1)) (or out of time)"
}

stop() {
    local dir="${1:-${MPC_TEST_BITCOIND_DIR:-}}"
    [ -n "$dir" ] || die "usage: $0 stop DIR (or set MPC_TEST_BITCOIND_DIR)"
    if [ ! -d "$dir" ]; then
        log "no bitcoind running from $dir"
        return 0
    fi
    dir="$(cd "$dir" && pwd)"
    local pid
    if pid="$(running_pid "$dir")"; then
        if [ -x "$dir/bitcoin-cli" ] && "$dir/bitcoin-cli" -rpcclienttimeout=10 stop >/dev/null 2>&1; then
            wait_exit "$pid" 300 || log "bitcoind (pid $pid) still runs 30 s after 'stop'"
        else
            log "the RPC 'stop' failed; sending SIGTERM to bitcoind (pid $pid)"
        fi
        if kill -0 "$pid" 2>/dev/null; then
            kill_pid "$pid"
        fi
        log "stopped bitcoind (pid $pid) from $dir"
    else
        log "no bitcoind running from $dir"
    fi
    rm -f "$dir/bitcoind.pid" "$dir/env"
    if [ -f "$dir/data/regtest/debug.log" ]; then
        mv -f "$dir/data/regtest/debug.log" "$dir/debug.log"
    fi
    [ "${MPC_BITCOIND_KEEP_DATA:-0}" = 1 ] || rm -rf "$dir/data"
}

# cli [DIR] -- ARGS...  (or cli DIR ARGS..., or cli ARGS... with
# $MPC_TEST_BITCOIND_DIR)
cli() {
    local dir=""
    if [ "$#" -ge 1 ] && [ "$1" = -- ]; then
        shift
    elif [ "$#" -ge 2 ] && [ "$2" = -- ]; then
        dir="$1"
        shift 2
    elif [ "$#" -ge 1 ] && [ -x "$1/bitcoin-cli" ] && [ -f "$1/env" ]; then
        dir="$1"
        shift
    fi
    dir="${dir:-${MPC_TEST_BITCOIND_DIR:-}}"
    [ -n "$dir" ] || die "usage: $0 cli [DIR] -- ARGS... (or set MPC_TEST_BITCOIND_DIR)"
    if [ ! -x "$dir/bitcoin-cli" ] || [ ! -f "$dir/env" ]; then
        die "no bitcoind started from $dir"
    fi
    running_pid "$(cd "$dir" && pwd)" >/dev/null || die "the bitcoind of $dir is not running"
    exec "$dir/bitcoin-cli" "$@"
}

case "${1:-}" in
install)
    if [ -n "${BITCOIND_EXE:-}" ]; then
        log "BITCOIND_EXE is set: using it, installing nothing"
    fi
    resolve_exes "${2:-}"
    printf 'export %s=%q\n' BITCOIND_EXE "$BITCOIND"
    ;;
start) start "${2:-}" ;;
stop) stop "${2:-}" ;;
cli)
    shift
    cli "$@"
    ;;
*)
    echo "usage: $0 install [PREFIX] | start [DIR] | stop [DIR] | cli [DIR] -- ARGS..." >&2
    exit 2
    ;;
esac
