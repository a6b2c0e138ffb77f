//! Fuzzes the `backy send` stream reader and `receive` with arbitrary bytes.
//!
//! The input is a raw stream. The seeds in `fuzz/seeds/send_stream/` are real
//! `backy send` output of small jobs (made by `tests/replicate.rs`'s
//! `fuzz_seeds_come_from_real_streams` with `BACKY_REGENERATE_SEEDS=1`) plus the
//! unit tests' sample stream, so a crash artifact is itself a stream that
//! reproduces through `backy receive`.
//!
//! Per input:
//! 1. `StreamReader` walks the stream to its end or first error. Nothing may
//!    panic, its position only moves forward and never past the input, and after
//!    an error it stays failed.
//! 2. `receive` runs into a fresh job directory in a temporary directory (on
//!    tmpfs when `/dev/shm` exists, so the job's config allows full copies). When
//!    it returns Ok, every complete revision of the job must match its manifest
//!    (`verify_against_manifest` finds no bad block) and be one the stream named.

#![no_main]

use std::fs::File;

use backy::image::sums::Manifest;
use backy::job::Job;
use backy::replicate::receive::{Options, receive};
use backy::replicate::stream::{Record, StreamReader};
use libfuzzer_sys::fuzz_target;

/// Images declaring more than this skip `receive` (sparse, but it must stay fast).
const MAX_SIZE: u64 = 64 << 20;

/// Walks the stream; returns the revision ids it announced and the largest
/// image size any revision header declared.
fn walk(data: &[u8]) -> (Vec<String>, u64) {
    let Ok(mut reader) = StreamReader::new(data) else {
        return (Vec::new(), 0);
    };
    let mut ids = Vec::new();
    let mut max_size = 0;
    let mut last = reader.position();
    loop {
        match reader.next_record() {
            Ok(Some(record)) => {
                let pos = reader.position();
                assert!(pos > last && pos <= data.len() as u64, "position {pos}");
                last = pos;
                match record {
                    Record::Begin(b) => ids = b.revisions,
                    Record::Revision(h) => max_size = max_size.max(h.image_size),
                    _ => {}
                }
            }
            Ok(None) => return (ids, max_size),
            Err(_) => {
                assert!(reader.next_record().is_err(), "a failed reader recovered");
                return (ids, max_size);
            }
        }
    }
}

fn temp_dir() -> tempfile::TempDir {
    let b = tempfile::Builder::new()
        .prefix("backy-fuzz-")
        .tempdir_in("/dev/shm");
    b.or_else(|_| tempfile::tempdir()).unwrap()
}

fuzz_target!(|data: &[u8]| {
    let (ids, max_size) = walk(data);
    if max_size > MAX_SIZE {
        return;
    }
    let dir = temp_dir();
    let job_dir = dir.path().join("job");
    std::fs::create_dir(&job_dir).unwrap();
    std::fs::write(
        job_dir.join("config"),
        "type: file\nfilename: /dev/null\nallow-copy: true\n",
    )
    .unwrap();
    if receive(&job_dir, data, Options::default()).is_err() {
        return;
    }
    let job = Job::open(&job_dir).unwrap();
    for rev in job.revisions().iter().filter(|r| r.is_complete()) {
        assert!(
            ids.contains(&rev.id),
            "revision {} was not in the stream",
            rev.id
        );
        let path = job.image_path(&rev.id);
        let mut manifest = Manifest::open(&job.sums_path(&rev.id), false).unwrap();
        let image = File::open(&path).unwrap();
        let report =
            backy::image::verify_against_manifest(&image, &path, &mut manifest, &mut |_| {})
                .unwrap();
        assert!(
            report.bad_offsets.is_empty(),
            "revision {} differs from its manifest at {:?}",
            rev.id,
            report.bad_offsets
        );
    }
});
