# shellcheck shell=bash
# Sourced by the benchmarks that drop the page cache before a measured step.
#
# Free page reporting (virtio-balloon with VIRTIO_BALLOON_F_REPORTING, as in
# Firecracker and QEMU guests) hands the pages drop_caches freed back to the host
# after about 2 s; refilling the page cache then costs a host page fault per page.
# Measured on the 2-core Firecracker guest this was written on: a cold cat of the
# source took 1.4 s right after drop_caches but 2.9-4.0 s ten seconds later, and
# reading the source plus a 1.5 GB image cold took 7.3 s instead of 2.6-3.0 s; `perf
# record` of such a cat shows 72 % of it in `_copy_to_iter`, the first touch of the
# page cache's memory. Left alone, each step's speed would depend on how much page
# cache the previous step happened to free, which favours whichever tool runs after a
# big reader. So when the guest reports free pages, every measured step starts alike:
# drop the page cache, then touch and free WARM_GIB of anonymous memory, so that the
# step's page cache comes from memory the host still backs (as on bare metal).
# BENCH_WARM_GIB=0 turns this off, any other value sets the size.
#
# warm_setup DEFAULT_GIB RESERVE_GIB: sets WARM_GIB (DEFAULT_GIB where the guest
# reports free pages, else 0; at most MemAvailable less RESERVE_GIB) and writes
# $WORK/warm.py. drop_caches: sync, drop the page cache, warm WARM_GIB. Uses $PYTHON
# when set (python3 otherwise) and $WORK.

page_reporting() {
    local d f
    for d in /sys/bus/virtio/devices/*; do
        [[ -r $d/device && $(cat "$d/device") == 0x0005 ]] || continue
        f=$(cat "$d/features" 2>/dev/null) || continue
        [[ ${f:5:1} == 1 ]] && return 0
    done
    return 1
}

warm_setup() {
    local default=$1 reserve=$2 avail_gib
    if [[ -n ${BENCH_WARM_GIB:-} ]]; then
        WARM_GIB=$BENCH_WARM_GIB
    elif page_reporting; then
        WARM_GIB=$default
    else
        WARM_GIB=0
    fi
    avail_gib=$(awk '/^MemAvailable:/ { print int($2 / 1048576) }' /proc/meminfo)
    if ((WARM_GIB > avail_gib - reserve)); then
        WARM_GIB=$((avail_gib > reserve ? avail_gib - reserve : 0))
    fi
    cat >"$WORK/warm.py" <<'PY'
import mmap, sys
n = int(sys.argv[1]) << 30
m = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
step = 4096
try:
    m.madvise(mmap.MADV_HUGEPAGE)
    step = 2 << 20
except (AttributeError, OSError):
    pass
for off in range(0, n, step):
    m[off] = 1
m.close()
PY
}

drop_caches() {
    sync
    echo 3 >/proc/sys/vm/drop_caches
    if ((WARM_GIB > 0)); then "${PYTHON:-python3}" -I "$WORK/warm.py" "$WARM_GIB"; fi
}
