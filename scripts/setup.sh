#!/usr/bin/env bash
# Installs what this project needs beyond the Rust toolchain, on Debian.
# Safe to run again: it installs only what is missing.
#   m4                GMP's build (cggmp24's rug backend)
#   protobuf-compiler etcd-client's build (io-store)
#   libprotobuf-dev   the well-known .proto files etcd's API imports
#                     (google/protobuf/descriptor.proto): only a Recommends
#                     of protobuf-compiler, so not pulled in below
#   g++, make         libbitcoinconsensus and GMP builds
set -euo pipefail

need=()
command -v m4 >/dev/null 2>&1 || need+=(m4)
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
[ -f /usr/include/google/protobuf/descriptor.proto ] || need+=(libprotobuf-dev)
command -v g++ >/dev/null 2>&1 || need+=(g++)
command -v make >/dev/null 2>&1 || need+=(make)

if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  sudo_cmd=""
  if [ "$(id -u)" -ne 0 ]; then sudo_cmd="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

command -v cargo >/dev/null 2>&1 || { echo "setup: cargo not found: install the Rust toolchain (rustup)" >&2; exit 1; }
