//! Reading ahead in the background: threads that ask the kernel to start reading
//! ranges of an image (`POSIX_FADV_WILLNEED`) that the writer will compare soon.
//!
//! The request itself can block for a while (btrfs looks up the extents of a
//! reflinked range synchronously, often from cold metadata), so it must not run
//! on the thread that patches the image, and a few threads keep enough reads in
//! flight. Requests are advisory: when the queue is full they are dropped.

use std::fs::File;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};

use crate::sys;

/// Threads that issue requests.
const THREADS: usize = 2;
/// Requests that may wait; more are dropped.
const QUEUE: usize = 1 << 16;

/// A handle to the prefetch threads of one image; clones share the threads,
/// which end once every handle is dropped.
#[derive(Clone, Debug)]
pub struct Prefetcher {
    tx: SyncSender<(u64, u64)>,
}

impl Prefetcher {
    /// Starts the threads, each with its own handle of `image`.
    pub fn start(image: &File) -> std::io::Result<Prefetcher> {
        let (tx, rx) = sync_channel(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..THREADS {
            let (rx, image) = (Arc::clone(&rx), image.try_clone()?);
            std::thread::Builder::new()
                .name("prefetch".into())
                .spawn(move || serve(&image, &rx))?;
        }
        Ok(Prefetcher { tx })
    }

    /// Asks for `len` bytes at `offset` to be read soon.
    pub fn request(&self, offset: u64, len: u64) {
        // Full: dropped, as the module says; disconnected cannot happen while
        // the threads live, and a prefetch that does not happen is harmless.
        let _ = self.tx.try_send((offset, len));
    }
}

fn serve(image: &File, rx: &Mutex<Receiver<(u64, u64)>>) {
    loop {
        // The lock is held only while waiting for the next request.
        let next = rx.lock().map(|rx| rx.recv());
        let Ok(Ok((offset, len))) = next else { return };
        sys::prefetch(image, offset, len);
    }
}
