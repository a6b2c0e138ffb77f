//! `backy nbd-server`: serve the job's revisions over NBD until SIGINT/SIGTERM.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use crate::error::{Error, Result};
use crate::job::Job;
use crate::nbd::export::JobCatalog;
use crate::nbd::server::{Config, Listen, Server};

/// What the command line asked for.
#[derive(Debug, Clone)]
pub struct Options {
    /// Address to bind.
    pub host: String,
    /// TCP port (0: any free one).
    pub port: u16,
    /// A Unix socket instead of TCP.
    pub socket: Option<PathBuf>,
    /// Writable throw-away overlays.
    pub overlay: bool,
    /// Connection cap.
    pub max_connections: usize,
}

/// Serves the job in `dir`.
pub fn run(dir: &Path, options: &Options) -> Result<()> {
    // Fails early, with the usual message, when `dir` is not a job.
    let job = Job::open(dir)?;
    let listen = match &options.socket {
        Some(path) => Listen::Unix(path.clone()),
        None => {
            let ip: IpAddr = options.host.parse().map_err(|_| Error::NbdBadHost {
                host: options.host.clone(),
            })?;
            if !ip.is_loopback() {
                tracing::warn!(
                    "Listening on {ip}, which is not a loopback address: NBD has no authentication, so anybody who can reach it can read every revision of this job"
                );
            }
            Listen::Tcp(SocketAddr::new(ip, options.port))
        }
    };
    if options.max_connections == 0 {
        return Err(Error::NbdNoConnections);
    }
    let config = Config {
        listen,
        max_connections: options.max_connections,
        limits: Default::default(),
    };
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())
            .map_err(|source| Error::SignalHandlers { source })?;
    }
    let server = Server::bind(&config, job.dir())?;
    tracing::info!(
        "Serving the revisions of {} over NBD on {} ({}); stop with Ctrl-C",
        job.dir().display(),
        server.address,
        if options.overlay {
            "writable through throw-away overlays"
        } else {
            "read-only"
        }
    );
    let catalog = Arc::new(JobCatalog::new(job.dir(), options.overlay));
    server.run(catalog, &config, &stop)
}
