//! `backy check` (in progress).

use std::path::Path;

use crate::error::{Error, Result};

/// Not yet available.
pub fn run(config: &Path) -> Result<u8> {
    let _ = config;
    Err(Error::Other("'check' is not implemented yet".into()))
}
