//! `backy status [--json]`.

use std::path::Path;

use comfy_table::{CellAlignment, ContentArrangement, Table};

use crate::error::Result;
use crate::job::Job;
use crate::revision::Revision;
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

/// Prints the table (or JSON) of all revisions.
pub fn run(dir: &Path, json: bool) -> Result<()> {
    let job = Job::open(dir)?;
    if json {
        return crate::output::stdout_line(&to_json(&job));
    }
    crate::output::stdout(&render_table(&job.revisions))
}

/// The table of SPEC section 3, with its summary line.
pub fn render_table(revisions: &[Revision]) -> String {
    let mut table = Table::new();
    table
        .load_preset("||--+-++|    ++++++")
        .set_content_arrangement(ContentArrangement::Disabled);
    let any_trust = revisions
        .iter()
        .any(|r| r.trust != crate::revision::Trust::Trusted);
    let mut header = vec!["Date (UTC)", "ID", "Size", "Durat", "Tags"];
    if any_trust {
        header.push("Trust");
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
        if any_trust {
            row.push(format!("{:?}", rev.trust).to_lowercase());
        }
        table.add_row(row);
    }
    for col in [2, 3] {
        if let Some(c) = table.column_mut(col) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
    let total: u64 = revisions.iter().map(Revision::bytes_written).sum();
    format!(
        "{table}\n{} revisions containing {} data (estimated)\n",
        revisions.len(),
        format_bytes(total)
    )
}

fn to_json(job: &Job) -> String {
    let revs: Vec<serde_json::Value> = job
        .revisions
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
                "trust": r.trust,
                "image": job.image_path(&r.id),
            })
        })
        .collect();
    serde_json::to_string_pretty(&revs).unwrap_or_default()
}
