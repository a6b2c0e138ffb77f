#!/usr/bin/env bash
# Build a Debian package of backy from a staged tree with dpkg-deb: the binary,
# the man page, the shell completions, the systemd units (scheduler, metrics
# timer), the logrotate file and the example scheduler configuration.
#
#   scripts/build-deb.sh                     release build, package in target/deb/
#   scripts/build-deb.sh --binary PATH       package an already built binary
#   scripts/build-deb.sh --out DIR           write the .deb into DIR
#
# Prints the path of the .deb on stdout. Install it with
#   apt install ./target/deb/backy_<version>_<arch>.deb
# tests/package.rs builds one from the test binary and checks its contents.
set -euo pipefail

repo=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
binary=""
out="$repo/target/deb"

while (($#)); do
    case "$1" in
        --binary) binary=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        -h | --help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "build-deb: unknown argument '$1'; see --help" >&2; exit 2 ;;
    esac
done

for tool in dpkg-deb dpkg gzip; do
    command -v "$tool" >/dev/null || {
        echo "build-deb: '$tool' is missing; install the dpkg package (Debian or Ubuntu)" >&2
        exit 1
    }
done

if [[ -z "$binary" ]]; then
    (cd "$repo" && cargo build --release --quiet)
    binary="$repo/target/release/backy"
fi
[[ -x "$binary" ]] || { echo "build-deb: binary '$binary' is not an executable file" >&2; exit 1; }

# Cargo's 3.0.0-dev is Debian's 3.0.0~dev: a tilde sorts before the release.
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml" | head -n 1 | tr - '~')
arch=$(dpkg --print-architecture)
name="backy_${version}_${arch}"
mkdir -p "$out"
stage=$(mktemp -d "$out/.stage.XXXXXX")
trap 'rm -rf "$stage"' EXIT
root="$stage/$name"

install -D -m 0755 "$binary" "$root/usr/bin/backy"
# Debug info stays in target/ (the release profile keeps line tables for backtraces).
if command -v strip >/dev/null; then strip --strip-debug "$root/usr/bin/backy"; fi
install -d -m 0755 "$root/usr/share/man/man1"
gzip -9n <"$repo/man/backy.1" >"$root/usr/share/man/man1/backy.1.gz"
install -D -m 0644 "$repo/completions/backy.bash" "$root/usr/share/bash-completion/completions/backy"
install -D -m 0644 "$repo/completions/_backy" "$root/usr/share/zsh/vendor-completions/_backy"
install -D -m 0644 "$repo/completions/backy.fish" "$root/usr/share/fish/vendor_completions.d/backy.fish"
# The units as committed run /usr/local/bin/backy (a hand install); the package's is in
# /usr/bin. None is enabled: the operator enables the scheduler and the metrics timer.
install -d -m 0755 "$root/lib/systemd/system"
for unit in backy-scheduler.service backy-metrics.service backy-metrics.timer; do
    sed 's|/usr/local/bin/backy|/usr/bin/backy|g' "$repo/contrib/$unit" >"$root/lib/systemd/system/$unit"
    chmod 0644 "$root/lib/systemd/system/$unit"
done
for unit in btrfs-maintenance.service btrfs-maintenance.timer; do
    install -D -m 0644 "$repo/contrib/$unit" "$root/usr/share/doc/backy/examples/$unit"
done
install -D -m 0644 "$repo/contrib/logrotate.d/backy" "$root/etc/logrotate.d/backy"
install -D -m 0644 "$repo/contrib/backy.conf.example" "$root/usr/share/doc/backy/examples/backy.conf"
install -D -m 0644 "$repo/README.md" "$root/usr/share/doc/backy/README.md"
gzip -9n <"$repo/CHANGELOG.md" >"$root/usr/share/doc/backy/changelog.gz"
{
    echo "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/"
    echo "Upstream-Name: backy"
    echo
    echo "Files: *"
    echo "License: GPL-3.0-or-later"
    echo " On Debian systems the full text is in /usr/share/common-licenses/GPL-3."
} >"$root/usr/share/doc/backy/copyright"

# The newest glibc symbol version the binary needs is the libc6 it depends on.
glibc=$(objdump -T "$binary" 2>/dev/null | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -n 1 || true)
depends="libc6 (>= ${glibc:-2.34}), libgcc-s1"
installed_size=$(du -sk "$root" | cut -f1)

install -d -m 0755 "$root/DEBIAN"
cat >"$root/DEBIAN/control" <<EOF
Package: backy
Version: $version
Architecture: $arch
Maintainer: backy developers <backy@localhost>
Installed-Size: $installed_size
Depends: $depends
Recommends: ceph-common, logrotate
Suggests: btrfs-progs, xfsprogs, nbd-client
Section: admin
Priority: optional
Homepage: https://github.com/flyingcircusio/backy
Description: backup of virtual machine disk images as reflinked raw revisions
 backy keeps every backup revision of a VM disk as a full, sparse raw image,
 a reflink clone of the previous one patched with what changed, so btrfs or
 XFS share the rest. Sources: image files, block devices and Ceph RBD
 (export-diff). A scheduler spreads jobs over the day, tags and expires
 revisions, and reports to Nagios through 'backy check'.
EOF
echo /etc/logrotate.d/backy >"$root/DEBIAN/conffiles"

deb="$out/$name.deb"
dpkg-deb --root-owner-group --build "$root" "$deb" >/dev/null
echo "$deb"
