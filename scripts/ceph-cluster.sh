#!/usr/bin/env bash
# A throw-away single-node Ceph cluster for the tests: one mon, one OSD that
# keeps its data in RAM (memstore), no mgr, listening on 127.0.0.1 only.
#
#   ceph-cluster.sh start DIR [WATCH_PID]   start a cluster in DIR, print DIR/ceph.conf
#   ceph-cluster.sh stop DIR                kill the daemons started in DIR
#   ceph-cluster.sh status DIR              exit 0 (and print DIR/ceph.conf) when it is up
#
# Everything lives in DIR: ceph.conf, the mon store (mon.a/), the OSD (osd.0/),
# logs (log/), admin sockets (run/) and pid files (pids/). Use the cluster with
# `CEPH_CONF=DIR/ceph.conf rbd ...`: authentication is off, so clients need no
# keyring. The pool `rbd` exists and is initialised.
#
# Parallel use: each cluster takes a block of 8 TCP ports below the ephemeral
# range (mon on the first, the OSD on the others). The block is reserved by an
# flock on /run/lock/backy-ceph/port-N, held by the cluster's watchdog for as
# long as the cluster runs, and is skipped if any socket already uses it.
#
# Watchdog: a small background process per cluster kills its daemons when
# WATCH_PID exits, and then removes what this script made in DIR; or when
# DIR/ceph.conf disappears. WATCH_PID defaults to the caller of `start` (the
# test process); give 0 (never) or your shell's $$ when starting one by hand
# through sudo. Only processes that have DIR/ceph.conf (daemons) or DIR (the
# watchdog) as an argument are ever signalled.
#
# Missing packages are installed with apt-get when run as root, unless
# CEPH_NO_INSTALL=1. Exit status 3 means "Ceph is not available here".
set -euo pipefail

SELF=$(readlink -f "${BASH_SOURCE[0]}")
LOCKS=/run/lock/backy-ceph
PORTS=8                 # ports per cluster: mon + 4 OSD messengers + spare
PACKAGES=(ceph-mon ceph-osd ceph-common librbd1 python3-rbd)

say() { printf 'ceph-cluster: %s\n' "$*" >&2; }
die() { say "error: $*"; exit "${2:-1}"; }
usage() { sed -n '5,7s/^#  //p' "$SELF" >&2; exit 2; }

# ---------------------------------------------------------------- packages

have_ceph() {
    local cmd
    for cmd in ceph-mon ceph-osd ceph rbd monmaptool; do
        command -v "$cmd" >/dev/null || return 1
    done
    # The test harness writes into images with librbd's Python binding.
    /usr/bin/python3 -I -c 'import rbd' 2>/dev/null
}

ensure_packages() {
    have_ceph && return 0
    [[ ${CEPH_NO_INSTALL:-0} != 1 ]] || die "Ceph is not installed (CEPH_NO_INSTALL=1)" 3
    ((EUID == 0)) || die "Ceph is not installed (run me as root to install ${PACKAGES[*]})" 3
    command -v apt-get >/dev/null || die "Ceph is not installed and there is no apt-get" 3
    mkdir -p "$LOCKS"
    (
        # One installer at a time; the others find the packages installed.
        flock -w 900 9 || die "timed out waiting for $LOCKS/install"
        have_ceph && exit 0
        say "installing ${PACKAGES[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt=(apt-get -q -o DPkg::Lock::Timeout=600)
        "${apt[@]}" install -y "${PACKAGES[@]}" >&2 ||
            { "${apt[@]}" update >&2 && "${apt[@]}" install -y "${PACKAGES[@]}" >&2; }
    ) 9>"$LOCKS/install" || die "cannot install ${PACKAGES[*]}" 3
    have_ceph || die "Ceph is still missing after apt-get install" 3
}

# ------------------------------------------------------------------- pids

# Whether process $1 is alive and has the argument $2 (DIR/ceph.conf for the
# daemons, DIR for the watchdog) on its command line.
is_ours() {
    local args arg
    mapfile -d '' args <"/proc/$1/cmdline" 2>/dev/null || return 1
    for arg in "${args[@]}"; do
        [[ $arg != "$2" ]] || { alive "$1"; return; }
    done
    return 1
}

# Print the pid in pid file $1 if that process is ours (see is_ours).
pid_ours() {
    local pid
    pid=$(cat "$1" 2>/dev/null) && [[ $pid =~ ^[0-9]+$ ]] && is_ours "$pid" "$2" || return 1
    echo "$pid"
}

# Set the array `fields` to the fields of /proc/$1/stat from the third (the
# state) on: the second, the command name, may hold spaces.
stat_fields() {
    local stat
    read -r stat <"/proc/$1/stat" 2>/dev/null || return 1
    read -r -a fields <<<"${stat##*) }"
}

# The process exists and is not a zombie (killed daemons are not our children,
# so they stay zombies until whoever adopted them reaps them).
alive() {
    local fields
    stat_fields "$1" && [[ ${fields[0]} != [ZX] ]]
}

any_alive() {
    local pid
    for pid; do alive "$pid" && return 0; done
    return 1
}

# SIGKILL the given pids and wait (up to 10 s) until they are gone.
kill_and_wait() {
    local _
    (($# > 0)) || return 0
    kill -KILL "$@" 2>/dev/null || true
    for _ in {1..200}; do
        any_alive "$@" || return 0
        sleep 0.05
    done
    say "warning: still alive after SIGKILL: $*"
}

daemon_pids() {
    local f
    for f in "$DIR/pids/mon.a" "$DIR/pids/osd.0"; do
        pid_ours "$f" "$CONF" || true
    done
}

# ------------------------------------------------------------------ ports

# Whether a TCP socket (other than TIME_WAIT) uses a local port in [$1, $2].
ports_busy() {
    local _ local_addr state port
    while read -r _ local_addr _ state _; do
        [[ $state != 06 ]] || continue
        port=$((16#${local_addr##*:}))
        ((port < $1 || port > $2)) || return 0
    done < <(tail -q -n +2 /proc/net/tcp /proc/net/tcp6 2>/dev/null)
    return 1
}

# Reserve a free block of $PORTS ports: leave fd $port_fd locked and set $port.
reserve_ports() {
    local low top first n
    read -r low _ </proc/sys/net/ipv4/ip_local_port_range
    top=$((low - PORTS))                      # stay clear of client sockets
    local blocks=$(((top - 10000) / PORTS))
    first=$((RANDOM * 32768 + RANDOM))
    mkdir -p "$LOCKS"
    for ((n = 0; n < blocks; n++)); do
        port=$((10000 + PORTS * ((first + n) % blocks)))
        exec {port_fd}>"$LOCKS/port-$port"
        if flock -n "$port_fd" && ! ports_busy "$port" $((port + PORTS - 1)); then
            return 0
        fi
        exec {port_fd}>&-
    done
    die "no free block of $PORTS ports"
}

# ------------------------------------------------------------------ start

write_conf() {
    cat >"$CONF" <<EOF
# Written by ceph-cluster.sh: a throw-away test cluster on 127.0.0.1:$port.
[global]
fsid = $1
mon host = v2:127.0.0.1:$port
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind ipv6 = false
ms bind msgr1 = false
ms bind port min = $((port + 1))
ms bind port max = $((port + PORTS - 1))
ms bind retry count = 1
auth cluster required = none
auth service required = none
auth client required = none
run dir = $DIR/run
crash dir = $DIR/run
mon data = $DIR/mon.\$id
osd data = $DIR/osd.\$id
log file = $DIR/log/\$name.log
mon cluster log file = $DIR/log/\$cluster.\$channel.log
osd objectstore = memstore
memstore device bytes = 4294967296
osd pool default size = 1
osd pool default min size = 1
osd crush chooseleaf type = 0
mon allow pool size one = true
# Commit map changes at once instead of batching them for a second.
paxos propose interval = 0.05
paxos min wait = 0.01

[client]
log file =
admin socket =
# Fail rather than hang when the cluster is gone.
client mount timeout = 30
rados mon op timeout = 60
rados osd op timeout = 120
EOF
}

# Run daemon $1 (mon.a or osd.0) in the background, in its own session, with
# its pid in DIR/pids.
spawn() {
    local name=$1
    shift
    setsid "$@" -c "$CONF" -f </dev/null >>"$DIR/log/$name.out" 2>&1 &
    echo $! >"$DIR/pids/$name"
}

# Give up on starting: show the logs, stop what runs, exit.
fail() {
    local f
    for f in "$DIR"/log/*.out "$DIR"/log/mon.a.log "$DIR"/log/osd.0.log; do
        [[ -s $f ]] && { say "--- tail of $f"; tail -n 20 "$f" >&2; }
    done
    cmd_stop
    die "$*"
}

ceph_() { timeout 60 ceph -c "$CONF" --connect-timeout 30 "$@"; }

cmd_start() {
    local watch=${1:-$PPID}
    [[ $watch =~ ^[0-9]+$ ]] || die "WATCH_PID must be a pid or 0"
    ensure_packages
    if cmd_status >/dev/null 2>&1; then
        echo "$CONF"
        return 0
    fi
    local t0=${EPOCHREALTIME/./} fsid osd_uuid port port_fd
    cmd_stop
    rm -rf "${OURS[@]}"
    mkdir -p "$DIR/mon.a" "$DIR/osd.0" "$DIR/log" "$DIR/run" "$DIR/pids"
    reserve_ports
    fsid=$(cat /proc/sys/kernel/random/uuid)
    osd_uuid=$(cat /proc/sys/kernel/random/uuid)
    write_conf "$fsid"

    # The watchdog inherits the port lock and holds it while the cluster runs.
    setsid "$SELF" _watchdog "$DIR" "$watch" </dev/null >/dev/null 2>&1 &
    echo $! >"$DIR/pids/watchdog"
    exec {port_fd}>&-

    monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$port]" "$DIR/monmap" >/dev/null
    ceph-mon -c "$CONF" -i a --mkfs --monmap "$DIR/monmap" >"$DIR/log/mon.a.out" 2>&1 ||
        fail "ceph-mon --mkfs failed"
    spawn mon.a ceph-mon -i a
    # `ceph osd new` waits for the mon; it registers osd.0 and prints its id.
    [[ $(ceph_ osd new "$osd_uuid" 2>>"$DIR/log/ceph.out") == 0 ]] || fail "ceph osd new failed"
    ceph-osd -c "$CONF" -i 0 --mkfs --osd-uuid "$osd_uuid" >"$DIR/log/osd.0.out" 2>&1 ||
        fail "ceph-osd --mkfs failed"
    spawn osd.0 ceph-osd -i 0
    ceph_ osd pool create rbd 8 >>"$DIR/log/ceph.out" 2>&1 || fail "ceph osd pool create failed"
    # Blocks until the OSD is up and the pool's placement groups are active.
    timeout 120 rbd -c "$CONF" pool init rbd >>"$DIR/log/ceph.out" 2>&1 || fail "rbd pool init failed"
    say "up in $(((${EPOCHREALTIME/./} - t0) / 1000)) ms on 127.0.0.1:$port ($DIR)"
    echo "$CONF"
}

# ------------------------------------------------------------ stop/status

cmd_stop() {
    local pids pid
    mapfile -t pids < <(daemon_pids)
    kill_and_wait "${pids[@]}"
    if pid=$(pid_ours "$DIR/pids/watchdog" "$DIR"); then
        kill -TERM "$pid" 2>/dev/null || true
    fi
    rm -f "$DIR/pids/mon.a" "$DIR/pids/osd.0" "$DIR/pids/watchdog"
}

cmd_status() {
    [[ -f $CONF ]] && pid_ours "$DIR/pids/mon.a" "$CONF" >/dev/null &&
        pid_ours "$DIR/pids/osd.0" "$CONF" >/dev/null &&
        timeout 30 rbd -c "$CONF" ls rbd >/dev/null || return 1
    echo "$CONF"
}

# ---------------------------------------------------------------- watchdog

# A process's start time (field 22), so that a reused pid is noticed.
start_time() {
    local fields
    stat_fields "$1" && echo "${fields[19]}"
}

# Kill every process that has DIR/ceph.conf on its command line.
kill_all_ours() {
    local proc pids=()
    for proc in /proc/[0-9]*; do
        ! is_ours "${proc#/proc/}" "$CONF" || pids+=("${proc#/proc/}")
    done
    kill_and_wait "${pids[@]}"
}

cmd_watchdog() {
    local watch=$1 born="" nap
    # A watched process that is already gone counts as exited.
    [[ $watch == 0 ]] || born=$(start_time "$watch") || born=gone
    exec {nap}<> <(:) # `read -t 1 -u $nap` sleeps without forking `sleep`
    while :; do
        if [[ ! -e $CONF ]]; then
            kill_all_ours # DIR was removed under the cluster
            exit 0
        fi
        if [[ -n $born && $(start_time "$watch") != "$born" ]]; then
            kill_all_ours
            rm -rf "${OURS[@]}"
            rmdir "$DIR" 2>/dev/null || true
            exit 0
        fi
        read -r -t 1 -u "$nap" || true
    done
}

# -------------------------------------------------------------------- main

(($# >= 2)) || usage
action=$1
DIR=$(realpath -m -- "$2")
[[ $DIR != *[[:space:]]* ]] || die "DIR must not contain white space"
CONF=$DIR/ceph.conf
# What this script makes in DIR, and removes after the watched process exits.
OURS=("$CONF" "$DIR/monmap" "$DIR/mon.a" "$DIR/osd.0" "$DIR/log" "$DIR/run" "$DIR/pids")
unset CEPH_ARGS CEPH_CONF

case $action in
start) cmd_start "${3:-}" ;;
stop) cmd_stop ;;
status) cmd_status ;;
_watchdog) cmd_watchdog "$3" ;;
*) usage ;;
esac
