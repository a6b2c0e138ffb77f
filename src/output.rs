//! Command output on stdout that never panics: a full disk or a closed pipe
//! becomes [`Error::Output`] (a closed pipe ends the command quietly).

use std::io::{self, Write};

use crate::error::{Error, Result};

/// Writes `text` to stdout and flushes it.
pub fn stdout(text: &str) -> Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|source| Error::Output { source })
}

/// Writes `text` and a newline to stdout and flushes it.
pub fn stdout_line(text: &str) -> Result<()> {
    stdout(&format!("{text}\n"))
}
