#!/usr/bin/env bash
# Benchmark: a job that ages (issue 15). 100 generations of scattered 1 % changes to a
# 1 GiB VM-like image, a backup after each, by backy and by backy 2.1.5, on a
# loop-mounted btrfs and XFS; then how the newest revision reads, what the job takes
# on disk, and how the backups kept up.
#
#   benches/aging.sh      (as root, after scripts/setup-test-deps.sh; about 7 minutes
#                          per filesystem with the defaults, needs ~14 GiB free in
#                          $TMPDIR, one filesystem at a time)
#   BENCH_GENERATIONS=20 BENCH_SIZE_MIB=256 benches/aging.sh     (a quick run)
#
# What it does, per filesystem (btrfs, then XFS with reflink=1), inside one
# `mktemp -d` directory that the EXIT trap unmounts, detaches and removes:
#   * a 16 GiB sparse filesystem image on a loop device (direct I/O) holding the
#     source, both job directories and the fresh copies;
#   * a BENCH_SIZE_MIB source image of 1 MiB regions in a seeded random order: 15 %
#     holes, 15 % written zeros, 40 % random bytes, 30 % repeated text (as
#     benches/backup.sh); a full backup by each tool;
#   * BENCH_GENERATIONS times: a change set, then a backup by backy, then one by
#     backy 2.1.5 (both back up the same source state). A change set is runs of 4 KiB
#     to 256 KiB (a whole number of 4 KiB pages, uniform) of seeded random bytes at
#     random 4 KiB-aligned offsets, added until the distinct pages touched reach 1 %
#     of the image's pages. The 1st to 3rd and the last 3 incrementals are measured
#     cold (`sync; echo 3 > drop_caches` and the warm-up of benches/warm.sh before each; the others run with whatever
#     the cache holds, which does not change what lands on disk);
#   * the 1st and the last incremental also BENCH_REDO more times from the same
#     state (cold, each new revision forgotten again with `forget -r 0 --force`), so
#     the ageing target compares two medians of one change set each instead of
#     different generations' change sets (backy only: 2.1.5 has no forget);
#   * the floor of those two incrementals with full verification: a cold read of
#     the source plus one of the new revision (the 1st revision right after it is
#     made, the newest at the end), and beside it the same plus a cold reflink
#     clone of that revision (`cp --reflink=always`, synced), which every backup
#     starts with and whose cost on btrfs grows with the parent's extents;
#   * then, each read cold and BENCH_READS times (median): `cat` of the newest
#     revision's image, `cat` of a fresh copy of the same bytes made on the same
#     filesystem with `cp --reflink=never` (cp reflinks by default), and
#     `backy restore -r 0 -` to /dev/null;
#   * extents of the newest image: FIEMAP extents, physically contiguous ones merged
#     (what `filefrag` counts);
#   * space: the union of the physical extents (FIEMAP) of every file in the job
#     directory (images, manifests, .rev), so shared extents count once; "ideal" =
#     the non-zero 4 KiB pages of the first image + every page a change set changed;
#   * the time of `backy forget` of the oldest revision (the full backup), and for
#     backy 2.1.5 the removal of its files (what its expiry does).
#   * PASS/MISS: backy's cat of the newest (x the fresh copy) no worse than 2.1.5's on
#     the same history; backy's restore to stdout at most 1.5x the fresh copy's cat;
#     space at most 1.4x ideal; the last incremental at most 1.2x the 1st (medians
#     of the BENCH_REDO + 1 runs of each; the medians of the first 3 and the last 3
#     generations are printed beside).
#
# Environment: BENCH_GENERATIONS (default 100), BENCH_SIZE_MIB (default 1024),
# BENCH_SEED (default 20261202), BENCH_FS (default "btrfs xfs"), BENCH_READS (default 3),
# BENCH_REDO (default 4; see above),
# BENCH_TOOLS (default "backy backy21"; "backy" alone skips 2.1.5 and its checks),
# BENCH_JOB_CONFIG (lines appended to backy's job config, to compare write layouts),
# BENCH_COWEXTSIZE (XFS only: `xfs_io -c "cowextsize N"` on backy's job directory before the
# first backup, inherited by its new files), BENCH_DEFRAG=1 (after the history, defragment
# the newest revision, `btrfs filesystem defragment` or `xfs_fsr`, and print its cost),
# BENCH_WARM_GIB (see benches/warm.sh), BENCH_SOURCE_COW=1 (btrfs: leave the source copy-on-write, so that it fragments as
# it is overwritten, as the job does; by default it is nodatacow, as VM images on btrfs are),
# BENCH_NICE (niceness of the measured commands, e.g. -20 on a busy machine),
# BENCH_STRICT=1 (exit 1 when a target is missed), BENCH_KEEP=1 (leave the histories
# mounted afterwards and say where, to study them; clean up by hand), BACKY (default: the release build
# of this checkout), BACKY21 (default target/backy21/bin/backy21).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
GENERATIONS=${BENCH_GENERATIONS:-100}
SIZE_MIB=${BENCH_SIZE_MIB:-1024}
SEED=${BENCH_SEED:-20261202}
FILESYSTEMS=${BENCH_FS:-btrfs xfs}
READS=${BENCH_READS:-3}
REDO=${BENCH_REDO:-4}
TOOLS=${BENCH_TOOLS:-backy backy21}
JOB_CONFIG=${BENCH_JOB_CONFIG:-}
COWEXTSIZE=${BENCH_COWEXTSIZE:-}
DEFRAG=${BENCH_DEFRAG:-0}
SOURCE_COW=${BENCH_SOURCE_COW:-0}
NICE=${BENCH_NICE:-0}
STRICT=${BENCH_STRICT:-0}
BACKY21=${BACKY21:-$ROOT/target/backy21/bin/backy21}

die() { echo "aging.sh: $*" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || die "must run as root (loop devices, mount, drop_caches)"
for tool in losetup mkfs.btrfs mkfs.xfs python3 sha256sum awk cargo mountpoint; do
    command -v "$tool" >/dev/null || die "missing tool: $tool"
done
[[ $GENERATIONS =~ ^[1-9][0-9]*$ ]] || die "BENCH_GENERATIONS must be a positive integer"
[[ $SIZE_MIB =~ ^[1-9][0-9]*$ ]] || die "BENCH_SIZE_MIB must be a positive integer"
[[ $READS =~ ^[1-9][0-9]*$ ]] || die "BENCH_READS must be a positive integer"
[[ $REDO =~ ^[0-9]+$ ]] || die "BENCH_REDO must be a whole number"
OLD=0
[[ " $TOOLS " == *" backy21 "* ]] && OLD=1
if ((OLD)); then
    [[ -x $BACKY21 ]] || die "no backy 2.1.5 launcher at $BACKY21; run scripts/setup-test-deps.sh first"
fi

if [[ -n ${BACKY:-} ]]; then
    [[ -x $BACKY ]] || die "BACKY=$BACKY is not executable"
    OWN_BACKY=$BACKY
fi
# $BACKY, $WORK, the EXIT trap that unmounts what MOUNTS/LOOPS list, attach().
source "$ROOT/benches/lib.sh"
BACKY=${OWN_BACKY:-$BACKY}
LOG=$WORK/logs
mkdir -p "$LOG"

# ---------------------------------------------------------------------------
# Seeded generator (system python3, stdlib only): the image, the change sets, and
# FIEMAP figures.
cat >"$WORK/gen.py" <<'PY'
import fcntl, os, random, struct, sys

MiB = 1 << 20
PAGE = 4096

def build(path, size_mib, seed):
    rng = random.Random(seed)
    n = size_mib
    n_hole = n * 15 // 100
    n_zero = n * 15 // 100
    n_rand = n * 40 // 100
    kinds = ["hole"] * n_hole + ["zero"] * n_zero + ["rand"] * n_rand
    kinds += ["text"] * (n - len(kinds))
    rng.shuffle(kinds)
    lines = ("kernel: usb 1-1: new high-speed USB device number %d using ehci-pci\n",
             "systemd[1]: Started Session %d of user root.\n",
             "INSERT INTO log VALUES (%d, 'ok', NULL);\n",
             "<div class=\"row\"><span>%d</span></div>\n")
    data_pages = 0
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
                data_pages += MiB // PAGE
            else:
                line = (rng.choice(lines) % rng.randrange(1000)).encode()
                data = (line * (MiB // len(line) + 1))[:MiB]
                data_pages += MiB // PAGE
            os.pwrite(fd, data, i * MiB)
        os.fsync(fd)
    finally:
        os.close(fd)
    print(data_pages * PAGE)

def change(path, percent, seed):
    """Runs of 1..64 pages of random bytes until `percent` of the pages are touched;
    prints the pages whose content changed, x 4096."""
    rng = random.Random(seed)
    pages = os.path.getsize(path) // PAGE
    target = -(-pages * percent // 100)
    writes, touched = [], set()
    while len(touched) < target:
        n = rng.randint(1, 64)
        first = rng.randrange(0, pages - n + 1)
        writes.append((first, rng.randbytes(n * PAGE)))
        touched.update(range(first, first + n))
    fd = os.open(path, os.O_RDWR)
    try:
        old = {p: os.pread(fd, PAGE, p * PAGE) for p in touched}
        for first, data in writes:
            os.pwrite(fd, data, first * PAGE)
        os.fsync(fd)
        changed = sum(1 for p in touched if os.pread(fd, PAGE, p * PAGE) != old[p])
    finally:
        os.close(fd)
    print(changed * PAGE, len(writes))

FS_IOC_FIEMAP = 0xC020660B
FIEMAP_FLAG_SYNC = 1
LAST, UNKNOWN, DELALLOC, INLINE = 0x1, 0x2, 0x4, 0x200
EXT = struct.Struct("=QQQQQIIII")   # logical physical length reserved[2] flags reserved[3]
HEAD = struct.Struct("=QQIIII")     # start length flags mapped count reserved

def extents(path):
    """(logical, physical, length, flags) of every extent of the file."""
    out, start, count = [], 0, 512
    with open(path, "rb") as f:
        while True:
            buf = bytearray(HEAD.size + count * EXT.size)
            HEAD.pack_into(buf, 0, start, (1 << 64) - 1 - start, FIEMAP_FLAG_SYNC, 0, count, 0)
            fcntl.ioctl(f.fileno(), FS_IOC_FIEMAP, buf)
            mapped = HEAD.unpack_from(buf, 0)[3]
            if mapped == 0:
                return out
            for i in range(mapped):
                lo, ph, ln, _, _, fl, _, _, _ = EXT.unpack_from(buf, HEAD.size + i * EXT.size)
                out.append((lo, ph, ln, fl))
            if out[-1][3] & LAST:
                return out
            start = out[-1][0] + out[-1][2]

def count(path):
    """Extents, physically and logically contiguous ones merged (as filefrag)."""
    n, end = 0, None
    for lo, ph, ln, fl in extents(path):
        if end != (lo, ph):
            n += 1
        end = (lo + ln, ph + ln)
    return n

def space(directory):
    """Bytes of the union of the physical extents of the directory's files."""
    ranges, inline = [], 0
    for name in os.listdir(directory):
        p = os.path.join(directory, name)
        if os.path.islink(p) or not os.path.isfile(p):
            continue
        for lo, ph, ln, fl in extents(p):
            if fl & (INLINE | UNKNOWN | DELALLOC):
                inline += ln
            else:
                ranges.append((ph, ph + ln))
    ranges.sort()
    total, cur_s, cur_e = 0, None, None
    for s, e in ranges:
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        total += cur_e - cur_s
    return total + inline

cmd = sys.argv[1]
if cmd == "build":
    build(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
elif cmd == "change":
    change(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
elif cmd == "extents":
    print(count(sys.argv[2]))
elif cmd == "space":
    print(space(sys.argv[2]))
PY

# drop_caches() with the memory warm-up that free page reporting needs.
source "$ROOT/benches/warm.sh"
warm_setup 6 2
now() { echo "$EPOCHREALTIME"; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
div() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
median() { tr ' ' '\n' <<<"$*" | sort -g | awk '{ a[NR] = $1 }
        END { printf "%.2f\n", (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
mib() { awk -v b="$1" 'BEGIN { printf "%.0f", b / 1048576 }'; }
load() { cut -d' ' -f1-3 /proc/loadavg; }

# run LOGFILE CMD... : CMD at $NICE, its output to LOGFILE; exits with its log on failure
run() {
    local log=$1 rc=0
    shift
    nice -n "$NICE" "$@" >>"$log" 2>&1 || rc=$?
    if [[ $rc -ne 0 ]]; then
        echo "aging.sh: '$*' failed with exit $rc; last lines of $log:" >&2
        tail -n 20 "$log" >&2
        exit 1
    fi
}
# timed KEY LOGFILE CMD... : like run, the wall time added to R[KEY]
declare -A R
timed() {
    local key=$1 t0
    shift
    t0=$(now)
    run "$@"
    LAST=$(since "$t0")
    R[$key]="${R[$key]:+${R[$key]} }$LAST"
}
# cold_read KEY FILE|restore JOB
cold_read() {
    local key=$1 t0
    drop_caches
    t0=$(now)
    if [[ $2 == restore ]]; then
        nice -n "$NICE" "$BACKY" -b "$3" restore -r 0 - >/dev/null 2>>"$LOG/restore.log" ||
            die "backy restore -r 0 - failed; see $LOG/restore.log"
    else
        nice -n "$NICE" cat "$2" >/dev/null
    fi
    R[$key]="${R[$key]:+${R[$key]} }$(since "$t0")"
}

# cold_clone KEY FILE DEST: a cold reflink clone of FILE (what every backup starts
# with) to DEST on the same filesystem, synced, then removed.
cold_clone() {
    local key=$1 t0
    drop_caches
    t0=$(now)
    nice -n "$NICE" cp --reflink=always "$2" "$3" && sync -f "$3"
    R[$key]="${R[$key]:+${R[$key]} }$(since "$t0")"
    rm -f "$3"
}

MISSES=0
RESULTS=()
check() { # ok(1/0) description
    local line
    if [[ $1 -eq 1 ]]; then line="PASS  $2"; else line="MISS  $2"; MISSES=$((MISSES + 1)); fi
    echo "$line"
    RESULTS+=("$line")
}
le() { awk -v a="$1" -v b="$2" 'BEGIN { print (a != "-" && b != "-" && a <= b) ? 1 : 0 }'; }

TABLE=()
age_one() { # filesystem
    local fs=$1 mnt=$WORK/$1 img=$WORK/$1.fs dev g seed out chg ideal base t tools
    R=()
    truncate -s 16G "$img"
    dev=$(attach "$img")
    LOOPS+=("$dev")
    case $fs in
        btrfs) mkfs.btrfs -q -f "$dev" >/dev/null ;;
        xfs) mkfs.xfs -q -f -m reflink=1 "$dev" >/dev/null ;;
        *) die "BENCH_FS: unknown filesystem $fs (btrfs, xfs)" ;;
    esac
    mkdir -p "$mnt"
    mount "$dev" "$mnt"
    MOUNTS+=("$mnt")
    local src=$mnt/vm.img job=$mnt/job-backy old=$mnt/job-backy21
    echo "== $fs: $SIZE_MIB MiB source, $GENERATIONS generations (seed $SEED), load $(load)"
    if [[ $fs == btrfs && $SOURCE_COW != 1 ]]; then
        # A VM's disk image on btrfs is nodatacow (libvirt and qemu-img's nocow
        # do that): overwritten in place, it does not fragment as the job ages,
        # so what ages here is the job alone. BENCH_SOURCE_COW=1 lets it fragment.
        : >"$src"
        chattr +C "$src"
    fi
    base=$(python3 "$WORK/gen.py" build "$src" "$SIZE_MIB" "$SEED")
    ideal=$base
    "$BACKY" -b "$job" init file "$src" >>"$LOG/backy.log" 2>&1
    if [[ -n $JOB_CONFIG ]]; then
        printf '%s\n' "$JOB_CONFIG" >>"$job/config"
        echo "   backy job config: $(tr '\n' ' ' <"$job/config")"
    fi
    if [[ -n $COWEXTSIZE && $fs == xfs ]]; then
        xfs_io -c "cowextsize $COWEXTSIZE" "$job"
        echo "   backy job directory: $(xfs_io -c cowextsize "$job")"
    fi
    ((OLD)) && "$BACKY21" -b "$old" init file "$src" >>"$LOG/backy21.log" 2>&1
    drop_caches
    timed full:backy "$LOG/backy.log" "$BACKY" -b "$job" backup daily
    local first_new first_old
    first_new=$(basename "$(readlink -f "$job/last")")
    if ((OLD)); then
        drop_caches
        timed full:old "$LOG/backy21.log" "$BACKY21" -b "$old" backup daily
        first_old=$(basename "$(readlink -f "$old/last")")
    fi
    echo "   full backup: backy ${R[full:backy]} s$( ((OLD)) && echo ", 2.1.5 ${R[full:old]} s")"
    cold_read src:first "$src"
    local t_start
    t_start=$(now)
    for ((g = 1; g <= GENERATIONS; g++)); do
        seed=$((SEED + g))
        out=$(python3 "$WORK/gen.py" change "$src" 1 "$seed")
        chg=${out%% *}
        ideal=$((ideal + chg))
        local cold=0 key=warm
        if ((g <= 3)); then cold=1 key=first; fi
        if ((g > GENERATIONS - 3)); then cold=1 key=last; fi
        if ((g == 1 || g == GENERATIONS)); then
            # The same backup REDO times more from the same state, each revision
            # forgotten again: what the 1st and the last cost, without the spread
            # between different change sets and generations.
            for ((r = 0; r < REDO; r++)); do
                drop_caches
                timed "redo$g:backy" "$LOG/backy.log" "$BACKY" -b "$job" backup daily
                run "$LOG/backy.log" "$BACKY" -b "$job" forget -r 0 --force
            done
        fi
        ((cold)) && drop_caches
        timed "$key:backy" "$LOG/backy.log" "$BACKY" -b "$job" backup daily
        ((g == 1 || g == GENERATIONS)) && R[redo$g:backy]+=" $LAST"
        # The floor of an incremental with full verification is a read of the
        # source plus one of the new image: read the 1st revision cold here, the
        # newest below, beside the source's reads before and after the history.
        ((g == 1)) && cold_read rev1:backy "$(readlink -f "$job/last")"
        ((g == 1)) && cold_clone clone1:backy "$(readlink -f "$job/last")" "$mnt/floor-clone.img"
        ((g == 1)) && R[one:backy]=$LAST
        ((g == GENERATIONS)) && R[nth:backy]=$LAST
        t="backy $LAST s"
        if ((OLD)); then
            ((cold)) && drop_caches
            timed "$key:old" "$LOG/backy21.log" "$BACKY21" -b "$old" backup daily
            ((g == 1)) && R[one:old]=$LAST
            ((g == GENERATIONS)) && R[nth:old]=$LAST
            t="$t, 2.1.5 $LAST s"
        fi
        if ((g <= 3 || g > GENERATIONS - 3 || g % 10 == 0)); then
            printf '   generation %3d: %s changed, %s%s (%s s so far, load %s)\n' "$g" \
                "$(mib "$chg") MiB" "$t" "$( ((cold)) && echo ", cold")" "$(since "$t_start")" "$(load)"
        fi
    done

    sync
    cold_read src:last "$src"
    cold_clone clonen:backy "$(readlink -f "$job/last")" "$mnt/floor-clone.img"
    local newest_new newest_old
    newest_new=$(readlink -f "$job/last")
    if [[ $DEFRAG == 1 ]]; then
        local e0 s0 t0
        e0=$(python3 "$WORK/gen.py" extents "$newest_new") s0=$(python3 "$WORK/gen.py" space "$job")
        t0=$(now)
        case $fs in
            btrfs) btrfs filesystem defragment -t 32M "$newest_new" ;;
            xfs) xfs_fsr -v "$newest_new" >>"$LOG/fsr.log" 2>&1 || echo "   xfs_fsr failed: $(tail -1 "$LOG/fsr.log")" ;;
        esac
        sync
        echo "   defragmented the newest in $(since "$t0") s: extents $e0 -> $(python3 "$WORK/gen.py" extents "$newest_new"), job space +$(mib $(($(python3 "$WORK/gen.py" space "$job") - s0))) MiB"
    fi
    cp --reflink=never "$newest_new" "$mnt/fresh-backy.img"
    if ((OLD)); then
        newest_old=$(readlink -f "$old/last")
        cp --reflink=never "$newest_old" "$mnt/fresh-backy21.img"
    fi
    sync
    cmp "$newest_new" "$src" || die "backy's newest revision differs from the source"
    if ((OLD)); then cmp "$newest_old" "$src" || die "2.1.5's newest revision differs from the source"; fi
    local r
    echo "   cold reads of the newest revision ($READS each), load $(load)"
    for ((r = 0; r < READS; r++)); do
        cold_read cat:backy "$newest_new"
        cold_read fresh:backy "$mnt/fresh-backy.img"
        cold_read restore:backy restore "$job"
        if ((OLD)); then
            cold_read cat:old "$newest_old"
            cold_read fresh:old "$mnt/fresh-backy21.img"
        fi
    done
    local ext_new ext_old sp_new sp_old fresh_ext
    ext_new=$(python3 "$WORK/gen.py" extents "$newest_new")
    fresh_ext=$(python3 "$WORK/gen.py" extents "$mnt/fresh-backy.img")
    sp_new=$(python3 "$WORK/gen.py" space "$job")
    if ((OLD)); then
        ext_old=$(python3 "$WORK/gen.py" extents "$newest_old")
        sp_old=$(python3 "$WORK/gen.py" space "$old")
    fi
    drop_caches
    timed forget:backy "$LOG/backy.log" "$BACKY" -b "$job" forget -r "$first_new"
    if ((OLD)); then
        drop_caches
        timed forget:old "$LOG/backy21.log" sh -c "rm -f '$old/$first_old' '$old/$first_old'.*"
    fi
    local load_end
    load_end=$(load)

    local m cat_new fr_new rs_new x_cat_new x_rs_new x_sp_new f3 l3 x_inc_new
    cat_new=$(median ${R[cat:backy]}) fr_new=$(median ${R[fresh:backy]})
    rs_new=$(median ${R[restore:backy]})
    x_cat_new=$(div "$cat_new" "$fr_new") x_rs_new=$(div "$rs_new" "$fr_new")
    x_sp_new=$(div "$sp_new" "$ideal")
    f3=$(median ${R[first:backy]}) l3=$(median ${R[last:backy]})
    x_inc_new=$(div "$l3" "$f3")
    local s1 sn x_same_new
    s1=$(median ${R[redo1:backy]}) sn=$(median ${R[redo$GENERATIONS:backy]})
    x_same_new=$(div "$sn" "$s1")
    local floor1 floorn
    floor1=$(awk -v a="${R[src:first]}" -v b="${R[rev1:backy]}" 'BEGIN { printf "%.2f", a + b }')
    floorn=$(awk -v a="${R[src:last]}" -v b="$cat_new" 'BEGIN { printf "%.2f", a + b }')
    local cfloor1 cfloorn
    cfloor1=$(awk -v a="$floor1" -v b="${R[clone1:backy]}" 'BEGIN { printf "%.2f", a + b }')
    cfloorn=$(awk -v a="$floorn" -v b="${R[clonen:backy]}" 'BEGIN { printf "%.2f", a + b }')
    local cat_old fr_old x_cat_old x_sp_old x_inc_old
    if ((OLD)); then
        cat_old=$(median ${R[cat:old]}) fr_old=$(median ${R[fresh:old]})
        x_cat_old=$(div "$cat_old" "$fr_old")
        x_sp_old=$(div "$sp_old" "$ideal")
        x_inc_old=$(div "$(median ${R[last:old]})" "$(median ${R[first:old]})")
    fi

    echo
    echo "$fs, $SIZE_MIB MiB, $GENERATIONS generations of 1 % (seed $SEED); load at the end $load_end"
    echo "ideal (non-zero data of the first image + changes): $(mib "$ideal") MiB; a fresh copy has $fresh_ext extents"
    local FMT='%-52s | %-22s | %-22s\n'
    # shellcheck disable=SC2059
    {
        printf "$FMT" "" backy "$( ((OLD)) && echo "backy 2.1.5")"
        printf "$FMT" "extents of the newest revision" "$ext_new" "${ext_old:-}"
        printf "$FMT" "cat newest / cat fresh copy (s, median of $READS)" \
            "${x_cat_new}x ($cat_new / $fr_new)" "$( ((OLD)) && echo "${x_cat_old}x ($cat_old / $fr_old)")"
        printf "$FMT" "restore -r 0 - / cat fresh copy" "${x_rs_new}x ($rs_new / $fr_new)" ""
        printf "$FMT" "cold cat of the source, before 1st / after last" "${R[src:first]} / ${R[src:last]}" ""
        printf "$FMT" "1st incremental, cold (s)" "${R[one:backy]}" "${R[one:old]:-}"
        printf "$FMT" "incremental $GENERATIONS, cold (s)" "${R[nth:backy]}" "${R[nth:old]:-}"
        printf "$FMT" "last 3 / first 3 incrementals (medians)" "${x_inc_new}x ($l3 / $f3)" \
            "$( ((OLD)) && echo "${x_inc_old}x")"
        printf "$FMT" "incremental $GENERATIONS / 1st, each $((REDO + 1))x from one state" \
            "${x_same_new}x ($sn / $s1)" ""
        printf "$FMT" "floor: cold cat of source + new revision, last / 1st" \
            "$(div "$floorn" "$floor1")x ($floorn / $floor1)" ""
        printf "$FMT" "cold reflink clone of the 1st / of the newest (s)" \
            "${R[clone1:backy]} / ${R[clonen:backy]}" ""
        printf "$FMT" "floor with that clone, last / 1st" \
            "$(div "$cfloorn" "$cfloor1")x ($cfloorn / $cfloor1)" ""
        printf "$FMT" "space used / ideal" "${x_sp_new} ($(mib "$sp_new") MiB)" \
            "$( ((OLD)) && echo "${x_sp_old} ($(mib "$sp_old") MiB)")"
        printf "$FMT" "forget the oldest revision (s)" "${R[forget:backy]}" "${R[forget:old]:-}"
    }
    echo
    if ((OLD)); then
        check "$(le "$x_cat_new" "$x_cat_old")" \
            "$fs: backy's cat of the newest no slower (vs a fresh copy) than 2.1.5's (${x_cat_new}x vs ${x_cat_old}x)"
    fi
    check "$(le "$x_rs_new" 1.5)" "$fs: backy restore -r 0 - of the newest at most 1.5x cat of a fresh copy (${x_rs_new}x)"
    check "$(le "$x_sp_new" 1.4)" "$fs: backy's space at most 1.4x ideal (${x_sp_new}x)"
    check "$(le "$x_same_new" 1.2)" \
        "$fs: backy's incremental $GENERATIONS at most 1.2x the 1st, each run $((REDO + 1)) times from the same state (${x_same_new}x; the last 3 / first 3 generations: ${x_inc_new}x)"
    TABLE+=("$fs|$ext_new|${ext_old:--}|$x_cat_new|${x_cat_old:--}|$x_rs_new|$x_same_new|$x_inc_new|${x_inc_old:--}|$x_sp_new|${x_sp_old:--}|$load_end")

    [[ ${BENCH_KEEP:-0} == 1 ]] && return # lib.sh's trap says where it is
    umount "$mnt"
    MOUNTS=("${MOUNTS[@]/$mnt/}")
    losetup -d "$dev"
    LOOPS=("${LOOPS[@]/$dev/}")
    rm -f "$img"
}

echo "== load before: $(load); measured commands at niceness $NICE; before each cold step: drop the page cache, warm $WARM_GIB GiB of memory"
for fs in $FILESYSTEMS; do
    age_one "$fs"
done

echo
echo "Summary (one line per filesystem; x = ratio):"
echo "fs | extents backy | extents 2.1.5 | cat x backy | cat x 2.1.5 | restore x backy | inc nth/1st same state backy | inc last3/first3 backy | 2.1.5 | space/ideal backy | 2.1.5 | load"
for line in "${TABLE[@]}"; do echo "${line//|/ | }"; done
printf '%s\n' "${RESULTS[@]}"
echo "$MISSES target(s) missed."
[[ $STRICT != 1 || $MISSES -eq 0 ]] || exit 1
exit 0
