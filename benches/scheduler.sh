#!/usr/bin/env bash
# Scale of the scheduler: 1,000 jobs whose backups return at once ($BACKY_CMD is
# /bin/true), measuring the daemon's own CPU time and memory over time. Flat
# figures mean the per-job work does not grow with time or with runs.
#
#   benches/scheduler.sh [SECONDS] [JOBS]     (defaults: 120 s, 1000 jobs)
#
# Two phases: "busy" (a 60 s interval, so every job runs about once a minute:
# ~17 runs/s) and "idle" (a 1-day interval: after the first round nothing is due).
set -euo pipefail
repo=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
seconds=${1:-120}
jobs=${2:-1000}
(cd "$repo" && cargo build --release -q)
backy="$repo/target/release/backy"
work=$(mktemp -d -t backy-sched-bench.XXXXXX)
pid=""
cleanup() {
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then kill -TERM "$pid"; wait "$pid" || true; fi
    rm -rf "$work"
}
trap cleanup EXIT
ticks=$(getconf CLK_TCK)

make_config() { # interval
    {
        printf 'global:\n  base-dir: %s/base\n  worker-limit: 4\n  status-interval: 5\n  telnet-addrs: "127.0.0.1"\n  telnet-port: 0\n' "$work"
        printf 'schedules:\n  s:\n    daily: {interval: %s, keep: 3}\njobs:\n' "$1"
        for ((i = 0; i < jobs; i++)); do
            printf '  vm%04d: {schedule: s, source: {type: file, filename: /dev/null}}\n' "$i"
        done
    } >"$work/backy.conf"
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

phase() { # name interval
    local name=$1
    rm -rf "$work/base" "$work/scheduler.log"
    make_config "$2"
    BACKY_CMD=/bin/true "$backy" -l "$work/scheduler.log" scheduler -c "$work/backy.conf" &
    pid=$!
    printf '\n%s: %d jobs, interval %s, %d s\n' "$name" "$jobs" "$2" "$seconds"
    printf '%8s %10s %10s %12s\n' "t (s)" "CPU %" "RSS MiB" "runs so far"
    local prev t0 now runs step=$((seconds / 8))
    prev=$(cpu_ticks "$pid")
    t0=$(date +%s)
    for ((t = step; t <= seconds; t += step)); do
        sleep "$step"
        now=$(cpu_ticks "$pid")
        runs=$(grep -c ' started (pid ' "$work/scheduler.log" || true)
        awk -v t="$t" -v d="$((now - prev))" -v hz="$ticks" -v s="$step" -v r="$(rss_kib "$pid")" -v n="$runs" \
            'BEGIN { printf "%8d %10.1f %10.1f %12d\n", t, 100 * d / hz / s, r / 1024, n }'
        prev=$now
    done
    kill -TERM "$pid"
    wait "$pid" || true
    pid=""
    echo "  status file: $(grep -c '^- job:' "$work/base/status") jobs; wall $(($(date +%s) - t0)) s"
}

echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
phase busy 60s
phase idle 1d
