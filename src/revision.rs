//! A revision: its id, its `.rev` metadata file, trust and completeness.
//!
//! # The `.rev` file
//!
//! A YAML mapping, written in block style so that backy 2.1 (PyYAML < 5.3) and 2.5
//! both read it:
//!
//! ```yaml
//! uuid: Q5N5Ng5kFzNFVv6FDDDCHi
//! timestamp: 2015-11-04 20:09:32.123456+00:00   # unquoted, always with offset
//! parent: null                                   # always present (2.1 needs it)
//! tags:
//! - daily
//! stats:
//!   bytes_written: 10737418240
//!   bytes_changed: 1048576                        # ours: bytes really changed
//!   reflink: true                                 # ours: false = a full copy
//!   duration: 150.9                               # written last; present = complete
//! trust: trusted                                  # 2.4+; missing means trusted
//! verification:                                  # ours: the last `backy verify`
//!   time: 2026-12-01 22:40:00.123456+00:00
//!   scope: full                                  # full | sample | blocks | shared
//!   sample_percent: 10.0                         # with scope sample
//!   blocks_checked: 163840
//!   bad_blocks: 2                                # only when blocks were bad
//!   bad_offsets: [655360, 720896]                # the first 100 of them
//!   damage_from: Q5N5Ng5kFzNFVv6FDDDCHi           # scopes blocks and shared
//!   error: ...                                   # the image could not be checked
//! protected:                                      # ours: `backy protect`
//!   reason: before the upgrade                    # optional
//!   since: 2015-11-05 08:00:00.000000+00:00       # optional; when it was protected
//! ```
//!
//! `verification` (see [`verification`]) says how far the `trust` a `verify` set
//! rests on: `sample` read a random share of the blocks; `blocks` read only the
//! blocks where damage found in `damage_from` was followed; `shared` read
//! nothing because the revision's image maps the damaged blocks of
//! `damage_from` to the same physical extents (it holds the same bad bytes).
//!
//! Unknown keys (top level and in `stats`) are kept when we rewrite a file.
//! Nothing essential lives only in extra keys: backy 2.1 rewrites `.rev` files on
//! expiry with its five keys.
//!
//! # Protection
//!
//! `protected` is ours (backy 2.1 and 2.5 ignore unknown keys, so they still
//! read the file). Retention never deletes a protected revision and `forget`
//! refuses it without `--force`. We write the mapping above; we read it
//! tolerantly and on the safe side: missing, `null`, `false` (or the strings
//! `false`, `no`, `off`) mean not protected; anything else means protected: a
//! mapping (its `reason` when it is a string, its `since` when it is a
//! timestamp), `true`, or a string, which is taken as the reason. A value of
//! another shape still protects the revision; it is rewritten in the form
//! above on the next change. backy 2.1's own expiry, should it ever run on the
//! job, would drop the key (and backy 2.1 knows no protection).

use std::collections::BTreeSet;
use std::path::Path;

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use serde_norway::{Mapping, Value};

use crate::error::{Error, Result};

pub mod verification;
pub use verification::{Scope, Verification};

/// Alphabet of shortuuid 0.4 (backy 2.1's revision ids).
const SHORTUUID_ALPHABET: &[u8] = b"23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";

/// A new revision id: a random uuid4 in base 57, least significant digit first,
/// unpadded (shortuuid 0.4.2, as pinned by backy 2.1).
pub fn new_id() -> String {
    let mut bytes: [u8; 16] = rand::random();
    bytes[6] = (bytes[6] & 0x0f) | 0x40; // version 4
    bytes[8] = (bytes[8] & 0x3f) | 0x80; // RFC 4122 variant
    encode_shortuuid(u128::from_be_bytes(bytes))
}

fn encode_shortuuid(mut n: u128) -> String {
    let base = SHORTUUID_ALPHABET.len() as u128;
    let mut out = String::with_capacity(22);
    while n > 0 {
        out.push(SHORTUUID_ALPHABET[(n % base) as usize] as char);
        n /= base;
    }
    out
}

/// How far a revision can be trusted (backy 2.4+; a missing key means trusted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Trust {
    /// Written and verified at backup time.
    Trusted,
    /// Suspected bad: the next backup compares against the source in full.
    Distrusted,
    /// Re-checked against its checksums after the fact.
    Verified,
}

impl Trust {
    /// The word in the `.rev` file: `trusted`, `distrusted`, `verified`.
    pub fn as_str(self) -> &'static str {
        match self {
            Trust::Trusted => "trusted",
            Trust::Distrusted => "distrusted",
            Trust::Verified => "verified",
        }
    }
}

/// Why and since when a revision is protected from retention and `forget`
/// (the `protected` mapping of its `.rev`, see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Protection {
    /// What the operator gave with `protect --reason`.
    pub reason: Option<String>,
    /// When it was protected.
    pub since: Option<DateTime<Utc>>,
}

impl Protection {
    /// Reads the value of a `protected` key; `None` means not protected.
    /// Anything present and not false protects (see the module docs).
    fn from_value(value: Option<Value>) -> Option<Protection> {
        match value? {
            Value::Null | Value::Bool(false) => None,
            Value::String(s)
                if matches!(
                    s.trim().to_ascii_lowercase().as_str(),
                    "false" | "no" | "off"
                ) =>
            {
                None
            }
            Value::String(s) => Some(Protection {
                reason: Some(s).filter(|s| !s.trim().is_empty()),
                since: None,
            }),
            Value::Mapping(m) => Some(Protection {
                reason: m
                    .get("reason")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .filter(|s| !s.trim().is_empty()),
                since: m.get("since").and_then(|v| parse_timestamp(v).ok()),
            }),
            _ => Some(Protection::default()),
        }
    }

    /// The `protected:` lines of a `.rev`.
    fn to_yaml(&self) -> String {
        if self.reason.is_none() && self.since.is_none() {
            return "protected: true\n".into();
        }
        let mut out = String::from("protected:\n");
        if let Some(reason) = &self.reason {
            out.push_str(&format!("  reason: {}\n", yaml_scalar(reason)));
        }
        if let Some(since) = self.since {
            out.push_str(&format!("  since: {}\n", format_timestamp(since)));
        }
        out
    }

    /// ` (reason: ...)` for messages, empty without a reason.
    pub fn reason_note(&self) -> String {
        match &self.reason {
            Some(r) => format!(" (reason: {r})"),
            None => String::new(),
        }
    }
}

/// One revision's metadata, as stored in `<id>.rev`.
#[derive(Debug, Clone)]
pub struct Revision {
    /// The revision id (also the image's file name).
    pub id: String,
    /// When the backup started (UTC).
    pub timestamp: DateTime<Utc>,
    /// The revision this one was cloned from.
    pub parent: Option<String>,
    /// Retention tags.
    pub tags: BTreeSet<String>,
    /// The `stats` mapping, with unknown keys kept.
    pub stats: Mapping,
    /// Trust state.
    pub trust: Trust,
    /// Set when retention and `forget` must leave the revision alone.
    pub protected: Option<Protection>,
    /// Top-level keys we do not know, kept on rewrite.
    pub extra: Mapping,
}

impl Revision {
    /// A new, incomplete revision.
    pub fn new(id: String, parent: Option<String>, tags: BTreeSet<String>) -> Revision {
        Revision {
            id,
            timestamp: Utc::now(),
            parent,
            tags,
            stats: Mapping::new(),
            trust: Trust::Trusted,
            protected: None,
            extra: Mapping::new(),
        }
    }

    /// A revision is complete when its stats carry a duration (written last).
    pub fn is_complete(&self) -> bool {
        self.stats.contains_key("duration")
    }

    /// `stats.duration` in seconds, if complete.
    pub fn duration(&self) -> Option<f64> {
        self.stats.get("duration").and_then(Value::as_f64)
    }

    /// `stats.bytes_written`, 0 when missing.
    pub fn bytes_written(&self) -> u64 {
        self.stat_u64("bytes_written").unwrap_or(0)
    }

    /// An integer statistic.
    pub fn stat_u64(&self, key: &str) -> Option<u64> {
        self.stats.get(key).and_then(Value::as_u64)
    }

    /// Sets a statistic.
    pub fn set_stat(&mut self, key: &str, value: impl Into<Value>) {
        self.stats.insert(Value::from(key), value.into());
    }

    /// The backend this revision was written with; anything but `cowfile` is not a
    /// raw image (backy 2.2+ chunked revisions).
    pub fn backend_type(&self) -> &str {
        self.extra
            .get("backend_type")
            .and_then(Value::as_str)
            .unwrap_or("cowfile")
    }

    /// Whether this backy wrote the revision: its stats carry our keys
    /// (`reflink`, `bytes_changed`), which backy 2.1 never wrote.
    pub fn made_by_us(&self) -> bool {
        self.stats.contains_key("reflink") || self.stats.contains_key("bytes_changed")
    }

    /// Parses a `.rev` file's text; `id` is the fallback when `uuid` is missing.
    pub fn parse(text: &str, id: &str) -> std::result::Result<Revision, String> {
        let rev = Revision::parse_raw(text, id)?;
        // Whatever is read must be writable back: a revision backy could
        // not rewrite (verify, distrust, protect, expiry rewrite it) would
        // break on its next update. The YAML writer leaves some characters
        // unquoted that a reader then takes as line breaks (U+2028, U+2029,
        // U+0085; found by fuzzing), so check the round trip.
        let written = rev.to_yaml();
        match Revision::parse_raw(&written, id) {
            Ok(again) if again.to_yaml() == written => Ok(rev),
            _ => Err(
                "it holds a key or value backy cannot write back as YAML (a Unicode line or paragraph separator?); remove it by hand"
                    .into(),
            ),
        }
    }

    /// [`Revision::parse`] without the write-back check.
    fn parse_raw(text: &str, id: &str) -> std::result::Result<Revision, String> {
        if text.trim().is_empty() {
            return Err("the file is empty".into());
        }
        let value: Value = serde_norway::from_str(text).map_err(|e| e.to_string())?;
        let Value::Mapping(mut map) = value else {
            return Err("it is not a YAML mapping".into());
        };
        let uuid = match map.shift_remove("uuid") {
            Some(Value::String(s)) => s,
            Some(Value::Null) | None => id.to_string(),
            Some(other) => return Err(format!("'uuid' is not a string: {other:?}")),
        };
        if uuid != id {
            return Err(format!("its uuid '{uuid}' does not match the file name"));
        }
        let timestamp = match map.shift_remove("timestamp") {
            Some(v) => parse_timestamp(&v)?,
            None => return Err("'timestamp' is missing".into()),
        };
        let parent = match map.shift_remove("parent") {
            Some(Value::String(s)) if !s.is_empty() => Some(s),
            Some(Value::Null) | Some(Value::String(_)) | None => None,
            Some(other) => return Err(format!("'parent' is not a revision id: {other:?}")),
        };
        let tags = match map.shift_remove("tags") {
            Some(Value::Sequence(seq)) => seq
                .into_iter()
                .map(|t| match t {
                    Value::String(s) => Ok(s),
                    other => Err(format!("a tag is not a string: {other:?}")),
                })
                .collect::<std::result::Result<_, _>>()?,
            Some(Value::Null) | None => BTreeSet::new(),
            Some(other) => return Err(format!("'tags' is not a list: {other:?}")),
        };
        let stats = match map.shift_remove("stats") {
            Some(Value::Mapping(m)) => m,
            Some(Value::Null) | None => Mapping::new(),
            Some(other) => return Err(format!("'stats' is not a mapping: {other:?}")),
        };
        if let Some(d) = stats.get("duration")
            && d.as_f64().is_none()
        {
            return Err(format!("'stats.duration' is not a number: {d:?}"));
        }
        let trust = match map.shift_remove("trust") {
            None | Some(Value::Null) => Trust::Trusted,
            Some(Value::String(s)) if s == "trusted" => Trust::Trusted,
            Some(Value::String(s)) if s == "distrusted" => Trust::Distrusted,
            Some(Value::String(s)) if s == "verified" => Trust::Verified,
            Some(other) => return Err(format!("unknown 'trust' value {other:?}")),
        };
        let protected = Protection::from_value(map.shift_remove("protected"));
        Ok(Revision {
            id: uuid,
            timestamp,
            parent,
            tags,
            stats,
            trust,
            protected,
            extra: map,
        })
    }

    /// Reads `<dir>/<id>.rev`.
    pub fn load(path: &Path, id: &str) -> Result<Revision> {
        let bytes = crate::sys::open_regular(path, false)
            .and_then(|mut f| {
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(&mut f, &mut bytes).map(|_| bytes)
            })
            .map_err(Error::io("cannot read", path))?;
        let bad = |reason: String| Error::BadRevision {
            path: path.to_owned(),
            reason,
        };
        let text = String::from_utf8(bytes)
            .map_err(|_| bad("it is not text (binary data, not YAML)".into()))?;
        Revision::parse(&text, id).map_err(bad)
    }

    /// The `.rev` text, in the layout documented at the top of this module.
    pub fn to_yaml(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!("uuid: {}\n", yaml_scalar(&self.id)));
        out.push_str(&format!(
            "timestamp: {}\n",
            format_timestamp(self.timestamp)
        ));
        match &self.parent {
            Some(p) => out.push_str(&format!("parent: {}\n", yaml_scalar(p))),
            None => out.push_str("parent: null\n"),
        }
        if self.tags.is_empty() {
            out.push_str("tags: []\n");
        } else {
            out.push_str("tags:\n");
            for t in &self.tags {
                out.push_str(&format!("- {}\n", yaml_scalar(t)));
            }
        }
        // duration goes last, so a reader of a torn file would see it incomplete
        // (we write atomically anyway).
        let mut stats = self.stats.clone();
        let duration = stats.shift_remove("duration");
        if let Some(d) = duration {
            stats.insert("duration".into(), d);
        }
        if stats.is_empty() {
            out.push_str("stats: {}\n");
        } else {
            out.push_str("stats:\n");
            out.push_str(&indent(&dump_mapping(&stats), "  "));
        }
        if self.trust != Trust::Trusted || self.extra.contains_key("trust") {
            out.push_str(&format!("trust: {}\n", self.trust.as_str()));
        }
        if let Some(protection) = &self.protected {
            out.push_str(&protection.to_yaml());
        }
        let mut extra = self.extra.clone();
        extra.shift_remove("trust");
        extra.shift_remove("protected");
        if !extra.is_empty() {
            out.push_str(&dump_mapping(&extra));
        }
        out
    }
}

/// A timestamp as the `.rev` stores it: unquoted, microseconds, `+00:00`.
fn format_timestamp(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.6f+00:00").to_string()
}

fn dump_mapping(map: &Mapping) -> String {
    serde_norway::to_string(map).unwrap_or_default()
}

fn indent(text: &str, prefix: &str) -> String {
    text.lines().map(|l| format!("{prefix}{l}\n")).collect()
}

/// A plain scalar when it is safe, otherwise a double-quoted one.
fn yaml_scalar(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
        && !s.starts_with(['-', ':', '.'])
        && !matches!(
            s.to_ascii_lowercase().as_str(),
            "null" | "true" | "false" | "yes" | "no" | "on" | "off" | "y" | "n" | "~"
        )
        && s.parse::<f64>().is_err()
        && !s.contains(": ");
    if plain {
        s.to_string()
    } else {
        serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
    }
}

/// The one order of revisions, used everywhere (SPEC resolution, `last`, the
/// parent of a backup, retention, the scheduler): by timestamp, then by id.
/// A backup never dates its revision before its parent (see
/// [`timestamp_after`]), so the newest by this order is the one made last
/// even after the clock was set back.
pub fn order(a: (&DateTime<Utc>, &str), b: (&DateTime<Utc>, &str)) -> std::cmp::Ordering {
    a.0.cmp(b.0).then_with(|| a.1.cmp(b.1))
}

/// The timestamp of a new revision made at `now` whose parent is dated
/// `parent`: `now`, or, when the clock is behind the parent (it was ahead when
/// the parent was made, then corrected), one microsecond after the parent, so
/// the new revision is the newest. The second value says whether it was moved.
pub fn timestamp_after(now: DateTime<Utc>, parent: Option<DateTime<Utc>>) -> (DateTime<Utc>, bool) {
    match parent {
        Some(p) if now <= p => {
            // Whole microseconds, as the .rev stores them, strictly after the parent.
            let micros = p.timestamp_micros().saturating_add(1);
            let after = DateTime::from_timestamp_micros(micros).unwrap_or(p);
            (after, true)
        }
        _ => (now, false),
    }
}

/// Reads the timestamp forms backy versions wrote: `2015-11-04 20:09:32.123456+00:00`,
/// ISO 8601 with `T`/`Z`, naive (meaning UTC), or a float epoch (pre-2.0).
///
/// The result has whole microseconds, as backy writes them, so a revision
/// read and written again keeps exactly its timestamp (and its place in
/// [`order`]).
pub fn parse_timestamp(v: &Value) -> std::result::Result<DateTime<Utc>, String> {
    use chrono::SubsecRound;
    parse_timestamp_any(v).map(|t| t.trunc_subsecs(6))
}

fn parse_timestamp_any(v: &Value) -> std::result::Result<DateTime<Utc>, String> {
    match v {
        Value::Number(n) => {
            let secs = n.as_f64().ok_or("timestamp is not a number")?;
            let whole = secs.floor();
            let nanos = ((secs - whole) * 1e9).round() as u32;
            Utc.timestamp_opt(whole as i64, nanos.min(999_999_999))
                .single()
                .ok_or_else(|| format!("timestamp {secs} is out of range"))
        }
        Value::String(s) => parse_timestamp_str(s),
        other => Err(format!(
            "'timestamp' is neither a date nor a number: {other:?}"
        )),
    }
}

fn parse_timestamp_str(s: &str) -> std::result::Result<DateTime<Utc>, String> {
    let t = s.trim();
    if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
        return Ok(dt.with_timezone(&Utc));
    }
    for fmt in [
        "%Y-%m-%d %H:%M:%S%.f%:z",
        "%Y-%m-%d %H:%M:%S%.f%z",
        "%Y-%m-%d %H:%M:%S%.f %:z",
    ] {
        if let Ok(dt) = DateTime::parse_from_str(t, fmt) {
            return Ok(dt.with_timezone(&Utc));
        }
    }
    let naive = t.trim_end_matches(['Z', 'z']);
    for fmt in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(dt) = NaiveDateTime::parse_from_str(naive, fmt) {
            return Ok(Utc.from_utc_datetime(&dt));
        }
    }
    Err(format!("cannot read timestamp '{s}'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by fuzzing (fuzz/seeds/rev_file/line-separator): a `.rev`
    /// whose keys the YAML writer would write back in a form that does not
    /// parse is refused (damaged) instead of loading; whatever loads can be
    /// written back and read again.
    #[test]
    fn a_rev_that_cannot_be_written_back_is_refused() {
        let bytes = include_bytes!("../fuzz/seeds/rev_file/line-separator");
        let text = String::from_utf8_lossy(bytes);
        let err = Revision::parse(&text, "Q5N5Ng5kFzNFVv6FDDDCHi").unwrap_err();
        assert!(err.contains("cannot write back"), "{err}");
    }

    /// Found by fuzzing (fuzz/seeds/rev_file/): a `.rev` read and written
    /// again is the same text, with unknown keys in their order and the
    /// timestamp cut to the microseconds the file stores.
    #[test]
    fn a_rewritten_rev_is_stable() {
        let text = "uuid: a\ntimestamp: 2015-11-04 20:09:32.1234526+00:00\nparent: null\nz_first: 1\ntags: []\nstats: {duration: 1.5}\na_second: 2\nbackend_type: cowfile\n";
        let rev = Revision::parse(text, "a").unwrap();
        let once = rev.to_yaml();
        let again = Revision::parse(&once, "a").unwrap();
        assert_eq!(again.to_yaml(), once);
        assert_eq!(again.timestamp, rev.timestamp);
        assert_eq!(rev.timestamp.timestamp_subsec_nanos(), 123_452_000);
        let order: Vec<&str> = once
            .lines()
            .filter_map(|l| l.split(':').next())
            .filter(|k| ["z_first", "a_second", "backend_type"].contains(k))
            .collect();
        assert_eq!(order, ["z_first", "a_second", "backend_type"]);
    }

    #[test]
    fn shortuuid_matches_python_shortuuid_0_4() {
        // shortuuid 0.4.2: encode(UUID('12345678-1234-5678-1234-567812345678'))
        let n = 0x12345678_1234_5678_1234_567812345678u128;
        let s = encode_shortuuid(n);
        // Decode back to check the digit order: least significant first.
        let mut back = 0u128;
        for c in s.bytes().rev() {
            let d = SHORTUUID_ALPHABET.iter().position(|&a| a == c).unwrap() as u128;
            back = back * 57 + d;
        }
        assert_eq!(back, n);
        assert_eq!(
            s.chars().next().unwrap(),
            SHORTUUID_ALPHABET[(n % 57) as usize] as char
        );
    }

    #[test]
    fn new_ids_are_22_chars_of_the_alphabet() {
        for _ in 0..100 {
            let id = new_id();
            assert!((20..=22).contains(&id.len()), "{id}");
            assert!(id.bytes().all(|c| SHORTUUID_ALPHABET.contains(&c)));
        }
    }

    #[test]
    fn reads_backy21_flow_style() {
        let text = "parent: null\nstats: {bytes_written: 1024, duration: 1.5}\ntags: [daily, weekly]\ntimestamp: 2015-11-04 20:09:32.123456+00:00\nuuid: abc\n";
        let r = Revision::parse(text, "abc").unwrap();
        assert!(r.is_complete());
        assert_eq!(r.bytes_written(), 1024);
        assert_eq!(r.tags.len(), 2);
        assert_eq!(r.timestamp.to_rfc3339(), "2015-11-04T20:09:32.123456+00:00");
    }

    #[test]
    fn reads_timestamp_variants() {
        for (t, want) in [
            ("2015-11-04T20:09:32Z", "2015-11-04T20:09:32+00:00"),
            ("2015-11-04 20:09:32", "2015-11-04T20:09:32+00:00"),
            ("2015-11-04 21:09:32+01:00", "2015-11-04T20:09:32+00:00"),
            ("1446667772.5", "2015-11-04T20:09:32.500+00:00"),
        ] {
            let text = format!("uuid: a\ntimestamp: {t}\nparent:\n");
            let r = Revision::parse(&text, "a").unwrap();
            assert_eq!(r.timestamp.to_rfc3339(), want, "{t}");
            assert!(!r.is_complete());
        }
    }

    #[test]
    fn reads_pre_2_0_json() {
        let text = r#"{"uuid": "f0e7a1b2-7e4f-11e5-8bcf-feff819cdc9f", "timestamp": 1446667772.0, "parent": null, "stats": {"bytes_written": 5, "duration": 2.0}, "tags": ["daily"]}"#;
        let r = Revision::parse(text, "f0e7a1b2-7e4f-11e5-8bcf-feff819cdc9f").unwrap();
        assert!(r.is_complete());
    }

    #[test]
    fn round_trip_keeps_unknown_keys() {
        let text = "uuid: a\ntimestamp: 2015-11-04 20:09:32+00:00\nparent: b\ntags: [x]\nstats: {duration: 3.0, bytes_written: 7, chunk_stats: {a: 1}}\nbackend_type: cowfile\nfoo: [1, 2]\ntrust: distrusted\n";
        let r = Revision::parse(text, "a").unwrap();
        let again = Revision::parse(&r.to_yaml(), "a").unwrap();
        assert_eq!(again.parent.as_deref(), Some("b"));
        assert_eq!(again.trust, Trust::Distrusted);
        assert_eq!(again.extra.get("foo"), r.extra.get("foo"));
        assert_eq!(again.stats, r.stats);
        let y = again.to_yaml();
        assert!(y.contains("\nfoo:\n"), "{y}");
    }

    #[test]
    fn protection_round_trips() {
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let mut r = Revision::new("a".into(), None, BTreeSet::new());
        r.set_stat("duration", 1.0);
        assert_eq!(Revision::parse(&r.to_yaml(), "a").unwrap().protected, None);
        for protection in [
            Protection::default(),
            Protection {
                reason: Some("before the upgrade: keep".into()),
                since: Some(t("2026-11-30T08:00:00.25Z")),
            },
            Protection {
                reason: Some("yes".into()),
                since: None,
            },
        ] {
            r.protected = Some(protection.clone());
            let y = r.to_yaml();
            let again = Revision::parse(&y, "a").unwrap();
            assert_eq!(again.protected, Some(protection), "{y}");
            assert!(again.extra.is_empty(), "{y}");
            // What backy 2.1 needs stays first and unchanged.
            assert!(y.starts_with("uuid: a\ntimestamp: "), "{y}");
        }
        r.trust = Trust::Distrusted;
        let y = r.to_yaml();
        assert!(
            y.contains("trust: distrusted\nprotected:\n  reason: \"yes\"\n"),
            "{y}"
        );
    }

    /// Anything present and not false protects: a hand-edited or damaged
    /// value errs on the side of keeping the revision.
    #[test]
    fn protection_is_read_on_the_safe_side() {
        let read = |value: &str| {
            let text = format!(
                "uuid: a\ntimestamp: 2015-11-04 20:09:32+00:00\nparent: null\nstats: {{duration: 1.0}}\nprotected: {value}\n"
            );
            Revision::parse(&text, "a").unwrap().protected
        };
        for off in ["null", "~", "false", "False", "'no'", "off", ""] {
            assert_eq!(read(off), None, "{off}");
        }
        let plain = Some(Protection::default());
        for on in [
            "true",
            "yes",
            "1",
            "[a, b]",
            "{}",
            "{reason: 7, since: soon}",
        ] {
            let want = if on == "yes" {
                Some(Protection {
                    reason: Some("yes".into()),
                    since: None,
                })
            } else {
                plain.clone()
            };
            assert_eq!(read(on), want, "{on}");
        }
        assert_eq!(
            read("keep for the audit"),
            Some(Protection {
                reason: Some("keep for the audit".into()),
                since: None
            })
        );
        let p = read("{reason: audit, since: 2026-11-30T08:00:00Z, by: ops}").unwrap();
        assert_eq!(p.reason.as_deref(), Some("audit"));
        assert_eq!(p.since.unwrap().to_rfc3339(), "2026-11-30T08:00:00+00:00");
    }

    #[test]
    fn written_timestamp_is_unquoted_with_offset() {
        let r = Revision::new("a".into(), None, BTreeSet::new());
        let y = r.to_yaml();
        let line = y.lines().find(|l| l.starts_with("timestamp:")).unwrap();
        assert!(line.ends_with("+00:00") && !line.contains('\''), "{line}");
        assert!(y.contains("parent: null\n"));
    }

    #[test]
    fn a_new_revision_is_never_dated_before_its_parent() {
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let now = t("2026-01-01T00:00:00Z");
        assert_eq!(timestamp_after(now, None), (now, false));
        assert_eq!(
            timestamp_after(now, Some(t("2025-12-31T00:00:00Z"))),
            (now, false)
        );
        let future = t("2027-01-01T00:00:00.1234567Z");
        let (ts, moved) = timestamp_after(now, Some(future));
        assert!(moved && ts > future, "{ts}");
        assert_eq!(ts, t("2027-01-01T00:00:00.123457Z"));
        let mut r = Revision::new("a".into(), None, BTreeSet::new());
        r.timestamp = ts;
        let again = Revision::parse(&r.to_yaml(), "a").unwrap();
        assert!(again.timestamp > future);
    }

    #[test]
    fn empty_and_binary_rev_files_say_so() {
        assert_eq!(Revision::parse("", "a").unwrap_err(), "the file is empty");
        assert_eq!(
            Revision::parse(" \n", "a").unwrap_err(),
            "the file is empty"
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.rev");
        std::fs::write(&p, [0u8, 159, 146, 150, 255]).unwrap();
        let e = Revision::load(&p, "a").unwrap_err().to_string();
        assert!(e.contains("binary") && e.contains("move it out"), "{e}");
    }

    #[test]
    fn rejects_malformed() {
        for text in [
            "- a\n- b\n",
            "uuid: a\n",
            "uuid: a\ntimestamp: yesterday\n",
            "{{{",
        ] {
            assert!(Revision::parse(text, "a").is_err(), "{text}");
        }
    }
}
