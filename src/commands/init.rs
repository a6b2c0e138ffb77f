//! `backy init TYPE SOURCE`.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use crate::config::{JobConfig, SourceConfig, SourceKind};
use crate::error::{Error, Result};
use crate::job::write_atomic;

use crate::job::DIR_MODE;

/// Creates the job directory (if needed) and its `config`.
pub fn run(dir: &Path, kind: SourceKind, source_arg: &str) -> Result<()> {
    let mut source = SourceConfig::from_init(kind, source_arg)?;
    if let SourceConfig::File { filename } = &mut source {
        // A relative path would name another file when backy runs elsewhere (the
        // scheduler, cron). Symlinks are kept: the operator may repoint them.
        *filename = std::path::absolute(&*filename).map_err(Error::io(
            "cannot make the source path absolute",
            &*filename,
        ))?;
    }
    let config = JobConfig {
        source,
        allow_copy: false,
        verification: Default::default(),
    };
    let path = dir.join("config");
    if path.exists() {
        return Err(Error::Other(format!(
            "{} already exists; this job is set up already (edit or remove the config to change it)",
            path.display()
        )));
    }
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)
            .map_err(Error::io("cannot create job directory", dir))?;
        // Exactly this mode, whatever the umask.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE))
            .map_err(Error::io("cannot set the mode of", dir))?;
    }
    write_atomic(&path, config.to_yaml().as_bytes(), config.file_mode())?;
    // The Consul token stays out of the log (which is usually world-readable).
    let shown = match &config.source {
        SourceConfig::File { filename } => filename.display().to_string(),
        SourceConfig::FlyingCircus {
            pool, image, vm, ..
        } => format!("{pool}/{image},{vm}"),
        SourceConfig::CephRbd { .. } => source_arg.to_string(),
    };
    tracing::info!(
        "Initialized job {} with {} source {shown}",
        dir.display(),
        kind.name()
    );
    Ok(())
}
