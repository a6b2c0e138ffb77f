//! `backy verify [-r SPEC]`: re-read revisions and compare them with their manifests.

use std::fs::File;
use std::path::Path;

use crate::error::{Error, Result};
use crate::image::{self, sums::Manifest};
use crate::job::Job;
use crate::progress::Progress;
use crate::revision::Trust;

/// Verifies one revision or all complete ones, newest first.
pub fn run(dir: &Path, spec: Option<&str>) -> Result<()> {
    let job = Job::open(dir)?;
    let _lock = job.lock_read()?;
    let ids: Vec<String> = match spec {
        Some(s) => vec![job.resolve(s)?.id.clone()],
        None => job
            .revisions
            .iter()
            .rev()
            .filter(|r| r.is_complete())
            .map(|r| r.id.clone())
            .collect(),
    };
    let mut failed = Vec::new();
    for id in &ids {
        let sums = job.sums_path(id);
        if !sums.exists() {
            let msg = format!(
                "revision {id} has no checksum manifest (it was made by backy 2.1 or earlier) and can only be checked against its source"
            );
            if spec.is_some() {
                return Err(Error::Other(msg));
            }
            tracing::warn!("{msg}");
            continue;
        }
        let mut manifest = Manifest::open(&sums, false)?;
        let path = job.image_path(id);
        let file = File::open(&path).map_err(Error::io("cannot open revision image", &path))?;
        let mut progress = Progress::new("verify", manifest.image_size());
        let report =
            image::verify_against_manifest(&file, &path, &mut manifest, &mut |n| progress.inc(n));
        progress.finish();
        let mut rev = job
            .revisions
            .iter()
            .find(|r| &r.id == id)
            .cloned()
            .expect("resolved above");
        match report {
            Ok(r) if r.bad_offsets.is_empty() => {
                tracing::info!("Revision {id}: {} blocks match their checksums", r.blocks);
                rev.trust = Trust::Verified;
            }
            Ok(r) => {
                let offsets: Vec<String> = r.bad_offsets.iter().map(u64::to_string).collect();
                tracing::error!(
                    "Revision {id}: blocks at offsets {} differ from their checksums",
                    offsets.join(", ")
                );
                rev.trust = Trust::Distrusted;
                failed.push(id.clone());
            }
            Err(e) => {
                tracing::error!("Revision {id}: {e}");
                rev.trust = Trust::Distrusted;
                failed.push(id.clone());
            }
        }
        job.write_rev(&rev)?;
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Error::Other(format!(
            "{} revision(s) failed verification and are now distrusted: {}; the next backup compares the whole source",
            failed.len(),
            failed.join(", ")
        )))
    }
}
