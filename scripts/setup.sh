#!/usr/bin/env bash
# Installs what this project needs beyond the Rust toolchain, on Debian.
# Safe to run again: it installs only what is missing.
#   m4                GMP's build (cggmp24's rug backend)
#   protobuf-compiler etcd-client's build (io-store)
#   libprotobuf-dev   the well-known .proto files etcd's API imports
#                     (google/protobuf/descriptor.proto): only a Recommends
#                     of protobuf-compiler, so not pulled in below
#   g++, make         libbitcoinconsensus and GMP builds
#   systemd           systemd-analyze, which checks deploy/mpc-node.service
#
# Optional: `scripts/setup.sh --promtool` (or MPC_REQUIRE_PROMTOOL=1) also
# installs promtool (Debian `prometheus`), which mpc-node's metrics test runs
# on the rendered metrics; with MPC_REQUIRE_PROMTOOL=1 that test fails
# instead of skipping when promtool is missing. Only promtool is wanted: the
# package's Prometheus server is kept from starting where policy-rc.d is
# honoured, and nothing here enables it.
set -euo pipefail

want_promtool=""
if [ "${1:-}" = "--promtool" ] || [ "${MPC_REQUIRE_PROMTOOL:-}" = "1" ]; then want_promtool=1; fi

need=()
command -v m4 >/dev/null 2>&1 || need+=(m4)
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
[ -f /usr/include/google/protobuf/descriptor.proto ] || need+=(libprotobuf-dev)
command -v g++ >/dev/null 2>&1 || need+=(g++)
command -v make >/dev/null 2>&1 || need+=(make)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
promtool_missing=""
if [ -n "$want_promtool" ] && ! command -v promtool >/dev/null 2>&1; then promtool_missing=1; fi

if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  sudo_cmd=""
  if [ "$(id -u)" -ne 0 ]; then sudo_cmd="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if [ -n "$promtool_missing" ]; then
  echo "setup: installing promtool (Debian prometheus)"
  sudo_cmd=""
  if [ "$(id -u)" -ne 0 ]; then sudo_cmd="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  policy=/usr/sbin/policy-rc.d added_policy=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo_cmd tee "$policy" >/dev/null
    $sudo_cmd chmod 755 "$policy"
    added_policy=1
  fi
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  if [ -n "$added_policy" ]; then $sudo_cmd rm -f "$policy"; fi
  command -v promtool >/dev/null 2>&1 || { echo "setup: promtool still not found after installing prometheus" >&2; exit 1; }
fi

command -v cargo >/dev/null 2>&1 || { echo "setup: cargo not found: install the Rust toolchain (rustup)" >&2; exit 1; }
