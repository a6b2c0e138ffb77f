//! The job's `config` file: which source a job backs up.
//!
//! backy 2.0/2.1 write the source mapping itself (`{type: file, filename: ...}`);
//! backy 2.5 writes `{source: {...}, schedule: ...}`. Both are read; we write the
//! 2.1 layout so that the original can still use the job directory.

use std::path::{Path, PathBuf};

use serde_norway::{Mapping, Value};

use crate::error::{Error, Result};

/// Where a job's data comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceConfig {
    /// An image file or block device, compared block by block.
    File {
        /// The file or device.
        filename: PathBuf,
    },
    /// A Ceph RBD image, snapshot per revision.
    CephRbd {
        /// The pool.
        pool: String,
        /// The image.
        image: String,
        /// Never use diffs.
        full_always: bool,
        /// Ask rbd for whole-object diffs (`--whole-object`).
        whole_object: bool,
        /// Make every Nth backup a full compare even when a diff is possible
        /// (LESSONS 6: diffs from buggy object maps can miss changes).
        full_every: Option<u64>,
        /// Seconds sampled verification may take (default 300).
        verification_timeout: Option<u64>,
    },
    /// Ceph plus a Consul request that freezes the guest first.
    FlyingCircus {
        /// The pool.
        pool: String,
        /// The image.
        image: String,
        /// The VM to freeze.
        vm: String,
        /// Consul ACL token (`$CONSUL_HTTP_TOKEN` when missing). Never logged.
        consul_acl_token: Option<String>,
        /// The Consul agent, `HOST:PORT` or `http://HOST:PORT` (default
        /// `$CONSUL_HTTP_ADDR`, else `127.0.0.1:8500`).
        consul_address: Option<String>,
        /// Seconds to wait for the hypervisor's snapshot (default 90).
        freeze_timeout: Option<u64>,
        /// As for `ceph-rbd`.
        full_always: bool,
        /// As for `ceph-rbd`.
        whole_object: bool,
        /// As for `ceph-rbd`.
        full_every: Option<u64>,
        /// As for `ceph-rbd`.
        verification_timeout: Option<u64>,
    },
}

/// A job's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobConfig {
    /// The source.
    pub source: SourceConfig,
    /// The operator allows full copies where reflinks are impossible.
    pub allow_copy: bool,
}

impl SourceConfig {
    /// The `type` name as written in `config`.
    pub fn type_name(&self) -> &'static str {
        match self {
            SourceConfig::File { .. } => "file",
            SourceConfig::CephRbd { .. } => "ceph-rbd",
            SourceConfig::FlyingCircus { .. } => "flyingcircus",
        }
    }

    /// Builds a source from `backy init TYPE SOURCE` arguments.
    pub fn from_init_args(type_name: &str, arg: &str) -> Result<SourceConfig> {
        let pool_image = |s: &str| -> Result<(String, String)> {
            match s.split_once('/') {
                Some((p, i)) if !p.is_empty() && !i.is_empty() && !i.contains('/') => {
                    Ok((p.to_string(), i.to_string()))
                }
                _ => Err(Error::Config(format!(
                    "'{s}' is not POOL/IMAGE; give the Ceph pool and image name, e.g. rbd/vm01.root"
                ))),
            }
        };
        match type_name {
            "file" => Ok(SourceConfig::File {
                filename: PathBuf::from(arg),
            }),
            "ceph-rbd" => {
                let (pool, image) = pool_image(arg)?;
                Ok(SourceConfig::CephRbd {
                    pool,
                    image,
                    full_always: false,
                    whole_object: false,
                    full_every: None,
                    verification_timeout: None,
                })
            }
            "flyingcircus" => {
                let parts: Vec<&str> = arg.split(',').collect();
                if !(2..=3).contains(&parts.len()) || parts[1].is_empty() {
                    // Everything after the VM may be the token: never repeat it.
                    let shown = match parts.as_slice() {
                        [source, vm, _, ..] => format!("{source},{vm},***"),
                        _ => arg.to_string(),
                    };
                    return Err(Error::Config(format!(
                        "'{shown}' is not POOL/IMAGE,VM[,TOKEN] as flyingcircus sources need (a token cannot contain a comma; give it as $CONSUL_HTTP_TOKEN then)"
                    )));
                }
                let (pool, image) = pool_image(parts[0])?;
                Ok(SourceConfig::FlyingCircus {
                    pool,
                    image,
                    vm: parts[1].to_string(),
                    consul_acl_token: parts
                        .get(2)
                        .filter(|t| !t.is_empty())
                        .map(|s| s.to_string()),
                    consul_address: None,
                    freeze_timeout: None,
                    full_always: false,
                    whole_object: false,
                    full_every: None,
                    verification_timeout: None,
                })
            }
            other => Err(Error::Config(format!(
                "unknown source type '{other}'; use file, ceph-rbd or flyingcircus"
            ))),
        }
    }
}

/// The command line as it may be logged: the TOKEN of
/// `init flyingcircus POOL/IMAGE,VM,TOKEN` becomes `***`.
pub fn loggable_argv(argv: &[String]) -> Vec<String> {
    let mut shown = Vec::with_capacity(argv.len());
    for (i, arg) in argv.iter().enumerate() {
        let after_type = i > 0 && argv[i - 1] == "flyingcircus";
        match arg.splitn(3, ',').collect::<Vec<_>>().as_slice() {
            [source, vm, _token] if after_type => shown.push(format!("{source},{vm},***")),
            _ => shown.push(arg.clone()),
        }
    }
    shown
}

impl JobConfig {
    /// Reads a job's `config` file. A config holding a Consul token that
    /// others may read is used, with a warning.
    pub fn load(path: &Path) -> Result<JobConfig> {
        let config = JobConfig::load_quietly(path)?;
        if let SourceConfig::FlyingCircus {
            consul_acl_token: Some(_),
            ..
        } = &config.source
        {
            use std::os::unix::fs::MetadataExt;
            if let Ok(meta) = std::fs::metadata(path)
                && meta.mode() & 0o077 != 0
            {
                tracing::warn!(
                    "{} holds the Consul ACL token and is readable by others (mode {:04o}); make it 0600 (chmod 600) or give the token as $CONSUL_HTTP_TOKEN",
                    path.display(),
                    meta.mode() & 0o7777
                );
            }
        }
        Ok(config)
    }

    fn load_quietly(path: &Path) -> Result<JobConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::Config(format!(
                    "{} does not exist; is this a job directory? Create one with 'backy -b DIR init file PATH'",
                    path.display()
                ))
            } else {
                Error::io("cannot read job config", path)(e)
            }
        })?;
        JobConfig::parse(&text).map_err(|reason| {
            Error::Config(format!(
                "job config {} is malformed: {reason}; fix it or re-create the job with 'backy init'",
                path.display()
            ))
        })
    }

    /// Parses the text of a `config` file (either layout).
    pub fn parse(text: &str) -> std::result::Result<JobConfig, String> {
        let value: Value = serde_norway::from_str(text).map_err(|e| e.to_string())?;
        let Value::Mapping(top) = value else {
            return Err("it is not a YAML mapping".into());
        };
        let map = match top.get("source") {
            Some(Value::Mapping(m)) => m.clone(),
            Some(_) => return Err("'source' is not a mapping".into()),
            None => top.clone(),
        };
        let allow_copy = flag(&map, "allow-copy")? || flag(&top, "allow-copy")?;
        Ok(JobConfig {
            source: parse_source(&map)?,
            allow_copy,
        })
    }

    /// The text written to `config` (backy 2.1 layout).
    pub fn to_yaml(&self) -> String {
        let mut m = Mapping::new();
        m.insert("type".into(), self.source.type_name().into());
        match &self.source {
            SourceConfig::File { filename } => {
                m.insert(
                    "filename".into(),
                    filename.to_string_lossy().into_owned().into(),
                );
            }
            SourceConfig::CephRbd {
                pool,
                image,
                full_always,
                whole_object,
                full_every,
                verification_timeout,
            } => {
                m.insert("pool".into(), pool.clone().into());
                m.insert("image".into(), image.clone().into());
                insert_ceph_keys(
                    &mut m,
                    *full_always,
                    *whole_object,
                    *full_every,
                    *verification_timeout,
                );
            }
            SourceConfig::FlyingCircus {
                pool,
                image,
                vm,
                consul_acl_token,
                consul_address,
                freeze_timeout,
                full_always,
                whole_object,
                full_every,
                verification_timeout,
            } => {
                m.insert("pool".into(), pool.clone().into());
                m.insert("image".into(), image.clone().into());
                m.insert("vm".into(), vm.clone().into());
                if let Some(t) = consul_acl_token {
                    m.insert("consul_acl_token".into(), t.clone().into());
                }
                if let Some(a) = consul_address {
                    m.insert("consul-address".into(), a.clone().into());
                }
                if let Some(t) = freeze_timeout {
                    m.insert("freeze-timeout".into(), (*t).into());
                }
                insert_ceph_keys(
                    &mut m,
                    *full_always,
                    *whole_object,
                    *full_every,
                    *verification_timeout,
                );
            }
        }
        if self.allow_copy {
            m.insert("allow-copy".into(), true.into());
        }
        serde_norway::to_string(&m).unwrap_or_default()
    }
}

/// The keys `ceph-rbd` and `flyingcircus` share, as written to `config`.
fn insert_ceph_keys(
    m: &mut Mapping,
    full_always: bool,
    whole_object: bool,
    full_every: Option<u64>,
    verification_timeout: Option<u64>,
) {
    if full_always {
        m.insert("full-always".into(), true.into());
    }
    if whole_object {
        m.insert("whole-object".into(), true.into());
    }
    if let Some(n) = full_every {
        m.insert("full-every".into(), n.into());
    }
    if let Some(t) = verification_timeout {
        m.insert("verification-timeout".into(), t.into());
    }
}

fn flag(map: &Mapping, key: &str) -> std::result::Result<bool, String> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(format!(
            "'{key}' must be true or false, not {}",
            describe(other)
        )),
    }
}

/// An optional whole number of at least `min`; `what` says what it must be.
fn whole_number(
    map: &Mapping,
    key: &str,
    min: u64,
    what: &str,
) -> std::result::Result<Option<u64>, String> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64().filter(|&n| n >= min) {
            Some(n) => Ok(Some(n)),
            None => Err(format!("'{key}' must be {what}, not {}", describe(v))),
        },
    }
}

fn string(map: &Mapping, key: &str) -> std::result::Result<String, String> {
    match map.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        Some(other) => Err(format!(
            "'{key}' must be a non-empty string, not {}",
            describe(other)
        )),
        None => Err(format!("'{key}' is missing")),
    }
}

/// A YAML value as an operator would name it in a message: `7`, `'weekly'`,
/// `an empty string`, `a list`.
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) if s.is_empty() => "an empty string".into(),
        Value::String(s) => format!("'{s}'"),
        Value::Sequence(_) => "a list".into(),
        Value::Mapping(_) => "a mapping".into(),
        Value::Tagged(t) => format!("a value tagged {}", t.tag),
    }
}

fn full_every(map: &Mapping) -> std::result::Result<Option<u64>, String> {
    whole_number(
        map,
        "full-every",
        1,
        "a whole number of backups, 1 or more (e.g. 7: every 7th backup is a full compare)",
    )
}

fn verification_timeout(map: &Mapping) -> std::result::Result<Option<u64>, String> {
    whole_number(map, "verification-timeout", 0, "a whole number of seconds")
}

/// An optional string key: missing, null and empty are all `None`.
fn optional_string(map: &Mapping, key: &str) -> std::result::Result<Option<String>, String> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(_) => string(map, key).map(Some),
    }
}

/// A Consul agent address as `HOST:PORT` or `http://HOST:PORT`; the message
/// completes "'consul-address' ..." (or the environment variable's name).
pub fn check_consul_address(text: &str) -> std::result::Result<String, String> {
    let bare = text
        .strip_prefix("http://")
        .unwrap_or(text)
        .trim_end_matches('/');
    if text.starts_with("https://") {
        return Err(format!(
            "is '{text}', but this backy speaks plain HTTP to Consul only (no TLS); give the local agent as HOST:PORT"
        ));
    }
    match bare.rsplit_once(':') {
        Some((host, port))
            if !host.is_empty()
                && !host.contains('/')
                && !host.chars().any(char::is_whitespace)
                && port.parse::<u16>().is_ok_and(|p| p > 0) =>
        {
            Ok(bare.to_string())
        }
        _ => Err(format!(
            "is '{text}', not HOST:PORT (e.g. 127.0.0.1:8500 or http://consul.local:8500)"
        )),
    }
}

fn parse_source(map: &Mapping) -> std::result::Result<SourceConfig, String> {
    let type_name = string(map, "type")?;
    match type_name.as_str() {
        "file" => Ok(SourceConfig::File {
            filename: PathBuf::from(string(map, "filename")?),
        }),
        "ceph-rbd" => Ok(SourceConfig::CephRbd {
            pool: string(map, "pool")?,
            image: string(map, "image")?,
            full_always: flag(map, "full-always")?,
            whole_object: flag(map, "whole-object")?,
            full_every: full_every(map)?,
            verification_timeout: verification_timeout(map)?,
        }),
        "flyingcircus" => Ok(SourceConfig::FlyingCircus {
            pool: string(map, "pool")?,
            image: string(map, "image")?,
            vm: string(map, "vm")?,
            consul_acl_token: optional_string(map, "consul_acl_token")?,
            consul_address: match optional_string(map, "consul-address")? {
                Some(a) => {
                    Some(check_consul_address(&a).map_err(|e| format!("'consul-address' {e}"))?)
                }
                None => None,
            },
            freeze_timeout: whole_number(
                map,
                "freeze-timeout",
                1,
                "a whole number of seconds, 1 or more (how long the hypervisor may take to freeze and snapshot)",
            )?,
            full_always: flag(map, "full-always")?,
            whole_object: flag(map, "whole-object")?,
            full_every: full_every(map)?,
            verification_timeout: verification_timeout(map)?,
        }),
        other => Err(format!(
            "unknown source type '{other}' (known: file, ceph-rbd, flyingcircus)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_layouts() {
        let a = JobConfig::parse("{type: file, filename: /a.img}").unwrap();
        let b = JobConfig::parse("source:\n  type: file\n  filename: /a.img\nschedule: default\n")
            .unwrap();
        assert_eq!(a, b);
        assert!(!a.allow_copy);
    }

    #[test]
    fn round_trips() {
        for (t, arg) in [
            ("file", "/x y.img"),
            ("ceph-rbd", "rbd/vm01.root"),
            ("flyingcircus", "rbd/vm01.root,vm01,secret"),
        ] {
            let c = JobConfig {
                source: SourceConfig::from_init_args(t, arg).unwrap(),
                allow_copy: t == "file",
            };
            assert_eq!(JobConfig::parse(&c.to_yaml()).unwrap(), c);
        }
    }

    #[test]
    fn rejects_bad_configs() {
        for text in [
            "",
            "[1]",
            "{type: file}",
            "{type: flyingcircus,}",
            "{type: nfs, filename: a}",
            "{type: file, filename: a, allow-copy: maybe}",
            "{type: ceph-rbd, pool: rbd, image: a, full-every: 0}",
            "{type: ceph-rbd, pool: rbd, image: a, full-every: weekly}",
        ] {
            assert!(JobConfig::parse(text).is_err(), "{text}");
        }
        assert!(SourceConfig::from_init_args("ceph-rbd", "noslash").is_err());
    }

    #[test]
    fn messages_name_bad_values_readably() {
        for (text, want) in [
            ("{type: file, filename: ''}", "not an empty string"),
            ("{type: file, filename: [a]}", "not a list"),
            ("{type: file, filename: a, allow-copy: 7}", "not 7"),
            (
                "{type: file, filename: a, allow-copy: maybe}",
                "not 'maybe'",
            ),
            (
                "{type: ceph-rbd, pool: rbd, image: a, full-every: weekly}",
                "not 'weekly'",
            ),
            (
                "{type: ceph-rbd, pool: rbd, image: a, full-every: 0}",
                "not 0",
            ),
            (
                "{type: ceph-rbd, pool: rbd, image: {x: 1}}",
                "not a mapping",
            ),
        ] {
            let e = JobConfig::parse(text).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
            assert!(!e.contains("String(") && !e.contains("Number("), "{e}");
        }
    }

    #[test]
    fn flyingcircus_keys_round_trip() {
        let c = JobConfig::parse(
            "{type: flyingcircus, pool: rbd, image: a, vm: a, consul-address: 'http://127.0.0.1:8501', freeze-timeout: 5, full-every: 3, whole-object: true, verification-timeout: 9, full-always: true}",
        )
        .unwrap();
        assert_eq!(
            c.source,
            SourceConfig::FlyingCircus {
                pool: "rbd".into(),
                image: "a".into(),
                vm: "a".into(),
                consul_acl_token: None,
                consul_address: Some("127.0.0.1:8501".into()),
                freeze_timeout: Some(5),
                full_always: true,
                whole_object: true,
                full_every: Some(3),
                verification_timeout: Some(9),
            }
        );
        assert_eq!(JobConfig::parse(&c.to_yaml()).unwrap(), c);
        for (text, want) in [
            (
                "freeze-timeout: 0",
                "'freeze-timeout' must be a whole number of seconds, 1 or more",
            ),
            ("consul-address: 'https://c:8501'", "plain HTTP"),
            ("consul-address: nonsense", "not HOST:PORT"),
            ("consul_acl_token: [a]", "not a list"),
        ] {
            let e = JobConfig::parse(&format!(
                "{{type: flyingcircus, pool: rbd, image: a, vm: a, {text}}}"
            ))
            .unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn init_errors_do_not_show_the_token() {
        let e = SourceConfig::from_init_args("flyingcircus", "rbd/a,vm,se,cret")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("'rbd/a,vm,***' is not POOL/IMAGE,VM[,TOKEN]"),
            "{e}"
        );
        assert!(!e.contains("cret"), "{e}");
    }

    #[test]
    fn tokens_are_masked_in_the_command_line() {
        let argv = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        let loggable_argv = |a: &[String]| loggable_argv(a).join(" ");
        assert_eq!(
            loggable_argv(&argv("backy -b /j init flyingcircus rbd/a,vm,s3cret")),
            "backy -b /j init flyingcircus rbd/a,vm,***"
        );
        assert_eq!(
            loggable_argv(&argv("backy init flyingcircus rbd/a,vm,s3,c,ret")),
            "backy init flyingcircus rbd/a,vm,***"
        );
        for same in ["backy init flyingcircus rbd/a,vm", "backy backup a,b,c"] {
            assert_eq!(loggable_argv(&argv(same)), same);
        }
    }

    #[test]
    fn full_every_round_trips() {
        let c = JobConfig::parse("{type: ceph-rbd, pool: rbd, image: a, full-every: 7}").unwrap();
        assert!(matches!(
            c.source,
            SourceConfig::CephRbd {
                full_every: Some(7),
                ..
            }
        ));
        assert_eq!(JobConfig::parse(&c.to_yaml()).unwrap(), c);
    }
}
