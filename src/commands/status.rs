//! `backy status [--json]`.

use std::path::Path;

use chrono::Utc;
use comfy_table::{CellAlignment, ContentArrangement, Table};

use crate::error::Result;
use crate::job::{Damaged, Job, future_note};
use crate::revision::Revision;
use crate::space::{self, JobSpace};
use crate::units::{format_bytes, format_duration};

/// Tag order when the schedule is unknown: common interval names by interval.
fn tag_rank(tag: &str) -> (u8, &str) {
    let rank = match tag {
        "hourly" => 0,
        "daily" => 1,
        "weekly" => 2,
        "monthly" => 3,
        "quarterly" => 4,
        "yearly" => 5,
        _ => 6,
    };
    (rank, tag)
}

/// Tags comma-joined, shortest interval first.
pub fn format_tags(rev: &Revision) -> String {
    let mut tags: Vec<&str> = rev.tags.iter().map(String::as_str).collect();
    tags.sort_by_key(|t| tag_rank(t));
    tags.join(",")
}

/// Prints the table (or JSON) of all revisions, then what is wrong in the job:
/// damaged revisions, revisions dated in the future, `last` links to repair.
pub fn run(dir: &Path, json: bool) -> Result<()> {
    let job = Job::open(dir)?;
    let space = measure(&job);
    if json {
        return crate::output::stdout_line(&to_json(&job, &space));
    }
    let mut text = render_table(
        job.revisions(),
        space.as_ref().ok().and_then(Option::as_ref),
    );
    text.push_str(&space_summary(&space));
    let damaged = job.damaged.iter().map(Damaged::describe);
    let future = job
        .future_revisions(Utc::now())
        .into_iter()
        .map(future_note);
    for line in damaged
        .chain(future)
        .chain(job.link_problems())
        .chain(job.exposure())
    {
        text.push_str(&format!("Warning: {line}\n"));
    }
    crate::output::stdout(&text)
}

/// The job's space, `None` without complete revisions. A filesystem without
/// FIEMAP or an unreadable image is an error to show, never one that stops
/// `status`.
fn measure(job: &Job) -> Result<Option<JobSpace>> {
    if !job.revisions().iter().any(Revision::is_complete) {
        return Ok(None);
    }
    space::measure(job).map(Some)
}

/// The lines after backy 2.1's summary: physical and logical bytes, the
/// sharing factor, what the Freed column means and how exact it is.
fn space_summary(space: &Result<Option<JobSpace>>) -> String {
    let space = match space {
        Ok(None) => return String::new(),
        Ok(Some(s)) => s,
        Err(e) => return format!("Space: not measured: {e}\n"),
    };
    let mut text = format!(
        "Space: {} on disk for {} of revision data (sharing factor {:.1}x); manifests and .rev files {}\n",
        format_bytes(space.physical),
        format_bytes(space.logical),
        space.sharing_factor(),
        format_bytes(space.manifests_physical),
    );
    text.push_str("Freed: what deleting only that revision frees");
    match space.caveat().as_str() {
        "" => text.push_str(" (exact)\n"),
        caveat => text.push_str(&format!(" (an estimate: {caveat})\n")),
    }
    text
}

/// The table backy 2.1 prints, with its summary line; with `space`, a Freed
/// column after Tags.
pub fn render_table(revisions: &[Revision], space: Option<&JobSpace>) -> String {
    let mut table = Table::new();
    table
        .load_preset("||--+-++|    ++++++")
        .set_content_arrangement(ContentArrangement::Disabled);
    let any_trust = revisions
        .iter()
        .any(|r| r.trust != crate::revision::Trust::Trusted);
    let any_protected = revisions.iter().any(|r| r.protected.is_some());
    // Ceph revisions record whether the guest was frozen (`stats.consistency`).
    let any_consistency = revisions.iter().any(|r| consistency(r).is_some());
    // Jobs with `verification: written` show what each backup read back.
    let any_written = revisions.iter().any(|r| verification_cell(r).is_some());
    let mut header = vec!["Date (UTC)", "ID", "Size", "Durat", "Tags"];
    if space.is_some() {
        header.push("Freed");
    }
    if any_trust {
        header.push("Trust");
    }
    if any_protected {
        header.push("Protected");
    }
    if any_consistency {
        header.push("Consistency");
    }
    if any_written {
        header.push("Verified");
    }
    table.set_header(header);
    for rev in revisions {
        let mut row = vec![
            rev.timestamp.format("%Y-%m-%d %H:%M:%S").to_string(),
            rev.id.clone(),
            format_bytes(rev.bytes_written()),
            format_duration(rev.duration()),
            format_tags(rev),
        ];
        if let Some(space) = space {
            row.push(
                space
                    .revision(&rev.id)
                    .map_or("-".into(), |r| format_bytes(r.exclusive)),
            );
        }
        if any_trust {
            row.push(rev.trust_label());
        }
        if any_protected {
            row.push(protected_cell(rev));
        }
        if any_consistency {
            row.push(consistency(rev).unwrap_or("-").to_string());
        }
        if any_written {
            row.push(verification_cell(rev).unwrap_or_else(|| {
                rev.stats
                    .get("verification")
                    .and_then(|v| v.as_str())
                    .unwrap_or("-")
                    .to_string()
            }));
        }
        table.add_row(row);
    }
    let freed_col = space.map(|_| 5);
    for col in [2, 3].into_iter().chain(freed_col) {
        if let Some(c) = table.column_mut(col) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
    // Incomplete revisions (running or crashed) are listed but not counted:
    // the next backup removes them.
    let complete: Vec<&Revision> = revisions.iter().filter(|r| r.is_complete()).collect();
    let total: u64 = complete.iter().map(|r| r.bytes_written()).sum();
    let incomplete = revisions.len() - complete.len();
    format!(
        "{table}\n{} containing {} data (estimated){}\n",
        crate::units::count(complete.len(), "revision"),
        format_bytes(total),
        match incomplete {
            0 => String::new(),
            1 => "; 1 incomplete revision not counted".into(),
            n => format!("; {n} incomplete revisions not counted"),
        }
    )
}

/// The Protected column: `-`, `yes`, or the reason.
fn protected_cell(rev: &Revision) -> String {
    match &rev.protected {
        None => "-".into(),
        Some(p) => p.reason.clone().unwrap_or_else(|| "yes".into()),
    }
}

/// The Verified cell of a revision verified by `verification: written`:
/// `written (12 read, 32756 by mapping)`.
fn verification_cell(rev: &Revision) -> Option<String> {
    let read = rev.stat_u64("verification_blocks_read")?;
    let proven = rev.stat_u64("verification_blocks_proven")?;
    let how = rev.stats.get("verification").and_then(|v| v.as_str())?;
    Some(format!("{how} ({read} read, {proven} by mapping)"))
}

/// `stats.consistency` of a Ceph revision: `frozen` or `crash`.
pub fn consistency(rev: &Revision) -> Option<&str> {
    rev.stats.get("consistency").and_then(|v| v.as_str())
}

/// `stats.consistency_reason`: why the guest was not frozen (or was late).
pub fn consistency_reason(rev: &Revision) -> Option<&str> {
    rev.stats.get("consistency_reason").and_then(|v| v.as_str())
}

/// The job's space for `--json`: an object, `null` without complete
/// revisions, `{"error": ...}` when it cannot be measured.
fn space_json(space: &Result<Option<JobSpace>>) -> serde_json::Value {
    match space {
        Ok(None) => serde_json::Value::Null,
        Ok(Some(s)) => serde_json::json!({
            "filesystem": s.filesystem,
            "physical": s.physical,
            "logical": s.logical,
            "sharing_factor": s.sharing_factor(),
            "manifests_physical": s.manifests_physical,
            "exact": s.accuracy.is_exact(),
            "caveat": match s.caveat() {
                c if c.is_empty() => None,
                c => Some(c),
            },
        }),
        Err(e) => serde_json::json!({"error": e.to_string()}),
    }
}

fn to_json(job: &Job, space: &Result<Option<JobSpace>>) -> String {
    let now = Utc::now();
    // The array stays one entry per revision (as consumers expect); the
    // job's totals ride along in each as `job_space`.
    let job_space = space_json(space);
    let measured = space.as_ref().ok().and_then(Option::as_ref);
    let mut revs: Vec<serde_json::Value> = job
        .revisions()
        .iter()
        .map(|r| {
            serde_json::json!({
                "id": r.id,
                "timestamp": r.timestamp.to_rfc3339(),
                "parent": r.parent,
                "tags": r.tags,
                "complete": r.is_complete(),
                "duration": r.duration(),
                "bytes_written": r.bytes_written(),
                "bytes_changed": r.stat_u64("bytes_changed"),
                "reflink": r.stats.get("reflink").and_then(|v| v.as_bool()),
                "verification": r.stats.get("verification").and_then(|v| v.as_str()),
                "verification_blocks_read": r.stat_u64("verification_blocks_read"),
                "verification_blocks_proven": r.stat_u64("verification_blocks_proven"),
                "trust": r.trust,
                "protected": r.protected.is_some(),
                "protected_reason": r.protected.as_ref().and_then(|p| p.reason.clone()),
                "protected_since": r.protected.as_ref().and_then(|p| p.since).map(|t| t.to_rfc3339()),
                "image": job.image_path(&r.id),
                "future": r.timestamp > now,
                "damaged": null,
                "consistency": consistency(r),
                "consistency_reason": consistency_reason(r),
                "freed": measured.and_then(|s| s.revision(&r.id)).map(|s| s.exclusive),
                "shared_outside": measured.and_then(|s| s.revision(&r.id)).map(|s| s.shared_outside),
                "job_space": job_space,
            })
        })
        .collect();
    // Damaged revisions: what could be read, the file that is wrong and why.
    for d in &job.damaged {
        let r = d.rev.as_ref();
        revs.push(serde_json::json!({
            "id": d.id,
            "timestamp": r.map(|r| r.timestamp.to_rfc3339()),
            "parent": r.and_then(|r| r.parent.clone()),
            "tags": r.map(|r| r.tags.clone()).unwrap_or_default(),
            "complete": false,
            "duration": r.and_then(Revision::duration),
            "bytes_written": r.map(Revision::bytes_written),
            "bytes_changed": r.and_then(|r| r.stat_u64("bytes_changed")),
            "reflink": r.and_then(|r| r.stats.get("reflink")).and_then(|v| v.as_bool()),
            "verification": r.and_then(|r| r.stats.get("verification")).and_then(|v| v.as_str()),
            "verification_blocks_read": r.and_then(|r| r.stat_u64("verification_blocks_read")),
            "verification_blocks_proven": r.and_then(|r| r.stat_u64("verification_blocks_proven")),
            "trust": r.map(|r| r.trust),
            "protected": r.is_some_and(|r| r.protected.is_some()),
            "protected_reason": r.and_then(|r| r.protected.as_ref()).and_then(|p| p.reason.clone()),
            "protected_since": r.and_then(|r| r.protected.as_ref()).and_then(|p| p.since).map(|t| t.to_rfc3339()),
            "image": job.image_path(&d.id),
            "future": r.is_some_and(|r| r.timestamp > now),
            "damaged": {"file": d.file, "reason": d.reason},
            "consistency": r.and_then(consistency),
            "consistency_reason": r.and_then(consistency_reason),
            "freed": null,
            "shared_outside": null,
            "job_space": job_space,
        }));
    }
    serde_json::to_string_pretty(&revs).unwrap_or_default()
}
