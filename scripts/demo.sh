#!/usr/bin/env bash
# A first look at backy: two backups of a VM image on a throw-away btrfs,
# then both revisions restored and compared with what the image held at the
# time of each backup.
#
# Needs root (loop mount) and btrfs-progs (scripts/setup-test-deps.sh).
# Everything happens in a temporary directory that is removed on exit.
set -euo pipefail

repo=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }

((EUID == 0)) || die "needs root to loop-mount a btrfs (try: sudo $0)"
if ! command -v mkfs.btrfs >/dev/null && command -v apt-get >/dev/null; then
    say "apt-get install btrfs-progs"
    DEBIAN_FRONTEND=noninteractive apt-get install -y btrfs-progs >/dev/null ||
        { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y btrfs-progs >/dev/null; }
fi
for tool in mkfs.btrfs losetup mount umount cmp fallocate; do
    command -v "$tool" >/dev/null || die "$tool is missing (run scripts/setup-test-deps.sh)"
done

say "cargo build --release"
(cd "$repo" && cargo build --release)
backy="${CARGO_TARGET_DIR:-$repo/target}/release/backy"
[[ -x "$backy" ]] || die "no binary at $backy"

work=$(mktemp -d -t backy-demo.XXXXXX)
mnt="$work/mnt"
device=""
cleanup() {
    if mountpoint -q "$mnt"; then
        umount "$mnt" || umount -l "$mnt"
    fi
    if [[ -n $device ]]; then
        losetup -d "$device" || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

say "a 1 GiB btrfs on a loop device at $mnt"
truncate -s 1G "$work/btrfs.img"
mkfs.btrfs -q "$work/btrfs.img"
device=$(losetup --find --show "$work/btrfs.img")
mkdir "$mnt"
mount "$device" "$mnt"

image="$mnt/vm.img"
job="$mnt/backy/vm"
say "a 256 MiB sample image with data and holes: $image"
truncate -s 256M "$image"
write() { # write OFFSET_KIB COUNT_KIB SOURCE
    dd if="$3" of="$image" bs=1K seek="$1" count="$2" conv=notrunc status=none
}
write 0 8192 /dev/urandom               # 8 MiB "boot and root" at the start
write $((64 * 1024)) 4096 /dev/urandom  # 4 MiB at 64 MiB
write $((100 * 1024)) 1024 /dev/zero    # 1 MiB of written zeros at 100 MiB
printf 'backy demo %s\n' "$(date -u)" | dd of="$image" bs=1K seek=$((200 * 1024)) conv=notrunc status=none
write $((255 * 1024)) 1024 /dev/urandom # the last MiB
du -h --apparent-size "$image" | sed 's/^/    apparent size: /'
du -h "$image" | sed 's/^/    allocated:     /'

# Copies of the image as each backup saw it, to compare restores with.
copies="$work/copies"
mkdir "$copies"

say "backy -b $job init file $image"
"$backy" -b "$job" init file "$image"

say "backy -b $job backup daily"
cp --sparse=always "$image" "$copies/first.img"
"$backy" -b "$job" backup daily

say "change a few blocks: three 4 KiB writes and a punched hole"
write 12 4 /dev/urandom
write $((64 * 1024 + 100)) 4 /dev/urandom
write $((255 * 1024 + 1020)) 4 /dev/urandom
fallocate --punch-hole --keep-size --offset $((2 * 1024 * 1024)) --length $((1024 * 1024)) "$image"

say "backy -b $job backup daily,weekly"
cp --sparse=always "$image" "$copies/second.img"
"$backy" -b "$job" backup daily,weekly

say "backy -b $job status"
"$backy" -b "$job" status

say "storage: what each revision holds alone (btrfs filesystem du)"
if command -v btrfs >/dev/null; then
    sync -f "$job"
    revisions=()
    for rev in "$job"/*.rev; do
        [[ $rev == */last.rev ]] || revisions+=("$(basename "$rev" .rev)")
    done
    (cd "$job" && btrfs filesystem du --raw -- "${revisions[@]}" | sed 's/^/    /')
fi

say "restore -r 1 (the first backup) and -r 0 (the second)"
"$backy" -b "$job" restore -r 1 "$mnt/restored-1.img"
"$backy" -b "$job" restore -r 0 "$mnt/restored-0.img"
cmp "$copies/first.img" "$mnt/restored-1.img"
cmp "$copies/second.img" "$mnt/restored-0.img"
if cmp -s "$mnt/restored-0.img" "$mnt/restored-1.img"; then
    die "both revisions are the same, but the image changed between them"
fi
echo "    $("$backy" -b "$job" find -r 1) == the image at the first backup"
echo "    $("$backy" -b "$job" find -r 0) == the image at the second backup"

say "OK: both revisions restored byte for byte"
