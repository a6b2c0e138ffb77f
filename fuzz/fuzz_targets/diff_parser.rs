//! Fuzzes the `rbd export-diff` v1 parser and applier with arbitrary bytes.
//!
//! The input is a raw diff stream (the seeds in `fuzz/seeds/diff_parser/` are real
//! `rbd export-diff` output plus one hand-made stream), so a crash artifact is itself
//! a diff that reproduces through backy.
//!
//! Per input:
//! 1. `DiffReader` walks the stream to its end or first error, reading `w` data with
//!    `read_data` in chunks of changing sizes. Nothing may panic, and the position
//!    never goes backwards nor past the input.
//! 2. Unless a declared size exceeds `MAX_SIZE`, `apply` runs three times, each into a
//!    fresh image in a temporary directory (on tmpfs when `/dev/shm` exists):
//!    - expecting the snapshot names and the size the stream carries (the first of
//!      each), onto a small parent image with data (`PARENT_SIZE`, which ends in a
//!      short block) and its trusted manifest;
//!    - the same, with a fresh manifest (parent digests not trusted);
//!    - expecting nothing (a full diff of the image head), onto an empty image.
//!
//!    When `apply` returns Ok, the image and its manifest must have `Applied.size`,
//!    `verify_against_manifest` must find no bad block, and, for images of at most
//!    `MODEL_MAX` bytes, the content must equal a model: the parent (zeros for a full
//!    diff) resized, then every `w` and `z` in stream order.

#![no_main]

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use backy::image::sums::Manifest;
use backy::image::writer::ImageWriter;
use backy::source::rbd::diff::{DiffReader, Expect, Record, apply};
use libfuzzer_sys::fuzz_target;

/// Inputs declaring a bigger image skip `apply` (sparse, but it must stay fast).
const MAX_SIZE: u64 = 64 << 20;
/// Largest image whose content is compared with the in-memory model.
const MODEL_MAX: u64 = 4 << 20;
/// The parent image: three 64 KiB blocks and a short tail block.
const PARENT_SIZE: u64 = 3 * 65536 + 3000;
/// Chunk sizes `read_data` is called with, in turn.
const CHUNKS: [usize; 5] = [1, 4096, 65536, 7, 100_000];

/// What walking the stream found.
#[derive(Default)]
struct Walk {
    from: Option<String>,
    to: Option<String>,
    max_size: u64,
    first_size: Option<u64>,
    /// `w` and `z` records: (is_write, offset, len, position of the data in the input).
    ops: Vec<(bool, u64, u64, usize)>,
}

fn walk(data: &[u8]) -> Walk {
    let mut w = Walk::default();
    let Ok(mut r) = DiffReader::new(data) else {
        return w;
    };
    let mut buf = vec![0u8; 100_000];
    let mut chunk = 0;
    let mut last = r.position();
    loop {
        let Ok(record) = r.next_record() else {
            return w;
        };
        let pos = r.position();
        assert!(pos > last && pos <= data.len() as u64, "position {pos}");
        last = pos;
        match record {
            Record::FromSnap(name) => {
                w.from.get_or_insert(name);
            }
            Record::ToSnap(name) => {
                w.to.get_or_insert(name);
            }
            Record::Size(size) => {
                w.first_size.get_or_insert(size);
                w.max_size = w.max_size.max(size);
            }
            Record::Write { offset, len } => {
                w.ops.push((true, offset, len, pos as usize));
                let mut left = len;
                while left > 0 {
                    let n = (CHUNKS[chunk % CHUNKS.len()] as u64).min(left) as usize;
                    chunk += 1;
                    if r.read_data(&mut buf[..n]).is_err() {
                        return w;
                    }
                    assert_eq!(&buf[..n], &data[r.position() as usize - n..][..n]);
                    left -= n as u64;
                }
                last = r.position();
            }
            Record::Zero { offset, len } => w.ops.push((false, offset, len, 0)),
            Record::End => {
                let _ = r.has_trailing_bytes();
                return w;
            }
        }
    }
}

/// Byte `i` of the parent image: data with a zero page in block 1.
fn parent_byte(i: u64) -> u8 {
    if (65536 + 8192..65536 + 12288).contains(&i) {
        0
    } else {
        (i.wrapping_mul(31) ^ (i >> 12)) as u8 | 1
    }
}

struct Image {
    path: PathBuf,
    sums: PathBuf,
}

impl Image {
    /// An image of `size` bytes of `parent_byte` in `dir`, with a complete manifest.
    fn new(dir: &Path, name: &str, size: u64) -> Image {
        let path = dir.join(name);
        let sums = dir.join(format!("{name}.sums"));
        let (content, manifest) = template(size);
        std::fs::write(&path, content).unwrap();
        std::fs::write(&sums, manifest).unwrap();
        Image { path, sums }
    }

    fn writer(&self, trusted: bool) -> ImageWriter {
        let manifest = if trusted {
            Manifest::open(&self.sums, true).unwrap()
        } else {
            std::fs::remove_file(&self.sums).unwrap();
            Manifest::create(&self.sums, 0).unwrap()
        };
        ImageWriter::new(open(&self.path), &self.path, manifest, trusted)
    }
}

/// An image's content and its manifest file's bytes.
type Template = (&'static [u8], &'static [u8]);

/// The parent image of `size` bytes and its manifest, made once per process: as a
/// backup without trusted digests does, from an empty manifest, a resize by the
/// source, and `finish`, which hashes every block from the image.
fn template(size: u64) -> Template {
    static TEMPLATES: Mutex<Vec<(u64, Template)>> = Mutex::new(Vec::new());
    let mut templates = TEMPLATES.lock().unwrap();
    if let Some(&(_, t)) = templates.iter().find(|t| t.0 == size) {
        return t;
    }
    let dir = temp_dir();
    let path = dir.path().join("parent");
    let sums = dir.path().join("parent.sums");
    let content: Vec<u8> = (0..size).map(parent_byte).collect();
    std::fs::write(&path, &content).unwrap();
    let mut writer = ImageWriter::new(
        open(&path),
        &path,
        Manifest::create(&sums, 0).unwrap(),
        false,
    );
    writer.resize(size).unwrap();
    writer.finish().unwrap();
    let manifest = std::fs::read(&sums).unwrap();
    let t = (&*content.leak(), &*manifest.leak());
    templates.push((size, t));
    t
}

fn open(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap()
}

/// Applies `data` to `image`; on success checks sizes, manifest and (small) content.
fn check_apply(data: &[u8], w: &Walk, image: &Image, parent: u64, trusted: bool, expect: &Expect) {
    let mut writer = image.writer(trusted);
    let result = apply(data, &mut writer, expect);
    let finished = writer.finish();
    let Ok(applied) = result else {
        return;
    };
    let (file, mut manifest, _) = finished.expect("finish after a successful apply");
    let len = file.metadata().unwrap().len();
    assert_eq!(len, applied.size, "image size vs Applied.size");
    assert_eq!(manifest.image_size(), applied.size, "manifest size");
    let report =
        backy::image::verify_against_manifest(&file, &image.path, &mut manifest, &mut |_| {})
            .expect("verify after a successful apply");
    assert!(
        report.bad_offsets.is_empty(),
        "manifest wrong at {:?}",
        report.bad_offsets
    );
    let records: u64 = w.ops.iter().map(|op| op.2).sum();
    assert_eq!(applied.bytes_in_records, records, "bytes_in_records");
    if applied.size <= MODEL_MAX {
        let mut model: Vec<u8> = if expect.from_snap.is_some() {
            template(parent).0.to_vec()
        } else {
            Vec::new()
        };
        model.resize(applied.size as usize, 0);
        for &(is_write, offset, len, at) in &w.ops {
            let range = offset as usize..(offset + len) as usize;
            if is_write {
                model[range].copy_from_slice(&data[at..at + len as usize]);
            } else {
                model[range].fill(0);
            }
        }
        let mut content = vec![0u8; applied.size as usize];
        file.read_exact_at(&mut content, 0).unwrap();
        assert!(content == model, "image content differs from the model");
    }
}

fn temp_dir() -> tempfile::TempDir {
    let b = tempfile::Builder::new()
        .prefix("backy-fuzz-")
        .tempdir_in("/dev/shm");
    b.or_else(|_| tempfile::tempdir()).unwrap()
}

fuzz_target!(|data: &[u8]| {
    let w = walk(data);
    if w.max_size > MAX_SIZE {
        return;
    }
    let dir = temp_dir();
    let seen = Expect {
        from_snap: w.from.clone(),
        to_snap: w.to.clone(),
        size: w.first_size,
    };
    let image = Image::new(dir.path(), "trusted", PARENT_SIZE);
    check_apply(data, &w, &image, PARENT_SIZE, true, &seen);
    let image = Image::new(dir.path(), "untrusted", PARENT_SIZE);
    check_apply(data, &w, &image, PARENT_SIZE, false, &seen);
    let image = Image::new(dir.path(), "empty", 0);
    check_apply(data, &w, &image, 0, true, &Expect::default());
});
