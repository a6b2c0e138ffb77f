#!/usr/bin/env bash
# Benchmark: reading a revision through `backy nbd-server` with nbdcopy over
# loopback, against `cat` of the revision file, with cold caches, on btrfs and XFS.
#
#   benches/nbd.sh        (as root, after scripts/setup-test-deps.sh; about 2 minutes)
#
# What it does, per filesystem (a 4 GiB loop-mounted btrfs, then XFS with reflink=1,
# inside one `mktemp -d` directory that the EXIT trap cleans up):
#   * a 2 GiB VM-like source (1 MiB regions in a seeded order: 20 % holes, 60 %
#     random bytes, 20 % repeated text), backed up once with the release backy;
#   * BENCH_REPEAT (default 3) rounds of: drop caches, `cat REVISION >/dev/null`
#     (the baseline); drop caches, `nbdcopy nbd://127.0.0.1:PORT/0 null:` against a
#     running `backy nbd-server` (nbdcopy's defaults: 4 connections, 64 requests in
#     flight each, block status to skip holes);
#   * prints the medians and the throughput ratio (cat time / nbdcopy time), with
#     PASS/MISS against the target of at least 0.8x cat's throughput, and checks once
#     that `nbdcopy` to a file gives the revision's sha256 (FAIL exits 1).
#
# Environment: BENCH_SIZE_MIB (default 2048), BENCH_REPEAT (default 3),
# BENCH_STRICT=1 (exit 1 on a MISS).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SIZE_MIB=${BENCH_SIZE_MIB:-2048}
REPEAT=${BENCH_REPEAT:-3}
STRICT=${BENCH_STRICT:-0}

die() { echo "nbd.sh: $*" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || die "must run as root (loop devices, mount, drop_caches)"
for tool in losetup mkfs.btrfs mkfs.xfs nbdcopy python3 sha256sum cargo mountpoint; do
    command -v "$tool" >/dev/null || die "missing tool: $tool (run scripts/setup-test-deps.sh)"
done

echo "== building backy (cargo build --release)"
(cd "$ROOT" && cargo build --release --quiet)
BACKY=$ROOT/target/release/backy

WORK=$(mktemp -d)
SERVER=""
cleanup() {
    set +e
    [[ -n $SERVER ]] && kill "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null
    cd /
    for m in "$WORK"/mnt-*; do
        mountpoint -q "$m" && umount "$m"
    done
    for dev in $(losetup -j "$WORK/fs.img" -O NAME -n 2>/dev/null); do losetup -d "$dev"; done
    rm -rf "$WORK"
}
trap cleanup EXIT

drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
seconds() { # command... -> wall seconds
    local t0 t1
    t0=$(date +%s.%N)
    "$@" >/dev/null
    t1=$(date +%s.%N)
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }'
}
median() { tr ' ' '\n' <<<"$*" | sort -g | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

make_image() { # path
    python3 - "$1" "$SIZE_MIB" <<'EOF'
import random, sys
path, mib = sys.argv[1], int(sys.argv[2])
rng = random.Random(20261201)
text = (b"Dec  1 20:00:00 vm01 systemd[1]: Started Session 42 of user backy.\n" * 16000)[: 1 << 20]
with open(path, "wb") as f:
    f.truncate(mib << 20)
    for i in range(mib):
        r = rng.random()
        if r < 0.2:
            continue
        f.seek(i << 20)
        f.write(rng.randbytes(1 << 20) if r < 0.8 else text)
EOF
}

status=0
truncate -s 4G "$WORK/fs.img"
for fs in btrfs xfs; do
    mnt=$WORK/mnt-$fs
    mkdir -p "$mnt"
    if [[ $fs == btrfs ]]; then mkfs.btrfs -q -f "$WORK/fs.img"; else mkfs.xfs -q -f -m reflink=1 "$WORK/fs.img"; fi
    mount -o loop "$WORK/fs.img" "$mnt"
    echo "== $fs: a ${SIZE_MIB} MiB image, one backup"
    make_image "$mnt/src.img"
    "$BACKY" -b "$mnt/job" init file "$mnt/src.img" 2>/dev/null
    "$BACKY" -b "$mnt/job" backup daily 2>/dev/null
    rev=$("$BACKY" -b "$mnt/job" find -r 0)
    rm "$mnt/src.img"

    log=$WORK/server-$fs.log
    "$BACKY" -b "$mnt/job" -l "$log" nbd-server -p 0 &
    SERVER=$!
    for _ in $(seq 100); do grep -q 'over NBD on' "$log" 2>/dev/null && break; sleep 0.1; done
    port=$(grep -o 'over NBD on 127.0.0.1:[0-9]*' "$log" | head -n 1 | cut -d: -f2)
    [[ -n $port ]] || die "the server did not start: $(cat "$log")"
    uri=nbd://127.0.0.1:$port/0

    cats=() copies=()
    for _ in $(seq "$REPEAT"); do
        drop_caches; cats+=("$(seconds cat "$rev")")
        drop_caches; copies+=("$(seconds nbdcopy "$uri" null:)")
    done
    cat_s=$(median "${cats[@]}")
    nbd_s=$(median "${copies[@]}")
    ratio=$(awk -v c="$cat_s" -v n="$nbd_s" 'BEGIN { printf "%.2f", c / n }')
    mib_s() { awk -v s="$1" -v m="$SIZE_MIB" 'BEGIN { printf "%.0f", m / s }'; }
    verdict=PASS
    awk -v r="$ratio" 'BEGIN { exit !(r >= 0.8) }' || { verdict=MISS; [[ $STRICT == 1 ]] && status=1; }
    printf '%-6s cat %6.2f s (%5s MiB/s)   nbdcopy %6.2f s (%5s MiB/s)   throughput ratio %sx (target >= 0.8x) %s\n' \
        "$fs" "$cat_s" "$(mib_s "$cat_s")" "$nbd_s" "$(mib_s "$nbd_s")" "$ratio" "$verdict"
    echo "       runs: cat ${cats[*]}  nbdcopy ${copies[*]}"

    out=$WORK/copy.img
    nbdcopy "$uri" "$out"
    if [[ $(sha256sum <"$out") == $(sha256sum <"$rev") ]]; then
        echo "       sha256 of the nbdcopy output equals the revision's: PASS"
    else
        echo "       sha256 of the nbdcopy output differs from the revision's: FAIL"
        exit 1
    fi
    rm -f "$out"
    kill "$SERVER"; wait "$SERVER" || true; SERVER=""
    umount "$mnt"
done
exit "$status"
