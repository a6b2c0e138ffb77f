//! The listener: one thread per connection, a cap on connections, and a
//! shutdown that lets requests in flight finish.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::export::Catalog;
use super::handshake::{Outcome, negotiate};
use super::transmission::{Served, transmit};
use super::{Buffered, Limits, Transport};
use crate::error::{Error, Result};
use crate::job::remove_stale_overlays;

/// Where to listen.
#[derive(Debug, Clone)]
pub enum Listen {
    /// A TCP address (port 0 picks a free port).
    Tcp(SocketAddr),
    /// A Unix socket path (created, and removed at the end).
    Unix(PathBuf),
}

/// How to serve.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen.
    pub listen: Listen,
    /// Connections served at once; more are refused in the handshake.
    pub max_connections: usize,
    /// Protocol limits.
    pub limits: Limits,
}

/// How long connections get to finish after a shutdown request before their
/// sockets are closed under them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

/// A connected client's socket.
enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Conn {
    fn try_clone(&self) -> std::io::Result<Conn> {
        Ok(match self {
            Conn::Tcp(s) => Conn::Tcp(s.try_clone()?),
            Conn::Unix(s) => Conn::Unix(s.try_clone()?),
        })
    }

    fn shutdown(&self, how: std::net::Shutdown) {
        let _ = match self {
            Conn::Tcp(s) => s.shutdown(how),
            Conn::Unix(s) => s.shutdown(how),
        };
    }
}

impl std::io::Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.read(buf),
            Conn::Unix(s) => s.read(buf),
        }
    }
}

impl std::io::Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.write(buf),
            Conn::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Transport for Conn {
    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> std::io::Result<()> {
        match self {
            Conn::Tcp(s) => s.set_read_timeout(timeout),
            Conn::Unix(s) => s.set_read_timeout(timeout),
        }
    }
}

/// A running server, bound and ready.
pub struct Server {
    listener: Listener,
    /// What the log and the operator call the address (with the real port).
    pub address: String,
}

impl Server {
    /// Binds the listener (and removes overlays a crashed server left in `job_dir`).
    pub fn bind(config: &Config, job_dir: &Path) -> Result<Server> {
        for path in remove_stale_overlays(job_dir).map_err(Error::io("cannot list", job_dir))? {
            tracing::info!(
                "Removed overlay {} left by an earlier server",
                path.display()
            );
        }
        let (listener, address) = match &config.listen {
            Listen::Tcp(addr) => {
                let l = TcpListener::bind(addr).map_err(|source| Error::NbdListen {
                    addr: *addr,
                    source,
                })?;
                let local = l
                    .local_addr()
                    .map_err(Error::io("cannot read the address of", "the listener"))?;
                (Listener::Tcp(l), local.to_string())
            }
            Listen::Unix(path) => {
                remove_stale_socket(path)?;
                let l = UnixListener::bind(path).map_err(Error::io("cannot listen on", path))?;
                (Listener::Unix(l, path.clone()), path.display().to_string())
            }
        };
        match &listener {
            Listener::Tcp(l) => l.set_nonblocking(true),
            Listener::Unix(l, _) => l.set_nonblocking(true),
        }
        .map_err(Error::io("cannot set up", address.clone()))?;
        Ok(Server { listener, address })
    }

    /// Serves until `stop` is set, then lets connections finish their requests
    /// (further requests get `ESHUTDOWN`) and returns.
    pub fn run(self, catalog: Arc<dyn Catalog>, config: &Config, stop: &AtomicBool) -> Result<()> {
        let active = Arc::new(AtomicUsize::new(0));
        let stopping = Arc::new(AtomicBool::new(false));
        let sockets: Arc<Mutex<Vec<(u64, Conn)>>> = Arc::new(Mutex::new(Vec::new()));
        let mut threads: Vec<JoinHandle<()>> = Vec::new();
        let mut next_id = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let accepted = match &self.listener {
                Listener::Tcp(l) => l.accept().map(|(s, peer)| {
                    let _ = s.set_nodelay(true);
                    (Conn::Tcp(s), peer.to_string())
                }),
                Listener::Unix(l, path) => l
                    .accept()
                    .map(|(s, _)| (Conn::Unix(s), format!("{} (unix socket)", path.display()))),
            };
            let (conn, peer) = match accepted {
                Ok(c) => c,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    wait_readable(&self.listener);
                    continue;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!("Could not accept an NBD connection: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            threads.retain(|t| !t.is_finished());
            let serving = active.load(Ordering::Relaxed);
            // Refusals get a thread too (they answer options with a message), but
            // only up to the cap again, so a flood cannot make threads without end.
            if threads.len() >= 2 * config.max_connections {
                tracing::warn!(
                    "NBD client {peer}: refused, {} connections already",
                    threads.len()
                );
                continue;
            }
            let refusal = (serving >= config.max_connections).then(|| {
                format!(
                    "the server already serves {serving} connections (--max-connections {}); try again later",
                    config.max_connections
                )
            });
            let id = next_id;
            next_id += 1;
            if let Ok(clone) = conn.try_clone() {
                sockets
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((id, clone));
            }
            let (catalog, limits) = (catalog.clone(), config.limits.clone());
            let (active, stopping, sockets) = (active.clone(), stopping.clone(), sockets.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("nbd-{id}"))
                .spawn(move || {
                    let mut conn = conn;
                    if let Err(e) = conn.set_blocking() {
                        tracing::warn!("NBD client {peer}: {e}");
                    } else {
                        connection(
                            &mut conn,
                            &peer,
                            catalog.as_ref(),
                            &limits,
                            refusal,
                            &active,
                            &stopping,
                        );
                    }
                    sockets
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .retain(|(i, _)| *i != id);
                });
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => tracing::warn!("Could not start a thread for an NBD connection: {e}"),
            }
        }

        tracing::info!("Stopping the NBD server: finishing requests in flight");
        stopping.store(true, Ordering::Relaxed);
        // No new requests: each connection finishes the one it handles, then
        // sees the end of its input.
        for (_, s) in sockets.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            s.shutdown(std::net::Shutdown::Read);
        }
        let grace = Instant::now() + SHUTDOWN_GRACE;
        while threads.iter().any(|t| !t.is_finished()) && Instant::now() < grace {
            std::thread::sleep(Duration::from_millis(20));
        }
        for (_, s) in sockets.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            s.shutdown(std::net::Shutdown::Both);
        }
        for t in threads {
            let _ = t.join();
        }
        if let Listener::Unix(_, path) = &self.listener {
            let _ = std::fs::remove_file(path);
        }
        Ok(())
    }
}

impl Conn {
    fn set_blocking(&self) -> std::io::Result<()> {
        match self {
            Conn::Tcp(s) => s.set_nonblocking(false),
            Conn::Unix(s) => s.set_nonblocking(false),
        }
    }
}

/// Waits up to 200 ms for a connection, so the accept loop notices `stop`.
fn wait_readable(listener: &Listener) {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let fd = match listener {
        Listener::Tcp(l) => l.as_fd(),
        Listener::Unix(l, _) => l.as_fd(),
    };
    let mut fds = [PollFd::new(&fd, PollFlags::IN)];
    let timeout = Timespec {
        tv_sec: 0,
        tv_nsec: 200_000_000,
    };
    let _ = poll(&mut fds, Some(&timeout));
}

/// A socket path that exists is replaced only if it is a socket nobody listens on.
fn remove_stale_socket(path: &Path) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(Error::NbdNotASocket {
            path: path.to_owned(),
        });
    }
    if UnixStream::connect(path).is_ok() {
        return Err(Error::NbdSocketInUse {
            path: path.to_owned(),
        });
    }
    std::fs::remove_file(path).map_err(Error::io("cannot remove stale socket", path))
}

/// One client, from greeting to disconnect.
fn connection(
    conn: &mut Conn,
    peer: &str,
    catalog: &dyn Catalog,
    limits: &Limits,
    refusal: Option<String>,
    active: &AtomicUsize,
    stopping: &AtomicBool,
) {
    let started = Instant::now();
    let counted = refusal.is_none();
    if counted {
        active.fetch_add(1, Ordering::Relaxed);
    }
    tracing::debug!("NBD client {peer} connected");
    let mut s = Buffered::new(&mut *conn);
    let outcome = negotiate(&mut s, catalog, limits, refusal.as_deref());
    match outcome {
        Ok(Outcome::Transmission(n)) => {
            tracing::info!(
                "NBD client {peer}: serving revision {}{} ({} bytes, {}{})",
                n.export.name,
                if n.asked_as == n.export.name {
                    String::new()
                } else {
                    format!(" as '{}'", n.asked_as)
                },
                n.export.size(),
                if n.export.writable() {
                    "writable overlay"
                } else {
                    "read-only"
                },
                if n.structured {
                    ", structured replies"
                } else {
                    ""
                },
            );
            let mut served = Served::default();
            let result = transmit(&mut s, &n, limits, stopping, &mut served);
            let how = match &result {
                Ok(()) => "disconnected".to_string(),
                Err(e) => format!("connection ended ({e})"),
            };
            tracing::info!(
                "NBD client {peer}: {how} after {} requests, {} bytes read, {} bytes written in {:.1} s",
                served.requests,
                served.bytes_read,
                served.bytes_written,
                started.elapsed().as_secs_f64()
            );
        }
        Ok(Outcome::Closed) => tracing::debug!("NBD client {peer} ended the handshake"),
        Err(e) => match refusal {
            Some(why) => tracing::warn!("NBD client {peer}: refused: {why}"),
            None => tracing::info!("NBD client {peer}: handshake failed: {e}"),
        },
    }
    if counted {
        active.fetch_sub(1, Ordering::Relaxed);
    }
}
