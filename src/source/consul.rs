//! The few calls of Consul's HTTP KV API that the `flyingcircus` source makes:
//! put a key, list keys below a prefix (`?recurse`), delete a key.
//!
//! Plain HTTP through `ureq` (no TLS: the agent runs on the host or next to it),
//! no proxy, no redirects, no retries, a connect timeout and a timeout for each
//! whole request, so that no call can stretch past the time the caller gives it.
//! The ACL token travels in the `X-Consul-Token` header, never in a URL, and is
//! removed from every message this module makes (a server may echo it).

use std::time::Duration;

use base64::Engine;

/// `CONSUL_HTTP_ADDR`'s default, as for the `consul` command.
pub const DEFAULT_ADDRESS: &str = "127.0.0.1:8500";
/// Longest time to set up a TCP connection to the agent.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest time one request may take, unless the caller gives less.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest answer read (a listing of the `snapshot/` folder is small).
const MAX_BODY: u64 = 4 << 20;

/// A Consul ACL token: its `Debug` shows no secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// Wraps a token (`None` for an empty one).
    pub fn new(token: &str) -> Option<Token> {
        (!token.trim().is_empty()).then(|| Token(token.trim().to_string()))
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(***)")
    }
}

/// Why a Consul call did not do what was asked. The messages name the agent
/// and never contain the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConsulError {
    /// Nothing answers at the address (refused, unreachable, unknown host).
    #[error("cannot reach Consul at {address}: {reason}")]
    Unreachable {
        /// `HOST:PORT`.
        address: String,
        /// What the connection attempt said.
        reason: String,
    },
    /// The agent accepted the connection but did not answer in time.
    #[error("Consul at {address} did not answer within {} s", timeout.as_secs_f64())]
    Timeout {
        /// `HOST:PORT`.
        address: String,
        /// The time it had.
        timeout: Duration,
    },
    /// 401 or 403: the ACL token is missing, wrong or lacks `key:write` on `snapshot/`.
    #[error(
        "Consul at {address} refused the request (HTTP {status}: {}); check consul_acl_token in the job config or $CONSUL_HTTP_TOKEN",
        if *token_given { "the ACL token is not accepted" } else { "no ACL token was given" }
    )]
    Refused {
        /// `HOST:PORT`.
        address: String,
        /// The HTTP status.
        status: u16,
        /// Whether a token was sent.
        token_given: bool,
    },
    /// Something answered, but not as Consul's KV API does.
    #[error("what answers at {address} is not Consul's KV API: {what}")]
    NotKv {
        /// `HOST:PORT`.
        address: String,
        /// What was wrong (status, body).
        what: String,
    },
}

impl ConsulError {
    /// The connection failed or hung: further calls would only wait again.
    pub fn is_transport(&self) -> bool {
        matches!(
            self,
            ConsulError::Unreachable { .. } | ConsulError::Timeout { .. }
        )
    }
}

/// One key and its value as listed by `GET /v1/kv/PREFIX?recurse`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The key (`snapshot/<uuid>`).
    pub key: String,
    /// The value, decoded from base64 (empty for a key without value).
    pub value: Vec<u8>,
}

/// A client of one Consul agent.
pub struct Consul {
    agent: ureq::Agent,
    address: String,
    token: Option<Token>,
}

impl std::fmt::Debug for Consul {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consul")
            .field("address", &self.address)
            .field("token", &self.token)
            .finish()
    }
}

impl Consul {
    /// A client for the agent at `address` (`HOST:PORT`, checked by
    /// [`crate::config::check_consul_address`]). Each request takes at most
    /// `request_timeout`.
    pub fn new(address: &str, token: Option<Token>, request_timeout: Duration) -> Consul {
        let agent = ureq::Agent::config_builder()
            .timeout_connect(Some(CONNECT_TIMEOUT.min(request_timeout)))
            .timeout_global(Some(request_timeout))
            .http_status_as_error(false)
            .max_redirects(0)
            .proxy(None)
            .user_agent(concat!("backy/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Consul {
            agent,
            address: address.to_string(),
            token,
        }
    }

    /// `HOST:PORT` of the agent.
    pub fn address(&self) -> &str {
        &self.address
    }

    fn url(&self, key: &str) -> String {
        format!("http://{}/v1/kv/{key}", self.address)
    }

    /// Removes the token from a message (a misbehaving server may echo it).
    fn scrub(&self, text: &str) -> String {
        match &self.token {
            Some(Token(t)) => text.replace(t.as_str(), "***"),
            None => text.to_string(),
        }
    }

    fn transport(&self, e: ureq::Error, timeout: Duration) -> ConsulError {
        match e {
            ureq::Error::Timeout(_) => ConsulError::Timeout {
                address: self.address.clone(),
                timeout,
            },
            ureq::Error::Protocol(p) => ConsulError::NotKv {
                address: self.address.clone(),
                what: self.scrub(&format!("it does not speak HTTP ({p})")),
            },
            ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => {
                ConsulError::Timeout {
                    address: self.address.clone(),
                    timeout,
                }
            }
            other => ConsulError::Unreachable {
                address: self.address.clone(),
                reason: self.scrub(&other.to_string()),
            },
        }
    }

    /// Sends one request and returns the status and the body.
    fn request(
        &self,
        method: &str,
        key: &str,
        query: &str,
        body: Option<&[u8]>,
    ) -> Result<(u16, String), ConsulError> {
        let url = format!("{}{query}", self.url(key));
        let timeout = self
            .agent
            .config()
            .timeouts()
            .global
            .unwrap_or(REQUEST_TIMEOUT);
        let token = self.token.as_ref().map(|Token(t)| t.as_str());
        let result = match method {
            "PUT" => {
                let mut req = self.agent.put(&url);
                if let Some(t) = token {
                    req = req.header("X-Consul-Token", t);
                }
                req.send(body.unwrap_or_default())
            }
            "GET" => {
                let mut req = self.agent.get(&url);
                if let Some(t) = token {
                    req = req.header("X-Consul-Token", t);
                }
                req.call()
            }
            _ => {
                let mut req = self.agent.delete(&url);
                if let Some(t) = token {
                    req = req.header("X-Consul-Token", t);
                }
                req.call()
            }
        };
        let mut response = result.map_err(|e| self.transport(e, timeout))?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .with_config()
            .limit(MAX_BODY)
            .read_to_string()
            .map_err(|e| self.transport(e, timeout))?;
        if status == 401 || status == 403 {
            return Err(ConsulError::Refused {
                address: self.address.clone(),
                status,
                token_given: self.token.is_some(),
            });
        }
        Ok((status, text))
    }

    fn not_kv(&self, what: String) -> ConsulError {
        ConsulError::NotKv {
            address: self.address.clone(),
            what: self.scrub(&what),
        }
    }

    /// `PUT /v1/kv/KEY` with `value`; Consul answers `true`.
    pub fn put(&self, key: &str, value: &[u8]) -> Result<(), ConsulError> {
        let (status, text) = self.request("PUT", key, "", Some(value))?;
        self.expect_true("PUT", key, status, &text)
    }

    /// `DELETE /v1/kv/KEY`; Consul answers `true` (also for a missing key).
    pub fn delete(&self, key: &str) -> Result<(), ConsulError> {
        let (status, text) = self.request("DELETE", key, "", None)?;
        self.expect_true("DELETE", key, status, &text)
    }

    fn expect_true(
        &self,
        method: &str,
        key: &str,
        status: u16,
        text: &str,
    ) -> Result<(), ConsulError> {
        match (status, text.trim()) {
            (200, "true") => Ok(()),
            (200, "false") => Err(self.not_kv(format!(
                "{method} {key} answered false (the agent did not apply it)"
            ))),
            (status, text) => Err(self.not_kv(format!(
                "{method} {key} answered HTTP {status} with {}",
                excerpt(text)
            ))),
        }
    }

    /// `GET /v1/kv/PREFIX?recurse`: all keys below `prefix` (none: empty).
    pub fn list(&self, prefix: &str) -> Result<Vec<Entry>, ConsulError> {
        let (status, text) = self.request("GET", prefix, "?recurse", None)?;
        match status {
            404 => return Ok(Vec::new()),
            200 => {}
            other => {
                return Err(self.not_kv(format!(
                    "GET {prefix}?recurse answered HTTP {other} with {}",
                    excerpt(&text)
                )));
            }
        }
        parse_listing(&text).map_err(|what| self.not_kv(format!("GET {prefix}?recurse: {what}")))
    }
}

/// The entries of a `?recurse` listing: a JSON array of objects with `Key` and
/// `Value` (base64 or null).
pub fn parse_listing(text: &str) -> Result<Vec<Entry>, String> {
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|_| format!("the answer is not JSON: {}", excerpt(text)))?;
    let items = value
        .as_array()
        .ok_or_else(|| format!("the answer is not a list of keys: {}", excerpt(text)))?;
    items
        .iter()
        .map(|item| {
            let key = item["Key"]
                .as_str()
                .ok_or_else(|| "an entry without 'Key'".to_string())?;
            let value = match &item["Value"] {
                serde_json::Value::Null => Vec::new(),
                serde_json::Value::String(s) => base64::engine::general_purpose::STANDARD
                    .decode(s)
                    .map_err(|e| format!("the value of {key} is not base64: {e}"))?,
                _ => return Err(format!("the value of {key} is not base64 text")),
            };
            Ok(Entry {
                key: key.to_string(),
                value,
            })
        })
        .collect()
}

/// The start of an answer, quoted and on one line, for a message.
fn excerpt(text: &str) -> String {
    if text.trim().is_empty() {
        return "an empty body".into();
    }
    let mut shown: String = text.trim().chars().take(60).collect();
    if shown.len() < text.trim().len() {
        shown.push_str("...");
    }
    format!("'{}'", shown.escape_debug())
}

/// A random (version 4) UUID in its usual text form.
pub fn uuid4() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid4_has_version_and_variant() {
        let u = uuid4();
        assert_eq!(u.len(), 36);
        assert_eq!(u.as_bytes()[14], b'4');
        assert!(matches!(u.as_bytes()[19], b'8' | b'9' | b'a' | b'b'), "{u}");
        assert_ne!(uuid4(), u);
    }

    #[test]
    fn listing_decodes_values() {
        let e = parse_listing(
            r#"[{"Key":"snapshot/a","Value":"eyJ2bSI6ICJ4In0=","Flags":0},{"Key":"snapshot/b","Value":null}]"#,
        )
        .unwrap();
        assert_eq!(e[0].key, "snapshot/a");
        assert_eq!(e[0].value, br#"{"vm": "x"}"#);
        assert!(e[1].value.is_empty());
        for bad in [
            "<html>",
            "{}",
            r#"[{"Value":"x"}]"#,
            r#"[{"Key":"a","Value":"***"}]"#,
        ] {
            assert!(parse_listing(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn token_is_not_shown() {
        let t = Token::new("s3cr3t").unwrap();
        assert!(!format!("{t:?}").contains("s3cr3t"));
        let c = Consul::new("127.0.0.1:1", Some(t), Duration::from_secs(1));
        assert!(!format!("{c:?}").contains("s3cr3t"));
        assert_eq!(c.scrub("echo s3cr3t!"), "echo ***!");
        assert!(Token::new(" ").is_none());
    }
}
