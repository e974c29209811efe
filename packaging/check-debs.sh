#!/usr/bin/env bash
# Build both packages and check them: control fields, contents and modes,
# the conffile, the unit (systemd-analyze verify), the arm64 binary under
# qemu (--version, then the daemon and `sim` with a few chargers, both
# arm64), and an install, remove and purge of the amd64 package in a fresh
# Debian root made by debootstrap (INSTALL_TEST=0 skips that). Prints "N passed,
# N failed" and exits non-zero on any failure.
set -uo pipefail
cd "$(dirname "$0")/.."
passed=0 failed=0
ok() { echo "ok: $*"; passed=$((passed + 1)); }
bad() { echo "FAILED: $*"; failed=$((failed + 1)); }
check() { local what=$1; shift; if "$@" >/dev/null 2>&1; then ok "$what"; else bad "$what"; fi; }

export DEBIAN_FRONTEND=noninteractive
need=()
for p in qemu-user-static gcc-aarch64-linux-gnu debootstrap; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then apt-get update -qq && apt-get install -y -qq "${need[@]}"; fi

packaging/build-debs.sh || { echo "0 passed, 1 failed"; exit 1; }
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
amd=target/debian/chargegate_${version}-1_amd64.deb
arm=target/aarch64-unknown-linux-gnu/debian/chargegate_${version}-1_arm64.deb

for deb in "$amd" "$arm"; do
  arch=$(dpkg-deb -f "$deb" Architecture)
  check "$arch: package name" test "$(dpkg-deb -f "$deb" Package)" = chargegate
  check "$arch: version $version" test "$(dpkg-deb -f "$deb" Version)" = "${version}-1"
  check "$arch: depends on adduser" grep -q adduser <<<"$(dpkg-deb -f "$deb" Depends)"
  check "$arch: maintainer" test -n "$(dpkg-deb -f "$deb" Maintainer)"
  contents=$(dpkg-deb -c "$deb")
  check "$arch: /usr/bin/chargegate 0755" grep -qE '^-rwxr-xr-x .* \./usr/bin/chargegate$' <<<"$contents"
  check "$arch: the unit" grep -qE '^-rw-r--r-- .* \./lib/systemd/system/chargegate.service$' <<<"$contents"
  check "$arch: config 0640" grep -qE '^-rw-r----- .* \./etc/chargegate/chargegate.toml$' <<<"$contents"
  check "$arch: config is a conffile" grep -qx /etc/chargegate/chargegate.toml <<<"$(dpkg-deb -I "$deb" conffiles)"
  for s in postinst prerm postrm; do
    check "$arch: $s" dpkg-deb -I "$deb" "$s"
  done
  echo "$arch: $(du -k "$deb" | cut -f1) KiB package"
done
check "amd64 is amd64" test "$(dpkg-deb -f "$amd" Architecture)" = amd64
check "arm64 is arm64" test "$(dpkg-deb -f "$arm" Architecture)" = arm64

work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
dpkg-deb -x "$arm" "$work/arm"
bin="$work/arm/usr/bin/chargegate"
echo "arm64 binary: $(du -k "$bin" | cut -f1) KiB"
check "arm64 binary is AArch64 ELF" test "$(od -An -tx1 -j18 -N2 "$bin" | tr -d ' ')" = "b700"
qemu() { qemu-aarch64-static -L /usr/aarch64-linux-gnu "$bin" "$@"; }
check "arm64 --version under qemu" grep -q "$version" <<<"$(qemu --version 2>&1)"

# Smoke: the arm64 daemon and the arm64 simulator, under qemu.
cat >"$work/smoke.toml" <<TOML
[gateway]
data_dir = "$work/data"
log_level = "warn"
[ocpp]
listen = "127.0.0.1:0"
allow_unknown_chargers = true
[api]
listen = "127.0.0.1:0"
[diagnostics]
listen = "127.0.0.1:0"
TOML
qemu-aarch64-static -L /usr/aarch64-linux-gnu "$bin" --config "$work/smoke.toml" run >"$work/daemon.out" 2>"$work/daemon.err" &
daemon=$!
for _ in $(seq 100); do grep -q READY "$work/daemon.out" && break; sleep 0.2; done
ocpp=$(sed -n 's/.*ocpp=\([^ ]*\).*/\1/p' "$work/daemon.out")
api=$(sed -n 's/.*api=\([^ ]*\).*/\1/p' "$work/daemon.out")
if [ -n "$ocpp" ]; then
  ok "arm64 daemon READY under qemu"
  qemu sim --url "ws://$ocpp/ocpp" --chargers 3 --idle 1 --duration 6 >"$work/sim.out" 2>&1
  n=$(python3 -c "import json, urllib.request; s = json.load(urllib.request.urlopen('http://$api/api/v1/status')); print(sum(1 for c in s['chargers'] if c['state'].get('boot')))" 2>&1)
  check "arm64 sim's 3 chargers booted through the arm64 daemon (saw: $n)" test "$n" = 3
else
  bad "arm64 daemon READY under qemu: $(cat "$work/daemon.err")"
fi
kill -TERM "$daemon" 2>/dev/null
wait "$daemon"
rc=$?
check "arm64 daemon drains and exits 0 on SIGTERM (exit $rc)" test "$rc" = 0

# The unit, pointed at the built binary (verify wants ExecStart to exist).
sed "s#/usr/bin/chargegate#$PWD/target/release/chargegate#" systemd/chargegate.service >"$work/chargegate.service"
check "systemd-analyze verify" systemd-analyze verify "$work/chargegate.service"

if [ "${INSTALL_TEST:-1}" = 1 ]; then
  packaging/install-test.sh "$amd" && ok "install, remove, purge in a fresh Debian root" \
    || bad "install, remove, purge in a fresh Debian root"
fi

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
