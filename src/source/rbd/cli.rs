//! Running the `rbd` command line tool (`$BACKY_RBD`, default `rbd`).
//!
//! `CEPH_ARGS`, `CEPH_CLUSTER` and `CEPH_CONF` reach rbd through the inherited
//! environment, untouched. A failing rbd brings its stderr into the error. Its
//! stderr is drained on a thread while we read stdout, so neither pipe can fill
//! up and deadlock the two processes.

use std::ffi::OsString;
use std::io::Read;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;

use super::error::{CommandError, RbdError};
use crate::error::{Error, Result};

/// The pipe size asked for rbd's streamed output, so rbd can run ahead of us
/// by more than the default 64 KiB.
pub const PIPE_BYTES: usize = 1 << 20;

/// The rbd tool.
#[derive(Debug, Clone)]
pub struct Rbd {
    program: OsString,
}

/// How an rbd call failed.
fn failed(args: &[&str], status: Option<ExitStatus>, stderr: &str) -> Error {
    RbdError::Command(CommandError {
        args: args.iter().map(|a| a.to_string()).collect(),
        status,
        stderr: stderr.trim().to_string(),
    })
    .into()
}

/// Whether an rbd command can show a progress bar and so takes `--no-progress`.
/// It is not a global option: `ls`, `info`, `snap ls` and others reject it.
fn shows_progress(args: &[&str]) -> bool {
    match args {
        ["snap", sub, ..] => matches!(*sub, "create" | "rm" | "remove" | "purge" | "rollback"),
        [cmd, ..] => matches!(
            *cmd,
            "export"
                | "export-diff"
                | "import"
                | "import-diff"
                | "create"
                | "resize"
                | "rm"
                | "remove"
                | "cp"
                | "copy"
        ),
        [] => false,
    }
}

impl Rbd {
    /// `$BACKY_RBD` or `rbd`.
    pub fn from_env() -> Rbd {
        Rbd {
            program: std::env::var_os("BACKY_RBD").unwrap_or_else(|| "rbd".into()),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(args).stdin(Stdio::null());
        if shows_progress(args) {
            cmd.arg("--no-progress");
        }
        cmd
    }

    fn spawn(&self, args: &[&str]) -> Result<(Child, JoinHandle<String>)> {
        let mut child = self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| RbdError::Spawn {
                program: self.program.to_string_lossy().into_owned(),
                source,
            })?;
        let mut stderr = child.stderr.take().expect("piped");
        let drain = std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = stderr.read_to_end(&mut text);
            String::from_utf8_lossy(&text).into_owned()
        });
        Ok((child, drain))
    }

    /// Runs rbd to completion and returns its stdout; non-zero exit is an error.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let (mut child, drain) = self.spawn(args)?;
        let mut out = Vec::new();
        let read = child.stdout.take().expect("piped").read_to_end(&mut out);
        let status = child.wait().ok();
        let stderr = drain.join().unwrap_or_default();
        match (read, status) {
            (Ok(_), Some(s)) if s.success() => Ok(String::from_utf8_lossy(&out).into_owned()),
            (_, status) => Err(failed(args, status, &stderr)),
        }
    }

    /// Runs rbd and lets `consume` read its stdout as a stream. The result stands
    /// only if both `consume` succeeded and rbd exited 0; if `consume` fails first,
    /// rbd is killed and `consume`'s error is returned (with rbd's stderr added).
    ///
    /// `consume` owns rbd's stdout (a pipe enlarged to [`PIPE_BYTES`] where the
    /// kernel allows) and may hand it to another thread; the function it gets
    /// kills rbd, for a consumer that fails and must see the stream end before
    /// it returns.
    pub fn stream<T>(
        &self,
        args: &[&str],
        consume: impl FnOnce(ChildStdout, &dyn Fn()) -> Result<T>,
    ) -> Result<T> {
        let (mut child, drain) = self.spawn(args)?;
        let stdout = child.stdout.take().expect("piped");
        let _ = rustix::pipe::fcntl_setpipe_size(&stdout, PIPE_BYTES);
        // The child is not waited for until `consume` returns, so its pid is ours.
        let pid = rustix::process::Pid::from_raw(child.id() as i32);
        let kill = move || {
            if let Some(pid) = pid {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        };
        let result = consume(stdout, &kill);
        if result.is_err() {
            let _ = child.kill();
        }
        let status = child.wait().ok();
        let stderr = drain.join().unwrap_or_default();
        match result {
            Ok(value) if status.is_some_and(|s| s.success()) => Ok(value),
            Ok(_) => Err(failed(args, status, &stderr)),
            Err(e) => {
                let stderr = stderr.trim();
                if stderr.is_empty() {
                    Err(e)
                } else {
                    Err(RbdError::WithStderr {
                        source: Box::new(e),
                        stderr: stderr.to_string(),
                    }
                    .into())
                }
            }
        }
    }

    /// The snapshots of `pool/image`: name and size in bytes.
    pub fn snap_list(&self, image: &str) -> Result<Vec<(String, u64)>> {
        let json = self.run(&["snap", "ls", "--format", "json", image])?;
        let bad = |what: &str| -> Error {
            RbdError::Output {
                command: "snap ls",
                image: image.to_string(),
                what: what.to_string(),
            }
            .into()
        };
        let value: serde_json::Value =
            serde_json::from_str(&json).map_err(|e| bad(&e.to_string()))?;
        let snaps = value.as_array().ok_or_else(|| bad("not a list"))?;
        snaps
            .iter()
            .map(|s| match (s["name"].as_str(), s["size"].as_u64()) {
                (Some(name), Some(size)) => Ok((name.to_string(), size)),
                _ => Err(bad("a snapshot without name or size")),
            })
            .collect()
    }
}
