//! The `verification` mapping of a `.rev`: what the last `backy verify` of the
//! revision found, beside `trust` (which backy 2.4+ reads and which stays the
//! verdict). The keys are documented in the module doc of [`crate::revision`].

use chrono::{DateTime, Utc};
use serde_norway::{Mapping, Value};

use super::{Revision, parse_timestamp};

/// Bad block offsets recorded in a `.rev` at most; `bad_blocks` counts them all.
pub const MAX_RECORDED_OFFSETS: usize = 100;

/// How much of the revision a verification read.
#[derive(Debug, Clone, PartialEq)]
pub enum Scope {
    /// Every block.
    Full,
    /// A random share of the blocks (`--sample`), in percent.
    Sample(f64),
    /// Only the blocks where damage found in another revision was followed.
    Blocks,
    /// Nothing read: it shares the damaged extents of another revision.
    Shared,
}

impl Scope {
    fn as_str(&self) -> &'static str {
        match self {
            Scope::Full => "full",
            Scope::Sample(_) => "sample",
            Scope::Blocks => "blocks",
            Scope::Shared => "shared",
        }
    }
}

/// One verification's record.
#[derive(Debug, Clone, PartialEq)]
pub struct Verification {
    /// When it ran.
    pub time: DateTime<Utc>,
    /// What it read.
    pub scope: Scope,
    /// Blocks compared with the manifest.
    pub blocks_checked: u64,
    /// Every bad block's offset (only the first [`MAX_RECORDED_OFFSETS`] are written).
    pub bad_offsets: Vec<u64>,
    /// All bad blocks, also those beyond the recorded offsets.
    pub bad_blocks: u64,
    /// The revision whose damage led here (scopes `blocks` and `shared`).
    pub damage_from: Option<String>,
    /// Why the image could not be checked at all (a size that differs from the
    /// manifest's, an unreadable manifest).
    pub error: Option<String>,
}

impl Verification {
    /// As a YAML mapping, for the `.rev`.
    fn to_mapping(&self) -> Mapping {
        let mut m = Mapping::new();
        m.insert(
            "time".into(),
            self.time
                .format("%Y-%m-%d %H:%M:%S%.6f+00:00")
                .to_string()
                .into(),
        );
        m.insert("scope".into(), self.scope.as_str().into());
        if let Scope::Sample(percent) = self.scope {
            m.insert("sample_percent".into(), percent.into());
        }
        m.insert("blocks_checked".into(), self.blocks_checked.into());
        if self.bad_blocks > 0 {
            m.insert("bad_blocks".into(), self.bad_blocks.into());
            let shown: Vec<Value> = self
                .bad_offsets
                .iter()
                .take(MAX_RECORDED_OFFSETS)
                .map(|&o| o.into())
                .collect();
            m.insert("bad_offsets".into(), Value::Sequence(shown));
        }
        if let Some(from) = &self.damage_from {
            m.insert("damage_from".into(), from.as_str().into());
        }
        if let Some(error) = &self.error {
            m.insert("error".into(), error.as_str().into());
        }
        m
    }

    /// Reads the mapping back; `None` when it is missing or not ours.
    fn from_mapping(m: &Mapping) -> Option<Verification> {
        let time = parse_timestamp(m.get("time")?).ok()?;
        let scope = match m.get("scope")?.as_str()? {
            "full" => Scope::Full,
            "sample" => Scope::Sample(m.get("sample_percent")?.as_f64()?),
            "blocks" => Scope::Blocks,
            "shared" => Scope::Shared,
            _ => return None,
        };
        let bad_offsets: Vec<u64> = match m.get("bad_offsets") {
            Some(Value::Sequence(s)) => s.iter().filter_map(Value::as_u64).collect(),
            _ => Vec::new(),
        };
        Some(Verification {
            time,
            scope,
            blocks_checked: m.get("blocks_checked").and_then(Value::as_u64).unwrap_or(0),
            bad_blocks: m
                .get("bad_blocks")
                .and_then(Value::as_u64)
                .unwrap_or(bad_offsets.len() as u64),
            bad_offsets,
            damage_from: m
                .get("damage_from")
                .and_then(Value::as_str)
                .map(str::to_string),
            error: m.get("error").and_then(Value::as_str).map(str::to_string),
        })
    }

    /// "verified", "verified (10 %)", "distrusted: 3 bad blocks", for people.
    pub fn describe(&self) -> String {
        let scope = match &self.scope {
            Scope::Full => String::new(),
            Scope::Sample(p) => format!(" ({p} % sampled)"),
            Scope::Blocks => " (only the blocks where damage was followed)".into(),
            Scope::Shared => " (not read: shares a damaged extent)".into(),
        };
        if let Some(error) = &self.error {
            format!("not checked: {error}")
        } else if self.bad_blocks == 0 {
            format!("{} blocks match{scope}", self.blocks_checked)
        } else {
            format!("{} bad block(s){scope}", self.bad_blocks)
        }
    }
}

impl Revision {
    /// What the last `backy verify` recorded, if anything.
    pub fn verification(&self) -> Option<Verification> {
        match self.extra.get("verification") {
            Some(Value::Mapping(m)) => Verification::from_mapping(m),
            _ => None,
        }
    }

    /// The trust as `status` shows it: "verified (10 %)" after a sampled check.
    pub fn trust_label(&self) -> String {
        let trust = format!("{:?}", self.trust).to_lowercase();
        match self.verification() {
            Some(Verification {
                scope: Scope::Sample(p),
                ..
            }) if self.trust == super::Trust::Verified => format!("{trust} ({p} %)"),
            _ => trust,
        }
    }

    /// Records a verification (replacing the previous one).
    pub fn set_verification(&mut self, v: &Verification) {
        self.extra
            .insert("verification".into(), Value::Mapping(v.to_mapping()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::revision::Trust;
    use std::collections::BTreeSet;

    #[test]
    fn a_verification_survives_the_rev_file() {
        let mut r = Revision::new("a".into(), None, BTreeSet::new());
        r.set_stat("duration", 1.0);
        let v = Verification {
            time: Utc::now(),
            scope: Scope::Sample(12.5),
            blocks_checked: 7,
            bad_offsets: (0..150).map(|i| i * 65536).collect(),
            bad_blocks: 150,
            damage_from: Some("b".into()),
            error: None,
        };
        r.set_verification(&v);
        r.trust = Trust::Distrusted;
        let yaml = r.to_yaml();
        let again = Revision::parse(&yaml, "a").unwrap();
        let got = again.verification().unwrap();
        assert_eq!(got.bad_offsets.len(), MAX_RECORDED_OFFSETS);
        assert_eq!(got.bad_blocks, 150);
        assert_eq!(got.scope, Scope::Sample(12.5));
        assert_eq!(got.damage_from.as_deref(), Some("b"));
        assert_eq!(
            got.time.timestamp_micros(),
            v.time.timestamp_micros(),
            "{yaml}"
        );
        assert_eq!(again.trust, Trust::Distrusted);
        assert_eq!(again.trust_label(), "distrusted");
        let mut sampled = again.clone();
        sampled.trust = Trust::Verified;
        assert_eq!(sampled.trust_label(), "verified (12.5 %)");
        // A clean result drops the offsets of an earlier one.
        let mut clean = again.clone();
        clean.set_verification(&Verification {
            bad_offsets: vec![],
            bad_blocks: 0,
            damage_from: None,
            scope: Scope::Full,
            ..v
        });
        assert!(!clean.to_yaml().contains("bad_offsets"));
    }
}
