#!/usr/bin/env bash
# Install the amd64 package into a fresh Debian root (debootstrap, minbase)
# and check what its maintainer scripts did: the system user, the state
# directory, the config's owner and mode, the service enabled; then that
# remove keeps the journal and purge removes it.
#
#   packaging/install-test.sh target/debian/chargegate_VERSION-1_amd64.deb [ROOT]
#
# ROOT defaults to a cached bootstrap in target/debroot (made once, a few
# minutes; later runs reuse it).
set -euo pipefail
deb=$(realpath "$1")
cd "$(dirname "$0")/.."
root=${2:-$PWD/target/debroot}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

if [ ! -x "$root/usr/bin/apt-get" ]; then
  rm -rf "$root"
  debootstrap --variant=minbase bookworm "$root" "$mirror" >/dev/null
fi
cleanup() { umount "$root/proc" 2>/dev/null || true; }
trap cleanup EXIT
mount -t proc proc "$root/proc"
in_root() { chroot "$root" "$@"; }
fail() { echo "install-test: $*" >&2; exit 1; }

in_root dpkg --purge chargegate >/dev/null 2>&1 || true
cp "$deb" "$root/tmp/chargegate.deb"
# apt resolves the dependencies (adduser) from the mirror.
in_root apt-get install -y -qq /tmp/chargegate.deb >/dev/null \
  || { in_root apt-get update -qq && in_root apt-get install -y -qq /tmp/chargegate.deb >/dev/null; }

in_root getent passwd chargegate >/dev/null || fail "no chargegate user"
[ "$(in_root stat -c %U:%G:%a /var/lib/chargegate)" = chargegate:chargegate:750 ] || fail "state dir: $(in_root stat -c %U:%G:%a /var/lib/chargegate)"
[ "$(in_root stat -c %U:%G:%a /etc/chargegate/chargegate.toml)" = root:chargegate:640 ] || fail "config: $(in_root stat -c %U:%G:%a /etc/chargegate/chargegate.toml)"
[ -L "$root/etc/systemd/system/multi-user.target.wants/chargegate.service" ] || fail "service not enabled"
in_root chargegate check-config /etc/chargegate/chargegate.toml >/dev/null || fail "the installed config does not check"
in_root chargegate --version | grep -q chargegate || fail "chargegate --version"

# The journal survives remove (and so upgrades); purge takes it.
echo keep >"$root/var/lib/chargegate/journal.redb"
in_root dpkg --remove chargegate >/dev/null
[ -f "$root/var/lib/chargegate/journal.redb" ] || fail "remove deleted the journal"
[ -f "$root/etc/chargegate/chargegate.toml" ] || fail "remove deleted the conffile"
in_root dpkg --purge chargegate >/dev/null
[ ! -e "$root/var/lib/chargegate" ] || fail "purge left /var/lib/chargegate"
[ ! -e "$root/etc/chargegate/chargegate.toml" ] || fail "purge left the conffile"
echo "install-test: ok (user, state dir, config 0640 root:chargegate, enabled; remove keeps the journal, purge removes it)"
