//! `backy scheduler` (in progress).

use std::path::Path;

use crate::error::{Error, Result};

/// Not yet available.
pub fn run(config: &Path, cli: &crate::cli::Cli) -> Result<()> {
    let _ = (config, cli);
    Err(Error::Other("'scheduler' is not implemented yet".into()))
}
