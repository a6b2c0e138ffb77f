#!/usr/bin/env bash
# Fuzzes each target in fuzz/fuzz_targets/ (default: all of them) for SECONDS
# each (default 60), starting from a copy of its committed seeds in
# fuzz/seeds/<target>/ (the working corpus fuzz/corpus/<target>/ is git-ignored
# and keeps what earlier runs found). Exits non-zero on a crash, naming the input
# that reproduces it.
#
#   diff_parser       the rbd export-diff parser and applier
#   nbd_server        the NBD server's handshake and request handling
#   job_config        a job's `config` (both layouts, every source type)
#   scheduler_config  the scheduler configuration (/etc/backy.conf)
#   rev_file          a revision's `.rev` (YAML, JSON, every timestamp form)
#   spec              `-r SPEC` resolution over a history the input describes
#   sums_header       a checksum manifest's header and digests
#   console_line      the telnet console's line reader and commands
#   send_stream       the send/receive stream reader and receive
#
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]
#
# cargo-fuzz wants nightly flags: the stable toolchain takes them with
# RUSTC_BOOTSTRAP=1, set here for the fuzz build only. The target is built with
# debug assertions and overflow checks but no sanitizer (backy has no unsafe code,
# and AddressSanitizer costs 2-5x the executions); FUZZ_SANITIZER=address brings it.
set -euo pipefail

cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."

seconds=${1:-60}
if [[ ! $seconds =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: scripts/fuzz.sh [SECONDS] (a whole number above 0, not '$seconds')" >&2
    exit 2
fi
sanitizer=${FUZZ_SANITIZER:-none}
shift || true
if (($# > 0)); then
    targets=("$@")
else
    targets=()
    for f in fuzz/fuzz_targets/*.rs; do
        targets+=("$(basename "$f" .rs)")
    done
fi
for target in "${targets[@]}"; do
    if [[ ! -f fuzz/fuzz_targets/$target.rs ]]; then
        echo "scripts/fuzz.sh: no fuzz target '$target' (see fuzz/fuzz_targets/)" >&2
        exit 2
    fi
done

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "==> cargo install --locked cargo-fuzz" >&2
    cargo install --locked cargo-fuzz
fi

export RUSTC_BOOTSTRAP=1

fuzz_one() {
    local target=$1
    corpus=fuzz/corpus/$target
    artifacts=fuzz/artifacts/$target
    mkdir -p "$corpus" "$artifacts"
    cp fuzz/seeds/$target/* "$corpus/"

    # Build first, so that the time limit is all fuzzing and a build error says so.
    cargo fuzz build -s "$sanitizer" "$target"

    # Artifacts written by this run are those newer than this marker.
    marker=$(mktemp)
    trap 'rm -f "$marker"' EXIT

    # libFuzzer reports every new coverage point; keep the log to the rest.
    status=0
    cargo fuzz run -s "$sanitizer" "$target" "$corpus" -- \
        -max_total_time="$seconds" -timeout=20 -max_len=16384 -print_final_stats=1 2>&1 |
        grep --line-buffered -vE '^#[0-9]+[[:space:]]+(NEW|REDUCE|pulse)' || status=${PIPESTATUS[0]}

    if ((status != 0)); then
        found=$(find "$artifacts" -type f -newer "$marker" ! -name 'slow-unit-*' | sort)
        echo >&2
        echo "FUZZING FAILED (exit $status) in target $target." >&2
        if [[ -n $found ]]; then
            for f in $found; do
                echo "  artifact: $f ($(stat -c %s "$f") bytes)" >&2
                echo "  hex:      $(head -c 256 "$f" | od -An -v -tx1 | tr -d ' \n')" >&2
                echo "  reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run -s $sanitizer $target $f" >&2
            done
        else
            echo "  no new artifact in $artifacts (a build or setup error?)" >&2
        fi
        exit 1
    fi
    echo "fuzzing $target for ${seconds}s found nothing" >&2
}

for target in "${targets[@]}"; do
    fuzz_one "$target"
done
