#!/usr/bin/env bash
# Benchmark: backy's ceph-rbd source against the rbd CLI itself, on a 2 GiB VM-like
# RBD image in a throw-away single-node cluster (scripts/ceph-cluster.sh: one mon,
# one memstore OSD, 127.0.0.1 only), backing up to a loop-mounted btrfs.
#
#   benches/ceph.sh      (as root; about 2-4 minutes)
#
# What it measures, all in one run:
#   (a) incremental backups after 1 % and 10 % of the image's 4 KiB pages changed,
#       as a ratio of `rbd export-diff --from-snap A IMG@B - >/dev/null` for the same
#       change: snapshot bench-a is taken right before the change, bench-b right
#       after it, so A..B is exactly the diff backy streams (backy-<parent> is taken
#       before bench-a and backy-<new> after bench-b with nothing written between).
#       export-diff is timed once before and once after the backup; the baseline is
#       their mean. Beside it, as the floor of anything that stores the change, the
#       same export-diff into a file in the job's filesystem plus `sync -f FILE`.
#       Backy's time includes its sampled verification through librbd.
#       Target: at most 2.0x at 10 %, for the whole backup and (printed beside it)
#       for the backup less the fixed cost of (b);
#   (b) the fixed cost: `rbd info`, `rbd snap create`, `rbd snap rm` (each mostly
#       rbd start-up and one round trip; medians of 3), against a backup with no
#       change at all (median of 3);
#   (c) full backups as a ratio of `rbd export IMG@snap - >/dev/null`: the job's
#       first backup (empty job; target at most 2.0x), and a second job with
#       `full-always: true` (its first backup, then one with a parent, where
#       compare-and-write keeps sharing). Beside it, as the floor of anything that
#       stores the image: `rbd export IMG@snap FILE` into the job's filesystem plus
#       `sync -f FILE` (rbd writes it sparse, as backy does).
#   Besides: bytes_written / bytes_changed from `backy status --json`, the new
#   revision's btrfs Exclusive bytes (`btrfs filesystem du --raw`) against the
#   changed bytes, backy's own phase timings (`-v`: "Patched the image in", "Verified
#   in"), and at the end a sha256 of `backy restore` against `rbd export` of the
#   same snapshot.
#
# Set-up (not measured):
#   * everything in one `mktemp -d` directory; the EXIT trap stops the cluster
#     (`scripts/ceph-cluster.sh stop`), unmounts and detaches only the loop device
#     it attached (by path), and removes the directory. The cluster's watchdog also
#     stops it if this shell dies;
#   * the OSD's reported capacity (memstore_device_bytes, 4 GiB in the script's
#     ceph.conf) is raised at run time through the OSD's admin socket
#     (BENCH_MEMSTORE_GIB, default 16): every snapshot clones the objects written
#     after it, and memstore counts clones at full size, so 4 GiB runs full. It is
#     only accounting: the data lives in the OSD's RAM, shared between clones;
#   * a ${BENCH_SIZE_MIB} MiB image (rbd defaults: 4 MiB objects, object-map and
#     fast-diff) filled through librbd (python3-rbd) with writes of up to 16 MiB:
#     1 MiB regions in a seeded random order, 30 % never written (unallocated),
#     40 % random bytes, 30 % repeated text (log-like lines);
#   * a change set is 64 KiB writes of seeded random bytes at 4 KiB-aligned random
#     offsets, added until the number of DISTINCT 4 KiB pages touched reaches the
#     percentage of the image's pages. "changed bytes" = distinct pages whose content
#     really differs afterwards (old content read back before writing) x 4096.
#
# Caches: memstore keeps the cluster's data in the OSD's RAM, so dropping the page
# cache does nothing to the Ceph side. It does matter for backy's side (the parent
# image on btrfs is read for partial blocks), so before every measured command:
# `sync; echo 3 > /proc/sys/vm/drop_caches`, plus the memory warm-up that
# benches/warm.sh explains, on guests that report free pages (BENCH_WARM_GIB).
#
# Other benchmarks may run on this machine at the same time: the load average is
# printed at the start and at the end; compare runs only when both are low.
#
# Environment: BENCH_SIZE_MIB (default 2048; e.g. 256 for a smoke run), BENCH_SEED
# (default 20240521), BENCH_MEMSTORE_GIB (16), BENCH_WARM_GIB (see above),
# BENCH_STRICT=1 (exit 1 when a 2.0x target is missed), BENCH_NICE (e.g. -20: run
# every measured command, backy's and rbd's alike, at that niceness, so that other
# work on a shared machine takes less of their time), BACKY (the backy binary
# to measure instead of building this checkout's, e.g. to compare two builds).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SIZE_MIB=${BENCH_SIZE_MIB:-2048}
SEED=${BENCH_SEED:-20240521}
MEMSTORE_GIB=${BENCH_MEMSTORE_GIB:-16}
STRICT=${BENCH_STRICT:-0}
TARGET=2.0
NICE=${BENCH_NICE:-0}
PYTHON=/usr/bin/python3 # the interpreter that has Debian's python3-rbd
POOL=rbd
IMG=benchvm
SPEC=$POOL/$IMG

die() { echo "ceph.sh: $*" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || die "must run as root (loop devices, mount, drop_caches)"
for tool in losetup mkfs.btrfs btrfs mountpoint cargo awk sha256sum; do
    command -v "$tool" >/dev/null || die "missing tool: $tool"
done
[[ $SIZE_MIB =~ ^[1-9][0-9]*$ ]] || die "BENCH_SIZE_MIB must be a positive integer"
[[ $MEMSTORE_GIB =~ ^[1-9][0-9]*$ ]] || die "BENCH_MEMSTORE_GIB must be a positive integer"

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
echo "== load average at start: $LOAD_START ($(nproc) CPUs)"

if [[ -n ${BACKY:-} ]]; then
    [[ -x $BACKY ]] || die "BACKY=$BACKY is not an executable: give the path of a backy binary"
else
    echo "== building backy (cargo build --release)"
    (cd "$ROOT" && cargo build --release --quiet)
    BACKY=$ROOT/target/release/backy
    [[ -x $BACKY ]] || die "cargo build produced no $BACKY"
fi

WORK=$(mktemp -d)
CEPH_DIR=$WORK/ceph
CLUSTER_STARTED=0
LOOP_DEV=""
MNT=$WORK/btrfs
cleanup() {
    local rc=$? ok=1
    set +e
    cd /
    if ((CLUSTER_STARTED)); then
        "$ROOT/scripts/ceph-cluster.sh" stop "$CEPH_DIR" || ok=0
    fi
    if mountpoint -q "$MNT"; then
        umount "$MNT" 2>/dev/null || { sleep 1; umount "$MNT"; } || ok=0
    fi
    # Only the device this script attached, and only if it still backs our file.
    if [[ -n $LOOP_DEV ]] && losetup "$LOOP_DEV" 2>/dev/null | grep -qF "$WORK/btrfs.img"; then
        losetup -d "$LOOP_DEV" || ok=0
    fi
    if ((ok)); then
        rm -rf "$WORK"
    else
        echo "ceph.sh: could not clean up everything; left $WORK in place" >&2
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

LOG=$WORK/logs
mkdir -p "$LOG"

# ---------------------------------------------------------------------------
echo "== starting a Ceph cluster in $CEPH_DIR"
CLUSTER_STARTED=1
# The watchdog stops the cluster when this shell ($$) exits, whatever happens.
CONF=$("$ROOT/scripts/ceph-cluster.sh" start "$CEPH_DIR" $$) ||
    die "scripts/ceph-cluster.sh start failed (exit 3: Ceph not available here)"
export CEPH_CONF=$CONF
unset CEPH_ARGS CEPH_CLUSTER
"$PYTHON" -I -c 'import rados, rbd' 2>/dev/null || die "$PYTHON cannot import rbd (python3-rbd)"
OSD_ASOK=$CEPH_DIR/run/ceph-osd.0.asok
ceph --admin-daemon "$OSD_ASOK" config set memstore_device_bytes $((MEMSTORE_GIB << 30)) >/dev/null ||
    die "cannot set memstore_device_bytes through $OSD_ASOK"

osd_stat() { # -> "used GiB of total GiB (OSD RSS x GiB)"
    local pid
    pid=$(cat "$CEPH_DIR/pids/osd.0" 2>/dev/null || echo 0)
    ceph --admin-daemon "$OSD_ASOK" perf dump 2>/dev/null | "$PYTHON" -I -c '
import json, sys
d = json.load(sys.stdin)["osd"]
rss = 0
try:
    for line in open("/proc/%s/status" % sys.argv[1]):
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
except OSError:
    pass
print("%.2f GiB used of %.0f GiB reported (OSD RSS %.2f GiB)"
      % (d["stat_bytes_used"] / 2**30, d["stat_bytes"] / 2**30, rss / 2**30))' "$pid"
}

# ---------------------------------------------------------------------------
echo "== preparing a loop-mounted btrfs in $WORK"
truncate -s 10G "$WORK/btrfs.img"
LOOP_DEV=$(losetup --find --show --direct-io=on "$WORK/btrfs.img" 2>/dev/null ||
    losetup --find --show "$WORK/btrfs.img")
mkfs.btrfs -q -f "$LOOP_DEV" >/dev/null
mkdir -p "$MNT"
mount "$LOOP_DEV" "$MNT"
JOB=$MNT/job
JOB_FULL=$MNT/job-full-always

# ---------------------------------------------------------------------------
# librbd I/O for the image: fill it, apply a change set (system python3 + python3-rbd).
cat >"$WORK/rbdgen.py" <<'PY'
import random, sys
import rados, rbd

MiB = 1 << 20
PAGE = 4096
WRITE = 64 * 1024
MAX_WRITE = 16 * MiB

def fill(img, seed):
    rng = random.Random(seed)
    n = img.size() // MiB
    n_hole = n * 30 // 100
    n_rand = n * 40 // 100
    n_text = n - n_hole - n_rand
    kinds = ["hole"] * n_hole + ["rand"] * n_rand + ["text"] * n_text
    rng.shuffle(kinds)
    lines = ("kernel: usb 1-1: new high-speed USB device number %d using ehci-pci\n",
             "systemd[1]: Started Session %d of user root.\n",
             "INSERT INTO log VALUES (%d, 'ok', NULL);\n",
             "<div class=\"row\"><span>%d</span></div>\n")
    run, run_at, writes = [], 0, 0
    def flush_run():
        nonlocal run, writes
        if run:
            data = b"".join(run)
            assert img.write(data, run_at) == len(data), "short write"
            writes += 1
        run = []
    for i, kind in enumerate(kinds):
        if kind == "hole":
            flush_run()
            continue
        if not run:
            run_at = i * MiB
        if kind == "rand":
            run.append(rng.randbytes(MiB))
        else:
            line = (rng.choice(lines) % rng.randrange(1000)).encode()
            run.append((line * (MiB // len(line) + 1))[:MiB])
        if len(run) * MiB >= MAX_WRITE:
            flush_run()
    flush_run()
    img.flush()
    print("regions: %d x 1 MiB: %d unallocated, %d random, %d repeated text; %d writes"
          % (n, n_hole, n_rand, n_text, writes))

def change(img, percent, seed):
    rng = random.Random(seed)
    size = img.size()
    target = -(-(size // PAGE) * percent // 100)
    writes, touched = [], set()
    while len(touched) < target:
        off = rng.randrange(0, (size - WRITE) // PAGE + 1) * PAGE
        writes.append((off, rng.randbytes(WRITE)))
        touched.update(range(off // PAGE, (off + WRITE) // PAGE))
    old = {}
    for off, _ in writes:
        data = img.read(off, WRITE)
        for i in range(WRITE // PAGE):
            old.setdefault(off // PAGE + i, data[i * PAGE:(i + 1) * PAGE])
    new = {}
    for off, data in writes:
        assert img.write(data, off) == WRITE, "short write"
        view = memoryview(data)
        for i in range(WRITE // PAGE):
            new[off // PAGE + i] = view[i * PAGE:(i + 1) * PAGE]
    img.flush()
    changed = sum(1 for p in touched if new[p] != old[p])
    print("writes=%d touched_pages=%d changed_pages=%d overlapping_pages=%d"
          % (len(writes), len(touched), changed, len(writes) * (WRITE // PAGE) - len(touched)))

conf, pool, name, mode = sys.argv[1:5]
with rados.Rados(conffile=conf) as cluster, cluster.open_ioctx(pool) as ioctx:
    with rbd.Image(ioctx, name) as img:
        if mode == "fill":
            fill(img, int(sys.argv[5]))
        elif mode == "change":
            change(img, int(sys.argv[5]), int(sys.argv[6]))
        else:
            sys.exit("unknown mode " + mode)
PY
rbdgen() { "$PYTHON" -I "$WORK/rbdgen.py" "$CONF" "$POOL" "$IMG" "$@"; }

# drop_caches() with the memory warm-up that free page reporting needs.
source "$ROOT/benches/warm.sh"
warm_setup 4 4

# ---------------------------------------------------------------------------
# Measuring. R[key] holds results; LAST is the wall time of the last measure.
declare -A R
LAST=0
measure() { # LOGFILE CMD... : cold caches, then the wall time of CMD (stdout to /dev/null)
    local log=$1 t0 t1 rc=0
    shift
    drop_caches
    t0=$EPOCHREALTIME
    # At BENCH_NICE (a subshell, since CMD may be a shell function).
    (
        ((NICE == 0)) || renice -n "$NICE" -p "$BASHPID" >/dev/null
        "$@"
    ) >/dev/null 2>>"$log" || rc=$?
    t1=$EPOCHREALTIME
    if [[ $rc -ne 0 ]]; then
        echo "ceph.sh: '$*' failed with exit $rc; last lines of $log:" >&2
        tail -n 20 "$log" >&2
        exit 1
    fi
    LAST=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
}
div() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
sub() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a - b }'; }
mean() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", (a + b) / 2 }'; }
median3() { printf '%s\n' "$@" | sort -g | sed -n 2p; }
human() {
    awk -v b="$1" 'BEGIN { split("B KiB MiB GiB", u); i = 1
        while (b >= 1024 && i < 4) { b /= 1024; i++ }
        if (i == 1) printf "%d %s", b, u[i]; else printf "%.1f %s", b, u[i] }'
}

rbd_q() { rbd --no-progress "$@"; } # for the commands that take --no-progress
export_diff() { rbd --no-progress export-diff --from-snap "$1" "$SPEC@$2" - >/dev/null; }
export_full() { rbd --no-progress export "$SPEC@$1" - >/dev/null; }
export_diff_file() { # the diff into the job's filesystem, synced: the floor of storing it
    rbd --no-progress export-diff --from-snap "$1" "$SPEC@$2" "$MNT/export.diff" >/dev/null &&
        sync -f "$MNT/export.diff"
}
export_file() { # into the job's filesystem, synced: the floor of storing the image
    rbd --no-progress export "$SPEC@$1" "$MNT/export.img" >/dev/null && sync -f "$MNT/export.img"
}

# backup KEY JOBDIR : a measured `backy -v backup`; records its time and phases
backup() {
    local key=$1 job=$2 log="$LOG/$1.log"
    measure "$log" "$BACKY" -v -b "$job" backup daily
    R[t:$key]=$LAST
    R[patch:$key]=$(sed -n 's/.*Patched the image in \([0-9.]*\) s.*/\1/p' "$log" | tail -n 1)
    R[verify:$key]=$(sed -n 's/.*Verified in \([0-9.]*\) s.*/\1/p' "$log" | tail -n 1)
    R[other:$key]=$(awk -v t="$LAST" -v p="${R[patch:$key]:-0}" -v v="${R[verify:$key]:-0}" \
        'BEGIN { printf "%.2f", t - p - v }')
    "$BACKY" -b "$job" status --json 2>/dev/null | "$PYTHON" -I -c '
import json, sys
r = json.load(sys.stdin)[-1]
print(r["id"], r.get("bytes_written", -1), r.get("bytes_changed", -1))' >"$WORK/last"
    read -r R[id:$key] R[bw:$key] R[bc:$key] <"$WORK/last"
    sync
    btrfs filesystem sync "$MNT" >/dev/null
    R[ex:$key]=$(btrfs filesystem du --raw "$job/${R[id:$key]}" | awk 'NR == 2 { print $2 }')
}

# ---------------------------------------------------------------------------
echo "== creating $SPEC (${SIZE_MIB} MiB) and filling it (seed $SEED; not measured)"
rbd_q create --size "${SIZE_MIB}M" "$SPEC"
rbdgen fill "$SEED" | sed 's/^/   /'
echo "   allocated: $(rbd du "$SPEC" 2>/dev/null | awk 'NR == 2 { print $4, $5 }') of ${SIZE_MIB} MiB" \
    "(rbd du, whole objects); OSD: $(osd_stat)"

if ((WARM_GIB > 0)); then
    echo "== measuring (before every measured command: drop the page cache, then warm $WARM_GIB GiB of memory)"
else
    echo "== measuring (before every measured command: drop the page cache)"
fi
"$BACKY" -b "$JOB" init ceph-rbd "$SPEC" >>"$LOG/init.log" 2>&1

# (c1) the job's first backup: full, into an empty job
backup full "$JOB"
measure "$LOG/rbd.log" export_full "backy-${R[id:full]}"
R[base:full]=$LAST
measure "$LOG/rbd.log" export_file "backy-${R[id:full]}"
R[file:full]=$LAST
rm -f "$MNT/export.img"
printf '   %-22s backy %7.2f s | rbd export %6.2f s, into a file on btrfs %6.2f s\n' \
    "full (empty job)" "${R[t:full]}" "${R[base:full]}" "$LAST"

# (b) fixed cost
declare -a T_INFO T_CREATE T_RM
for i in 1 2 3; do
    measure "$LOG/rbd.log" rbd info "$SPEC"
    T_INFO+=("$LAST")
    measure "$LOG/rbd.log" rbd_q snap create "$SPEC@bench-fixed"
    T_CREATE+=("$LAST")
    measure "$LOG/rbd.log" rbd_q snap rm "$SPEC@bench-fixed"
    T_RM+=("$LAST")
done
R[info]=$(median3 "${T_INFO[@]}")
R[create]=$(median3 "${T_CREATE[@]}")
R[rm]=$(median3 "${T_RM[@]}")
R[floor]=$(awk -v a="${R[info]}" -v b="${R[create]}" -v c="${R[rm]}" 'BEGIN { printf "%.3f", a + b + c }')
declare -a T_NC
for i in 1 2 3; do
    backup "nochange$i" "$JOB"
    T_NC+=("${R[t:nochange$i]}")
done
# The row shows the run with the median time.
med=$(median3 "${T_NC[@]}")
for i in 1 2 3; do
    if [[ ${R[t:nochange$i]} == "$med" ]]; then
        for k in t patch verify other id bw bc ex; do R[$k:nochange]=${R[$k:nochange$i]}; done
        break
    fi
done
R[base:nochange]=${R[floor]}
printf '   %-22s backy %7.2f s (runs %s) | rbd info+snap create+snap rm %5.2f s\n' \
    "no change" "$med" "${T_NC[*]}" "${R[floor]}"

# (a) incrementals
for pct in 1 10; do
    key=inc$pct
    rbd_q snap create "$SPEC@bench-a"
    out=$(rbdgen change "$pct" $((SEED + pct)))
    echo "   change set $pct % (seed $((SEED + pct))): $out"
    pages=${out##*changed_pages=}
    R[chg:$key]=$((${pages%% *} * 4096))
    rbd_q snap create "$SPEC@bench-b"
    measure "$LOG/rbd.log" export_diff bench-a bench-b
    d1=$LAST
    backup "$key" "$JOB"
    measure "$LOG/rbd.log" export_diff bench-a bench-b
    d2=$LAST
    measure "$LOG/rbd.log" export_diff_file bench-a bench-b
    R[file:$key]=$LAST
    rm -f "$MNT/export.diff"
    R[base:$key]=$(mean "$d1" "$d2")
    R[diffbytes:$key]=$(rbd --no-progress export-diff --from-snap bench-a "$SPEC@bench-b" - | wc -c)
    rbd_q snap rm "$SPEC@bench-a"
    rbd_q snap rm "$SPEC@bench-b"
    printf '   %-22s backy %7.2f s | rbd export-diff %.2f s, %.2f s (stream %s)\n' \
        "$pct % changed" "${R[t:$key]}" "$d1" "$d2" "$(human "${R[diffbytes:$key]}")"
done
echo "   OSD: $(osd_stat)"

# Correctness of the chain: the newest revision against its snapshot, in full.
last_id=${R[id:inc10]}
SHA_BACKY=$("$BACKY" -b "$JOB" restore -r "$last_id" - 2>>"$LOG/restore.log" | sha256sum | cut -d' ' -f1)
SHA_RBD=$(rbd --no-progress export "$SPEC@backy-$last_id" - 2>>"$LOG/rbd.log" | sha256sum | cut -d' ' -f1)

# (c2) full-always job: its first backup (empty job), then one with a parent. Its
# clean-up removes every backy-* snapshot, so it runs last. bench-c holds the same
# content as both of its snapshots (nothing writes to the image any more).
"$BACKY" -b "$JOB_FULL" init ceph-rbd "$SPEC" >>"$LOG/init.log" 2>&1
printf 'type: ceph-rbd\npool: %s\nimage: %s\nfull-always: true\n' "$POOL" "$IMG" >"$JOB_FULL/config"
rbd_q snap create "$SPEC@bench-c"
measure "$LOG/rbd.log" export_full bench-c
e1=$LAST
backup fa_empty "$JOB_FULL"
backup fa_parent "$JOB_FULL"
measure "$LOG/rbd.log" export_full bench-c
e2=$LAST
rbd_q snap rm "$SPEC@bench-c"
R[base:fa_empty]=$(mean "$e1" "$e2")
R[base:fa_parent]=${R[base:fa_empty]}
printf '   %-22s backy %7.2f s, with parent %.2f s | rbd export %.2f s, %.2f s\n' \
    "full-always" "${R[t:fa_empty]}" "${R[t:fa_parent]}" "$e1" "$e2"
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------------------
echo
echo "Source: $SIZE_MIB MiB RBD image $SPEC (seed $SEED) in a single-node memstore cluster;"
echo "jobs on a loop-mounted btrfs. Wall seconds; before every measured command the page"
echo "cache is dropped. Memstore keeps the cluster's data in the OSD's RAM, so dropping the"
echo "page cache does not matter for the cluster side (rbd export/export-diff read from RAM);"
echo "it only makes backy read its parent image from disk, as in production."
echo "Baselines: export-diff = rbd export-diff --from-snap bench-a IMG@bench-b - >/dev/null"
echo "(same change, mean of a run before and one after the backup); export = rbd export"
echo "IMG@snap - >/dev/null; floor = rbd info + rbd snap create + rbd snap rm (medians of 3)."
echo "backy time includes sampled verification. patch/verify = backy -v phase timings;"
echo "other = the rest (rbd snap/info/ls/rm calls, reflink clone, manifest, fsyncs)."
echo "excl = btrfs Exclusive bytes of the new revision's image; changed = distinct changed"
echo "4 KiB pages x 4096."
echo
declare -A LABEL=([full]="full, empty job" [nochange]="incremental, no change"
    [inc1]="incremental, 1 % changed" [inc10]="incremental, 10 % changed"
    [fa_empty]="full-always, empty job" [fa_parent]="full-always, w/ parent")
declare -A BASE=([full]=export [nochange]=floor [inc1]=export-diff [inc10]=export-diff
    [fa_empty]=export [fa_parent]=export)
FMT='%-26s | %7s | %-11s %7s | %6s | %6s %6s %6s | %10s %10s %10s %10s %6s\n'
printf "$FMT" step "backy s" "baseline" "s" ratio patch verify other \
    written "changed" "excl" "changed*" "excl/c"
printf '%s\n' "---------------------------+---------+---------------------+--------+----------------------+--------------------------------------------------------"
for key in full nochange inc1 inc10 fa_empty fa_parent; do
    chg=${R[chg:$key]:-}
    printf "$FMT" "${LABEL[$key]}" "${R[t:$key]}" "${BASE[$key]}" \
        "$(printf '%.2f' "${R[base:$key]}")" "$(div "${R[t:$key]}" "${R[base:$key]}")x" \
        "${R[patch:$key]:--}" "${R[verify:$key]:--}" "${R[other:$key]}" \
        "$(human "${R[bw:$key]}")" "$(human "${R[bc:$key]}")" "$(human "${R[ex:$key]}")" \
        "$([[ -n $chg ]] && human "$chg" || echo -)" \
        "$([[ -n $chg ]] && div "${R[ex:$key]}" "$chg" || echo -)"
done
echo
echo "written = stats.bytes_written (w+z record lengths; image size for full backups);"
echo "changed = stats.bytes_changed; changed* = what the change set really changed."
for key in inc1 inc10; do
    echo "${LABEL[$key]}: diff stream $(human "${R[diffbytes:$key]}"), bytes_written ${R[bw:$key]}," \
        "bytes_changed ${R[bc:$key]}, really changed ${R[chg:$key]}, exclusive ${R[ex:$key]}"
done
echo
echo "Fixed cost: rbd info ${R[info]} s, rbd snap create ${R[create]} s, rbd snap rm ${R[rm]} s" \
    "(sum ${R[floor]} s); backup with no change ${R[t:nochange]} s (runs ${T_NC[*]}):" \
    "$(sub "${R[t:nochange]}" "${R[floor]}") s above the rbd floor."
echo "OSD after the run: $(osd_stat)"
echo "Load average: start $LOAD_START, end $LOAD_END ($(nproc) CPUs); other benchmarks may have run."
echo

MISSES=0
le() { awk -v a="$1" -v b="$2" 'BEGIN { print (a <= b) ? 1 : 0 }'; }
check() { # label ratio
    if [[ $(le "$2" "$TARGET") == 1 ]]; then
        echo "PASS  $1 within ${TARGET}x ($2x)"
    else
        echo "MISS  $1 within ${TARGET}x ($2x)"
        MISSES=$((MISSES + 1))
    fi
}
fixed=$(awk -v c="${R[create]}" -v r="${R[rm]}" 'BEGIN { printf "%.3f", c + r }')
less_fixed() { awk -v t="$1" -v f="$fixed" 'BEGIN { printf "%.3f", (t > f) ? t - f : 0 }'; }
check "incremental backup, 10 % changed (sampled verification included), of rbd export-diff" \
    "$(div "${R[t:inc10]}" "${R[base:inc10]}")"
check "incremental backup, 10 % changed, less the fixed cost ($fixed s: rbd snap create + snap rm), of rbd export-diff" \
    "$(div "$(less_fixed "${R[t:inc10]}")" "${R[base:inc10]}")"
check "full backup of an empty job (sampled verification included), of rbd export to /dev/null" \
    "$(div "${R[t:full]}" "${R[base:full]}")"
echo "INFO  incremental backup, 1 % changed, of rbd export-diff: $(div "${R[t:inc1]}" "${R[base:inc1]}")x," \
    "less the fixed cost $(div "$(less_fixed "${R[t:inc1]}")" "${R[base:inc1]}")x"
for key in inc1 inc10; do
    echo "INFO  ${LABEL[$key]#incremental, }: rbd export-diff into a file on the job's btrfs (synced) ${R[file:$key]} s," \
        "$(div "${R[file:$key]}" "${R[base:$key]}")x export-diff to /dev/null; backy $(div "${R[t:$key]}" "${R[file:$key]}")x of it"
done
echo "INFO  full backup of an empty job, of rbd export into a file on the job's btrfs (synced): $(div "${R[t:full]}" "${R[file:full]}")x"
# What any tool pays that takes and removes a snapshot around the same export-diff.
bound=$(awk -v d="${R[base:inc10]}" -v c="${R[create]}" -v r="${R[rm]}" \
    'BEGIN { if (d > 0) printf "%.2f", (d + c + r) / d; else print "-" }')
echo "INFO  floor at 10 %: (export-diff + rbd snap create + rbd snap rm) / export-diff = ${bound}x"
if [[ $SHA_BACKY == "$SHA_RBD" ]]; then
    echo "PASS  backy restore of the newest incremental == rbd export of its snapshot (sha256 $SHA_BACKY)"
else
    echo "FAIL  backy restore sha256 $SHA_BACKY != rbd export sha256 $SHA_RBD"
    exit 1
fi
[[ $STRICT != 1 || $MISSES -eq 0 ]] || exit 1
exit 0
