//! `backy find [-r SPEC]`: the image path, for scripts.

use std::path::Path;

use crate::error::Result;
use crate::job::Job;

/// Prints the absolute path of the revision's image.
pub fn run(dir: &Path, spec: &str) -> Result<()> {
    let job = Job::open(dir)?;
    let rev = job.resolve(spec)?;
    crate::output::stdout_line(&job.image_path(&rev.id).display().to_string())
}
