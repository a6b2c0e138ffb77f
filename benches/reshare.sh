#!/usr/bin/env bash
# Benchmark: `backy reshare` after an `rsync -a` copy of a job directory, on a
# loop-mounted btrfs (or XFS with BENCH_FS=xfs).
#
#   benches/reshare.sh     (as root, after scripts/setup-test-deps.sh; about 5 minutes
#                           with the defaults)
#
# What it does:
#   * two sparse filesystems of the same kind, each on a loop device, inside one
#     `mktemp -d` directory that the EXIT trap unmounts, detaches and removes: one
#     for the source image and its job, one for the copy;
#   * a BENCH_SIZE_MIB VM-like source image of 1 MiB regions in a seeded random order
#     (15 % holes, 15 % written zeros, 40 % random bytes, 30 % repeated text), then
#     BENCH_REVISIONS backups with a change set of 1 % of the pages between two
#     (64 KiB writes of random bytes at 4 KiB-aligned random offsets), as
#     benches/backup.sh makes them;
#   * `rsync -a` of the job directory to the second filesystem: every revision a full
#     copy, holes written as zeros (rsync without --sparse);
#   * `backy reshare` on the copy with a cold page cache (sync, drop_caches), timed,
#     then a second run (nothing left to do), timed;
#   * space: "physical" = bytes of the union of the FIEMAP extents of the job's files
#     (a block shared by many files counts once), and the filesystem's used bytes
#     (df); for the source job, after the copy, and after reshare;
#   * checks, printed as PASS/MISS/FAIL: the reshared copy within 5 % of the source
#     job's physical bytes (MISS), and the sha256 of every image and manifest equal to
#     the source job's (FAIL exits 1).
#
# Environment: BENCH_SIZE_MIB (default 512; e.g. 64 for a smoke run), BENCH_REVISIONS
# (default 20), BENCH_SEED (default 20240521), BENCH_FS (btrfs or xfs, default btrfs),
# BENCH_STRICT=1 (exit 1 when a target is missed).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SIZE_MIB=${BENCH_SIZE_MIB:-512}
REVISIONS=${BENCH_REVISIONS:-20}
SEED=${BENCH_SEED:-20240521}
FS=${BENCH_FS:-btrfs}
STRICT=${BENCH_STRICT:-0}

die() { echo "reshare.sh: $*" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || die "must run as root (loop devices, mount, drop_caches)"
[[ $FS == btrfs || $FS == xfs ]] || die "BENCH_FS must be btrfs or xfs"
for tool in losetup "mkfs.$FS" rsync python3 sha256sum awk cargo mountpoint; do
    command -v "$tool" >/dev/null || die "missing tool: $tool"
done
[[ $REVISIONS =~ ^[1-9][0-9]*$ ]] || die "BENCH_REVISIONS must be a positive integer"

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
        echo "reshare.sh: could not unmount everything; left $WORK in place" >&2
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

attach() { # backing file -> loop device (direct I/O: no second copy in the page cache)
    losetup --find --show --direct-io=on "$1" 2>/dev/null || losetup --find --show "$1"
}

mkfs_mount() { # name size_mib
    local dev
    truncate -s "$2M" "$WORK/$1.img"
    dev=$(attach "$WORK/$1.img")
    LOOPS+=("$dev")
    if [[ $FS == btrfs ]]; then
        mkfs.btrfs -q -f "$dev" >/dev/null
    else
        mkfs.xfs -q -f -m reflink=1 "$dev" >/dev/null
    fi
    mkdir -p "$WORK/$1"
    mount "$dev" "$WORK/$1"
    MOUNTS+=("$WORK/$1")
}

echo "== preparing two $FS filesystems in $WORK"
# The source image, its job (about the image plus the changes) and room to spare;
# the copy holds every revision in full.
mkfs_mount src $((SIZE_MIB * 4 + 1024))
mkfs_mount copy $((SIZE_MIB * (REVISIONS + 2) * 11 / 10 + 1024))
SRC=$WORK/src/vm.img
JOB=$WORK/src/job
COPY=$WORK/copy/job
LOG=$WORK/logs
mkdir -p "$LOG"

# ---------------------------------------------------------------------------
cat >"$WORK/gen.py" <<'PY'
import os, random, sys

MiB = 1 << 20
PAGE = 4096
WRITE = 64 * 1024

def build(path, size_mib, seed):
    rng = random.Random(seed)
    n = size_mib
    n_hole, n_zero, n_rand = n * 15 // 100, n * 15 // 100, n * 40 // 100
    kinds = (["hole"] * n_hole + ["zero"] * n_zero + ["rand"] * n_rand
             + ["text"] * (n - n_hole - n_zero - n_rand))
    rng.shuffle(kinds)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, n * MiB)
        for i, kind in enumerate(kinds):
            if kind == "hole":
                continue
            if kind == "zero":
                data = bytes(MiB)
            elif kind == "rand":
                data = rng.randbytes(MiB)
            else:
                line = ("systemd[1]: Started Session %d of user root.\n" % rng.randrange(1000)).encode()
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

# The union of the physical extents (FS_IOC_FIEMAP) of the files under a directory.
cat >"$WORK/physical.py" <<'PY'
import fcntl, os, struct, sys

FS_IOC_FIEMAP = 0xC020660B
BATCH = 512
EXTENT = struct.Struct("=QQQ2QI3I")
HEADER = struct.Struct("=QQIIII")
LAST = 0x1

def extents(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        start = 0
        while True:
            buf = bytearray(HEADER.pack(start, (1 << 64) - 1 - start, 1, 0, BATCH, 0)
                            + bytes(EXTENT.size * BATCH))
            fcntl.ioctl(fd, FS_IOC_FIEMAP, buf)
            mapped = HEADER.unpack_from(buf)[3]
            if mapped == 0:
                return
            for i in range(mapped):
                logical, physical, length, _, _, flags, _, _, _ = EXTENT.unpack_from(
                    buf, HEADER.size + i * EXTENT.size)
                yield physical, physical + length
                start = logical + length
                if flags & LAST:
                    return
    finally:
        os.close(fd)

ranges = []
for dirpath, _, files in os.walk(sys.argv[1]):
    for name in files:
        p = os.path.join(dirpath, name)
        if os.path.isfile(p) and not os.path.islink(p):
            ranges.extend(extents(p))
ranges.sort()
total = covered = 0
for a, b in ranges:
    a = max(a, covered)
    if b > a:
        total += b - a
        covered = b
print(total)
PY

physical() { sync -f "$1"; python3 "$WORK/physical.py" "$1"; }
used() { sync -f "$1"; df -B1 --output=used "$1" | awk 'NR == 2 { print $1 }'; }
human() {
    awk -v b="$1" 'BEGIN { split("B KiB MiB GiB", u); i = 1
        while (b >= 1024 && i < 4) { b /= 1024; i++ }
        if (i == 1) printf "%d %s", b, u[i]; else printf "%.1f %s", b, u[i] }'
}
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
hashes() { # job dir -> sha256 of images and manifests, by name
    (cd "$1" && find . -maxdepth 1 -type f ! -name '.*' ! -name '*.rev' ! -name config \
        ! -name backy.log -printf '%P\n' | sort | xargs sha256sum)
}

echo "== making $REVISIONS revisions of a $SIZE_MIB MiB source (seed $SEED; not measured)"
python3 "$WORK/gen.py" build "$SRC" "$SIZE_MIB" "$SEED"
"$BACKY" -b "$JOB" init file "$SRC" >>"$LOG/backy.log" 2>&1
for ((r = 1; r <= REVISIONS; r++)); do
    ((r == 1)) || python3 "$WORK/gen.py" change "$SRC" 1 $((SEED + r))
    "$BACKY" -b "$JOB" backup daily >>"$LOG/backy.log" 2>&1
done
SRC_PHYS=$(physical "$JOB")
SRC_HASHES=$(hashes "$JOB")

echo "== rsync -a of the job to the second filesystem (not measured)"
USED_EMPTY=$(used "$WORK/copy")
rsync -a "$JOB/" "$COPY/"
COPY_PHYS=$(physical "$COPY")
COPY_USED=$(($(used "$WORK/copy") - USED_EMPTY))

echo "== backy reshare (cold page cache)"
drop_caches
t0=$EPOCHREALTIME
"$BACKY" -b "$COPY" reshare >"$LOG/reshare.out" 2>>"$LOG/backy.log" ||
    { tail -n 20 "$LOG/backy.log" >&2; die "reshare failed"; }
t1=$EPOCHREALTIME
FIRST=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
echo "   $(cat "$LOG/reshare.out")"
RESHARED_PHYS=$(physical "$COPY")
RESHARED_USED=$(($(used "$WORK/copy") - USED_EMPTY))

drop_caches
t0=$EPOCHREALTIME
"$BACKY" -b "$COPY" reshare >"$LOG/reshare2.out" 2>>"$LOG/backy.log" || die "second reshare failed"
t1=$EPOCHREALTIME
SECOND=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
echo "   second run: $(cat "$LOG/reshare2.out")"
COPY_HASHES=$(hashes "$COPY")

# ---------------------------------------------------------------------------
GIB=$(awk -v b="$COPY_PHYS" 'BEGIN { printf "%.3f", b / 1073741824 }')
echo
echo "Source: $SIZE_MIB MiB VM-like image (seed $SEED), $REVISIONS revisions, 1 % of the"
echo "pages changed between two; job copied with rsync -a to a second $FS. Physical ="
echo "union of the files' FIEMAP extents; used = df on the copy's filesystem."
echo
FMT='%-28s | %12s | %12s\n'
printf "$FMT" "" physical "df used"
echo "-----------------------------+--------------+-------------"
printf "$FMT" "source job" "$(human "$SRC_PHYS")" "-"
printf "$FMT" "rsync -a copy" "$(human "$COPY_PHYS")" "$(human "$COPY_USED")"
printf "$FMT" "copy after reshare" "$(human "$RESHARED_PHYS")" "$(human "$RESHARED_USED")"
echo
echo "reshare: $FIRST s for $(human "$COPY_PHYS") copied ($(awk -v t="$FIRST" -v g="$GIB" \
    'BEGIN { printf "%.2f", t / g }') s per GiB); second run $SECOND s"
echo "copy / source: $(awk -v a="$COPY_PHYS" -v b="$SRC_PHYS" 'BEGIN { printf "%.2f", a / b }')x;" \
    "after reshare / source: $(awk -v a="$RESHARED_PHYS" -v b="$SRC_PHYS" 'BEGIN { printf "%.3f", a / b }')x"
echo
MISSES=0
if awk -v a="$RESHARED_PHYS" -v b="$SRC_PHYS" 'BEGIN { exit !(a * 100 <= b * 105) }'; then
    echo "PASS  reshared copy within 5 % of the source job's physical bytes"
else
    echo "MISS  reshared copy not within 5 % of the source job's physical bytes"
    MISSES=1
fi
if [[ $SRC_HASHES == "$COPY_HASHES" ]]; then
    echo "PASS  every image and manifest has the source job's sha256"
else
    echo "FAIL  images or manifests differ from the source job's"
    diff <(echo "$SRC_HASHES") <(echo "$COPY_HASHES") | head >&2
    exit 1
fi
[[ $STRICT != 1 || $MISSES -eq 0 ]] || exit 1
exit 0
