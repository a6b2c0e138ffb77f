//! The telnet console (as backy 2.x had it): `jobs [REGEX]`, `status`, `run JOB`,
//! `runall`, `help`, `quit`, on loopback addresses only by default.
//!
//! Each client gets a thread. Input is read in bounded lines; telnet negotiation
//! (IAC sequences), binary junk and over-long lines are dropped, so no client can
//! disturb the daemon or the others.

use std::io::{BufWriter, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::status::{JobStatus, count, duration_text, jobs_table, status_counts};

/// Longest accepted command line.
pub const MAX_LINE: usize = 1024;
/// Most clients served at once.
const MAX_CLIENTS: usize = 32;

/// What the console can ask of the daemon.
pub trait Daemon: Send + Sync + 'static {
    /// The current status of every job, sorted by name.
    fn jobs(&self) -> Vec<JobStatus>;
    /// Triggers an immediate run; false if the job is unknown.
    fn run(&self, job: &str) -> bool;
}

/// Serves `listener` until the process ends; a client that sends nothing for
/// `idle` is told so and disconnected, so idle clients cannot use up the slots.
pub fn serve(listener: TcpListener, daemon: Arc<dyn Daemon>, idle: Duration) {
    let clients = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        if clients.load(Ordering::SeqCst) >= MAX_CLIENTS {
            let _ = (&stream).write_all(b"Too many console clients; try again later.\r\n");
            continue;
        }
        clients.fetch_add(1, Ordering::SeqCst);
        let (daemon, clients) = (daemon.clone(), clients.clone());
        std::thread::spawn(move || {
            let _ = session(stream, daemon.as_ref(), idle);
            clients.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// The prompt, as backy 2.0–2.4 showed it.
pub fn prompt() -> String {
    format!("backy-{} % ", env!("CARGO_PKG_VERSION"))
}

fn session(stream: TcpStream, daemon: &dyn Daemon, idle: Duration) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    stream.set_read_timeout(Some(idle))?;
    // A client that reads nothing must not block its thread forever either.
    stream.set_write_timeout(Some(idle))?;
    let mut out = BufWriter::new(stream.try_clone()?);
    let mut lines = LineReader::new(stream);
    out.write_all(prompt().as_bytes())?;
    out.flush()?;
    loop {
        let line = match lines.next_line() {
            Ok(Some(line)) => line,
            Ok(None) => return Ok(()),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                let message = format!(
                    "\r\nClosing the connection: no input for {}.\r\n",
                    duration_text(idle)
                );
                out.write_all(message.as_bytes())?;
                return out.flush();
            }
            Err(e) => return Err(e),
        };
        let reply = match line {
            Line::TooLong => "Line too long; commands are short: try 'help'.".to_string(),
            Line::Text(text) => match answer(&text, daemon) {
                Some(reply) => reply,
                None => return Ok(()),
            },
        };
        if !reply.is_empty() {
            out.write_all(reply.replace("\r\n", "\n").replace('\n', "\r\n").as_bytes())?;
            out.write_all(b"\r\n")?;
        }
        out.write_all(prompt().as_bytes())?;
        out.flush()?;
    }
}

/// The reply to one command line; `None` to close the connection.
pub fn answer(line: &str, daemon: &dyn Daemon) -> Option<String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let Some((&cmd, args)) = words.split_first() else {
        return Some(String::new());
    };
    Some(match cmd {
        "quit" | "exit" => return None,
        "help" => "Commands:\n  jobs [REGEX]  list jobs whose name matches REGEX\n  status        count jobs per status\n  run JOB       run JOB now\n  runall        run every job now\n  quit          close this connection".into(),
        "jobs" => match args {
            [] => show_jobs(daemon.jobs()),
            [pattern] => match regex::Regex::new(pattern) {
                Ok(re) => show_jobs(daemon.jobs().into_iter().filter(|j| re.is_match(&j.job)).collect()),
                Err(e) => format!("Invalid regular expression: {e}"),
            },
            _ => "Usage: jobs [REGEX]".into(),
        },
        "status" if args.is_empty() => status_counts(&daemon.jobs()),
        "run" => match args {
            [job] if daemon.run(job) => format!("Triggered immediate run for {job}"),
            [job] => format!("Unknown job {job}"),
            _ => "Usage: run JOB".into(),
        },
        "runall" if args.is_empty() => daemon
            .jobs()
            .iter()
            .map(|j| {
                daemon.run(&j.job);
                format!("Triggered immediate run for {}", j.job)
            })
            .collect::<Vec<_>>()
            .join("\n"),
        "status" | "runall" => format!("Usage: {cmd}"),
        other => format!("{}: command not found.", other.escape_debug()),
    })
}

fn show_jobs(jobs: Vec<JobStatus>) -> String {
    let mut text = jobs_table(&jobs);
    // Why failed jobs failed, below the table (the SPEC's columns stay).
    for j in jobs.iter().filter(|j| !j.last_failure.is_empty()) {
        text.push_str(&format!("\n{}: last run failed: {}", j.job, j.last_failure));
    }
    format!("{text}\n{} shown", count(jobs.len(), "job"))
}

/// One line a console client sent.
pub enum Line {
    /// The text, without telnet negotiation, CR and NUL bytes (invalid UTF-8
    /// replaced).
    Text(String),
    /// Longer than the longest accepted command ([`MAX_LINE`]); dropped.
    TooLong,
}

/// Reads lines from a telnet client, dropping IAC negotiation and NULs. It
/// never holds more than [`MAX_LINE`] bytes of a line.
pub struct LineReader<R> {
    input: R,
    buf: [u8; 512],
    pos: usize,
    len: usize,
    /// Telnet parser state: 0 normal, 1 after IAC, 2 after IAC WILL/WONT/DO/DONT,
    /// 3 inside a subnegotiation, 4 after IAC inside it.
    iac: u8,
}

impl<R: Read> LineReader<R> {
    /// A reader of the lines `input` sends.
    pub fn new(input: R) -> Self {
        LineReader {
            input,
            buf: [0; 512],
            pos: 0,
            len: 0,
            iac: 0,
        }
    }

    fn byte(&mut self) -> std::io::Result<Option<u8>> {
        if self.pos == self.len {
            self.len = self.input.read(&mut self.buf)?;
            self.pos = 0;
            if self.len == 0 {
                return Ok(None);
            }
        }
        self.pos += 1;
        Ok(Some(self.buf[self.pos - 1]))
    }

    /// The next complete line; `None` at the end of the input (a fragment
    /// without a newline is dropped).
    pub fn next_line(&mut self) -> std::io::Result<Option<Line>> {
        let mut line = Vec::new();
        let mut too_long = false;
        while let Some(b) = self.byte()? {
            self.iac = match (self.iac, b) {
                (0, 255) => 1,
                (1, 251..=254) => 2,
                (1, 250) => 3,
                (1, _) | (2, _) => 0,
                (3, 255) => 4,
                (3, _) => 3,
                (4, 240) => 0,
                (4, _) => 3,
                (_, b'\n') => {
                    if too_long {
                        return Ok(Some(Line::TooLong));
                    }
                    return Ok(Some(Line::Text(
                        String::from_utf8_lossy(&line).into_owned(),
                    )));
                }
                (_, b'\r' | 0) => 0,
                (_, b) => {
                    if line.len() < MAX_LINE {
                        line.push(b);
                    } else {
                        too_long = true;
                    }
                    0
                }
            };
        }
        // A client that disconnects mid-line: drop the fragment.
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Shares a list of jobs for tests and simple daemons.
    struct StaticDaemon {
        jobs: Vec<JobStatus>,
        runs: Mutex<Vec<String>>,
    }

    impl Daemon for StaticDaemon {
        fn jobs(&self) -> Vec<JobStatus> {
            self.jobs.clone()
        }

        fn run(&self, job: &str) -> bool {
            let known = self.jobs.iter().any(|j| j.job == job);
            if known {
                self.runs
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(job.to_string());
            }
            known
        }
    }

    fn daemon() -> StaticDaemon {
        let job = |name: &str| JobStatus {
            job: name.into(),
            sla: "OK".into(),
            status: "waiting for deadline".into(),
            last_time: "-".into(),
            last_tags: "".into(),
            last_duration: "-".into(),
            next_time: "2015-11-06 11:56:10 UTC".into(),
            next_tags: "daily".into(),
            warnings: Vec::new(),
            last_failure: String::new(),
            last_failure_kind: String::new(),
            consistency: None,
            consistency_warning: None,
            last_scrub: None,
            next_scrub: None,
            scrub_result: None,
        };
        StaticDaemon {
            jobs: vec![job("test01"), job("test02"), job("vm01")],
            runs: Mutex::new(Vec::new()),
        }
    }

    #[test]
    fn commands() {
        let d = daemon();
        let a = |l: &str| answer(l, &d);
        assert!(a("jobs").unwrap().ends_with("3 jobs shown"));
        assert!(a("jobs ^test").unwrap().ends_with("2 jobs shown"));
        assert!(a("jobs vm01").unwrap().ends_with("\n1 job shown"));
        assert!(
            a("jobs 0").unwrap().ends_with("3 jobs shown"),
            "searched anywhere"
        );
        assert_eq!(a("jobs a b").unwrap(), "Usage: jobs [REGEX]");
        assert!(
            a("jobs (")
                .unwrap()
                .starts_with("Invalid regular expression")
        );
        assert_eq!(a("run vm01").unwrap(), "Triggered immediate run for vm01");
        assert_eq!(a("run nope").unwrap(), "Unknown job nope");
        assert_eq!(a("runall").unwrap().lines().count(), 3);
        assert_eq!(a("echo hi").unwrap(), "echo: command not found.");
        assert_eq!(a("").unwrap(), "");
        assert!(
            a("status")
                .unwrap()
                .contains("| waiting for deadline | 3 |")
        );
        assert!(a("quit").is_none());
    }

    #[test]
    fn telnet_negotiation_junk_and_long_lines_are_dropped() {
        let mut input = vec![255, 251, 1, 255, 250, 24, 1, 255, 240];
        input.extend(b"jo\0bs\r\n");
        input.extend(vec![b'x'; 5000]);
        input.extend(b"\nrun vm01\nhal");
        let mut r = LineReader::new(&input[..]);
        assert!(matches!(r.next_line().unwrap(), Some(Line::Text(t)) if t == "jobs"));
        assert!(matches!(r.next_line().unwrap(), Some(Line::TooLong)));
        assert!(matches!(r.next_line().unwrap(), Some(Line::Text(t)) if t == "run vm01"));
        assert!(
            r.next_line().unwrap().is_none(),
            "a fragment without newline is dropped"
        );
    }
}
