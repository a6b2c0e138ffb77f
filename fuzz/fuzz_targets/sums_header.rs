//! Fuzzes the checksum manifest reader (`Manifest::open`) with arbitrary
//! bytes: the 4 KiB header (magic, version, algorithm, block size, digest
//! length, image size) and the digests after it.
//!
//! Per input: opening never panics nor allocates by a length field; an opened
//! manifest has `blocks() == ceil(image_size / block_size)`, and every block
//! can be asked for (a short file is an error, not a panic). Big declared
//! images are only sampled.

#![no_main]

use backy::image::sums::{Manifest, block_count};
use libfuzzer_sys::fuzz_target;

#[path = "../common/scratch.rs"]
mod scratch;

fuzz_target!(|data: &[u8]| {
    let path = scratch::file("r.sums", data);
    let Ok(mut manifest) = Manifest::open(&path, false) else {
        return;
    };
    let blocks = manifest.blocks();
    assert!(manifest.block_size() > 0);
    assert_eq!(blocks, block_count(manifest.image_size(), manifest.block_size()));
    let sample: Vec<u64> = if blocks <= 4096 {
        (0..blocks).collect()
    } else {
        vec![0, 1, blocks / 2, blocks - 2, blocks - 1, blocks, u64::MAX]
    };
    for block in sample {
        let _ = manifest.get(block);
    }
});
