#!/usr/bin/env bash
# The whole test suite, from a fresh machine: dependencies, formatting,
# lints, then every test target (nextest when installed) and the doctests.
#
# Run from anywhere. CI is passed through untouched: with CI=true (see
# .ci/run) tests that cannot run here fail instead of skipping.
set -euo pipefail

cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."

step() { printf '\n==> %s\n' "$*" >&2; }

step "scripts/setup-test-deps.sh"
scripts/setup-test-deps.sh

step "cargo fmt --all -- --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

if cargo nextest --version >/dev/null 2>&1; then
    step "cargo nextest run --all-targets"
    cargo nextest run --all-targets --no-tests=warn
else
    step "cargo test --all-targets"
    cargo test --all-targets
fi

# --all-targets leaves out doctests (and nextest cannot run them).
if [[ -f src/lib.rs ]]; then
    step "cargo test --doc"
    cargo test --doc
fi

# A bounded run of every fuzz target (fuzz/, its own workspace; the list is in
# scripts/fuzz.sh): every parser of backy's inputs, 10 s each here, so the
# whole suite stays within 20 minutes; `scripts/fuzz.sh 3600` runs longer.
step "scripts/fuzz.sh 10"
scripts/fuzz.sh 10

step "all tests passed"
