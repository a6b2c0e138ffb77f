//! `backy expire` (in progress).

use std::path::Path;

use crate::error::{Error, Result};

/// Not yet available.
pub fn run(dir: &Path, config: &Path, dry_run: bool) -> Result<()> {
    let _ = (config, dir, dry_run);
    Err(Error::Other("'expire' is not implemented yet".into()))
}
