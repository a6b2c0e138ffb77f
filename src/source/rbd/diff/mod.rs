//! The `rbd export-diff` v1 stream: a parser that never trusts its input, an
//! applier that streams records into an
//! [`ImageWriter`](crate::image::writer::ImageWriter) with bounded memory, and a
//! writer.
//!
//! # Format (all integers little-endian)
//!
//! ```text
//! "rbd diff v1\n"                 12-byte banner
//! 'f' u32 len, name               from-snap (only with --from-snap)
//! 't' u32 len, name               to-snap (absent when exporting the image head)
//! 's' u64 size                    image size at the end snapshot
//! 'w' u64 offset, u64 length, <length bytes of data>
//! 'z' u64 offset, u64 length      range reads as zeroes
//! 'e'                             end; nothing follows
//! ```
//!
//! Records may arrive unsorted and overlapping (Ceph bug 45601): they are applied
//! in stream order, which is what Ceph means.
//!
//! The parts: [`format`](mod@format) (the stream parser), [`apply`](mod@apply)
//! (records into an [`ImageWriter`](crate::image::writer::ImageWriter)),
//! [`stream`] (the read-ahead thread and prefetching) and [`write`](mod@write) (a
//! stream made from a revision, for `backy export-diff`).

pub mod apply;
pub mod format;
pub mod stream;
#[cfg(test)]
mod tests;
pub mod write;

pub use apply::{Applied, Expect, MAX_IMAGE_SIZE, apply};
pub use format::{DiffError, DiffReader, Record};
pub use stream::{AHEAD_BATCHES, BATCH_BYTES, Prefetch, apply_streamed};
pub use write::{DiffWriter, write_diff};
