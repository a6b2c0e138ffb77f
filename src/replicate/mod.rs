//! Replication between job directories: `send` writes revisions as a stream
//! of changed blocks, `receive` makes them revisions of another job.

pub mod receive;
pub mod send;
pub mod stream;
