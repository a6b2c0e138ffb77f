#!/usr/bin/env bash
# Benchmark: backy's own readers of a fragmented (aged) revision and of a fresh one
# (issue 15), on a loop-mounted btrfs and XFS.
#
#   benches/readers.sh                                   (root; about 5 minutes per filesystem)
#   BENCH_GENERATIONS=20 BENCH_SIZE_MIB=256 benches/readers.sh        (a quick run)
#
# Per filesystem, in one `mktemp -d` directory that the EXIT trap cleans up:
#   * a sparse filesystem image on a loop device (direct I/O) holding the source and
#     the jobs, and a tmpfs as "another filesystem" for restores to a file;
#   * a BENCH_SIZE_MIB source of 1 MiB regions in a seeded order (15 % holes, 15 %
#     written zeros, 70 % random bytes); a job "fresh" with one full backup of it;
#   * a job "aged": a full backup, then BENCH_GENERATIONS times a change set (runs of
#     4 KiB to 256 KiB of random bytes at random 4 KiB-aligned offsets until 1 % of
#     the pages are touched) and a backup. backy writes only the pages that changed,
#     so the newest revision is left in many small extents;
#   * each step cold (`sync; echo 3 > drop_caches` before it, plus the memory warm-up
#     of benches/warm.sh on guests that report free pages), the median of
#     BENCH_READS runs, against `cat` of a fresh copy of the newest image
#     (`cp --reflink=never`, on the same filesystem):
#       restore -r 0 - > /dev/null, restore -r 0 to a file on the tmpfs, verify -r 0,
#       nbdcopy of the newest through `backy nbd-server` (beside nbdkit's file plugin
#       serving the fresh copy), a backup without changes (its verification pass
#       reads the whole new image; the floor is `cat` of the source plus `cat` of the
#       fresh copy), and last `send` of the newest alone (the older revisions are
#       forgotten first, so the newest is sent whole);
#     PASS/MISS at 1.5x;
#   * the fresh job: restore to stdout vs `cat` of the revision file, restore to a file
#     on the tmpfs vs `cp --sparse=always` of it there; PASS/MISS at 1.1x.
#
# Environment: BENCH_GENERATIONS (default 100), BENCH_SIZE_MIB (default 1024),
# BENCH_SEED (default 15), BENCH_FS (default "btrfs xfs"), BENCH_READS (default 1),
# BENCH_NICE (niceness of the measured commands, e.g. -20 on a busy machine),
# BENCH_STRICT=1 (exit 1 when a target is missed), BACKY (default: the release build
# of this checkout), BACKY_BASELINE (another backy binary whose restore and verify
# are timed on the same history, for comparison).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
GENERATIONS=${BENCH_GENERATIONS:-100}
SIZE_MIB=${BENCH_SIZE_MIB:-1024}
SEED=${BENCH_SEED:-15}
FILESYSTEMS=${BENCH_FS:-btrfs xfs}
READS=${BENCH_READS:-1}
NICE=${BENCH_NICE:-0}
STRICT=${BENCH_STRICT:-0}
BASELINE=${BACKY_BASELINE:-}

die() { echo "readers.sh: $*" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || die "must run as root (loop devices, mount, drop_caches)"
for tool in losetup mkfs.btrfs mkfs.xfs python3 awk cargo mountpoint; do
    command -v "$tool" >/dev/null || die "missing tool: $tool"
done
[[ $GENERATIONS =~ ^[0-9]+$ ]] || die "BENCH_GENERATIONS must be a whole number"
[[ $SIZE_MIB =~ ^[1-9][0-9]*$ ]] || die "BENCH_SIZE_MIB must be a positive integer"
[[ $READS =~ ^[1-9][0-9]*$ ]] || die "BENCH_READS must be a positive integer"
if [[ -n ${BACKY:-} ]]; then
    [[ -x $BACKY ]] || die "BACKY=$BACKY is not executable"
    OWN_BACKY=$BACKY
fi
source "$ROOT/benches/lib.sh"
BACKY=${OWN_BACKY:-$BACKY}
[[ -z $BASELINE || -x $BASELINE ]] || die "BACKY_BASELINE=$BASELINE is not executable"
NBD=1
command -v nbdcopy >/dev/null && command -v nbdkit >/dev/null || NBD=0
PIDS=()
stop_servers() { local p; for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; PIDS=(); }
trap 'rc=$?; stop_servers; (exit $rc); cleanup' EXIT

cat >"$WORK/gen.py" <<'PY'
import os, random, sys
MiB, PAGE = 1 << 20, 4096
def build(path, size_mib, seed):
    rng = random.Random(seed)
    kinds = ["hole"] * (size_mib * 15 // 100) + ["zero"] * (size_mib * 15 // 100)
    kinds += ["rand"] * (size_mib - len(kinds))
    rng.shuffle(kinds)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.ftruncate(fd, size_mib * MiB)
    for i, kind in enumerate(kinds):
        if kind != "hole":
            os.pwrite(fd, bytes(MiB) if kind == "zero" else rng.randbytes(MiB), i * MiB)
    os.fsync(fd)
    os.close(fd)
def change(path, seed):
    rng = random.Random(seed)
    pages = os.path.getsize(path) // PAGE
    target, touched = -(-pages // 100), set()
    fd = os.open(path, os.O_RDWR)
    while len(touched) < target:
        n = rng.randint(1, 64)
        first = rng.randrange(0, pages - n + 1)
        os.pwrite(fd, rng.randbytes(n * PAGE), first * PAGE)
        touched.update(range(first, first + n))
    os.fsync(fd)
    os.close(fd)
if sys.argv[1] == "build":
    build(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
else:
    change(sys.argv[2], int(sys.argv[3]))
PY

# drop_caches() with the memory warm-up that free page reporting needs.
source "$ROOT/benches/warm.sh"
warm_setup 6 2
cold() { drop_caches; }
# seconds CMD...: the median of READS cold runs of CMD (stdout to /dev/null).
seconds() {
    local i t0 t1 times=()
    for ((i = 0; i < READS; i++)); do
        eval "${BEFORE:-}"
        cold
        t0=$(date +%s.%N)
        nice -n "$NICE" "$@" >/dev/null 2>>"$WORK/cmd.log" || echo "readers.sh: failed: $*" >&2
        t1=$(date +%s.%N)
        times+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')")
    done
    printf '%s\n' "${times[@]}" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'
}
MISSED=0
# row FS STEP SECONDS BASE LIMIT
row() {
    local ratio verdict=""
    ratio=$(awk -v t="$3" -v b="$4" 'BEGIN { printf "%.2f", t / b }')
    if [[ -n $5 ]]; then
        if awk -v r="$ratio" -v l="$5" 'BEGIN { exit !(r <= l) }'; then verdict="PASS (<= ${5}x)"; else verdict="MISS (> ${5}x)"; MISSED=1; fi
    fi
    printf '%-6s %-52s %8.2f %7sx  %s\n' "$1" "$2" "$3" "$ratio" "$verdict"
}
extents() { # filefrag-like count: physically contiguous FIEMAP extents merged
    filefrag "$1" 2>/dev/null | awk '{ print $2 }'
}

echo "== size ${SIZE_MIB} MiB, ${GENERATIONS} generations, reads ${READS}, nice ${NICE}, load $(cut -d' ' -f1-3 /proc/loadavg)"
for fs in $FILESYSTEMS; do
    img=$WORK/$fs.img mnt=$WORK/mnt-$fs other=$WORK/other-$fs
    truncate -s $((SIZE_MIB * 6 + 2048))M "$img"
    case $fs in
        btrfs) mkfs.btrfs -q "$img" ;;
        xfs) mkfs.xfs -q -m reflink=1 "$img" ;;
        *) die "unknown filesystem $fs (btrfs or xfs)" ;;
    esac
    dev=$(attach "$img"); LOOPS+=("$dev")
    mkdir -p "$mnt" "$other"
    mount "$dev" "$mnt"; MOUNTS+=("$mnt")
    mount -t tmpfs -o size=$((SIZE_MIB * 3))M tmpfs "$other"; MOUNTS+=("$other")
    src=$mnt/src.img
    python3 "$WORK/gen.py" build "$src" "$SIZE_MIB" "$SEED"
    for j in fresh aged; do
        "$BACKY" -b "$mnt/$j" init file "$src" >/dev/null 2>>"$WORK/cmd.log"
        "$BACKY" -b "$mnt/$j" backup daily >/dev/null 2>>"$WORK/cmd.log"
    done
    echo "== $fs: $GENERATIONS generations ($(date +%T))"
    for ((g = 1; g <= GENERATIONS; g++)); do
        python3 "$WORK/gen.py" change "$src" $((SEED * 1000 + g))
        "$BACKY" -b "$mnt/aged" backup daily >/dev/null 2>>"$WORK/cmd.log" || die "backup $g failed (see $WORK/cmd.log)"
    done
    newest=$(readlink -f "$mnt/aged/last")
    fresh=$mnt/fresh-copy.img
    cp --reflink=never "$newest" "$fresh"
    echo "== $fs: newest revision $(extents "$newest") extents, fresh copy $(extents "$fresh") ($(date +%T), load $(cut -d' ' -f1-3 /proc/loadavg))"
    printf '%-6s %-52s %8s %8s  %s\n' fs step seconds ratio target
    base=$(seconds cat "$fresh")
    row "$fs" "cat of the fresh copy (the base)" "$base" "$base" ""
    row "$fs" "cat of the newest revision" "$(seconds cat "$newest")" "$base" ""
    row "$fs" "restore -r 0 - (stdout)" "$(seconds "$BACKY" -b "$mnt/aged" restore -r 0 -)" "$base" 1.5
    row "$fs" "restore -r 0 FILE (on a tmpfs)" "$(BEFORE="rm -f $other/out" seconds "$BACKY" -b "$mnt/aged" restore -r 0 "$other/out")" "$base" 1.5
    rm -f "$other/out"
    row "$fs" "verify -r 0" "$(seconds "$BACKY" -b "$mnt/aged" verify -r 0)" "$base" 1.5
    if [[ -n $BASELINE ]]; then
        row "$fs" "baseline: restore -r 0 -" "$(seconds "$BASELINE" -b "$mnt/aged" restore -r 0 -)" "$base" ""
        row "$fs" "baseline: verify -r 0" "$(seconds "$BASELINE" -b "$mnt/aged" verify -r 0)" "$base" ""
    fi
    if ((NBD)); then
        sock=$WORK/nbd-$fs.sock
        "$BACKY" -b "$mnt/aged" nbd-server --socket "$sock" 2>>"$WORK/cmd.log" &
        PIDS+=($!)
        nbdkit -f -U "$WORK/kit-$fs.sock" file "$fresh" 2>>"$WORK/cmd.log" &
        PIDS+=($!)
        for _ in $(seq 50); do [[ -S $sock && -S $WORK/kit-$fs.sock ]] && break; sleep 0.1; done
        kit=$(seconds nbdcopy "nbd+unix:///?socket=$WORK/kit-$fs.sock" null:)
        row "$fs" "nbdcopy via nbdkit file of the fresh copy" "$kit" "$base" ""
        row "$fs" "nbdcopy via backy nbd-server of the newest" "$(seconds nbdcopy "nbd+unix:///?socket=$sock" null:)" "$base" 1.5
        row "$fs" "  the same against nbdkit's" "$(seconds nbdcopy "nbd+unix:///?socket=$sock" null:)" "$kit" 1.5
        stop_servers
    fi
    cold; t0=$(date +%s.%N); cat "$src" >/dev/null; t1=$(date +%s.%N)
    src_cat=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
    floor=$(awk -v a="$src_cat" -v b="$base" 'BEGIN { printf "%.3f", a + b }')
    row "$fs" "cat of the source + cat of the fresh copy (floor)" "$floor" "$base" ""
    backup=$(READS=1 seconds "$BACKY" -b "$mnt/aged" backup daily)
    row "$fs" "backup, no change (verification reads it all) vs floor" "$backup" "$floor" 1.5
    # send of the newest alone: forget the others, so it is sent whole.
    keep=$(basename "$(readlink -f "$mnt/aged/last")")
    for r in "$mnt"/aged/*.rev; do
        id=$(basename "$r" .rev)
        [[ $id == "$keep" ]] || "$BACKY" -b "$mnt/aged" forget -r "$id" >/dev/null 2>>"$WORK/cmd.log" || true
    done
    row "$fs" "send of the newest alone (> /dev/null)" "$(seconds "$BACKY" -b "$mnt/aged" send)" "$base" 1.5

    echo "-- $fs fresh revision ($(extents "$(readlink -f "$mnt/fresh/last")") extents)"
    rev=$(readlink -f "$mnt/fresh/last")
    t_cat=$(seconds cat "$rev")
    row "$fs" "cat of the fresh revision" "$t_cat" "$t_cat" ""
    row "$fs" "restore -r 0 - (stdout) vs cat" "$(seconds "$BACKY" -b "$mnt/fresh" restore -r 0 -)" "$t_cat" 1.1
    t_cp=$(BEFORE="rm -f $other/out" seconds cp --sparse=always "$rev" "$other/out")
    row "$fs" "cp --sparse=always to the tmpfs" "$t_cp" "$t_cp" ""
    row "$fs" "restore -r 0 FILE (on the tmpfs) vs cp" "$(BEFORE="rm -f $other/out" seconds "$BACKY" -b "$mnt/fresh" restore -r 0 "$other/out")" "$t_cp" 1.1
    rm -f "$other/out"
    echo "== $fs done ($(date +%T), load $(cut -d' ' -f1-3 /proc/loadavg))"
    umount "$other"; umount "$mnt"
done
if ((STRICT && MISSED)); then exit 1; fi
