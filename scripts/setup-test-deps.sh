#!/usr/bin/env bash
# Install what the test suite needs, and nothing when it is already there:
#
# - Debian packages for the test filesystems, NBD and image tools (nbdkit's sh
#   plugin, nbdfuse from libnbd-bin and fusermount3 from fuse3 make the failing
#   devices of tests/read_errors.rs), and Ceph for the throw-away test clusters (scripts/ceph-cluster.sh; librbd1 for
#   backy's librbd reads, python3-rbd for the harness's exact writes), and
#   prometheus for promtool, which lints `backy metrics` (tests/metrics.rs);
# - the original Python backy 2.1.5 in a venv at target/backy21, with the
#   launcher target/backy21/bin/backy21 that the tests run as the peer
#   (tests/util/python.rs, python_backy()).
#
# Safe to run again and again; `cargo clean` removes the venv with target/.
# Environment: PYTHON (default python3) makes the venv.
set -euo pipefail

repo=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
venv="$repo/target/backy21"
launcher="$venv/bin/backy21"
python=${PYTHON:-python3}

packages=(btrfs-progs xfsprogs e2fsprogs util-linux nbdkit libnbd-bin qemu-utils python3-venv
    nbd-client python3-libnbd fuse3 dpkg binutils rsync
    ceph-mon ceph-osd ceph-common librbd1 python3-rbd prometheus)

say() { printf 'setup-test-deps: %s\n' "$*" >&2; }

is_ci() { case "${CI:-}" in true | TRUE | True | 1 | yes) return 0 ;; *) return 1 ;; esac; }

install_packages() {
    if ! command -v dpkg-query >/dev/null; then
        say "not a Debian system: install the equivalents of ${packages[*]} yourself"
        return 0
    fi
    local missing=() pkg
    for pkg in "${packages[@]}"; do
        if [[ $(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null) != "install ok installed" ]]; then
            missing+=("$pkg")
        fi
    done
    if ((${#missing[@]} == 0)); then
        return 0
    fi
    if ((EUID != 0)); then
        say "missing packages: ${missing[*]} (run me as root to install them)"
        if is_ci; then
            exit 1
        fi
        return 0
    fi
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y "${missing[@]}"
}

# The venv is healthy when the launcher runs and the pinned versions are in.
venv_is_healthy() {
    [[ -x "$launcher" ]] || return 1
    "$launcher" --help >/dev/null 2>&1 || return 1
    "$venv/bin/python" - <<'EOF' >/dev/null 2>&1
from importlib.metadata import version
assert version("backy") == "2.1.5"
assert version("shortuuid") == "0.4.2"
assert tuple(int(x) for x in version("PyYAML").split(".")[:2]) < (5, 3)
EOF
}

# backy/daemon.py uses `asyncio.async(...)`, a syntax error since Python 3.7,
# and backy/main.py imports it unconditionally. Only `scheduler` and `check`
# need it, so the launcher puts an empty module in its place and runs every
# other subcommand unmodified.
write_launcher() {
    local interpreter="$venv/bin/python"
    local tmp="$launcher.tmp.$$"
    {
        if ((${#interpreter} < 120)); then
            printf '#!%s\n' "$interpreter"
        else
            # Too long for a shebang line: the trampoline pip uses.
            printf "#!/bin/sh\n'''exec' \"%s\" \"\$0\" \"\$@\"\n' '''\n" "$interpreter"
        fi
        cat <<'EOF'
"""Run the original backy 2.1.5 without its daemon module (see setup-test-deps.sh)."""
import sys
import types

sys.modules["backy.daemon"] = types.ModuleType("backy.daemon")

import backy.main  # noqa: E402

sys.exit(backy.main.main())
EOF
    } >"$tmp"
    chmod 0755 "$tmp"
    mv -f "$tmp" "$launcher"
}

make_python_backy() {
    if venv_is_healthy; then
        return 0
    fi
    say "creating the Python backy 2.1.5 venv in $venv"
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    "$python" -m venv "$venv"
    # PyYAML 5.3+ loads `+00:00` timestamps as aware datetimes, which backy
    # 2.1.5's revision loader rejects. shortuuid 0.4.2 is what backy 2.1
    # deployments pinned: its IDs are least significant digit first, unpadded
    # (1.0 changed the encoding). setuptools provides pkg_resources, which
    # backy uses to look up its sources.
    "$venv/bin/pip" install -q --disable-pip-version-check \
        "backy==2.1.5" "PyYAML<5.3" "shortuuid==0.4.2" "setuptools<81"
    write_launcher
    if ! venv_is_healthy; then
        say "the Python backy 2.1.5 launcher at $launcher does not work"
        exit 1
    fi
}

install_packages
make_python_backy
say "ready (Python backy 2.1.5: $launcher)"
