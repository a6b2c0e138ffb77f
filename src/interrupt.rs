//! SIGTERM and SIGINT during a long command (backup, restore, verify):
//! the signal is noted, the command's loops stop at the next block with
//! [`Error::Interrupted`] and clean up as on any failure, and the command ends
//! with "Backy operation failed." (as backy 2.1 logged it). A command stuck where
//! no loop runs (a blocking open) is ended after a short grace period.

use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use crate::error::{Error, Result};

static SIGNAL: AtomicI32 = AtomicI32::new(0);

/// How long a noted signal waits for the command to stop by itself.
const GRACE: Duration = Duration::from_secs(5);

fn name(number: i32) -> &'static str {
    match number {
        signal_hook::consts::SIGTERM => "SIGTERM",
        signal_hook::consts::SIGINT => "SIGINT",
        _ => "a signal",
    }
}

/// Catches SIGTERM and SIGINT for the rest of the process. (SIGHUP keeps its
/// default, so that `nohup` goes on working.)
pub fn install() -> Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .map_err(|source| Error::SignalHandlers { source })?;
    std::thread::spawn(move || {
        for number in signals.forever() {
            if SIGNAL.swap(number, Ordering::SeqCst) != 0 {
                // A second signal ends a command that is stuck at once.
                give_up(number);
            }
            tracing::warn!("Received {}; stopping", name(number));
            std::thread::spawn(move || {
                std::thread::sleep(GRACE);
                give_up(number);
            });
        }
    });
    Ok(())
}

/// Ends a command that did not stop by itself (the next backup removes what
/// it left incomplete).
fn give_up(number: i32) -> ! {
    let e = Error::Interrupted {
        name: name(number),
        number,
    };
    tracing::error!("{e}; it did not stop by itself, exiting now");
    tracing::info!("Backy operation failed.");
    std::process::exit(i32::from(e.exit_code()));
}

/// `Err(Interrupted)` once a caught signal arrived; called per block by the
/// loops of long commands.
pub fn check() -> Result<()> {
    match SIGNAL.load(Ordering::Relaxed) {
        0 => Ok(()),
        number => Err(Error::Interrupted {
            name: name(number),
            number,
        }),
    }
}
