//! Tests of the parser, the applier and the read-ahead against the sample chain
//! and hand-made streams.

use super::*;
use crate::image::prefetch::Prefetcher;
use crate::image::sums::Manifest;
use crate::image::writer::ImageWriter;
use sha2::{Digest as _, Sha256};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

fn data(name: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/rbd-diff")
        .join(name);
    std::fs::read(p).unwrap()
}

fn expected_sha(snap: &str) -> String {
    let text = String::from_utf8(data("raw.sha256")).unwrap();
    text.lines()
        .find(|l| l.ends_with(&format!("small@{snap}.raw")))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn sha(path: &Path) -> String {
    format!("{:x}", Sha256::digest(std::fs::read(path).unwrap()))
}

struct Chain {
    _dir: tempfile::TempDir,
    image: PathBuf,
    sums: PathBuf,
    n: usize,
}

impl Chain {
    fn new() -> Chain {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("img");
        let sums = dir.path().join("img.sums");
        File::create(&image).unwrap();
        Manifest::create(&sums, 0).unwrap();
        Chain {
            _dir: dir,
            image,
            sums,
            n: 0,
        }
    }

    fn apply(
        &mut self,
        diff: &[u8],
        from: Option<&str>,
        to: Option<&str>,
    ) -> Result<Applied, DiffError> {
        self.apply_with(diff, from, to, true)
    }

    /// `trusted: false` starts from a fresh manifest, as after a parent made by
    /// backy 2.1: `finish` must hash what the diff did not touch.
    fn apply_with(
        &mut self,
        diff: &[u8],
        from: Option<&str>,
        to: Option<&str>,
        trusted: bool,
    ) -> Result<Applied, DiffError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.image)
            .unwrap();
        let manifest = if trusted {
            Manifest::open(&self.sums, true).unwrap()
        } else {
            std::fs::remove_file(&self.sums).unwrap();
            Manifest::create(&self.sums, 0).unwrap()
        };
        let mut writer = ImageWriter::new(file, &self.image, manifest, trusted);
        let expect = Expect {
            from_snap: from.map(String::from),
            to_snap: to.map(String::from),
            size: None,
        };
        // Alternate between the two ways in, so both are tested throughout:
        // the reader thread (with both kinds of prefetch) and the plain parser.
        let r = match self.n % 3 {
            0 => apply(diff, &mut writer, &expect),
            n => {
                let prefetch = Prefetch {
                    threads: writer.prefetcher().unwrap(),
                    block_size: writer.block_size(),
                    whole_blocks: n == 1,
                };
                let mut seen = 0;
                let r = apply_streamed(
                    std::io::Cursor::new(diff.to_vec()),
                    &mut writer,
                    &expect,
                    Some(prefetch),
                    &mut |n| seen += n,
                    &|| {},
                );
                if r.is_ok() {
                    assert_eq!(seen, diff.len() as u64 - 1, "progress covers the stream");
                }
                r
            }
        };
        let (file, mut manifest, _) = writer.finish().unwrap();
        if r.is_ok() {
            let report = crate::image::verify_against_manifest(
                &file,
                &self.image,
                &mut manifest,
                &mut |_| {},
            )
            .unwrap();
            assert!(
                report.bad_offsets.is_empty(),
                "manifest wrong at {:?}",
                report.bad_offsets
            );
        }
        self.n += 1;
        r
    }
}

#[test]
fn applying_the_sample_chain_gives_the_exported_images() {
    let mut c = Chain::new();
    let a = c.apply(&data("full-s1.v1.diff"), None, Some("s1")).unwrap();
    assert_eq!(a.size, 16 << 20);
    assert_eq!(sha(&c.image), expected_sha("s1"));
    c.apply(&data("s1-s2.v1.diff"), Some("s1"), Some("s2"))
        .unwrap();
    assert_eq!(sha(&c.image), expected_sha("s2"));
    c.apply(&data("s2-s3.grow.v1.diff"), Some("s2"), Some("s3"))
        .unwrap();
    assert_eq!(sha(&c.image), expected_sha("s3"));
    c.apply(&data("s3-s4.shrink.v1.diff"), Some("s3"), Some("s4"))
        .unwrap();
    assert_eq!(sha(&c.image), expected_sha("s4"));
    let a = c.apply(&data("s4-head.v1.diff"), Some("s4"), None).unwrap();
    assert_eq!(a.bytes_in_records, 0);
    assert_eq!(sha(&c.image), expected_sha("s4"));
}

#[test]
fn an_incremental_diff_without_trusted_digests_still_gets_a_full_manifest() {
    let mut c = Chain::new();
    c.apply(&data("full-s1.v1.diff"), None, Some("s1")).unwrap();
    c.apply_with(&data("s1-s2.v1.diff"), Some("s1"), Some("s2"), false)
        .unwrap();
    c.apply_with(&data("s2-s3.grow.v1.diff"), Some("s2"), Some("s3"), false)
        .unwrap();
    c.apply_with(&data("s3-s4.shrink.v1.diff"), Some("s3"), Some("s4"), false)
        .unwrap();
    assert_eq!(sha(&c.image), expected_sha("s4"));
}

/// A full backup onto a clone of another revision: what the diff does not
/// cover must read as zeros afterwards, even where the parent had data.
#[test]
fn a_full_diff_onto_a_populated_clone_gives_the_snapshot() {
    let mut c = Chain::new();
    c.apply(&data("full-s1.v1.diff"), None, Some("s1")).unwrap();
    c.apply(&data("s1-s2.v1.diff"), Some("s1"), Some("s2"))
        .unwrap();
    c.apply(&data("s2-s3.grow.v1.diff"), Some("s2"), Some("s3"))
        .unwrap();
    // Now the image is s3 (20 MiB with data at 18M); a full s1 diff must undo it all.
    c.apply(&data("full-s1.v1.diff"), None, Some("s1")).unwrap();
    assert_eq!(sha(&c.image), expected_sha("s1"));
}

#[test]
fn whole_object_diff_gives_the_same_image() {
    let mut c = Chain::new();
    c.apply(&data("full-s1.v1.diff"), None, Some("s1")).unwrap();
    let a = c
        .apply(&data("s1-s2.whole-object.v1.diff"), Some("s1"), Some("s2"))
        .unwrap();
    assert_eq!(a.bytes_in_records, 3 * (4 << 20));
    assert_eq!(sha(&c.image), expected_sha("s2"));
}

#[test]
fn a_diff_from_the_wrong_snapshot_is_refused() {
    let mut c = Chain::new();
    c.apply(&data("full-s1.v1.diff"), None, Some("s1")).unwrap();
    let e = c
        .apply(&data("s2-s3.grow.v1.diff"), Some("s1"), Some("s3"))
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("starts from snapshot 's2', not from 's1'"),
        "{e}"
    );
    let e = c
        .apply(&data("s1-s2.v1.diff"), None, Some("s2"))
        .unwrap_err();
    assert!(e.to_string().contains("a full diff was asked for"), "{e}");
    let e = c
        .apply(&data("s1-s2.v1.diff"), Some("s1"), Some("s9"))
        .unwrap_err();
    assert!(e.to_string().contains("not at 's9'"), "{e}");
}

#[test]
fn the_reader_thread_reports_errors_as_the_parser_does() {
    let full = data("s1-s2.v1.diff");
    let mut bad = full.clone();
    let end = bad.len() - 1;
    bad[end] = b'q';
    for input in [
        full[..full.len() / 2].to_vec(),
        bad,
        b"rbd diff v2\n".to_vec(),
    ] {
        let mut c = Chain::new();
        c.apply(&data("full-s1.v1.diff"), None, Some("s1")).unwrap();
        let plain = c.apply(&input, Some("s1"), Some("s2")).unwrap_err();
        let streamed = c.apply(&input, Some("s1"), Some("s2")).unwrap_err();
        assert_eq!(plain.to_string(), streamed.to_string());
    }
}

#[test]
fn prefetch_reads_partly_covered_edge_blocks_or_all() {
    let threads = Prefetcher::start(&tempfile::tempfile().unwrap()).unwrap();
    let edges = Prefetch {
        threads: threads.clone(),
        block_size: 100,
        whole_blocks: false,
    };
    let all = Prefetch {
        threads,
        block_size: 100,
        whole_blocks: true,
    };
    let flat = |p: &Prefetch, o, l, s| p.ranges(o, l, s).into_iter().flatten().collect::<Vec<_>>();
    assert_eq!(flat(&edges, 50, 300, 1000), [(0, 100), (300, 100)]);
    assert_eq!(flat(&edges, 100, 200, 1000), []);
    assert_eq!(flat(&edges, 110, 20, 1000), [(100, 100)]);
    // The short last block counts as covered when the extent reaches the end.
    assert_eq!(flat(&edges, 900, 50, 950), []);
    assert_eq!(flat(&edges, 0, 0, 950), []);
    assert_eq!(flat(&edges, 2000, 10, 950), []);
    assert_eq!(flat(&all, 50, 300, 1000), [(0, 400)]);
    assert_eq!(flat(&all, 100, 100, 1000), [(100, 100)]);
}

#[test]
fn every_truncation_is_an_error() {
    let full = data("s1-s2.v1.diff");
    for cut in (0..full.len()).step_by(7).chain([full.len() - 1]) {
        let mut c = Chain::new();
        c.apply(&data("full-s1.v1.diff"), None, Some("s1")).unwrap();
        let e = c.apply(&full[..cut], Some("s1"), Some("s2")).unwrap_err();
        assert!(
            matches!(e, DiffError::Truncated { .. }),
            "cut at {cut}: {e}"
        );
    }
}

#[test]
fn corrupted_streams_are_errors() {
    let good = data("s1-s2.v1.diff");
    let mut c = Chain::new();
    c.apply(&data("full-s1.v1.diff"), None, Some("s1")).unwrap();
    let mut bad = good.clone();
    bad[0] = b'R';
    assert!(matches!(
        c.apply(&bad, Some("s1"), Some("s2")),
        Err(DiffError::Banner { .. })
    ));
    let mut bad = good.clone();
    bad.insert(bad.len() - 1, b'q');
    assert!(matches!(
        c.apply(&bad, Some("s1"), Some("s2")),
        Err(DiffError::UnknownRecord { tag: b'q', .. })
    ));
    let mut bad = good.clone();
    bad.push(0);
    assert!(
        c.apply(&bad, Some("s1"), Some("s2"))
            .unwrap_err()
            .to_string()
            .contains("after the end record")
    );
    // A size other than the snapshot's, or absurdly large.
    let mut bad = b"rbd diff v1\nt\x02\x00\x00\x00s2s".to_vec();
    bad.extend(u64::MAX.to_le_bytes());
    bad.push(b'e');
    let e = c.apply(&bad, None, Some("s2")).unwrap_err();
    assert!(e.to_string().contains("declares an image size of"), "{e}");
    // A write beyond the size the stream declared.
    let mut bad = b"rbd diff v1\nt\x02\x00\x00\x00s2s".to_vec();
    bad.extend(4096u64.to_le_bytes());
    bad.push(b'w');
    bad.extend(4000u64.to_le_bytes());
    bad.extend(200u64.to_le_bytes());
    bad.extend([1u8; 200]);
    bad.push(b'e');
    let e = c.apply(&bad, None, Some("s2")).unwrap_err();
    assert!(e.to_string().contains("beyond the image size"), "{e}");
}

/// Ceph #45601: extents unsorted and overlapping are applied in stream order.
#[test]
fn unsorted_overlapping_extents_apply_in_order() {
    let mut s = b"rbd diff v1\nt\x01\x00\x00\x00xs".to_vec();
    s.extend((300_000u64).to_le_bytes());
    let mut model = vec![0u8; 300_000];
    let records: [(u8, u64, u64, u8); 5] = [
        (b'w', 200_000, 50_000, 7),
        (b'w', 10, 100_000, 3),
        (b'z', 50_000, 10, 0),
        (b'w', 60_000, 150_000, 9),
        (b'z', 199_990, 100, 0),
    ];
    for (tag, off, len, byte) in records {
        s.push(tag);
        s.extend(off.to_le_bytes());
        s.extend(len.to_le_bytes());
        if tag == b'w' {
            s.extend(std::iter::repeat_n(byte, len as usize));
        }
        model[off as usize..(off + len) as usize].fill(byte);
    }
    s.push(b'e');
    let mut c = Chain::new();
    c.apply(&s, None, Some("x")).unwrap();
    assert!(std::fs::read(&c.image).unwrap() == model);
}

fn stream(size: u64, records: &[(bool, u64, u64, u8)]) -> Vec<u8> {
    let mut s = b"rbd diff v1\nt\x01\x00\x00\x00xs".to_vec();
    s.extend(size.to_le_bytes());
    for &(write, off, len, byte) in records {
        s.push(if write { b'w' } else { b'z' });
        s.extend(off.to_le_bytes());
        s.extend(len.to_le_bytes());
        if write {
            s.extend(std::iter::repeat_n(byte, len as usize));
        }
    }
    s.push(b'e');
    s
}

use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Random, unsorted, overlapping w/z records onto a random previous
    /// image, with trusted or untrusted digests: the image equals the model
    /// and the manifest describes it.
    #[test]
    fn applying_random_records_matches_a_model(
        size in 1u64..600_000,
        before in prop::collection::vec((0u64..600_000, 1u64..100_000, 1u8..255), 0..4),
        records in prop::collection::vec((any::<bool>(), 0u64..600_000, 1u64..150_000, prop_oneof![Just(0u8), 1u8..255]), 0..10),
        trusted in any::<bool>(),
    ) {
        let mut c = Chain::new();
        let mut model = vec![0u8; size as usize];
        let clip = |off: u64, len: u64| (off.min(size), (off + len).min(size));
        let before: Vec<(bool, u64, u64, u8)> = before.into_iter().map(|(o, l, b)| { let (a, e) = clip(o, l); (true, a, e - a, b) }).filter(|r| r.2 > 0).collect();
        c.apply(&stream(size, &before), None, Some("x")).unwrap();
        for &(_, off, len, byte) in &before {
            model[off as usize..(off + len) as usize].fill(byte);
        }
        let records: Vec<(bool, u64, u64, u8)> = records.into_iter().map(|(w, o, l, b)| { let (a, e) = clip(o, l); (w, a, e - a, b) }).filter(|r| r.2 > 0).collect();
        let mut diff = stream(size, &records);
        // Make it incremental: from-snap "x", to-snap "y".
        diff.splice(12..12, b"f\x01\x00\x00\x00x".iter().copied());
        let at = diff.iter().position(|&b| b == b't').unwrap();
        diff[at + 5] = b'y';
        c.apply_with(&diff, Some("x"), Some("y"), trusted).unwrap();
        for &(w, off, len, byte) in &records {
            model[off as usize..(off + len) as usize].fill(if w { byte } else { 0 });
        }
        prop_assert!(std::fs::read(&c.image).unwrap() == model);
    }

    /// Whatever the bytes, the parser and applier return; they never panic.
    #[test]
    fn arbitrary_bytes_never_panic(tail in prop::collection::vec(any::<u8>(), 0..300)) {
        let mut c = Chain::new();
        let mut input = b"rbd diff v1\n".to_vec();
        input.extend(tail);
        let _ = c.apply(&input, None, Some("s1"));
    }
}

fn incremental(size: u64) -> Vec<u8> {
    let mut d = stream(size, &[]);
    d.splice(12..12, b"f\x01\x00\x00\x00x".iter().copied());
    let at = d.iter().position(|&b| b == b't').unwrap();
    d[at + 5] = b'y';
    d
}

/// Found by the fuzzer: an incremental diff that only resizes an image whose
/// old or new size is not a multiple of the block size left the boundary
/// block's digest stale, and verification failed.
#[test]
fn resizing_to_and_from_unaligned_sizes_keeps_digests_right() {
    for (from, to) in [
        (199_608, 199_609),
        (199_608, 100_000),
        (199_608, 59_000),
        (199_608, 6 << 20),
        (131_072, 100_001),
    ] {
        for trusted in [true, false] {
            let mut c = Chain::new();
            c.apply(&stream(from, &[(true, 0, from, 7)]), None, Some("x"))
                .unwrap();
            c.apply_with(&incremental(to), Some("x"), Some("y"), trusted)
                .unwrap();
            let mut want = vec![7u8; from.min(to) as usize];
            want.resize(to as usize, 0);
            assert!(std::fs::read(&c.image).unwrap() == want, "{from} -> {to}");
        }
    }
}
