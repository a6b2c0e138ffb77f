//! `backy distrust [-r SPEC | -f DATE -u DATE] [--yes]`: mark revisions
//! distrusted, so that the next backup trusts nothing of them.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;

use crate::error::{Error, Result};
use crate::job::Job;
use crate::revision::Trust;
use crate::spec::{self, DateBound};

/// Which revisions to distrust: one by SPEC, those in a date range, or (when
/// all are `None`) every complete revision.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// `-r SPEC`.
    pub revision: Option<String>,
    /// `-f DATE`: made on or after.
    pub from: Option<DateBound>,
    /// `-u DATE`: made on or before.
    pub until: Option<DateBound>,
}

impl Selection {
    /// Neither a revision nor a date: every complete revision.
    fn is_everything(&self) -> bool {
        self.revision.is_none() && self.from.is_none() && self.until.is_none()
    }

    /// " made from X until Y", for messages.
    fn range_note(&self) -> String {
        let mut note = String::new();
        if let Some(f) = self.from {
            note.push_str(&format!(" from {f}"));
        }
        if let Some(u) = self.until {
            note.push_str(&format!(" until {u}"));
        }
        note
    }
}

/// Marks the selected complete revisions `distrusted` under the read lock
/// (so no forget or expiry deletes them meanwhile), each through
/// [`Job::update_rev`]. Distrusting everything asks first on a terminal and
/// needs `yes` otherwise.
pub fn run(dir: &Path, selection: &Selection, yes: bool) -> Result<()> {
    spec::date_range_check(selection.from, selection.until)?;
    let mut job = Job::open(dir)?;
    let _lock = job.lock_read()?;
    let ids: Vec<String> = match &selection.revision {
        Some(s) => vec![job.resolve(s)?.id.clone()],
        None => job
            .revisions()
            .iter()
            .filter(|r| r.is_complete())
            .filter(|r| spec::in_date_range(r.timestamp, selection.from, selection.until))
            .map(|r| r.id.clone())
            .collect(),
    };
    if selection.revision.is_none() {
        for d in &job.damaged {
            tracing::warn!("Skipped: {}", d.describe());
        }
        if ids.is_empty() {
            tracing::warn!(
                "Nothing to distrust: job {} has no complete revision{}",
                job.dir().display(),
                selection.range_note()
            );
            return Ok(());
        }
    }
    if selection.is_everything() && !yes {
        confirm(ids.len(), job.dir())?;
    }
    let mut changed = 0;
    for id in &ids {
        let mut was = None;
        let rev = job.update_rev(id, |rev| {
            was = Some(rev.trust);
            rev.trust = Trust::Distrusted;
        })?;
        let when = rev.timestamp.format("%Y-%m-%d %H:%M:%S UTC");
        if was == Some(Trust::Distrusted) {
            tracing::info!("Revision {id} ({when}) was already distrusted");
        } else {
            changed += 1;
            tracing::info!("Distrusted revision {id} ({when})");
        }
    }
    tracing::info!(
        "{} of job {} distrusted; the next backup compares its source in full against a distrusted parent",
        crate::units::count(changed, "revision"),
        job.dir().display()
    );
    Ok(())
}

/// Asks on the terminal whether to distrust all `count` revisions; without a
/// terminal the operator must have said `--yes`.
fn confirm(count: usize, dir: &Path) -> Result<()> {
    if !std::io::stdin().is_terminal() {
        return Err(Error::DistrustAllUnconfirmed {
            count,
            dir: dir.to_owned(),
        });
    }
    let mut err = std::io::stderr().lock();
    let _ = write!(
        err,
        "Distrust all {} of job {}? [y/N] ",
        crate::units::count(count, "revision"),
        dir.display()
    );
    let _ = err.flush();
    let mut answer = String::new();
    // An unreadable or closed terminal is a "no".
    let _ = std::io::stdin().lock().read_line(&mut answer);
    match answer.trim().to_ascii_lowercase().as_str() {
        "y" | "yes" => Ok(()),
        _ => Err(Error::DistrustDeclined {
            dir: dir.to_owned(),
        }),
    }
}
