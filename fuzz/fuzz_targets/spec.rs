//! Fuzzes `-r SPEC` resolution (`spec::resolve`) over a small history whose
//! ids and tags come from the input too, so prefixes, numbers, tags that look
//! like numbers or ids, and incomplete revisions all meet.
//!
//! Input: the first line is the SPEC; each further line is one revision:
//! `ID TAG,TAG,... [i]` (`i` = incomplete), in order, oldest first.
//!
//! Per input: resolving never panics, and what it returns is a revision of
//! the history, complete unless named by its exact id; `0`, `last` and
//! `latest` give the newest complete one. The first line also goes through
//! `distrust`'s date parser (`DateBound`), whose day bounds print back to
//! themselves.

#![no_main]

use std::collections::BTreeSet;

use backy::revision::Revision;
use backy::spec;
use chrono::{TimeDelta, TimeZone, Utc};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.lines();
    let spec_text = lines.next().unwrap_or("");
    let start = Utc.with_ymd_and_hms(2015, 11, 4, 20, 9, 32).unwrap();
    let mut revisions = Vec::new();
    for (n, line) in lines.take(64).enumerate() {
        let mut words = line.split(' ');
        let id = words.next().unwrap_or("").to_string();
        if id.is_empty() || revisions.iter().any(|r: &Revision| r.id == id) {
            continue;
        }
        let tags: BTreeSet<String> = words
            .next()
            .unwrap_or("")
            .split(',')
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect();
        let mut rev = Revision::new(id, None, tags);
        rev.timestamp = start + TimeDelta::hours(n as i64);
        if words.next() != Some("i") {
            rev.set_stat("duration", 1.0);
        }
        revisions.push(rev);
    }
    let newest = revisions.iter().rev().find(|r| r.is_complete());
    if let Ok(bound) = spec::DateBound::parse(spec_text) {
        let _ = bound.includes_up_to(bound.first());
        if let spec::DateBound::Day(_) = bound {
            let again = spec::DateBound::parse(&bound.to_string()).expect("a day prints back");
            assert_eq!(again.to_string(), bound.to_string());
        }
    }
    match spec::resolve(&revisions, spec_text) {
        Ok(rev) => {
            // Only an exact id names an incomplete revision (`Job::resolve`
            // then says it is incomplete); numbers, tags, `last` and
            // prefixes see complete ones only.
            assert!(
                rev.is_complete() || rev.id == spec_text,
                "{spec_text:?} resolved to incomplete {}",
                rev.id
            );
            assert!(revisions.iter().any(|r| std::ptr::eq(r, rev)));
            if ["0", "last", "latest"].contains(&spec_text)
                && !revisions.iter().any(|r| r.id == spec_text)
            {
                assert_eq!(Some(rev.id.as_str()), newest.map(|r| r.id.as_str()));
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
