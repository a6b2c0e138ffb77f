//! Fuzzes the scheduler's telnet console input: the line reader (telnet IAC
//! negotiation, NULs, CR, over-long lines, invalid UTF-8) and the command
//! interpreter (`jobs REGEX` with arbitrary regular expressions, `run JOB`,
//! ...) over a small fake daemon.
//!
//! Per input: nothing panics, no line is longer than `MAX_LINE`, and `run`
//! triggers only jobs that exist.

#![no_main]

use std::sync::Mutex;

use backy::daemon::console::{Daemon, Line, LineReader, MAX_LINE, answer};
use backy::daemon::status::JobStatus;
use libfuzzer_sys::fuzz_target;

struct Fake {
    triggered: Mutex<Vec<String>>,
}

const JOBS: [&str; 3] = ["vm01", "db-a", "web.example.com"];

impl Daemon for Fake {
    fn jobs(&self) -> Vec<JobStatus> {
        JOBS.iter()
            .map(|name| JobStatus {
                job: name.to_string(),
                sla: "OK".into(),
                status: "waiting for deadline".into(),
                last_time: "2015-11-04 20:09:32 UTC".into(),
                last_tags: "daily".into(),
                last_duration: "50.7 s".into(),
                next_time: "2015-11-05 20:09:32 UTC".into(),
                next_tags: "daily".into(),
                ..JobStatus::default()
            })
            .collect()
    }

    fn run(&self, job: &str) -> bool {
        let known = JOBS.contains(&job);
        if known {
            self.triggered.lock().unwrap().push(job.to_string());
        }
        known
    }
}

fuzz_target!(|data: &[u8]| {
    let daemon = Fake {
        triggered: Mutex::new(Vec::new()),
    };
    let mut lines = LineReader::new(data);
    while let Ok(Some(line)) = lines.next_line() {
        let Line::Text(text) = line else { continue };
        assert!(text.len() <= MAX_LINE * 3, "a line of {} bytes", text.len());
        if answer(&text, &daemon).is_none() {
            break;
        }
    }
    for job in daemon.triggered.lock().unwrap().iter() {
        assert!(JOBS.contains(&job.as_str()));
    }
});
