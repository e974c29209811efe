#!/usr/bin/env bash
# Build the Debian packages for amd64 and arm64 (cross-compiled) with
# cargo-deb. Installs what it needs (cargo-deb, the arm64 Rust target,
# Debian's cross linker) when missing.
#
#   packaging/build-debs.sh    # → target/debian/chargegate_*_amd64.deb
#                              #   target/aarch64-unknown-linux-gnu/debian/chargegate_*_arm64.deb
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo-deb >/dev/null || cargo install cargo-deb --locked --quiet
rustup target list --installed | grep -qx aarch64-unknown-linux-gnu \
  || rustup target add aarch64-unknown-linux-gnu
if ! command -v aarch64-linux-gnu-gcc >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc-aarch64-linux-gnu
fi

cargo deb --quiet
# ring's C and assembly for arm64 go through the same cross compiler.
CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc \
  cargo deb --quiet --target aarch64-unknown-linux-gnu

ls -l target/debian/chargegate_*_amd64.deb target/aarch64-unknown-linux-gnu/debian/chargegate_*_arm64.deb
