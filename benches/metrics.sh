#!/usr/bin/env bash
# Benchmark: `backy metrics` (with the space figures of every job) for a store of
# BENCH_JOBS jobs, each of BENCH_REVISIONS revisions of a BENCH_SIZE_MIB image with
# BENCH_CHANGES scattered 64 KiB changes per revision, on a loop-mounted btrfs.
#
#   benches/metrics.sh     (as root; about 3 minutes with the defaults, ~2 GiB in $TMPDIR)
#
# The revisions are crafted, not backed up: the first of each job is a reflink
# copy of one random source image, each later one a `cp --reflink=always` of its
# parent patched at seeded random 4 KiB-aligned offsets, with a complete `.rev`.
# Then `backy metrics --textfile` runs once after `sync; drop_caches` (cold) and
# twice warm; it prints wall and CPU time per run and per job, and the load
# average (on a shared machine wall time includes waiting for a CPU).
#
# Environment: BENCH_JOBS (default 3), BENCH_REVISIONS (30), BENCH_SIZE_MIB (1024),
# BENCH_CHANGES (200), BENCH_SEED (20261201).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
JOBS=${BENCH_JOBS:-3}
REVISIONS=${BENCH_REVISIONS:-30}
SIZE_MIB=${BENCH_SIZE_MIB:-1024}
CHANGES=${BENCH_CHANGES:-200}
SEED=${BENCH_SEED:-20261201}

die() { echo "metrics.sh: $*" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || die "must run as root (loop devices, mount, drop_caches)"
for tool in mkfs.btrfs python3 cargo mountpoint /usr/bin/time; do
    command -v "$tool" >/dev/null || die "missing tool: $tool"
done

echo "== building backy (cargo build --release)"
(cd "$ROOT" && cargo build --release --quiet)
BACKY=$ROOT/target/release/backy

WORK=$(mktemp -d)
MNT=$WORK/mnt
cleanup() {
    set +e
    cd /
    if mountpoint -q "$MNT"; then umount "$MNT" 2>/dev/null || { sleep 1; umount "$MNT"; }; fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mkdir -p "$MNT"

# Room for the source, one full copy per job at worst, and the changes.
fs_mib=$((SIZE_MIB * (JOBS + 2) + JOBS * REVISIONS * CHANGES / 16 + 512))
truncate -s "${fs_mib}M" "$WORK/fs.img"
mkfs.btrfs -q "$WORK/fs.img" >/dev/null 2>&1
mount -o loop "$WORK/fs.img" "$MNT"
echo "== crafting $JOBS jobs x $REVISIONS revisions of $SIZE_MIB MiB ($CHANGES changes each) on btrfs"
head -c $((SIZE_MIB << 20)) /dev/urandom >"$MNT/src.img"
python3 - "$MNT" "$JOBS" "$REVISIONS" "$SIZE_MIB" "$CHANGES" "$SEED" <<'EOF'
import datetime, os, random, subprocess, sys
mnt, jobs, revisions, size_mib, changes, seed = sys.argv[1], *map(int, sys.argv[2:])
size = size_mib << 20
config = [f"global: {{base-dir: {mnt}/base}}\n",
          "schedules: {s: {daily: {interval: 1d, keep: 30}}}\njobs:\n"]
for j in range(jobs):
    job = f"{mnt}/base/job{j}"
    os.makedirs(job)
    with open(f"{job}/config", "w") as f:
        f.write(f"{{type: file, filename: {mnt}/src.img}}\n")
    config.append(f"  job{j}: {{schedule: s, source: {{type: file, filename: {mnt}/src.img}}}}\n")
    rnd = random.Random(seed + j)
    parent = f"{mnt}/src.img"
    for r in range(revisions):
        rev = f"{job}/r{r:03}j{j}"
        subprocess.run(["cp", "--reflink=always", parent, rev], check=True)
        with open(rev, "r+b") as f:
            for _ in range(changes):
                f.seek(rnd.randrange(0, (size - 65536) // 4096) * 4096)
                f.write(rnd.randbytes(65536))
        ts = datetime.datetime(2026, 1, 1) + datetime.timedelta(days=r)
        with open(f"{rev}.rev", "w") as f:
            f.write(f"uuid: r{r:03}j{j}\ntimestamp: {ts:%Y-%m-%d %H:%M:%S}+00:00\nparent: null\n"
                    f"tags: [daily]\nstats: {{bytes_written: {size}, duration: 1.0}}\ntrust: trusted\n")
        os.chmod(rev, 0o440)
        parent = rev
with open(f"{mnt}/backy.conf", "w") as f:
    f.write("".join(config))
EOF
sync
echo "== extents of the newest image of job0: $(filefrag "$MNT/base/job0/r$(printf %03d $((REVISIONS - 1)))j0" | awk '{print $2}')"

run() {
    local label=$1 wall user sys
    /usr/bin/time -o "$WORK/time" -f '%e %U %S' \
        "$BACKY" metrics -c "$MNT/backy.conf" --textfile "$MNT/backy.prom"
    read -r wall user sys <"$WORK/time"
    awk -v l="$label" -v w="$wall" -v u="$user" -v s="$sys" -v j="$JOBS" \
        'BEGIN { printf "%-5s wall %6.2f s (%.2f s per job)   cpu %6.2f s\n", l, w, w / j, u + s }'
}
sync
echo 3 >/proc/sys/vm/drop_caches
run cold
run warm
run warm
echo "== load average: $(cut -d' ' -f1-3 /proc/loadavg)"
grep -E '^backy_(physical|logical)_bytes\{backy_job="job0"\}' "$MNT/backy.prom"
