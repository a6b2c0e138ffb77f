# Shared by the benchmarks that make loop-mounted filesystems (sourced, not run):
# builds the release backy into $BACKY, makes the scratch directory $WORK, and
# registers what the EXIT trap unmounts and detaches (MOUNTS, LOOPS) before it
# removes $WORK. `attach FILE` gives a loop device for a backing file.
# BENCH_KEEP=1 leaves everything mounted and in place for a look afterwards, and
# says where (unmount, `losetup -d` and remove it by hand).
# Needs ROOT (the checkout) and die() from the sourcing script.

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
    if [[ ${BENCH_KEEP:-0} == 1 ]]; then
        echo "$(basename "$0"): BENCH_KEEP=1: left $WORK in place (mounts: ${MOUNTS[*]}; loop devices: ${LOOPS[*]})" >&2
        exit $rc
    fi
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
        echo "$(basename "$0"): could not unmount everything; left $WORK in place" >&2
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

attach() { # backing file -> loop device (direct I/O: no second copy in the page cache)
    losetup --find --show --direct-io=on "$1" 2>/dev/null || losetup --find --show "$1"
}
