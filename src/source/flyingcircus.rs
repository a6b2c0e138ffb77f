//! The `flyingcircus` source: `ceph-rbd`, but the hypervisor takes the snapshot
//! after freezing the guest's filesystems, asked through Consul.
//!
//! ```text
//! backy                         Consul KV                  hypervisor (fc.qemu)
//!   |-- PUT snapshot/<uuid4> ------>|                               |
//!   |   {"vm": VM,                  |-- watch fires --------------->|
//!   |    "snapshot": "backy-<id>"}  |                               |-- fsfreeze (qemu agent)
//!   |-- rbd snap ls (every 2 s) ... |                               |-- rbd snap create backy-<id>
//!   |   until backy-<id> is listed  |                               |-- thaw
//!   |   or freeze-timeout passes    |                               |
//!   |-- DELETE snapshot/<uuid4> --->|                               |
//!   |-- GET snapshot/?recurse ----->|  stale requests of this VM    |
//!   |-- DELETE each stale one ----->|  (snapshot backy-*) go too    |
//!   |-- (no snapshot yet?) rbd snap create backy-<id> itself: crash-consistent
//!   `-- the ceph-rbd backup from here on
//! ```
//!
//! Nothing here fails a backup: when Consul cannot be reached, refuses the
//! token, answers like something else, or the hypervisor is too slow, the
//! caller takes the snapshot itself, with the reason given here.

use std::time::{Duration, Instant};

use super::consul::{Consul, ConsulError, DEFAULT_ADDRESS, REQUEST_TIMEOUT, Token, uuid4};
use crate::config::check_consul_address;
use crate::error::Result;

/// `freeze-timeout` when the config gives none.
pub const DEFAULT_FREEZE_TIMEOUT: Duration = Duration::from_secs(90);
/// How often `rbd snap ls` looks for the hypervisor's snapshot.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);
/// The Consul folder the hypervisors watch.
pub const PREFIX: &str = "snapshot/";

/// How to ask the hypervisor of one VM for a frozen snapshot.
#[derive(Debug)]
pub struct Freeze {
    /// The client, or why there is none (a bad `$CONSUL_HTTP_ADDR`).
    consul: std::result::Result<Consul, String>,
    vm: String,
    timeout: Duration,
}

/// How a freeze request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The hypervisor's snapshot appeared while we waited.
    Frozen,
    /// It did not: take the snapshot yourself. Why, for the log and the revision.
    Fallback(String),
}

impl Freeze {
    /// From the job config's values; the token falls back to
    /// `$CONSUL_HTTP_TOKEN`, the address to `$CONSUL_HTTP_ADDR`, then
    /// [`DEFAULT_ADDRESS`].
    pub fn new(
        vm: &str,
        token: Option<&str>,
        address: Option<&str>,
        freeze_timeout: Option<u64>,
    ) -> Freeze {
        let timeout = freeze_timeout.map_or(DEFAULT_FREEZE_TIMEOUT, Duration::from_secs);
        let token = match token {
            Some(t) => Token::new(t),
            None => std::env::var("CONSUL_HTTP_TOKEN")
                .ok()
                .and_then(|t| Token::new(&t)),
        };
        let address = match address {
            Some(a) => Ok(a.to_string()),
            None => match std::env::var("CONSUL_HTTP_ADDR") {
                Ok(a) if !a.trim().is_empty() => {
                    check_consul_address(a.trim()).map_err(|e| format!("$CONSUL_HTTP_ADDR {e}"))
                }
                _ => Ok(DEFAULT_ADDRESS.to_string()),
            },
        };
        Freeze {
            consul: address.map(|a| Consul::new(&a, token, REQUEST_TIMEOUT.min(timeout))),
            vm: vm.to_string(),
            timeout,
        }
    }

    /// The VM whose guest is frozen.
    pub fn vm(&self) -> &str {
        &self.vm
    }

    /// Asks the hypervisor to freeze the guest and take snapshot `snap`, waits
    /// until `appeared` sees it or `freeze-timeout` passes, and removes the
    /// request (and stale ones of this VM) in any case. An `Err` comes only from
    /// `appeared`, after the request was removed.
    pub fn request(
        &self,
        snap: &str,
        mut appeared: impl FnMut() -> Result<bool>,
    ) -> Result<Outcome> {
        let consul = match &self.consul {
            Ok(c) => c,
            Err(reason) => {
                tracing::warn!("The guest of {} is not frozen: {reason}", self.vm);
                return Ok(Outcome::Fallback(reason.clone()));
            }
        };
        let key = format!("{PREFIX}{}", uuid4());
        let value = serde_json::json!({"vm": self.vm, "snapshot": snap}).to_string();
        tracing::info!(
            "Asking the hypervisor of {} through Consul at {} to freeze the guest and take snapshot {snap} (key {key}, freeze-timeout {} s)",
            self.vm,
            consul.address(),
            self.timeout.as_secs()
        );
        let started = Instant::now();
        let (outcome, stored) = match consul.put(&key, value.as_bytes()) {
            // An agent that hung may have stored the key all the same; one
            // that answered otherwise than `true` did not.
            Err(e) => {
                let maybe = matches!(e, ConsulError::Timeout { .. });
                (Ok(Outcome::Fallback(e.to_string())), maybe)
            }
            Ok(()) => (self.wait(snap, started, &mut appeared), true),
        };
        if let Ok(Outcome::Fallback(reason)) = &outcome {
            tracing::warn!("The guest of {} is not frozen: {reason}", self.vm);
        }
        if stored {
            self.remove_requests(consul, &key);
        }
        if let Ok(Outcome::Frozen) = outcome {
            tracing::info!(
                "The hypervisor took snapshot {snap} of the frozen guest after {:.1} s",
                started.elapsed().as_secs_f64()
            );
        }
        outcome
    }

    fn wait(
        &self,
        snap: &str,
        started: Instant,
        appeared: &mut impl FnMut() -> Result<bool>,
    ) -> Result<Outcome> {
        let deadline = started + self.timeout;
        loop {
            if appeared()? {
                return Ok(Outcome::Frozen);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Outcome::Fallback(format!(
                    "the hypervisor did not take snapshot {snap} within freeze-timeout ({} s)",
                    self.timeout.as_secs()
                )));
            }
            std::thread::sleep(POLL_INTERVAL.min(deadline - now));
        }
    }

    /// Deletes our key, then every other `snapshot/*` request for this VM whose
    /// snapshot is a backy one (left by crashed runs: the hypervisor would take
    /// those snapshots again). Failures are logged; the first one that is a
    /// transport failure ends the clean-up.
    fn remove_requests(&self, consul: &Consul, key: &str) {
        if let Err(e) = consul.delete(key) {
            tracing::warn!("Could not remove the Consul request {key}: {e}");
            if e.is_transport() {
                return;
            }
        }
        let entries = match consul.list(PREFIX) {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!("Could not list stale Consul requests of {}: {e}", self.vm);
                return;
            }
        };
        for entry in entries {
            if entry.key == key || !is_stale_request(&entry.value, &self.vm) {
                continue;
            }
            match consul.delete(&entry.key) {
                Ok(()) => tracing::info!(
                    "Removed the stale Consul request {} for {} (left by an earlier run)",
                    entry.key,
                    self.vm
                ),
                Err(e) => {
                    tracing::warn!(
                        "Could not remove the stale Consul request {}: {e}",
                        entry.key
                    );
                    if e.is_transport() {
                        return;
                    }
                }
            }
        }
    }
}

/// Whether a `snapshot/*` value is a backy request for `vm`.
pub fn is_stale_request(value: &[u8], vm: &str) -> bool {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(value) else {
        return false;
    };
    v["vm"].as_str() == Some(vm)
        && v["snapshot"]
            .as_str()
            .is_some_and(|s| s.starts_with("backy-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_requests_are_this_vms_backy_ones() {
        assert!(is_stale_request(
            br#"{"vm": "a", "snapshot": "backy-x"}"#,
            "a"
        ));
        assert!(!is_stale_request(
            br#"{"vm": "b", "snapshot": "backy-x"}"#,
            "a"
        ));
        assert!(!is_stale_request(
            br#"{"vm": "a", "snapshot": "manual"}"#,
            "a"
        ));
        assert!(!is_stale_request(b"garbage", "a"));
    }

    #[test]
    fn bad_address_falls_back_without_a_request() {
        let f = Freeze {
            consul: Err("$CONSUL_HTTP_ADDR is 'x'".into()),
            vm: "a".into(),
            timeout: Duration::from_secs(1),
        };
        let r = f.request("backy-1", || panic!("no polling")).unwrap();
        assert_eq!(r, Outcome::Fallback("$CONSUL_HTTP_ADDR is 'x'".into()));
    }

    #[test]
    fn nothing_listening_falls_back_at_once() {
        // A port that was just free: connection refused.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let f = Freeze::new(
            "a",
            Some("zq8secret"),
            Some(&format!("127.0.0.1:{port}")),
            Some(5),
        );
        let r = f.request("backy-1", || panic!("no polling")).unwrap();
        let Outcome::Fallback(reason) = r else {
            panic!()
        };
        assert!(reason.contains("cannot reach Consul"), "{reason}");
        assert!(!reason.contains("zq8secret"), "{reason}");
    }
}
