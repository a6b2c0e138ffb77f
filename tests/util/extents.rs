//! Extent accounting: allocated and exclusive (unshared) bytes, reflinks.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::command::{run, run_ok, tool};
use super::testfs::{FsKind, TestFs};

/// `FIEMAP_EXTENT_SHARED`: the extent's blocks are shared with another file.
const FIEMAP_EXTENT_SHARED: u64 = 0x2000;

/// Bytes allocated to a file (`st_blocks * 512`): what holes save.
pub fn allocated_bytes(path: &Path) -> u64 {
    let meta = fs::metadata(path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
    meta.blocks() * 512
}

/// Bytes of `path` (a file or a directory tree) stored in extents no other
/// file shares, on whatever filesystem `fs` is. On ext4 and tmpfs nothing is
/// shared, so this is the allocated size.
pub fn exclusive_bytes(fs: &TestFs, path: &Path) -> u64 {
    match fs.kind() {
        FsKind::Btrfs => btrfs_exclusive_bytes(path),
        FsKind::Xfs => xfs_exclusive_bytes(path),
        FsKind::Ext4 | FsKind::Tmpfs => walk_files(path).iter().map(|f| allocated_bytes(f)).sum(),
    }
}

/// The `Exclusive` column of `btrfs filesystem du --raw PATH` for PATH
/// itself (for a directory, btrfs sums its files).
pub fn btrfs_exclusive_bytes(path: &Path) -> u64 {
    sync_fs(path);
    let r = run_ok(tool("btrfs").args(["filesystem", "du", "--raw"]).arg(path));
    parse_btrfs_du_exclusive(&r.stdout)
        .unwrap_or_else(|| r.fail("cannot parse `btrfs filesystem du`"))
}

/// Sum over the files under `path` of their FIEMAP extents without
/// `FIEMAP_EXTENT_SHARED`, as listed by `xfs_io -c 'fiemap -v'`.
pub fn xfs_exclusive_bytes(path: &Path) -> u64 {
    sync_fs(path);
    walk_files(path)
        .iter()
        .map(|file| {
            let r = run_ok(tool("xfs_io").args(["-r", "-c", "fiemap -v"]).arg(file));
            parse_fiemap_exclusive(&r.stdout)
                .unwrap_or_else(|| r.fail("cannot parse `xfs_io -c 'fiemap -v'`"))
        })
        .sum()
}

/// Parse `btrfs filesystem du --raw` output: the last row is PATH itself.
pub fn parse_btrfs_du_exclusive(out: &str) -> Option<u64> {
    let mut lines = out.lines().filter(|l| !l.trim().is_empty());
    let header = lines.next()?;
    if !header.contains("Exclusive") {
        return None;
    }
    lines.next_back()?.split_whitespace().nth(1)?.parse().ok()
}

/// Parse `xfs_io -c 'fiemap -v'` output (512-byte units; flags in hex):
///
/// ```text
/// a:
///  EXT: FILE-OFFSET      BLOCK-RANGE      TOTAL FLAGS
///    0: [0..639]:        192..831           640 0x2000
///    1: [640..767]:      hole               128
/// ```
///
/// Returns `None` on any row it does not understand, so a format change
/// fails loudly instead of miscounting.
pub fn parse_fiemap_exclusive(out: &str) -> Option<u64> {
    let mut bytes = 0;
    for line in out.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        match cols.as_slice() {
            [] => {}
            ["EXT:", ..] => {}
            [ext, _, "hole", _] if ext.ends_with(':') => {}
            [ext, _, _, total, flags] if ext.ends_with(':') => {
                let sectors: u64 = total.parse().ok()?;
                let flags = u64::from_str_radix(flags.strip_prefix("0x")?, 16).ok()?;
                if flags & FIEMAP_EXTENT_SHARED == 0 {
                    bytes += sectors * 512;
                }
            }
            _ => return None,
        }
    }
    Some(bytes)
}

/// Bytes on disk that the files under `path` use, each physical block
/// counted once however many files (or places in one file) share it: the
/// union of their FIEMAP extents (`xfs_io -c 'fiemap -v'`, any filesystem).
pub fn physical_bytes(path: &Path) -> u64 {
    sync_fs(path);
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for file in walk_files(path) {
        let r = run_ok(tool("xfs_io").args(["-r", "-c", "fiemap -v"]).arg(&file));
        ranges.extend(
            parse_fiemap_physical(&r.stdout)
                .unwrap_or_else(|| r.fail("cannot parse `xfs_io -c 'fiemap -v'`")),
        );
    }
    ranges.sort_unstable();
    let (mut bytes, mut covered) = (0, 0);
    for (start, end) in ranges {
        let start = start.max(covered);
        if end > start {
            bytes += end - start;
            covered = end;
        }
    }
    bytes
}

/// The physical byte ranges `[start, end)` of the extents in
/// `xfs_io -c 'fiemap -v'` output (see [`parse_fiemap_exclusive`]).
pub fn parse_fiemap_physical(out: &str) -> Option<Vec<(u64, u64)>> {
    let mut ranges = Vec::new();
    for line in out.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        match cols.as_slice() {
            [] => {}
            ["EXT:", ..] => {}
            [ext, _, "hole", _] if ext.ends_with(':') => {}
            [ext, _, blocks, _, _] if ext.ends_with(':') => {
                let (first, last) = blocks.split_once("..")?;
                let first: u64 = first.parse().ok()?;
                let last: u64 = last.trim_end_matches(':').parse().ok()?;
                ranges.push((first * 512, (last + 1) * 512));
            }
            _ => return None,
        }
    }
    Some(ranges)
}

/// Flush the filesystem holding `path`, so delayed allocation is resolved
/// before extents are counted.
fn sync_fs(path: &Path) {
    run_ok(Command::new("sync").arg("-f").arg(path));
}

/// Regular files at or under `path` (not following symlinks).
fn walk_files(path: &Path) -> Vec<PathBuf> {
    let meta =
        fs::symlink_metadata(path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
    if meta.is_file() {
        return vec![path.to_owned()];
    }
    if !meta.is_dir() {
        return Vec::new();
    }
    let mut files = Vec::new();
    for entry in fs::read_dir(path).unwrap_or_else(|e| panic!("list {}: {e}", path.display())) {
        files.extend(walk_files(&entry.expect("directory entry").path()));
    }
    files
}

/// Make `dst` a reflink clone of `src` with `cp --reflink=always`; false when
/// the filesystem refuses.
pub fn reflink_copy(src: &Path, dst: &Path) -> bool {
    run(Command::new("cp").arg("--reflink=always").arg(src).arg(dst))
        .status
        .success()
}

/// Where byte `offset` of `file` is on the device `device` under its
/// filesystem of kind `kind`. FIEMAP gives the filesystem's address: on XFS
/// the device offset, on btrfs a logical address that `btrfs-map-logical`
/// maps to the device (single data profile).
pub fn device_offset_on(kind: FsKind, device: &Path, file: &Path, offset: u64) -> u64 {
    // btrfs-map-logical reads the trees on disk: commit what is in memory.
    run_ok(&mut tool("sync"));
    let handle = fs::File::open(file).unwrap();
    let extents = backy::image::fiemap::extents(&handle, true).unwrap();
    let e = extents
        .iter()
        .find(|e| e.logical <= offset && offset < e.end())
        .unwrap_or_else(|| panic!("{} has no extent at {offset}: {extents:?}", file.display()));
    assert!(e.has_location() && !e.is_encoded(), "{e:?}");
    let address = e.physical + (offset - e.logical);
    match kind {
        FsKind::Xfs => address,
        FsKind::Btrfs => {
            let r = run_ok(
                tool("btrfs-map-logical")
                    .args(["-l", &address.to_string()])
                    .arg(device),
            );
            // "mirror 1 logical 13631488 physical 9437184 device /dev/loop3"
            r.stdout
                .lines()
                .filter(|l| l.starts_with("mirror 1 "))
                .find_map(|l| {
                    let words: Vec<&str> = l.split_whitespace().collect();
                    let at = words.iter().position(|w| *w == "physical")?;
                    words.get(at + 1)?.parse().ok()
                })
                .unwrap_or_else(|| r.fail("cannot parse btrfs-map-logical"))
        }
        other => panic!("no device offsets on {other}"),
    }
}

/// Flips one byte of block `offset` of revision `id` of `job` on the device
/// under `fs` (so every revision that shares the extent sees it), then drops
/// the cached pages of every image, so the next read comes from the disk.
pub fn flip_on_disk(fs: &TestFs, job: &Path, id: &str, offset: u64) {
    use std::os::unix::fs::FileExt;
    let device_path = fs.device().unwrap();
    let at = device_offset_on(fs.kind(), device_path, &job.join(id), offset + 100);
    let device = fs::File::options()
        .read(true)
        .write(true)
        .open(device_path)
        .unwrap();
    let mut byte = [0u8];
    device.read_exact_at(&mut byte, at).unwrap();
    byte[0] ^= 0x10;
    device.write_all_at(&byte, at).unwrap();
    device.sync_all().unwrap();
    drop(device);
    for entry in fs::read_dir(job).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none() && path.is_file() {
            let f = fs::File::open(&path).unwrap();
            rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed).unwrap();
        }
    }
}
