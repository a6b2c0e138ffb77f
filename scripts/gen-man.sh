#!/usr/bin/env bash
# Regenerate the generated, committed documentation from the code:
#   man/backy.1          backy::manpage::render() (src/manpage/template.md + the clap definitions)
#   completions/*        `backy completions bash|zsh|fish`
# tests/manpage.rs fails while these are stale. Run this after changing
# src/cli.rs or src/manpage/template.md (or the version in Cargo.toml), then commit the files.
#
# Preview: man -l man/backy.1
set -euo pipefail

cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."

BACKY_REGENERATE_MAN=1 cargo test --quiet --test manpage -- \
    --exact committed_man_page_is_current committed_completions_are_current
# Check what was written, as the test suite will.
cargo test --quiet --test manpage
git status --short -- man completions
