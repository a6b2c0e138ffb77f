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
        let prefix = format!(
            "{now} [{}] {} ",
            std::process::id(),
            event.metadata().level()
        );
        let mut message = String::new();
        ctx.field_format()
            .format_fields(Writer::new(&mut message), event)?;
        // Every line of a multi-line message carries the prefix, so that grep
        // and log readers see each with its time.
        for line in message.split('\n') {
            writeln!(writer, "{prefix}{line}")?;
        }
        Ok(())
    }
}

/// A log file that is reopened when it was renamed or removed (logrotate).
pub struct ReopeningFile {
    path: PathBuf,
    open: Mutex<(File, u64, u64)>,
    /// A write failed already (said once on stderr).
    failed: std::sync::atomic::AtomicBool,
}

impl ReopeningFile {
    /// Opens `path` for appending, creating it.
    pub fn open(path: &Path) -> io::Result<ReopeningFile> {
        let (file, dev, ino) = Self::open_file(path)?;
        Ok(ReopeningFile {
            path: path.to_owned(),
            open: Mutex::new((file, dev, ino)),
            failed: std::sync::atomic::AtomicBool::new(false),
        })
    }

    fn open_file(path: &Path) -> io::Result<(File, u64, u64)> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let meta = file.metadata()?;
        Ok((file, meta.dev(), meta.ino()))
    }

    fn write_line(&self, buf: &[u8]) -> io::Result<()> {
        let result = self.append(buf);
        if let Err(e) = &result {
            // A full or broken log filesystem must not lose the message: it goes
            // to stderr (the scheduler reads a child's stderr), noting why once.
            let mut stderr = io::stderr().lock();
            if !self.failed.swap(true, std::sync::atomic::Ordering::SeqCst) {
                let why = match e.raw_os_error() {
                    Some(code) if crate::sys::is_no_space(e) => Error::no_space(
                        "cannot write to log file",
                        self.path.clone(),
                        io::Error::from_raw_os_error(code),
                    )
                    .to_string(),
                    _ => format!(
                        "cannot write to log file {}: {}",
                        self.path.display(),
                        crate::error::plain_io(e)
                    ),
                };
                let _ = writeln!(
                    stderr,
                    "backy: {why}; logging to stderr until it can be written again"
                );
            }
            let _ = stderr.write_all(buf);
        }
        result
    }

    fn append(&self, buf: &[u8]) -> io::Result<()> {
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
        .log_internal_errors(false)
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
    result.map_err(|source| Error::Logging { source })
}

/// A command line as a shell would take it back: words with spaces, quotes or
/// other special characters in single quotes (`'my disk.img'`).
pub fn shell_words<I, S>(words: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    words
        .into_iter()
        .map(|w| shell_quote(&w.as_ref().to_string_lossy()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One word quoted for a POSIX shell, unchanged when it needs no quotes.
pub fn shell_quote(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./,:=+@%^".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_quoted_as_a_shell_takes_them() {
        assert_eq!(
            shell_words(["backy", "-b", "/srv/backy/vm 1", "backup", "daily,weekly"]),
            "backy -b '/srv/backy/vm 1' backup daily,weekly"
        );
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a$b"), "'a$b'");
    }

    #[test]
    fn every_line_of_a_message_has_the_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let file = ReopeningFile::open(&path).unwrap();
        let subscriber = tracing_subscriber::fmt()
            .event_format(LineFormat)
            .with_writer(file)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!("first\nsecond\nthird");
        });
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        for (line, word) in lines.iter().zip(["first", "second", "third"]) {
            assert!(line.ends_with(&format!(" ERROR {word}")), "{text}");
            assert!(
                line.contains(&format!("[{}]", std::process::id())),
                "{text}"
            );
        }
    }
}
