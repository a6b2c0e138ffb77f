//! A stand-in for Consul's HTTP KV API, and a "hypervisor" that watches it.
//!
//! This is a stand-in, not Consul: Consul cannot be installed on these
//! machines (it is not packaged in Debian, and nothing may be downloaded), so
//! the tests speak to this small server instead. It implements exactly the
//! subset the `flyingcircus` source uses, as Consul answers it:
//! `PUT /v1/kv/KEY` (answers `true`), `GET /v1/kv/PREFIX?recurse` (a JSON list
//! of `{Key, Value (base64), ...}`, 404 when nothing matches), `DELETE
//! /v1/kv/KEY` (`true`), and the ACL check: a wrong or missing
//! `X-Consul-Token` gets 403 `Permission denied`. It listens on 127.0.0.1,
//! port 0, and can misbehave on purpose ([`Behaviour`]).
//!
//! [`Hypervisor`] plays fc.qemu's part: it watches the stand-in's
//! `snapshot/*` keys and takes the snapshot they ask for on the test cluster
//! with `rbd snap create`, after a delay, never, or only when backy deletes
//! the request (the "late" hypervisor, deterministically after backy gave up).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use base64::Engine;

use super::find_tool;

/// How the stand-in answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// As Consul's KV API does.
    Kv,
    /// Bytes that are not HTTP, then it closes the connection.
    Garbage,
    /// A web server's page: HTTP 200 with HTML for every request.
    Html,
    /// Accepts the connection, reads the request, never answers.
    Hang,
}

/// One request the stand-in received.
#[derive(Debug, Clone)]
pub struct Request {
    /// `PUT`, `GET`, `DELETE`.
    pub method: String,
    /// Path and query (`/v1/kv/snapshot/?recurse`).
    pub path: String,
    /// The `X-Consul-Token` header.
    pub token: Option<String>,
    /// The body.
    pub body: Vec<u8>,
}

type DeleteHook = Box<dyn Fn(&str, &[u8]) + Send>;

struct State {
    kv: BTreeMap<String, Vec<u8>>,
    behaviour: Behaviour,
    requests: Vec<Request>,
    /// Called with a key and its value before a DELETE of it is answered.
    on_delete: Option<DeleteHook>,
}

struct Shared {
    token: Option<String>,
    state: Mutex<State>,
    changed: Condvar,
    stop: AtomicBool,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The Consul KV stand-in, serving until dropped.
pub struct ConsulStandIn {
    addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl ConsulStandIn {
    /// Starts a stand-in that wants `token` (`None`: no ACLs).
    pub fn start(token: Option<&str>) -> ConsulStandIn {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the Consul stand-in");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            token: token.map(str::to_string),
            state: Mutex::new(State {
                kv: BTreeMap::new(),
                behaviour: Behaviour::Kv,
                requests: Vec::new(),
                on_delete: None,
            }),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        let thread = thread::spawn(move || {
            while !s.stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let s = s.clone();
                        thread::spawn(move || serve(stream, &s));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        ConsulStandIn {
            addr,
            shared,
            thread: Some(thread),
        }
    }

    /// `127.0.0.1:PORT`, for `consul-address`.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// Changes how it answers from the next connection on.
    pub fn set_behaviour(&self, b: Behaviour) {
        self.shared.lock().behaviour = b;
    }

    /// Stores a key directly (an earlier run's request, another VM's).
    pub fn insert(&self, key: &str, value: &str) {
        self.shared
            .lock()
            .kv
            .insert(key.to_string(), value.as_bytes().to_vec());
        self.shared.changed.notify_all();
    }

    /// All keys and values.
    pub fn keys(&self) -> BTreeMap<String, String> {
        self.shared
            .lock()
            .kv
            .iter()
            .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
            .collect()
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.lock().requests.clone()
    }
}

impl Drop for ConsulStandIn {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.changed.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(mut stream: TcpStream, shared: &Shared) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let Some(request) = read_request(&mut stream) else {
        return;
    };
    let behaviour = {
        let mut state = shared.lock();
        state.requests.push(request.clone());
        state.behaviour
    };
    let (status, body) = match behaviour {
        Behaviour::Garbage => {
            let _ = stream.write_all(b"\x00\x01SSH-2.0-definitely not HTTP\r\n\xff\xfe");
            return;
        }
        Behaviour::Hang => {
            // Until the client gives up (it closes) or the stand-in stops.
            let started = Instant::now();
            let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
            let mut b = [0u8; 1];
            while !shared.stop.load(Ordering::Relaxed)
                && started.elapsed() < Duration::from_secs(60)
            {
                if let Ok(0) = stream.read(&mut b) {
                    return;
                }
            }
            return;
        }
        Behaviour::Html => (
            "200 OK",
            "<html><body><h1>It works!</h1></body></html>".to_string(),
        ),
        Behaviour::Kv => kv(shared, &request),
    };
    let content_type = if behaviour == Behaviour::Html {
        "text/html"
    } else {
        "application/json"
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

fn read_request(stream: &mut TcpStream) -> Option<Request> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut words = line.split_whitespace();
    let method = words.next()?.to_string();
    let path = words.next()?.to_string();
    let (mut length, mut token) = (0usize, None);
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).ok()? == 0 {
            return None;
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().ok()?,
                "x-consul-token" => token = Some(value.trim().to_string()),
                _ => {}
            }
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).ok()?;
    Some(Request {
        method,
        path,
        token,
        body,
    })
}

/// Consul's answers for the KV subset.
fn kv(shared: &Shared, r: &Request) -> (&'static str, String) {
    if let Some(want) = &shared.token
        && r.token.as_deref() != Some(want.as_str())
    {
        return ("403 Forbidden", "Permission denied".into());
    }
    let (path, query) = r.path.split_once('?').unwrap_or((&r.path, ""));
    let Some(key) = path.strip_prefix("/v1/kv/") else {
        return ("404 Not Found", String::new());
    };
    let recurse = query
        .split('&')
        .any(|q| q == "recurse" || q.starts_with("recurse="));
    match r.method.as_str() {
        "PUT" => {
            shared.lock().kv.insert(key.to_string(), r.body.clone());
            shared.changed.notify_all();
            ("200 OK", "true".into())
        }
        "DELETE" => {
            let value = shared.lock().kv.get(key).cloned();
            if let Some(value) = value {
                // Outside the lock: the hook may take a snapshot (seconds).
                let hook = shared.lock().on_delete.take();
                if let Some(hook) = &hook {
                    hook(key, &value);
                }
                shared.lock().on_delete = hook;
            }
            shared.lock().kv.remove(key);
            shared.changed.notify_all();
            ("200 OK", "true".into())
        }
        "GET" => {
            let state = shared.lock();
            let entries: Vec<serde_json::Value> = state
                .kv
                .iter()
                .filter(|(k, _)| {
                    if recurse {
                        k.starts_with(key)
                    } else {
                        *k == key
                    }
                })
                .map(|(k, v)| {
                    serde_json::json!({
                        "LockIndex": 0,
                        "Key": k,
                        "Flags": 0,
                        "Value": base64::engine::general_purpose::STANDARD.encode(v),
                        "CreateIndex": 7,
                        "ModifyIndex": 7,
                    })
                })
                .collect();
            if entries.is_empty() {
                ("404 Not Found", String::new())
            } else {
                ("200 OK", serde_json::Value::Array(entries).to_string())
            }
        }
        _ => ("405 Method Not Allowed", String::new()),
    }
}

/// When the [`Hypervisor`] takes a requested snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// This long after the request appeared.
    After(Duration),
    /// Never.
    Never,
    /// When the request is deleted, before the DELETE is answered: just after
    /// backy stopped waiting, before it takes the snapshot itself.
    WhenDeleted,
}

struct HvShared {
    answer: Mutex<Answer>,
    taken: Mutex<Vec<String>>,
    stop: AtomicBool,
}

/// fc.qemu's part: takes the snapshots requested for one VM.
pub struct Hypervisor {
    shared: Arc<HvShared>,
    consul: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Hypervisor {
    /// Watches `consul` for requests for `vm` and snapshots `image_spec`
    /// (`pool/image`) on the cluster of `ceph_conf`. Requests present already
    /// are taken as done.
    pub fn start(
        consul: &ConsulStandIn,
        vm: &str,
        ceph_conf: PathBuf,
        image_spec: &str,
        answer: Answer,
    ) -> Hypervisor {
        let shared = Arc::new(HvShared {
            answer: Mutex::new(answer),
            taken: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let snapshot = {
            let (shared, conf, image) = (shared.clone(), ceph_conf.clone(), image_spec.to_string());
            move |snap: &str| {
                let rbd = find_tool("rbd").unwrap_or_else(|| "rbd".into());
                let ok = std::process::Command::new(rbd)
                    .env("CEPH_CONF", &conf)
                    .env_remove("CEPH_ARGS")
                    .env_remove("CEPH_CLUSTER")
                    .args([
                        "snap",
                        "create",
                        "--no-progress",
                        &format!("{image}@{snap}"),
                    ])
                    .output()
                    .is_ok_and(|o| o.status.success());
                if ok {
                    shared.taken.lock().unwrap().push(snap.to_string());
                }
            }
        };
        let wants = {
            let vm = vm.to_string();
            move |value: &[u8]| -> Option<String> {
                let v: serde_json::Value = serde_json::from_slice(value).ok()?;
                (v["vm"].as_str() == Some(vm.as_str()))
                    .then(|| v["snapshot"].as_str().map(str::to_string))
                    .flatten()
            }
        };
        {
            let (shared, snapshot, wants) = (shared.clone(), snapshot.clone(), wants.clone());
            consul.shared.lock().on_delete = Some(Box::new(move |_key, value| {
                if *shared.answer.lock().unwrap() == Answer::WhenDeleted
                    && let Some(snap) = wants(value)
                {
                    snapshot(&snap);
                }
            }));
        }
        let consul_shared = consul.shared.clone();
        let hv = shared.clone();
        let thread = thread::spawn(move || {
            let mut seen: BTreeSet<String> = consul_shared.lock().kv.keys().cloned().collect();
            let mut due: Vec<(Instant, String)> = Vec::new();
            while !hv.stop.load(Ordering::Relaxed) {
                let fresh: Vec<(String, Vec<u8>)> = {
                    let state = consul_shared.lock();
                    let (state, _) = consul_shared
                        .changed
                        .wait_timeout(state, Duration::from_millis(50))
                        .unwrap_or_else(|e| e.into_inner());
                    state
                        .kv
                        .iter()
                        .filter(|(k, _)| k.starts_with("snapshot/") && !seen.contains(*k))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                };
                for (key, value) in fresh {
                    seen.insert(key);
                    if let (Answer::After(d), Some(snap)) =
                        (*hv.answer.lock().unwrap(), wants(&value))
                    {
                        due.push((Instant::now() + d, snap));
                    }
                }
                let now = Instant::now();
                let (ready, later): (Vec<_>, Vec<_>) = due.drain(..).partition(|(t, _)| *t <= now);
                due = later;
                for (_, snap) in ready {
                    snapshot(&snap);
                }
            }
        });
        Hypervisor {
            shared,
            consul: consul.shared.clone(),
            thread: Some(thread),
        }
    }

    /// Changes when requests from now on are answered.
    pub fn set_answer(&self, answer: Answer) {
        *self.shared.answer.lock().unwrap() = answer;
    }

    /// The snapshots it took.
    pub fn taken(&self) -> Vec<String> {
        self.shared.taken.lock().unwrap().clone()
    }
}

impl Drop for Hypervisor {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.consul.lock().on_delete = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
