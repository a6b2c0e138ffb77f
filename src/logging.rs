//! Log lines as backy 2.1 wrote them: `2015-11-05 11:56:10 [pid] LEVEL message`.
//!
//! With `-l FILE` lines are appended to FILE, which is reopened when logrotate
//! renamed or removed it; otherwise they go to stderr (never stdout, so that
//! `restore -` stays clean).

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tracing::{Event, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

use crate::error::{Error, Result};

struct LineFormat;

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let now = chrono::Utc::now().format("%Y-%m-%d %H:%M:%S");
        write!(
            writer,
            "{now} [{}] {} ",
            std::process::id(),
            event.metadata().level()
        )?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// A log file that is reopened when it was renamed or removed (logrotate).
pub struct ReopeningFile {
    path: PathBuf,
    open: Mutex<(File, u64, u64)>,
}

impl ReopeningFile {
    /// Opens `path` for appending, creating it.
    pub fn open(path: &Path) -> io::Result<ReopeningFile> {
        let (file, dev, ino) = Self::open_file(path)?;
        Ok(ReopeningFile {
            path: path.to_owned(),
            open: Mutex::new((file, dev, ino)),
        })
    }

    fn open_file(path: &Path) -> io::Result<(File, u64, u64)> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let meta = file.metadata()?;
        Ok((file, meta.dev(), meta.ino()))
    }

    fn write_line(&self, buf: &[u8]) -> io::Result<()> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let current = std::fs::metadata(&self.path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        if current != Some((open.1, open.2)) {
            *open = Self::open_file(&self.path)?;
        }
        open.0.write_all(buf)
    }
}

/// The writer handed to tracing for one event.
pub struct LineWriter<'a>(&'a ReopeningFile);

impl Write for LineWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write_line(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for ReopeningFile {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter(self)
    }
}

/// Installs the global logger: to `logfile` if given, else stderr.
/// `quiet` keeps only warnings and errors.
pub fn init(logfile: Option<&Path>, verbose: bool, quiet: bool) -> Result<()> {
    let level = match (verbose, quiet) {
        (true, _) => LevelFilter::DEBUG,
        (false, true) => LevelFilter::WARN,
        (false, false) => LevelFilter::INFO,
    };
    let builder = tracing_subscriber::fmt()
        .event_format(LineFormat)
        .with_max_level(level);
    let result = match logfile {
        Some(path) => {
            let file =
                ReopeningFile::open(path).map_err(Error::io("cannot open log file", path))?;
            builder.with_writer(file).try_init()
        }
        None => builder.with_writer(io::stderr).try_init(),
    };
    result.map_err(|e| Error::Other(format!("cannot set up logging: {e}")))
}
