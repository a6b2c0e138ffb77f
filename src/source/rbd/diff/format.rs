//! The stream format: [`DiffReader`] parses records and never trusts its input.

use std::io::{self, Read};

/// The banner a v1 stream starts with.
pub(super) const BANNER: &[u8; 12] = b"rbd diff v1\n";
/// Longest snapshot name we accept (Ceph's limit is far below).
const MAX_NAME: u32 = 4096;

/// What went wrong with a diff stream.
#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    /// The stream ended before its `e` record.
    #[error("the diff stream ended after {at} bytes without its end record: it was cut short")]
    Truncated {
        /// Bytes read before the end.
        at: u64,
    },
    /// Not a v1 diff.
    #[error(
        "the diff stream does not start with 'rbd diff v1' (found {found:?}); this backy reads only v1 diffs"
    )]
    Banner {
        /// What was there instead.
        found: String,
    },
    /// A tag we do not know.
    #[error(
        "unknown record {tag:#04x} at byte {at} of the diff stream; a newer Ceph may have changed the format"
    )]
    UnknownRecord {
        /// The tag byte.
        tag: u8,
        /// Its position.
        at: u64,
    },
    /// A record contradicts what we expect.
    #[error("invalid diff stream at byte {at}: {what}")]
    Invalid {
        /// Position of the record.
        at: u64,
        /// What is wrong.
        what: String,
    },
    /// Reading the stream or writing the image failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// Patching the image failed.
    #[error("{0}")]
    Image(#[from] crate::error::Error),
}

/// One record's header (the data of a `w` follows in the stream).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// `f`: the snapshot the diff starts from.
    FromSnap(String),
    /// `t`: the snapshot the diff ends at.
    ToSnap(String),
    /// `s`: the image size at the end snapshot.
    Size(u64),
    /// `w`: `len` bytes of data for `offset` follow.
    Write {
        /// Image offset.
        offset: u64,
        /// Data length.
        len: u64,
    },
    /// `z`: the range reads as zeros.
    Zero {
        /// Image offset.
        offset: u64,
        /// Length.
        len: u64,
    },
    /// `e`: the end.
    End,
}

/// A streaming reader of diff records.
pub struct DiffReader<R> {
    input: R,
    pos: u64,
    /// Unread data bytes of the current `w` record.
    pending: u64,
}

impl<R: Read> DiffReader<R> {
    /// Reads and checks the banner.
    pub fn new(input: R) -> Result<DiffReader<R>, DiffError> {
        let mut r = DiffReader {
            input,
            pos: 0,
            pending: 0,
        };
        let mut banner = [0u8; 12];
        let n = r.read_up_to(&mut banner)?;
        if n < banner.len() && banner[..n] == BANNER[..n] {
            return Err(DiffError::Truncated { at: n as u64 });
        }
        if &banner != BANNER {
            return Err(DiffError::Banner {
                found: String::from_utf8_lossy(&banner[..n]).into_owned(),
            });
        }
        Ok(r)
    }

    fn read_up_to(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut got = 0;
        while got < buf.len() {
            match self.input.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.pos += got as u64;
        Ok(got)
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), DiffError> {
        if self.read_up_to(buf)? < buf.len() {
            return Err(DiffError::Truncated { at: self.pos });
        }
        Ok(())
    }

    fn u64(&mut self) -> Result<u64, DiffError> {
        let mut b = [0u8; 8];
        self.read_exact(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn name(&mut self, at: u64) -> Result<String, DiffError> {
        let mut b = [0u8; 4];
        self.read_exact(&mut b)?;
        let len = u32::from_le_bytes(b);
        if len > MAX_NAME {
            return Err(DiffError::Invalid {
                at,
                what: format!("a snapshot name of {len} bytes"),
            });
        }
        let mut name = vec![0u8; len as usize];
        self.read_exact(&mut name)?;
        String::from_utf8(name).map_err(|_| DiffError::Invalid {
            at,
            what: "a snapshot name that is not UTF-8".into(),
        })
    }

    /// Position in the stream (bytes consumed).
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// The next record. The data of a `Write` must be consumed with
    /// [`DiffReader::read_data`] before asking for the next record.
    pub fn next_record(&mut self) -> Result<Record, DiffError> {
        if self.pending > 0 {
            return Err(DiffError::Invalid {
                at: self.pos,
                what: "data of a write record left unread (a backy bug)".into(),
            });
        }
        let at = self.pos;
        let mut tag = [0u8; 1];
        self.read_exact(&mut tag)?;
        let range = |r: &mut Self| -> Result<(u64, u64), DiffError> {
            let offset = r.u64()?;
            let len = r.u64()?;
            if offset.checked_add(len).is_none() {
                return Err(DiffError::Invalid {
                    at,
                    what: format!("extent {offset}+{len} overflows"),
                });
            }
            Ok((offset, len))
        };
        Ok(match tag[0] {
            b'f' => Record::FromSnap(self.name(at)?),
            b't' => Record::ToSnap(self.name(at)?),
            b's' => Record::Size(self.u64()?),
            b'w' => {
                let (offset, len) = range(self)?;
                self.pending = len;
                Record::Write { offset, len }
            }
            b'z' => {
                let (offset, len) = range(self)?;
                Record::Zero { offset, len }
            }
            b'e' => Record::End,
            tag => return Err(DiffError::UnknownRecord { tag, at }),
        })
    }

    /// Reads the next `buf.len()` data bytes of the current `w` record.
    pub fn read_data(&mut self, buf: &mut [u8]) -> Result<(), DiffError> {
        assert!(
            buf.len() as u64 <= self.pending,
            "read beyond the write record"
        );
        self.read_exact(buf)?;
        self.pending -= buf.len() as u64;
        Ok(())
    }

    /// Whether anything follows the end record (it must not).
    pub fn has_trailing_bytes(&mut self) -> Result<bool, DiffError> {
        let mut b = [0u8; 1];
        Ok(self.read_up_to(&mut b)? > 0)
    }
}
