//! Whether a Ceph job's guests were frozen: the newest revision's
//! `stats.consistency` for the console, and the WARNING `backy check` gives for
//! a flyingcircus job whose last N revisions were all crash-consistent.

use std::path::Path;

use crate::config::SourceConfig;
use crate::job::Job;
use crate::revision::Revision;

/// What the status file and the console show about a job's consistency.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// The newest complete revision's `stats.consistency` (Ceph jobs only;
    /// `-` when it has none).
    pub newest: Option<String>,
    /// Set when a flyingcircus job's last `limit` revisions were all
    /// crash-consistent: says so, with the newest fallback's reason.
    pub warning: Option<String>,
}

/// The summary of the job in `dir` (nothing for file jobs or when the job
/// cannot be read: that is reported elsewhere).
pub fn summarize(dir: &Path, source: &SourceConfig, limit: u64) -> Summary {
    if matches!(source, SourceConfig::File { .. }) || !dir.join("config").exists() {
        return Summary::default();
    }
    match Job::open(dir) {
        Ok(job) => summarize_revisions(job.revisions(), source, limit),
        Err(_) => Summary::default(),
    }
}

/// [`summarize`] for revisions in order, oldest first.
pub fn summarize_revisions(revisions: &[Revision], source: &SourceConfig, limit: u64) -> Summary {
    let consistency = |r: &Revision| {
        r.stats
            .get("consistency")
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    let complete: Vec<&Revision> = revisions.iter().filter(|r| r.is_complete()).collect();
    let Some(newest) = complete.last() else {
        return Summary::default();
    };
    let in_a_row = complete
        .iter()
        .rev()
        .take_while(|r| consistency(r).as_deref() == Some("crash"))
        .count() as u64;
    let warning = (matches!(source, SourceConfig::FlyingCircus { .. })
        && limit > 0
        && in_a_row >= limit)
        .then(|| {
            let reason = newest
                .stats
                .get("consistency_reason")
                .and_then(|v| v.as_str())
                .unwrap_or("no reason recorded");
            format!(
                "the last {in_a_row} revisions are only crash-consistent (the guest was not frozen); newest: {reason}"
            )
        });
    Summary {
        newest: Some(consistency(newest).unwrap_or_else(|| "-".into())),
        warning,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(n: u32, consistency: Option<&str>) -> Revision {
        let mut r = Revision::new(format!("r{n}"), None, Default::default());
        r.set_stat("duration", 1.0);
        if let Some(c) = consistency {
            r.set_stat("consistency", c);
            r.set_stat("consistency_reason", format!("reason {n}"));
        }
        r
    }

    fn fc() -> SourceConfig {
        SourceConfig::from_init_args("flyingcircus", "rbd/a,vm").unwrap()
    }

    #[test]
    fn warns_after_limit_crash_consistent_in_a_row() {
        let revs = vec![
            rev(0, Some("frozen")),
            rev(1, Some("crash")),
            rev(2, Some("crash")),
        ];
        let s = summarize_revisions(&revs, &fc(), 3);
        assert_eq!(s.newest.as_deref(), Some("crash"));
        assert_eq!(s.warning, None);
        let mut more = revs.clone();
        more.push(rev(3, Some("crash")));
        let w = summarize_revisions(&more, &fc(), 3).warning.unwrap();
        assert!(
            w.starts_with("the last 3 revisions") && w.ends_with("reason 3"),
            "{w}"
        );
        assert_eq!(summarize_revisions(&more, &fc(), 0).warning, None);
        more.push(rev(4, Some("frozen")));
        assert_eq!(summarize_revisions(&more, &fc(), 3).warning, None);
        // A plain ceph-rbd job never freezes: no warning, but the column.
        let rbd = SourceConfig::from_init_args("ceph-rbd", "rbd/a").unwrap();
        let crash = vec![rev(0, Some("crash")); 5];
        let s = summarize_revisions(&crash, &rbd, 3);
        assert_eq!((s.newest.as_deref(), s.warning), (Some("crash"), None));
        // Revisions of older versions record nothing: neither counted nor blamed.
        let old = vec![rev(0, None), rev(1, Some("crash"))];
        assert_eq!(summarize_revisions(&old, &fc(), 2).warning, None);
        assert_eq!(
            summarize_revisions(&[rev(0, None)], &fc(), 1)
                .newest
                .as_deref(),
            Some("-")
        );
    }
}
