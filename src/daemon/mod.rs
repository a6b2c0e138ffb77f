//! The scheduler daemon: runs each job's backups on time, as child processes.

pub mod console;
pub mod status;
