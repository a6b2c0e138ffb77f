#!/bin/sh
# Crash soak: `scripts/crash-soak.sh N` kills backy with SIGKILL at N random
# moments in total, spread evenly over a ceph-rbd backup (against a real
# throw-away Ceph cluster, scripts/ceph-cluster.sh) and, half on btrfs and half
# on XFS, a file backup, verify, distrust, protect/unprotect, forget, expire,
# receive and reshare (tests/crash_soak.rs), checks the job after each, and prints a table per
# operation: kills, kills that landed mid-operation, kills that came after it
# had finished, and points where a check failed. Needs root (loop-mounted filesystems).
#
#   BACKY_SOAK_SEED=S   replay a run (each run prints its seeds)
#
# Exit status: non-zero when any check failed.
set -eu
cd "$(dirname "$0")/.."

n=${1:-320}
case $n in
    '' | *[!0-9]*) echo "usage: $0 N (kills in total, >= 2)" >&2; exit 2 ;;
esac
# One ninth for ceph-rbd, the rest for the eight file operations.
ceph=$(( (n + 8) / 9 ))
per_fs=$(( (n - ceph + 1) / 2 ))
mkdir -p target
log=target/crash-soak.log

echo "crash soak: $n kills ($ceph ceph-rbd, $per_fs per filesystem); full output in $log" >&2
status=0
if cargo nextest --version >/dev/null 2>&1; then
    # Not --no-capture, which would run the tests one after the other; all
    # three at once (nextest would run only as many as there are cores), each
    # one's output as soon as it ends.
    BACKY_SOAK_POINTS=$per_fs BACKY_SOAK_CEPH_POINTS=$ceph cargo nextest run --test crash_soak --no-fail-fast \
        --test-threads 3 --success-output immediate --failure-output immediate >"$log" 2>&1 || status=$?
else
    BACKY_SOAK_POINTS=$per_fs BACKY_SOAK_CEPH_POINTS=$ceph cargo test --test crash_soak -- --nocapture \
        >"$log" 2>&1 || status=$?
fi

grep -E '^crash soak on|^SOAK FAILURE' "$log" >&2 || true
awk '
    $1 == "SOAK" && NF == 7 {
        op = $3
        if (!(op in kills)) order[++ops] = op
        kills[op] += $4; mid[op] += $5; after[op] += $6; fail[op] += $7
    }
    END {
        printf "%-10s %8s %8s %8s %8s\n", "operation", "kills", "mid-op", "after", "failures"
        for (i = 1; i <= ops; i++) {
            op = order[i]
            printf "%-10s %8d %8d %8d %8d\n", op, kills[op], mid[op], after[op], fail[op]
            tk += kills[op]; tm += mid[op]; ta += after[op]; tf += fail[op]
        }
        printf "%-10s %8d %8d %8d %8d\n", "total", tk, tm, ta, tf
    }
' "$log"
if [ "$status" -ne 0 ]; then
    echo "crash soak FAILED (exit $status); the test output:" >&2
    tail -n 80 "$log" >&2
fi
exit "$status"
