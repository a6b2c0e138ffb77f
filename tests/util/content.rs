//! File content: deterministic data, sparse files, and comparisons.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use super::command::run_ok;

/// `len` deterministic pseudo-random bytes for `seed` (splitmix64), so a test
/// can rebuild the same content without storing it.
pub fn pattern_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Create (or truncate) `path` as a sparse file of `size` bytes, then write
/// each `(offset, bytes)`; everything not written is a hole. The file may grow
/// past `size` if a write ends beyond it.
pub fn write_file(path: &Path, size: u64, writes: &[(u64, &[u8])]) {
    let file = File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    file.set_len(size)
        .unwrap_or_else(|e| panic!("truncate {}: {e}", path.display()));
    for (offset, data) in writes {
        file.write_all_at(data, *offset)
            .unwrap_or_else(|e| panic!("write {} at {offset}: {e}", path.display()));
    }
    file.sync_all()
        .unwrap_or_else(|e| panic!("fsync {}: {e}", path.display()));
}

/// Overwrite `data` at `offset` in an existing file (created if missing),
/// without truncating it, and fsync.
pub fn write_at(path: &Path, offset: u64, data: &[u8]) {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    file.write_all_at(data, offset)
        .unwrap_or_else(|e| panic!("write {} at {offset}: {e}", path.display()));
    file.sync_all()
        .unwrap_or_else(|e| panic!("fsync {}: {e}", path.display()));
}

/// Lowercase hex SHA-256 of a file's content (via coreutils `sha256sum`).
pub fn sha256(path: &Path) -> String {
    let r = run_ok(Command::new("sha256sum").arg("-b").arg(path));
    r.stdout
        .split_whitespace()
        .next()
        .expect("sha256sum prints a digest")
        .to_owned()
}

/// Whether two files have the same size and bytes.
pub fn files_equal(a: &Path, b: &Path) -> bool {
    first_difference(a, b).is_none()
}

/// Panic unless two files have the same bytes, naming the first offset where
/// they differ and both sizes.
#[track_caller]
pub fn assert_same_content(a: &Path, b: &Path) {
    if let Some(offset) = first_difference(a, b) {
        let size = |p: &Path| fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        panic!(
            "{} ({} bytes) and {} ({} bytes) differ at byte {offset}",
            a.display(),
            size(a),
            b.display(),
            size(b)
        );
    }
}

/// Offset of the first differing byte (or the shorter length), `None` if equal.
fn first_difference(a: &Path, b: &Path) -> Option<u64> {
    let open = |p: &Path| File::open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    let (mut fa, mut fb) = (open(a), open(b));
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut offset = 0u64;
    loop {
        let na = read_full(&mut fa, &mut ba);
        let nb = read_full(&mut fb, &mut bb);
        let n = na.min(nb);
        if let Some(i) = ba[..n].iter().zip(&bb[..n]).position(|(x, y)| x != y) {
            return Some(offset + i as u64);
        }
        if na != nb {
            return Some(offset + n as u64);
        }
        if na == 0 {
            return None;
        }
        offset += n as u64;
    }
}

/// Fill `buf` as far as the file allows; returns the bytes read.
fn read_full(file: &mut File, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    n
}

/// Write `contents` to `path` (for configs and small fixtures).
pub fn write_text(path: &Path, contents: &str) {
    let mut f = File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    f.write_all(contents.as_bytes())
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}
