#!/usr/bin/env bash
# Benchmark: backups of large sparse images take time in proportion to their data,
# not their size. A 1 TiB and a 4 TiB sparse image file hold the same 2 GiB of data;
# each gets a full backup and an incremental after 1 % of that data changed.
#
#   benches/sparse.sh      (as root; about 3-5 minutes for both filesystems)
#
# What it does, per filesystem (btrfs, then XFS with reflink=1):
#   * a sparse 24 GiB filesystem image on a loop device (its own backing file is
#     sparse too: it holds the two sources' data, the jobs and their metadata),
#     inside one `mktemp -d` directory that the EXIT trap unmounts, detaches and
#     removes; the next filesystem starts only after the previous one is gone;
#   * two source images, one of BENCH_SMALL_GIB (default 1024) and one of
#     BENCH_LARGE_GIB (default 4096) GiB apparent size, holding the same BENCH_DATA_MIB
#     (default 2048) MiB of data in 64 equal regions spread evenly from the first
#     byte to the last (region i at i/63 of the way, 1 MiB-aligned), each MiB seeded
#     random bytes or repeated text (log-like lines), alternating;
#   * per image: `backy init file`, a full backup, then a change set (64 KiB writes
#     of seeded random bytes at 4 KiB-aligned random offsets inside the data regions,
#     until the distinct 4 KiB pages touched reach 1 % of the data's pages; the same
#     relative offsets in both images) and an incremental backup;
#   * the baseline: a cold read of only the data of the source (SEEK_DATA/SEEK_HOLE,
#     1 MiB reads), the floor of any backup that reads the source once;
#   * before every measured command: `sync; echo 3 > /proc/sys/vm/drop_caches`;
#   * the manifests (`.sums`) of both revisions: apparent size (32 bytes per 64 KiB
#     block, so 512 MiB per TiB) and allocated bytes (`du -B1`: holes are free).
#   Checks, printed as PASS/MISS: the large image's full and incremental backup each
#   take at most 1.25x the small image's (time follows the data, not the size);
#   restore sha256 == source sha256 for the newest revision of the small image is
#   left out (it would read 1 TiB of zeros); `backy verify` is timed instead, which
#   reads the revision back against its manifest.
#
# Other work may run on this machine at the same time: the load average is printed
# at the start and at the end of each filesystem's run.
#
# Environment: BENCH_FS (default "btrfs xfs"), BENCH_SMALL_GIB (1024),
# BENCH_LARGE_GIB (4096), BENCH_DATA_MIB (2048; e.g. 256 for a smoke run),
# BENCH_SEED (20261202), BENCH_NICE (e.g. -20: run every measured command at that
# niceness),
# BENCH_STRICT=1 (exit 1 when a target is missed).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FILESYSTEMS=${BENCH_FS:-btrfs xfs}
SMALL_GIB=${BENCH_SMALL_GIB:-1024}
LARGE_GIB=${BENCH_LARGE_GIB:-4096}
DATA_MIB=${BENCH_DATA_MIB:-2048}
SEED=${BENCH_SEED:-20261202}
NICE=${BENCH_NICE:-0}
STRICT=${BENCH_STRICT:-0}
TARGET=1.25

die() { echo "sparse.sh: $*" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || die "must run as root (loop devices, mount, drop_caches)"
for tool in losetup mkfs.btrfs mkfs.xfs python3 awk cargo mountpoint du; do
    command -v "$tool" >/dev/null || die "missing tool: $tool"
done
for v in SMALL_GIB LARGE_GIB DATA_MIB; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "BENCH_$v must be a positive integer"
done
((DATA_MIB % 64 == 0)) || die "BENCH_DATA_MIB must be a multiple of 64 (64 regions of whole MiB)"

# $BACKY, $WORK, the EXIT trap that unmounts what MOUNTS/LOOPS list, attach().
source "$ROOT/benches/lib.sh"
LOG=$WORK/logs
mkdir -p "$LOG"

cat >"$WORK/gen.py" <<'PY'
import os, random, sys

MiB = 1 << 20
PAGE = 4096
WRITE = 64 * 1024
REGIONS = 64

def regions(size, data_mib):
    """(offset, length) of the 64 data regions, spread from the start to the end."""
    per = data_mib // REGIONS * MiB
    span = size - per
    return [(span * i // (REGIONS - 1) // MiB * MiB, per) for i in range(REGIONS)]

def build(path, size, data_mib, seed):
    rng = random.Random(seed)
    lines = ("kernel: usb 1-1: new high-speed USB device number %d using ehci-pci\n",
             "systemd[1]: Started Session %d of user root.\n",
             "INSERT INTO log VALUES (%d, 'ok', NULL);\n")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, size)
        n = 0
        for off, length in regions(size, data_mib):
            for at in range(off, off + length, MiB):
                if n % 2 == 0:
                    data = rng.randbytes(MiB)
                else:
                    line = (rng.choice(lines) % rng.randrange(1000)).encode()
                    data = (line * (MiB // len(line) + 1))[:MiB]
                os.pwrite(fd, data, at)
                n += 1
        os.fsync(fd)
    finally:
        os.close(fd)

def change(path, size, data_mib, percent, seed):
    rng = random.Random(seed)
    regs = regions(size, data_mib)
    target = -(-(data_mib * MiB // PAGE) * percent // 100)
    writes, touched = [], set()
    while len(touched) < target:
        off, length = regs[rng.randrange(REGIONS)]
        at = off + rng.randrange(0, (length - WRITE) // PAGE + 1) * PAGE
        writes.append((at, rng.randbytes(WRITE)))
        touched.update(range(at // PAGE, (at + WRITE) // PAGE))
    fd = os.open(path, os.O_RDWR)
    try:
        for at, data in writes:
            os.pwrite(fd, data, at)
        os.fsync(fd)
    finally:
        os.close(fd)
    print("writes=%d touched_pages=%d" % (len(writes), len(touched)))

def read_data(path):
    """Reads only the data of a sparse file (SEEK_DATA/SEEK_HOLE), 1 MiB at a time."""
    fd = os.open(path, os.O_RDONLY)
    total = 0
    try:
        size = os.fstat(fd).st_size
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            while start < end:
                n = len(os.pread(fd, min(MiB, end - start), start))
                if n == 0:
                    break
                total += n
                start += n
            pos = end
    finally:
        os.close(fd)
    print(total)

mode = sys.argv[1]
if mode == "build":
    build(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
elif mode == "change":
    change(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]))
else:
    read_data(sys.argv[2])
PY

drop_caches() {
    sync
    echo 3 >/proc/sys/vm/drop_caches
}
LAST=0
measure() { # LOGFILE CMD... : cold caches, then the wall time of CMD
    local log=$1 t0 t1 rc=0
    shift
    drop_caches
    t0=$EPOCHREALTIME
    # At BENCH_NICE (a subshell, since CMD may be a shell function).
    (
        ((NICE == 0)) || renice -n "$NICE" -p "$BASHPID" >/dev/null
        "$@"
    ) >>"$log" 2>&1 || rc=$?
    t1=$EPOCHREALTIME
    if [[ $rc -ne 0 ]]; then
        echo "sparse.sh: '$*' failed with exit $rc; last lines of $log:" >&2
        tail -n 20 "$log" >&2
        exit 1
    fi
    LAST=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
}
backy() { "$BACKY" "$@"; }
div() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
le() { awk -v a="$1" -v b="$2" 'BEGIN { print (a <= b) ? 1 : 0 }'; }
human() {
    awk -v b="$1" 'BEGIN { split("B KiB MiB GiB TiB", u); i = 1
        while (b >= 1024 && i < 5) { b /= 1024; i++ }
        if (i == 1) printf "%d %s", b, u[i]; else printf "%.1f %s", b, u[i] }'
}

declare -A R
ROWS=()
MISSES=0
echo "== load average at start: $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) CPUs)"
for fs in $FILESYSTEMS; do
    echo
    echo "== $fs: ${SMALL_GIB} GiB and ${LARGE_GIB} GiB sparse images holding the same ${DATA_MIB} MiB"
    img=$WORK/$fs.img
    truncate -s 24G "$img"
    dev=$(attach "$img")
    LOOPS+=("$dev")
    case $fs in
        btrfs) mkfs.btrfs -q -f "$dev" >/dev/null ;;
        xfs) mkfs.xfs -q -f -m reflink=1 "$dev" >/dev/null ;;
        *) die "unknown filesystem $fs (btrfs or xfs)" ;;
    esac
    mnt=$WORK/$fs
    mkdir -p "$mnt"
    mount "$dev" "$mnt"
    MOUNTS+=("$mnt")
    for gib in "$SMALL_GIB" "$LARGE_GIB"; do
        size=$((gib << 30))
        src=$mnt/src-$gib.img
        job=$mnt/job-$gib
        k=$fs:$gib
        python3 "$WORK/gen.py" build "$src" "$size" "$DATA_MIB" "$SEED"
        measure "$LOG/read.log" python3 "$WORK/gen.py" read "$src"
        R[read:$k]=$LAST
        backy -b "$job" init file "$src" >>"$LOG/backy.log" 2>&1
        measure "$LOG/backy-$fs-$gib.log" backy -v -b "$job" backup daily
        R[full:$k]=$LAST
        full_id=$(readlink "$job/last")
        out=$(python3 "$WORK/gen.py" change "$src" "$size" "$DATA_MIB" 1 $((SEED + 1)))
        measure "$LOG/backy-$fs-$gib.log" backy -v -b "$job" backup daily
        R[inc:$k]=$LAST
        inc_id=$(readlink "$job/last")
        measure "$LOG/backy-$fs-$gib.log" backy -b "$job" verify -r "$inc_id"
        R[verify:$k]=$LAST
        sync
        for id in "$full_id" "$inc_id"; do
            sums=$job/$id.sums
            R[sums:$k:$id]="$(stat -c %s "$sums") $(du -B1 "$sums" | cut -f1)"
        done
        read -r R[sa:$k] R[sd:$k] <<<"${R[sums:$k:$full_id]}"
        read -r R[ia:$k] R[id:$k] <<<"${R[sums:$k:$inc_id]}"
        printf '   %5s GiB: data read %6.2f s | full %6.2f s | 1 %% incremental %6.2f s (%s) | verify %6.2f s\n' \
            "$gib" "${R[read:$k]}" "${R[full:$k]}" "${R[inc:$k]}" "$out" "${R[verify:$k]}"
        rm -rf "$job"
        rm -f "$src"
    done
    R[load:$fs]=$(cut -d' ' -f1-3 /proc/loadavg)
    echo "   load average: ${R[load:$fs]}"
    umount "$mnt"
    losetup -d "$dev"
    rm -f "$img"
    ROWS+=("$fs")
done

echo
echo "Sparse image files holding ${DATA_MIB} MiB of data in 64 regions spread over the whole"
echo "size; jobs on the same loop-mounted filesystem. Wall seconds, caches dropped before"
echo "each command. data read = a cold read of only the source's data (SEEK_DATA), the"
echo "floor of a backup. sums = the revision's manifest: apparent size / allocated bytes."
echo
FMT='%-6s | %8s | %9s | %8s %6s | %8s %6s | %8s | %-21s | %-21s\n'
printf "$FMT" fs size "data read" full "x read" "1 % inc" "x read" verify "sums full (app/alloc)" "sums inc (app/alloc)"
echo "-------+----------+-----------+-----------------+-----------------+----------+-----------------------+----------------------"
for fs in "${ROWS[@]}"; do
    for gib in "$SMALL_GIB" "$LARGE_GIB"; do
        k=$fs:$gib
        printf "$FMT" "$fs" "$gib GiB" "${R[read:$k]}" "${R[full:$k]}" "$(div "${R[full:$k]}" "${R[read:$k]}")x" \
            "${R[inc:$k]}" "$(div "${R[inc:$k]}" "${R[read:$k]}")x" "${R[verify:$k]}" \
            "$(human "${R[sa:$k]}") / $(human "${R[sd:$k]}")" "$(human "${R[ia:$k]}") / $(human "${R[id:$k]}")"
    done
done
echo
for fs in "${ROWS[@]}"; do
    echo "Load average after $fs: ${R[load:$fs]} ($(nproc) CPUs); other work may have run."
done
echo
for fs in "${ROWS[@]}"; do
    for step in full inc verify; do
        x=$(div "${R[$step:$fs:$LARGE_GIB]}" "${R[$step:$fs:$SMALL_GIB]}")
        case $step in full) what="full backup" ;; inc) what="1 % incremental" ;; *) what="verify" ;; esac
        if [[ $(le "$x" "$TARGET") == 1 ]]; then
            echo "PASS  $fs: $what of the ${LARGE_GIB} GiB image within ${TARGET}x of the ${SMALL_GIB} GiB one (${x}x)"
        else
            echo "MISS  $fs: $what of the ${LARGE_GIB} GiB image within ${TARGET}x of the ${SMALL_GIB} GiB one (${x}x)"
            MISSES=$((MISSES + 1))
        fi
    done
done
[[ $STRICT != 1 || $MISSES -eq 0 ]] || exit 1
exit 0
