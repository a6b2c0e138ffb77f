//! `backy verify [-r SPEC] [--sample PERCENT]`: re-read revisions and compare
//! them with their manifests, following damage into the revisions that share it.
//!
//! One line per revision and a summary go to stdout; the log (stderr) has the
//! details.

use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};
use crate::job::{Checked, Job, VerifyOutcome, VerifyRun, describe_bad, describe_shared};
use crate::revision::Scope;

/// Verifies one revision or all complete ones, newest first; `sample` checks
/// that percentage of each revision's blocks, chosen at random.
pub fn run(dir: &Path, spec: Option<&str>, sample: Option<f64>) -> Result<()> {
    let mut job = Job::open(dir)?;
    let _lock = job.lock_read()?;
    let ids: Vec<String> = match spec {
        Some(s) => vec![job.resolve(s)?.id.clone()],
        None => job
            .revisions()
            .iter()
            .rev()
            .filter(|r| r.is_complete())
            .map(|r| r.id.clone())
            .collect(),
    };
    if spec.is_none() {
        for d in &job.damaged {
            tracing::warn!("Not verified: {}", d.describe());
        }
        if ids.is_empty() {
            tracing::warn!(
                "Nothing to verify: job {} has no complete revision",
                job.dir().display()
            );
            return Ok(());
        }
    }
    let run = job.verify_revisions(&ids, sample)?;
    let mut out = std::io::stdout().lock();
    let mut unverifiable = Vec::new();
    for checked in &run.checked {
        if checked.outcome == VerifyOutcome::NoManifest {
            let err = no_manifest(&job, &checked.id);
            if spec.is_some() {
                return Err(err);
            }
            tracing::warn!("{err}");
            unverifiable.push(checked.id.clone());
        }
        writeln!(out, "{}", line(checked)).map_err(|source| Error::Output { source })?;
    }
    let mut by_set: Vec<(&[String], Vec<u64>)> = Vec::new();
    for s in &run.shared {
        match by_set
            .iter_mut()
            .find(|(set, _)| *set == s.revisions.as_slice())
        {
            Some((_, offsets)) => offsets.push(s.offset),
            None => by_set.push((&s.revisions, vec![s.offset])),
        }
    }
    for (set, offsets) in by_set {
        writeln!(out, "{}", describe_shared(set, &offsets))
            .map_err(|source| Error::Output { source })?;
    }
    writeln!(out, "{}", summary(&run)).map_err(|source| Error::Output { source })?;
    let distrusted: Vec<String> = run
        .checked
        .iter()
        .filter(|c| c.outcome == VerifyOutcome::Bad)
        .map(|c| c.id.clone())
        .collect();
    if !distrusted.is_empty() {
        return Err(Error::RevisionsDistrusted { ids: distrusted });
    }
    if !unverifiable.is_empty() {
        return Err(Error::RevisionsNotVerifiable { ids: unverifiable });
    }
    Ok(())
}

fn no_manifest(job: &Job, id: &str) -> Error {
    let ours = job.revision(id).is_some_and(|r| r.made_by_us());
    Error::NoManifest {
        id: id.to_string(),
        sums: ours.then(|| job.sums_path(id)),
    }
}

/// "ID verified (10 % sampled, 164 blocks)", "ID distrusted: ...".
fn line(c: &Checked) -> String {
    let Some(v) = &c.verification else {
        return format!(
            "{} not verifiable: no checksum manifest; only its source can check it",
            c.id
        );
    };
    if let Some(error) = &v.error {
        return format!("{} distrusted: {error}", c.id);
    }
    match (&c.outcome, &v.scope) {
        (VerifyOutcome::Good, Scope::Sample(p)) => {
            format!(
                "{} verified ({p} % sampled, {} blocks)",
                c.id, v.blocks_checked
            )
        }
        (VerifyOutcome::Good, _) => format!("{} verified ({} blocks)", c.id, v.blocks_checked),
        (_, Scope::Shared) => format!(
            "{} distrusted: shares the damaged extents of revision {} at offsets {}",
            c.id,
            v.damage_from.as_deref().unwrap_or("?"),
            offsets(&v.bad_offsets, v.bad_blocks)
        ),
        (_, Scope::Blocks) => format!(
            "{} distrusted (following the damage of revision {}): {}",
            c.id,
            v.damage_from.as_deref().unwrap_or("?"),
            describe_bad(&c.bad)
        ),
        (_, scope) => format!(
            "{} distrusted{}: {}",
            c.id,
            match scope {
                Scope::Sample(p) => format!(" ({p} % sampled)"),
                _ => String::new(),
            },
            describe_bad(&c.bad)
        ),
    }
}

fn offsets(shown: &[u64], all: u64) -> String {
    let list: Vec<String> = shown.iter().take(20).map(u64::to_string).collect();
    let more = all.saturating_sub(list.len() as u64);
    if more > 0 {
        format!("{} and {more} more", list.join(", "))
    } else {
        list.join(", ")
    }
}

/// "2 verified, 1 distrusted, 1 not verifiable (no manifest)".
fn summary(run: &VerifyRun) -> String {
    let count = |o: VerifyOutcome| run.checked.iter().filter(|c| c.outcome == o).count();
    let mut text = format!(
        "{} verified, {} distrusted",
        count(VerifyOutcome::Good),
        count(VerifyOutcome::Bad)
    );
    let none = count(VerifyOutcome::NoManifest);
    if none > 0 {
        text.push_str(&format!(", {none} not verifiable (no manifest)"));
    }
    text
}
