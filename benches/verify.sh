#!/usr/bin/env bash
# Benchmark: `backy verify` against a cold `cat` of the same image, on a
# loop-mounted btrfs and XFS, with a 2 GiB image of random bytes (no holes).
#
#   benches/verify.sh                      (as root; about 2 minutes)
#   BACKY_OTHER=/path/to/backy benches/verify.sh   also times another build
#
# Per filesystem: one backup of the image, then, each after
# `sync; echo 3 > /proc/sys/vm/drop_caches`: `cat IMAGE >/dev/null` (the
# baseline), `backy verify -r 0` (full), `backy verify -r 0 --sample 10`, and
# with BACKY_OTHER the same full verify by that binary. Prints seconds and the
# ratio to the cat. Target: the full verify within 1.3x of the cat.
set -euo pipefail

cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
cargo build --release --quiet
BACKY=$PWD/target/release/backy
SIZE_MIB=${BENCH_SIZE_MIB:-2048}

WORK=$(mktemp -d /tmp/backy-bench-verify-XXXXXX)
DEVICES=()
cleanup() {
    for m in "$WORK"/mnt-*; do mountpoint -q "$m" && umount "$m"; done
    for d in "${DEVICES[@]}"; do losetup -d "$d"; done
    rm -rf "$WORK"
}
trap cleanup EXIT

cold() { sync; echo 3 > /proc/sys/vm/drop_caches; }
seconds() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null 2>&1 || true; t1=$(date +%s.%N); echo "$t1 - $t0" | bc; }

printf '%-6s %-28s %8s %7s\n' fs step seconds "x cat"
for fs in btrfs xfs; do
    img=$WORK/$fs.img mnt=$WORK/mnt-$fs
    truncate -s $((SIZE_MIB * 2 + 1024))M "$img"
    case $fs in
        btrfs) mkfs.btrfs -q "$img" ;;
        xfs) mkfs.xfs -q -m reflink=1 "$img" ;;
    esac
    dev=$(losetup --find --show "$img"); DEVICES+=("$dev")
    mkdir -p "$mnt"; mount "$dev" "$mnt"
    head -c $((SIZE_MIB << 20)) /dev/urandom > "$mnt/src.img"
    "$BACKY" -b "$mnt/job" init file "$mnt/src.img" >/dev/null 2>&1
    "$BACKY" -b "$mnt/job" backup daily >/dev/null 2>&1
    image=$(readlink -f "$mnt/job/last")

    cold; base=$(seconds cat "$image")
    printf '%-6s %-28s %8.2f %7s\n' $fs "cat image" "$base" 1.00
    cold; t=$(seconds "$BACKY" -b "$mnt/job" verify -r 0)
    printf '%-6s %-28s %8.2f %7.2f\n' $fs "verify -r 0" "$t" "$(echo "$t / $base" | bc -l)"
    cold; t=$(seconds "$BACKY" -b "$mnt/job" verify -r 0 --sample 10)
    printf '%-6s %-28s %8.2f %7.2f\n' $fs "verify -r 0 --sample 10" "$t" "$(echo "$t / $base" | bc -l)"
    if [ -n "${BACKY_OTHER:-}" ]; then
        cold; t=$(seconds "$BACKY_OTHER" -b "$mnt/job" verify -r 0)
        printf '%-6s %-28s %8.2f %7.2f\n' $fs "other: verify -r 0" "$t" "$(echo "$t / $base" | bc -l)"
    fi
done
