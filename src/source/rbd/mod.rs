//! The Ceph RBD sources: snapshots through the `rbd` CLI, diffs streamed into the clone.

pub mod cli;
pub mod diff;
pub mod librbd;
