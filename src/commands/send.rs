//! `backy send [-r SPEC] [--base SPEC]`: revisions as a stream on stdout.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::Instant;

use crate::error::{Error, Result};
use crate::job::Job;
use crate::replicate::send;
use crate::units::format_bytes;

/// Writes the revisions after `base` up to `revision` to stdout.
pub fn run(dir: &Path, revision: Option<&str>, base: Option<&str>) -> Result<()> {
    let started = Instant::now();
    let stdout = std::io::stdout();
    if stdout.is_terminal() {
        return Err(Error::SendToTerminal);
    }
    let mut job = Job::open(dir)?;
    let _lock = job.lock_read()?;
    let plan = send::plan(&job, revision, base)?;
    let ids: Vec<&str> = plan.revisions.iter().map(|r| r.id.as_str()).collect();
    tracing::info!(
        "Sending {} revision(s) after {}: {}",
        ids.len(),
        plan.base
            .as_ref()
            .map_or("none (a full first revision)", |b| b.id.as_str()),
        ids.join(", ")
    );
    let out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
    let stats = send::send(&job, &plan, send::config_text(job.dir())?, out)?;
    std::io::stderr().flush().ok();
    tracing::info!(
        "Sent {} revision(s) in {:.1} s: {} changed blocks, {} of data and {} of zeros in a stream of {}; read {} bytes of images",
        stats.revisions,
        started.elapsed().as_secs_f64(),
        stats.blocks,
        format_bytes(stats.data_bytes),
        format_bytes(stats.zero_bytes),
        format_bytes(stats.stream_bytes),
        stats.bytes_read
    );
    Ok(())
}
