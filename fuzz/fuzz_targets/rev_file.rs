//! Fuzzes the `.rev` reader (`Revision::load`) with arbitrary bytes: YAML in
//! flow or block style, JSON (pre-2.0), every timestamp form, unknown keys,
//! binary junk.
//!
//! Per input: loading never panics; a revision that loads is written back
//! (`to_yaml`, what backy stores) and loads again to the same text, keeping
//! its id, timestamp, completeness and trust.

#![no_main]

use backy::revision::Revision;
use libfuzzer_sys::fuzz_target;

#[path = "../common/scratch.rs"]
mod scratch;

const ID: &str = "Q5N5Ng5kFzNFVv6FDDDCHi";

fuzz_target!(|data: &[u8]| {
    let path = scratch::file(&format!("{ID}.rev"), data);
    let Ok(rev) = Revision::load(&path, ID) else {
        return;
    };
    let text = rev.to_yaml();
    let again = Revision::parse(&text, ID).expect("a .rev backy wrote parses again");
    assert_eq!(again.to_yaml(), text);
    assert_eq!(again.timestamp, rev.timestamp);
    assert_eq!(again.is_complete(), rev.is_complete());
    assert_eq!(again.trust, rev.trust);
    assert_eq!(again.parent, rev.parent);
    assert_eq!(again.tags, rev.tags);
});
