//! Progress for long operations: a bar on a terminal, a few log lines otherwise.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

/// Progress of one operation over a known number of bytes.
pub struct Progress {
    bar: Option<ProgressBar>,
    label: &'static str,
    total: u64,
    done: u64,
    next_log: u64,
}

impl Progress {
    /// A bar on stderr when it is a terminal, else log lines every 25 %.
    pub fn new(label: &'static str, total: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg:9} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_message(label);
            bar
        });
        Progress {
            bar,
            label,
            total,
            done: 0,
            next_log: total / 4,
        }
    }

    /// Adds `n` bytes done.
    pub fn inc(&mut self, n: u64) {
        self.done += n;
        match &self.bar {
            Some(bar) => bar.inc(n),
            None if self.total > 0 && self.done >= self.next_log && self.done < self.total => {
                tracing::info!("{}: {}% done", self.label, self.done * 100 / self.total);
                self.next_log = self.done + self.total / 4;
            }
            None => {}
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}
