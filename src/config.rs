//! The job's `config` file: which source a job backs up.
//!
//! backy 2.0/2.1 write the source mapping itself (`{type: file, filename: ...}`);
//! backy 2.5 writes `{source: {...}, schedule: ...}`. Both are read; we write the
//! 2.1 layout so that the original can still use the job directory.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_norway::{Mapping, Value};

use crate::error::{ConfigFile, Error, Result};

mod fields;

pub use fields::{ConfigProblem, ConfigProblems, Fields, Problems, Style, describe, join};

/// The source types: the `type` of a source mapping, and `backy init TYPE`.
// The variants' doc comments are help text (`[,TOKEN]` is not a link).
#[allow(rustdoc::broken_intra_doc_links)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SourceKind {
    /// An image file or block device: SOURCE is its path.
    File,
    /// A Ceph RBD image: SOURCE is POOL/IMAGE.
    CephRbd,
    /// Ceph plus a Consul-triggered freeze: SOURCE is POOL/IMAGE,VM[,TOKEN].
    #[value(name = "flyingcircus")]
    FlyingCircus,
}

/// How the value of one source key is read.
#[derive(Debug, Clone, Copy)]
enum Rule {
    /// Non-empty text (a number is read as its digits); required.
    Text,
    /// Text that may be missing or empty.
    OptionalText,
    /// A Consul agent address, see [`check_consul_address`].
    ConsulAddress,
    /// `true` or `false`; missing is `false`.
    Flag,
    /// An optional whole number of at least `min`; `what` completes "must be".
    Count { min: u64, what: &'static str },
}

const FULL_EVERY: Rule = Rule::Count {
    min: 1,
    what: "a whole number of backups, 1 or more (e.g. 7: every 7th backup is a full compare)",
};
const SECONDS: Rule = Rule::Count {
    min: 0,
    what: "a whole number of seconds",
};
const FREEZE_SECONDS: Rule = Rule::Count {
    min: 1,
    what: "a whole number of seconds, 1 or more (how long the hypervisor may take to freeze and snapshot)",
};

/// The keys of each source type besides `type`, in the order `config` is
/// written, with how each is read. [`SourceConfig`]'s serde names are the
/// same keys (a test holds the two together).
const FILE_KEYS: &[(&str, Rule)] = &[("filename", Rule::Text)];
const CEPH_RBD_KEYS: &[(&str, Rule)] = &[("pool", Rule::Text), ("image", Rule::Text)];
const FLYINGCIRCUS_KEYS: &[(&str, Rule)] = &[
    ("pool", Rule::Text),
    ("image", Rule::Text),
    ("vm", Rule::Text),
    ("consul_acl_token", Rule::OptionalText),
    ("consul-address", Rule::ConsulAddress),
    ("freeze-timeout", FREEZE_SECONDS),
];
/// The keys of [`CephOptions`], which both Ceph types take after their own.
const CEPH_OPTION_KEYS: &[(&str, Rule)] = &[
    ("full-always", Rule::Flag),
    ("whole-object", Rule::Flag),
    ("full-every", FULL_EVERY),
    ("verification-timeout", SECONDS),
];

impl SourceKind {
    /// Every source type, in the order messages list them.
    pub const ALL: [SourceKind; 3] = [
        SourceKind::File,
        SourceKind::CephRbd,
        SourceKind::FlyingCircus,
    ];

    /// The `type` name as written in `config`.
    pub fn name(self) -> &'static str {
        match self {
            SourceKind::File => "file",
            SourceKind::CephRbd => "ceph-rbd",
            SourceKind::FlyingCircus => "flyingcircus",
        }
    }

    /// The type called `name` exactly.
    pub fn from_name(name: &str) -> Option<SourceKind> {
        SourceKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// All type names for messages: `file, ceph-rbd, flyingcircus`.
    pub fn names() -> String {
        SourceKind::ALL.map(SourceKind::name).join(", ")
    }

    fn rules(self) -> impl Iterator<Item = &'static (&'static str, Rule)> {
        let (own, options): (&[_], &[_]) = match self {
            SourceKind::File => (FILE_KEYS, &[]),
            SourceKind::CephRbd => (CEPH_RBD_KEYS, CEPH_OPTION_KEYS),
            SourceKind::FlyingCircus => (FLYINGCIRCUS_KEYS, CEPH_OPTION_KEYS),
        };
        own.iter().chain(options)
    }

    /// The keys of this type besides `type`, in the order `config` is written.
    pub fn keys(self) -> impl Iterator<Item = &'static str> {
        self.rules().map(|(key, _)| *key)
    }
}

/// Where a job's data comes from: the source mapping of a job's `config` and
/// of a scheduler job's `source:` (one definition for both, and for `init`).
///
/// Not `deny_unknown_fields`: backy 2.1 ignored unknown keys in both files and
/// its scheduler copied a job's `source:` into `config` as it stood, so such a
/// `config` must keep loading. The scheduler configuration, which we validate
/// strictly, rejects unknown keys itself, naming the known ones
/// ([`SourceKind::keys`]) with a hint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "kebab-case",
    rename_all_fields = "kebab-case"
)]
pub enum SourceConfig {
    /// An image file or block device, compared block by block.
    File {
        /// The file or device.
        #[serde(serialize_with = "path_lossy")]
        filename: PathBuf,
    },
    /// A Ceph RBD image, snapshot per revision.
    CephRbd {
        /// The pool.
        pool: String,
        /// The image.
        image: String,
        /// How it is backed up.
        #[serde(flatten)]
        options: CephOptions,
    },
    /// Ceph plus a Consul request that freezes the guest first.
    #[serde(rename = "flyingcircus")]
    FlyingCircus {
        /// The pool.
        pool: String,
        /// The image.
        image: String,
        /// The VM to freeze.
        vm: String,
        /// Consul ACL token (`$CONSUL_HTTP_TOKEN` when missing). Never logged.
        /// Spelt as backy 2.1 spells it.
        #[serde(
            rename = "consul_acl_token",
            default,
            skip_serializing_if = "Option::is_none"
        )]
        consul_acl_token: Option<String>,
        /// The Consul agent, `HOST:PORT` or `http://HOST:PORT` (default
        /// `$CONSUL_HTTP_ADDR`, else `127.0.0.1:8500`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        consul_address: Option<String>,
        /// Seconds to wait for the hypervisor's snapshot (default 90).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        freeze_timeout: Option<u64>,
        /// How it is backed up, as for `ceph-rbd`.
        #[serde(flatten)]
        options: CephOptions,
    },
}

/// How a Ceph image is backed up: the keys `ceph-rbd` and `flyingcircus` share,
/// written after each type's own.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct CephOptions {
    /// Never use diffs.
    #[serde(default, skip_serializing_if = "is_false")]
    pub full_always: bool,
    /// Ask rbd for whole-object diffs (`--whole-object`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub whole_object: bool,
    /// Make every Nth backup a full compare even when a diff is possible
    /// (diffs from buggy object maps can miss changes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_every: Option<u64>,
    /// Seconds sampled verification may take (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification_timeout: Option<u64>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// File names are written as text even where they are not UTF-8 (as before).
fn path_lossy<S: serde::Serializer>(path: &Path, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&path.to_string_lossy())
}

/// A job's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobConfig {
    /// The source.
    pub source: SourceConfig,
    /// The operator allows full copies where reflinks are impossible.
    pub allow_copy: bool,
    /// How each backup verifies its new image (`verification:`).
    pub verification: VerificationMode,
}

/// How a backup checks the image it made (`verification:` in `config` and in
/// a scheduler job).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum VerificationMode {
    /// Read every block back (the original's promise; the default).
    #[default]
    Full,
    /// Read back what the backup wrote; prove the rest unchanged by its
    /// mapping to the verified parent's extents (see [`crate::image::written`]).
    Written,
}

impl VerificationMode {
    /// The word in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            VerificationMode::Full => "full",
            VerificationMode::Written => "written",
        }
    }

    /// Reads `verification:` of a job whose source is `source` (`None` for a
    /// scheduler job whose source did not parse); a problem completes
    /// "'verification' ...".
    pub fn read(
        value: Option<&Value>,
        source: Option<&SourceConfig>,
    ) -> std::result::Result<VerificationMode, String> {
        let mode = match value {
            None | Some(Value::Null) => return Ok(VerificationMode::Full),
            Some(Value::String(s)) if s == "full" => VerificationMode::Full,
            Some(Value::String(s)) if s == "written" => VerificationMode::Written,
            Some(other) => {
                return Err(format!(
                    "must be full or written, not {}",
                    fields::describe_short(other)
                ));
            }
        };
        match source {
            Some(s) if mode == VerificationMode::Written && s.kind() != SourceKind::File => {
                Err(format!(
                    "written is for file sources only; {} jobs check a sample against the Ceph snapshot instead, so remove the key",
                    s.type_name()
                ))
            }
            _ => Ok(mode),
        }
    }

    fn is_full(&self) -> bool {
        *self == VerificationMode::Full
    }
}

/// The backy 2.1 layout of `config` as we write it: the source mapping plus
/// our `allow-copy`.
#[derive(Serialize)]
struct Written<'a> {
    #[serde(flatten)]
    source: &'a SourceConfig,
    #[serde(rename = "allow-copy", skip_serializing_if = "is_false")]
    allow_copy: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    verification: Option<&'static str>,
}

impl SourceConfig {
    /// The type of this source.
    pub fn kind(&self) -> SourceKind {
        match self {
            SourceConfig::File { .. } => SourceKind::File,
            SourceConfig::CephRbd { .. } => SourceKind::CephRbd,
            SourceConfig::FlyingCircus { .. } => SourceKind::FlyingCircus,
        }
    }

    /// The `type` name as written in `config`.
    pub fn type_name(&self) -> &'static str {
        self.kind().name()
    }

    /// Reads the keys of a source of type `kind` with `fields` (which records
    /// every problem); `None` when there was one. Keys this type does not read
    /// are left alone: backy 2.1 ignored them, and its scheduler copied a job's
    /// `source:` mapping into `config` as it was (the scheduler configuration
    /// rejects them itself, with hints).
    pub fn read(kind: SourceKind, fields: &mut Fields<'_>) -> Option<SourceConfig> {
        let mut clean = Mapping::new();
        clean.insert("type".into(), kind.name().into());
        let errors_before = fields.error_count();
        for &(key, rule) in kind.rules() {
            let value: Option<Value> = match rule {
                Rule::Text => fields.text(key).map(Value::from),
                Rule::OptionalText => fields.optional_text(key).map(Value::from),
                Rule::ConsulAddress => fields.optional_text(key).and_then(|a| {
                    check_consul_address(&a)
                        .map_err(|e| fields.problem(key, e))
                        .ok()
                        .map(Value::from)
                }),
                Rule::Flag => Some(fields.flag(key).into()),
                Rule::Count { min, what } => fields
                    .whole_number(key, min, u64::MAX, what)
                    .map(Value::from),
            };
            if let Some(value) = value {
                clean.insert(key.into(), value);
            }
        }
        if fields.error_count() > errors_before {
            return None;
        }
        // Every value is checked and in its final form: this cannot fail but
        // for a bug, which then is a problem rather than a panic.
        serde_norway::from_value(Value::Mapping(clean))
            .map_err(|e| fields.problem("type", format!("cannot be read: {e}")))
            .ok()
    }

    /// Builds a source from `backy init TYPE SOURCE` arguments.
    pub fn from_init_args(type_name: &str, arg: &str) -> Result<SourceConfig> {
        match SourceKind::from_name(type_name) {
            Some(kind) => SourceConfig::from_init(kind, arg),
            None => Err(Error::SourceArgument(format!(
                "unknown source type '{type_name}'; use {}",
                names_or()
            ))),
        }
    }

    /// Builds a source of type `kind` from the SOURCE argument of `backy init`.
    pub fn from_init(kind: SourceKind, arg: &str) -> Result<SourceConfig> {
        let pool_image = |s: &str| -> Result<(String, String)> {
            match s.split_once('/') {
                Some((p, i)) if !p.is_empty() && !i.is_empty() && !i.contains('/') => {
                    Ok((p.to_string(), i.to_string()))
                }
                _ => Err(Error::SourceArgument(format!(
                    "'{s}' is not POOL/IMAGE; give the Ceph pool and image name, e.g. rbd/vm01.root"
                ))),
            }
        };
        match kind {
            SourceKind::File => Ok(SourceConfig::File {
                filename: PathBuf::from(arg),
            }),
            SourceKind::CephRbd => {
                let (pool, image) = pool_image(arg)?;
                Ok(SourceConfig::CephRbd {
                    pool,
                    image,
                    options: CephOptions::default(),
                })
            }
            SourceKind::FlyingCircus => {
                let parts: Vec<&str> = arg.split(',').collect();
                if !(2..=3).contains(&parts.len()) || parts[1].is_empty() {
                    // Everything after the VM may be the token: never repeat it.
                    let shown = match parts.as_slice() {
                        [source, vm, _, ..] => format!("{source},{vm},***"),
                        _ => arg.to_string(),
                    };
                    return Err(Error::SourceArgument(format!(
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
                    options: CephOptions::default(),
                })
            }
        }
    }
}

/// `file, ceph-rbd or flyingcircus`.
fn names_or() -> String {
    let names = SourceKind::ALL.map(SourceKind::name);
    match names.split_last() {
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
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
    /// The mode its file is written with: 0640, or 0600 when it holds a
    /// secret (the Consul token); backy 2.1 wrote 0440 for flyingcircus jobs.
    pub fn file_mode(&self) -> u32 {
        match &self.source {
            SourceConfig::FlyingCircus {
                consul_acl_token: Some(_),
                ..
            } => 0o600,
            _ => 0o640,
        }
    }

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
                Error::ConfigMissing {
                    which: ConfigFile::Job,
                    file: path.to_path_buf(),
                }
            } else {
                Error::io("cannot read job config", path)(e)
            }
        })?;
        JobConfig::parse(&text).map_err(|problems| Error::Config {
            which: ConfigFile::Job,
            file: path.to_path_buf(),
            problems: problems.0,
        })
    }

    /// Parses the text of a `config` file (either layout); on failure, every
    /// problem found.
    pub fn parse(text: &str) -> std::result::Result<JobConfig, ConfigProblems> {
        let whole = |message: String| ConfigProblems(vec![ConfigProblem::new("", message)]);
        let value: Value = serde_norway::from_str(text).map_err(|e| whole(e.to_string()))?;
        let Value::Mapping(top) = value else {
            return Err(whole("it is not a YAML mapping".into()));
        };
        let (map, nested) = match top.get("source") {
            Some(Value::Mapping(m)) => (m, true),
            Some(_) => return Err(whole("'source' is not a mapping".into())),
            None => (&top, false),
        };
        let mut p = Problems::default();
        let source = JobConfig::read_source(map, "", &mut p);
        let mut allow_copy = Fields::new(map, "", Style::Source, &mut p).flag("allow-copy");
        if nested {
            allow_copy |= Fields::new(&top, "", Style::Source, &mut p).flag("allow-copy");
        }
        let value = if nested && !map.contains_key("verification") {
            top.get("verification")
        } else {
            map.get("verification")
        };
        let verification = match VerificationMode::read(value, source.as_ref()) {
            Ok(mode) => mode,
            Err(message) => {
                p.error("", format!("'verification' {message}"));
                VerificationMode::Full
            }
        };
        match source {
            Some(source) if p.errors.is_empty() => Ok(JobConfig {
                source,
                allow_copy,
                verification,
            }),
            _ => Err(ConfigProblems(p.errors)),
        }
    }

    /// Reads the source mapping `map` found at `path` (its `type` and the keys
    /// of that type), recording problems in `p`.
    pub fn read_source(map: &Mapping, path: &str, p: &mut Problems) -> Option<SourceConfig> {
        let mut fields = Fields::new(map, path, Style::Source, p);
        let type_name = fields.text("type")?;
        match SourceKind::from_name(&type_name) {
            Some(kind) => SourceConfig::read(kind, &mut fields),
            None => {
                fields.problem_here(format!(
                    "unknown source type '{type_name}' (known: {})",
                    SourceKind::names()
                ));
                None
            }
        }
    }

    /// The text written to `config` (backy 2.1 layout).
    pub fn to_yaml(&self) -> String {
        let written = Written {
            source: &self.source,
            allow_copy: self.allow_copy,
            verification: (!self.verification.is_full()).then(|| self.verification.name()),
        };
        // Text, numbers and booleans only: serialising cannot fail.
        serde_norway::to_string(&written).unwrap_or_default()
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
                verification: VerificationMode::Full,
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
            let e = JobConfig::parse(text).unwrap_err().to_string();
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
                options: CephOptions {
                    full_always: true,
                    whole_object: true,
                    full_every: Some(3),
                    verification_timeout: Some(9),
                },
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
            .unwrap_err()
            .to_string();
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
                options: CephOptions {
                    full_every: Some(7),
                    ..
                },
                ..
            }
        ));
        assert_eq!(JobConfig::parse(&c.to_yaml()).unwrap(), c);
    }

    /// The serde definition of [`SourceConfig`] and the key tables that read
    /// it name the same keys, in the same order, under the same type names.
    #[test]
    fn serde_names_and_key_tables_agree() {
        let samples = [
            SourceConfig::File {
                filename: "/a".into(),
            },
            SourceConfig::CephRbd {
                pool: "rbd".into(),
                image: "a".into(),
                options: CephOptions {
                    full_always: true,
                    whole_object: true,
                    full_every: Some(2),
                    verification_timeout: Some(3),
                },
            },
            SourceConfig::FlyingCircus {
                pool: "rbd".into(),
                image: "a".into(),
                vm: "a".into(),
                consul_acl_token: Some("t".into()),
                consul_address: Some("127.0.0.1:8500".into()),
                freeze_timeout: Some(4),
                options: CephOptions {
                    full_always: true,
                    whole_object: true,
                    full_every: Some(5),
                    verification_timeout: Some(6),
                },
            },
        ];
        for (sample, kind) in samples.iter().zip(SourceKind::ALL) {
            assert_eq!(sample.kind(), kind);
            let Value::Mapping(m) = serde_norway::to_value(sample).unwrap() else {
                panic!("{sample:?} is not written as a mapping");
            };
            let keys: Vec<&str> = m.keys().map(|k| k.as_str().unwrap()).collect();
            let expected: Vec<&str> = ["type"].into_iter().chain(kind.keys()).collect();
            assert_eq!(keys, expected, "{}", kind.name());
            assert_eq!(m["type"].as_str(), Some(kind.name()));
            let text = JobConfig {
                source: sample.clone(),
                allow_copy: false,
                verification: VerificationMode::Full,
            }
            .to_yaml();
            assert_eq!(&JobConfig::parse(&text).unwrap().source, sample, "{text}");
            assert_eq!(
                &serde_norway::from_str::<SourceConfig>(&text).unwrap(),
                sample,
                "{text}"
            );
        }
        assert_eq!(SourceKind::names(), "file, ceph-rbd, flyingcircus");
    }

    /// What backy 2.1 writes, and what it wrote when a scheduler's `source:`
    /// held keys it ignored, still loads; our layout is backy 2.1's.
    #[test]
    fn backy21_configs_and_layout() {
        let c = JobConfig::parse("{type: file, filename: /a, cow: false, something: [1]}").unwrap();
        assert_eq!(
            c.source,
            SourceConfig::File {
                filename: "/a".into()
            }
        );
        let c = JobConfig::parse(
            "consul_acl_token: t\nimage: a\npool: rbd\ntype: flyingcircus\nvm: a\n",
        )
        .unwrap();
        assert_eq!(
            c.to_yaml(),
            "type: flyingcircus\npool: rbd\nimage: a\nvm: a\nconsul_acl_token: t\n"
        );
        let c = JobConfig::parse("{type: file, filename: 123}").unwrap();
        assert_eq!(c.to_yaml(), "type: file\nfilename: '123'\n");
        let c = JobConfig {
            allow_copy: true,
            ..c
        };
        assert_eq!(
            c.to_yaml(),
            "type: file\nfilename: '123'\nallow-copy: true\n"
        );
    }

    /// Numbers follow one rule in both configuration files: a quoted whole
    /// number is a number (the scheduler always took a quoted `keep:`; a job's
    /// `full-every:` now takes one too).
    #[test]
    fn quoted_numbers_count() {
        let c = JobConfig::parse(
            "{type: ceph-rbd, pool: rbd, image: a, full-every: '7', verification-timeout: \"60\"}",
        )
        .unwrap();
        assert!(matches!(
            c.source,
            SourceConfig::CephRbd {
                options: CephOptions {
                    full_every: Some(7),
                    verification_timeout: Some(60),
                    ..
                },
                ..
            }
        ));
        assert!(c.to_yaml().contains("full-every: 7\n"), "{}", c.to_yaml());
        let e = JobConfig::parse("{type: ceph-rbd, pool: rbd, image: a, full-every: '7a'}")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("'full-every' must be a whole number of backups"),
            "{e}"
        );
    }

    /// Every problem of a source is reported, each naming its key.
    #[test]
    fn every_problem_of_a_source() {
        let e = JobConfig::parse("{type: flyingcircus, image: [a], full-every: 0, allow-copy: 1}")
            .unwrap_err();
        let shown: Vec<String> = e.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "'pool' is missing",
                "'image' must be a non-empty string, not a list",
                "'vm' is missing",
                "'full-every' must be a whole number of backups, 1 or more (e.g. 7: every 7th backup is a full compare), not 0",
                "'allow-copy' must be true or false, not 1",
            ]
        );
    }

    #[test]
    fn verification_is_read_written_and_refused_for_ceph() {
        let c = JobConfig::parse("type: file\nfilename: /a\nverification: written\n").unwrap();
        assert_eq!(c.verification, VerificationMode::Written);
        assert_eq!(JobConfig::parse(&c.to_yaml()).unwrap(), c);
        let nested =
            JobConfig::parse("source: {type: file, filename: /a}\nverification: written\n")
                .unwrap();
        assert_eq!(nested.verification, VerificationMode::Written);
        let plain = JobConfig::parse("type: file\nfilename: /a\n").unwrap();
        assert_eq!(plain.verification, VerificationMode::Full);
        assert!(!plain.to_yaml().contains("verification"));
        let e = JobConfig::parse("type: file\nfilename: /a\nverification: fast\n").unwrap_err();
        assert!(
            e.to_string()
                .contains("'verification' must be full or written"),
            "{e}"
        );
        let e = JobConfig::parse("type: ceph-rbd\npool: p\nimage: i\nverification: written\n")
            .unwrap_err();
        assert!(
            e.to_string().contains("written is for file sources only"),
            "{e}"
        );
    }
}
