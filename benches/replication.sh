#!/usr/bin/env bash
# Benchmark: `backy send | backy receive` of a 2 GiB job with 10 revisions of
# 1 % change each, over a pipe, between loop-mounted btrfs and XFS.
#
#   benches/replication.sh     (as root; about 3-4 minutes)
#
# What it does:
#   * a 12 GiB sparse btrfs and a 12 GiB sparse XFS (reflink=1), each on a loop
#     device, inside one `mktemp -d` directory that the EXIT trap unmounts,
#     detaches and removes;
#   * a 2 GiB source image on the btrfs, of 1 MiB regions in a seeded random
#     order (15 % holes, 15 % written zeros, 40 % random, 30 % repeated text), as
#     benches/backup.sh builds it; a job on the btrfs with a full backup and 10
#     incrementals, each after a change set of 64 KiB random writes at 4 KiB-aligned
#     random offsets touching 1 % of the image's pages;
#   * btrfs -> XFS: the first revision is sent (not timed); then, with cold caches
#     (`sync; echo 3 > drop_caches`), `send --base FIRST | receive` of the 10
#     incrementals, timed; the baseline is a cold `cat` of a file of as many bytes
#     as the 10 backups changed (the sum of their `stats.bytes_changed`) on the
#     same filesystem. XFS -> btrfs: the same from the received job to a new job;
#   * space: the union of the physical extents (xfs_io fiemap) of every image and
#     manifest of a job, target over source;
#   * reads: the bytes `send` read from images (its log line), over the changed bytes;
#   * checks, printed as PASS/MISS: the incremental transfer within 4x of the cold
#     cat of the changed bytes; target space within 2 % of the source's; the sender
#     reads at most 2x the changed bytes; and, as a sanity check, every received
#     image and manifest equals the source's (FAIL exits 1).
#
# Environment: BENCH_SIZE_MIB (default 2048; e.g. 128 for a smoke run), BENCH_SEED
# (default 20240521), BENCH_STRICT=1 (exit 1 when a target is missed).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SIZE_MIB=${BENCH_SIZE_MIB:-2048}
SEED=${BENCH_SEED:-20240521}
STRICT=${BENCH_STRICT:-0}

die() { echo "replication.sh: $*" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || die "must run as root (loop devices, mount, drop_caches)"
for tool in losetup mkfs.btrfs mkfs.xfs xfs_io python3 awk cargo mountpoint cmp; do
    command -v "$tool" >/dev/null || die "missing tool: $tool"
done

echo "== building backy (cargo build --release)"
(cd "$ROOT" && cargo build --release --quiet)
BACKY=$ROOT/target/release/backy
[[ -x $BACKY ]] || die "cargo build produced no $BACKY"

WORK=$(mktemp -d)
LOOPS=()
MOUNTS=()
cleanup() {
    local rc=$? m dev ok=1
    set +e
    cd /
    for m in "${MOUNTS[@]}"; do
        if mountpoint -q "$m"; then
            umount "$m" 2>/dev/null || { sleep 1; umount "$m"; } || ok=0
        fi
    done
    for dev in "${LOOPS[@]}"; do
        losetup -d "$dev" 2>/dev/null
    done
    if [[ $ok -eq 1 ]]; then
        rm -rf "$WORK"
    else
        echo "replication.sh: could not unmount everything; left $WORK in place" >&2
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

attach() { # backing file -> loop device (direct I/O: no second copy in the page cache)
    losetup --find --show --direct-io=on "$1" 2>/dev/null || losetup --find --show "$1"
}

echo "== preparing filesystems in $WORK"
truncate -s 12G "$WORK/btrfs.img" "$WORK/xfs.img"
BTRFS_DEV=$(attach "$WORK/btrfs.img")
LOOPS+=("$BTRFS_DEV")
XFS_DEV=$(attach "$WORK/xfs.img")
LOOPS+=("$XFS_DEV")
mkfs.btrfs -q -f "$BTRFS_DEV" >/dev/null
mkfs.xfs -q -f -m reflink=1 "$XFS_DEV" >/dev/null
mkdir -p "$WORK/btrfs" "$WORK/xfs"
mount "$BTRFS_DEV" "$WORK/btrfs"
MOUNTS+=("$WORK/btrfs")
mount "$XFS_DEV" "$WORK/xfs"
MOUNTS+=("$WORK/xfs")
BT=$WORK/btrfs
XF=$WORK/xfs
LOG=$WORK/logs
mkdir -p "$LOG"

cat >"$WORK/gen.py" <<'PY'
import os, random, sys

MiB = 1 << 20
PAGE = 4096
WRITE = 64 * 1024

def build(path, size_mib, seed):
    rng = random.Random(seed)
    n = size_mib
    kinds = (["hole"] * (n * 15 // 100) + ["zero"] * (n * 15 // 100)
             + ["rand"] * (n * 40 // 100))
    kinds += ["text"] * (n - len(kinds))
    rng.shuffle(kinds)
    zero = bytes(MiB)
    lines = ("kernel: usb 1-1: new high-speed USB device number %d using ehci-pci\n",
             "systemd[1]: Started Session %d of user root.\n",
             "INSERT INTO log VALUES (%d, 'ok', NULL);\n")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, n * MiB)
        for i, kind in enumerate(kinds):
            if kind == "hole":
                continue
            if kind == "zero":
                data = zero
            elif kind == "rand":
                data = rng.randbytes(MiB)
            else:
                line = (rng.choice(lines) % rng.randrange(1000)).encode()
                data = (line * (MiB // len(line) + 1))[:MiB]
            os.pwrite(fd, data, i * MiB)
        os.fsync(fd)
    finally:
        os.close(fd)

def change(path, percent, seed):
    rng = random.Random(seed)
    size = os.path.getsize(path)
    target = -(-(size // PAGE) * percent // 100)
    touched = set()
    fd = os.open(path, os.O_RDWR)
    try:
        while len(touched) < target:
            off = rng.randrange(0, (size - WRITE) // PAGE + 1) * PAGE
            os.pwrite(fd, rng.randbytes(WRITE), off)
            touched.update(range(off // PAGE, (off + WRITE) // PAGE))
        os.fsync(fd)
    finally:
        os.close(fd)

if sys.argv[1] == "build":
    build(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
else:
    change(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
PY

drop_caches() {
    sync
    echo 3 >/proc/sys/vm/drop_caches
}

now() { date +%s.%N; }

# Bytes on disk of a job's images and manifests: the union of their physical
# extents (shared extents once), from `xfs_io -c 'fiemap -v'` (512-byte units).
space() {
    local job=$1 f
    sync -f "$job"
    for f in "$job"/*; do
        case $(basename "$f") in *.rev|config|last|backy.log) continue ;; esac
        [[ -f $f && ! -L $f ]] || continue
        xfs_io -r -c 'fiemap -v' "$f" | awk 'NR > 2 && $3 != "hole" { split($3, r, "[.][.]"); print r[1], r[2] }'
    done | sort -n -k1,1 | awk '
        { s = $1; e = $2 + 1; if (s < end) s = end; if (e > s) { total += e - s; end = e } }
        END { printf "%d\n", total * 512 }'
}

changed_bytes() { # job, ids... -> sum of stats.bytes_changed
    local job=$1 id sum=0 v
    shift
    for id in "$@"; do
        v=$(awk '$1 == "bytes_changed:" { print $2 }' "$job/$id.rev")
        sum=$((sum + v))
    done
    echo "$sum"
}

ids_of() { "$BACKY" -b "$1" status --json | python3 -c 'import json,sys; print(" ".join(r["id"] for r in json.load(sys.stdin) if r["complete"]))'; }

echo "== building the source job: ${SIZE_MIB} MiB, a full backup and 10 of 1 % change"
python3 "$WORK/gen.py" build "$BT/vm.img" "$SIZE_MIB" "$SEED"
"$BACKY" -b "$BT/job" init file "$BT/vm.img" 2>>"$LOG/backup"
"$BACKY" -b "$BT/job" backup daily 2>>"$LOG/backup"
for i in $(seq 1 10); do
    python3 "$WORK/gen.py" change "$BT/vm.img" 1 $((SEED + i))
    "$BACKY" -b "$BT/job" backup daily 2>>"$LOG/backup"
done
read -r -a IDS <<<"$(ids_of "$BT/job")"
((${#IDS[@]} == 11)) || die "expected 11 revisions, found ${#IDS[@]}"
FIRST=${IDS[0]}
CHANGED=$(changed_bytes "$BT/job" "${IDS[@]:1}")
echo "changed bytes in the 10 incrementals: $CHANGED"

# Baseline: a cold cat of as many bytes as changed, on the source filesystem.
head -c "$CHANGED" /dev/urandom >"$BT/changed.bin"
drop_caches
t0=$(now)
cat "$BT/changed.bin" >/dev/null
t_cat=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { print b - a }')
rm -f "$BT/changed.bin"

fail=0
misses=0
check() { # label, value, limit, kind (PASS/MISS on value <= limit)
    if awk -v v="$2" -v l="$3" 'BEGIN { exit !(v <= l) }'; then
        printf '  %-58s %8s <= %-6s PASS\n' "$1" "$2" "$3"
    else
        printf '  %-58s %8s >  %-6s MISS\n' "$1" "$2" "$3"
        misses=$((misses + 1))
    fi
}

replicate() { # label, source job, target job
    local label=$1 from=$2 to=$3 t0 t1 read src dst id
    "$BACKY" -b "$from" send -r "$FIRST" 2>>"$LOG/$label.send" | "$BACKY" -b "$to" receive 2>>"$LOG/$label.receive"
    drop_caches
    t0=$(now)
    "$BACKY" -b "$from" send --base "$FIRST" 2>"$LOG/$label.send.inc" | "$BACKY" -b "$to" receive 2>"$LOG/$label.receive.inc"
    t1=$(now)
    local t_send
    t_send=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
    read=$(sed -n 's/.*; read \([0-9]*\) bytes of images.*/\1/p' "$LOG/$label.send.inc")
    src=$(space "$from")
    dst=$(space "$to")
    for id in "${IDS[@]}"; do
        cmp -s "$from/$id" "$to/$id" && cmp -s "$from/$id.sums" "$to/$id.sums" ||
            { echo "  FAIL: revision $id differs after $label"; fail=1; }
    done
    echo "== $label"
    printf '  10 incrementals over a pipe: %.2f s; cold cat of the %d changed bytes: %.2f s\n' "$t_send" "$CHANGED" "$t_cat"
    printf '  sender read %d bytes of images; space: source %d, target %d bytes\n' "$read" "$src" "$dst"
    check "send|receive time / cat of the changed bytes" "$(awk -v a="$t_send" -v b="$t_cat" 'BEGIN { printf "%.2f", a / b }')" 4
    check "target space / source space" "$(awk -v a="$dst" -v b="$src" 'BEGIN { printf "%.4f", a / b }')" 1.02
    check "bytes read by send / changed bytes" "$(awk -v a="$read" -v b="$CHANGED" 'BEGIN { printf "%.2f", a / b }')" 2
}

replicate "btrfs -> XFS" "$BT/job" "$XF/job"
replicate "XFS -> btrfs" "$XF/job" "$BT/job2"

if ((fail)); then
    echo "FAIL: a received revision differs from the source"
    exit 1
fi
if ((STRICT && misses > 0)); then
    exit 1
fi
