//! `backy init TYPE SOURCE`.

use std::path::Path;

use crate::config::{JobConfig, SourceConfig};
use crate::error::{Error, Result};
use crate::job::write_atomic;

/// Creates the job directory (if needed) and its `config`.
pub fn run(dir: &Path, type_name: &str, source: &str) -> Result<()> {
    let config = JobConfig {
        source: SourceConfig::from_init_args(type_name, source)?,
        allow_copy: false,
    };
    std::fs::create_dir_all(dir).map_err(Error::io("cannot create job directory", dir))?;
    let path = dir.join("config");
    if path.exists() {
        return Err(Error::Other(format!(
            "{} already exists; this job is set up already (edit or remove the config to change it)",
            path.display()
        )));
    }
    write_atomic(&path, config.to_yaml().as_bytes(), 0o644)?;
    tracing::info!(
        "Initialized job {} with {} source {source}",
        dir.display(),
        type_name
    );
    Ok(())
}
