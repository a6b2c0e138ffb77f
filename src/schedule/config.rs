//! The scheduler's configuration file (`/etc/backy.conf`).
//!
//! ```yaml
//! global:                         # `config:` (as the man page calls it) works too
//!   base-dir: /srv/backy          # default /srv/backy
//!   worker-limit: 3               # parallel backups, default 1
//!   status-file: /srv/backy/status   # default {base-dir}/status
//!   status-interval: 30           # seconds (or 30s, 1m, ...), default 30
//!   telnet-addrs: "::1, 127.0.0.1"   # default; "" disables the console
//!   telnet-port: 6023             # default
//!   run-timeout: 1d               # stop a backup running longer; default: the
//!                                 # job's shortest interval (also per job)
//!   console-timeout: 10m          # close idle console connections, default 10m
//!   crash-consistent-warning: 3   # flyingcircus jobs: WARNING after 3 unfrozen revisions in a row (0: off)
//! schedules:
//!   default:
//!     daily:   {interval: 1d,  keep: 9}
//!     weekly:  {interval: 7d,  keep: 5}
//!     monthly: {interval: 30d, keep: 4}
//! jobs:
//!   vm01: {schedule: default, source: {type: file, filename: /var/lib/vm/vm01.img}}
//! ```
//!
//! Parsing reports every problem at once, one line each, and each line starts
//! with the key path (`jobs.vm01.source.type: ...`), so an operator fixes a
//! config in one round. The original ignored unknown keys; we reject them,
//! because a misspelt `keep` silently kept the default. Keys that later backy
//! versions know are accepted with a warning, so a site can move back and forth.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{ConfigProblems, JobConfig, SourceConfig, VerificationMode};
use crate::error::{ConfigFile, Error, Result};

mod validate;

/// `base-dir` when the configuration does not name one.
pub const DEFAULT_BASE_DIR: &str = "/srv/backy";
/// `worker-limit` when the configuration does not name one.
pub const DEFAULT_WORKER_LIMIT: usize = 1;
/// `status-interval` in seconds when the configuration does not name one.
pub const DEFAULT_STATUS_INTERVAL: u64 = 30;
/// `telnet-addrs` when the configuration does not name them.
pub const DEFAULT_TELNET_ADDRS: &str = "::1, 127.0.0.1";
/// `crash-consistent-warning` when the configuration does not name one.
pub const DEFAULT_CRASH_CONSISTENT_WARNING: u64 = 3;
/// `telnet-port` when the configuration does not name one.
pub const DEFAULT_TELNET_PORT: u16 = 6023;
/// `console-timeout` in seconds when the configuration does not name one.
pub const DEFAULT_CONSOLE_TIMEOUT: u64 = 10 * MINUTE;
/// The longest interval a tag may have (100 years): keeps `keep * interval`
/// and every time computed from it far inside the range of a date.
pub const MAX_INTERVAL: u64 = 36_500 * DAY;

const MINUTE: u64 = 60;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;
const WEEK: u64 = 7 * DAY;

/// The whole scheduler configuration, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The directory holding one directory per job.
    pub base_dir: PathBuf,
    /// How many backups run at once (at least 1).
    pub worker_limit: usize,
    /// Where the scheduler writes its status for `backy check`.
    pub status_file: PathBuf,
    /// How often the status file is rewritten.
    pub status_interval: Duration,
    /// Addresses the telnet console listens on (empty: no console).
    pub telnet_addrs: Vec<IpAddr>,
    /// The telnet console's port (0: any free port, for tests).
    pub telnet_port: u16,
    /// `run-timeout` of the global section: how long a backup may run before
    /// it is stopped, for jobs that set none (`None`: the job's shortest interval).
    pub run_timeout: Option<Duration>,
    /// How long a console connection may stay idle before it is closed.
    pub console_timeout: Duration,
    /// Schedules by name.
    pub schedules: BTreeMap<String, Schedule>,
    /// Jobs by name.
    pub jobs: BTreeMap<String, JobDef>,
    /// Things that are accepted but worth telling the operator, one per entry,
    /// each starting with its key path.
    pub warnings: Vec<String>,
    /// After this many crash-consistent revisions in a row, a flyingcircus job
    /// is a WARNING for `backy check` (0: never).
    pub crash_consistent_warning: u64,
}

/// A schedule: retention tags with how often each is made and how many stay.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Schedule {
    /// The rule of each tag, by tag name.
    pub tags: BTreeMap<String, TagRule>,
}

#[cfg(test)]
impl Schedule {
    /// A schedule of `(tag, interval in seconds, keep)` rules, for tests.
    pub fn from_rules(rules: &[(&str, u64, u32)]) -> Schedule {
        Schedule {
            tags: rules
                .iter()
                .map(|&(t, interval, keep)| (t.to_string(), TagRule { interval, keep }))
                .collect(),
        }
    }
}

/// How often a tag is made and how many revisions carrying it are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TagRule {
    /// Seconds between two revisions of this tag (at least 1).
    pub interval: u64,
    /// How many revisions of this tag are kept at least (at least 1).
    pub keep: u32,
}

/// A job: where its data comes from and which schedule it follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobDef {
    /// The job's name, also its directory name under the base directory.
    pub name: String,
    /// The name of its schedule (always one of [`Config::schedules`]).
    pub schedule: String,
    /// The source, as written to the job's `config`.
    pub source: SourceConfig,
    /// The operator allows full copies where reflinks are impossible.
    pub allow_copy: bool,
    /// The job's own `run-timeout`, if it sets one.
    pub run_timeout: Option<Duration>,
    /// How its backups verify the new image (`verification:`).
    pub verification: VerificationMode,
    /// `scrub: 7d 10%`: how often a share of the newest revision is re-read.
    pub scrub: Option<Scrub>,
}

/// A job's `scrub:` setting: at most once per `interval`, verify a random
/// `percent` of the newest revision (as `backy verify --sample`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scrub {
    /// Seconds between two scrubs of the job (at least 1).
    pub interval: u64,
    /// Share of blocks read, more than 0 and at most 100.
    pub percent: f64,
}

// `percent` is finite (checked by `parse_scrub`), so equality is total.
impl Eq for Scrub {}

/// Parses `7d 10%` (an interval as [`parse_interval`] reads it, then a share in
/// percent, more than 0 and at most 100; the `%` may stand apart).
pub fn parse_scrub(text: &str) -> std::result::Result<Scrub, String> {
    let usage = format!(
        "'{text}' is not a scrub setting; give an interval and a share of the blocks, e.g. '7d 10%' (verify 10 % of the newest revision every 7 days)"
    );
    let mut words = text.split_whitespace();
    let (Some(interval), Some(share)) = (words.next(), words.next()) else {
        return Err(usage);
    };
    let share = match (share.strip_suffix('%'), words.next()) {
        (Some(digits), None) => digits,
        (None, Some("%")) => share,
        _ => return Err(usage),
    };
    if words.next().is_some() {
        return Err(usage);
    }
    let interval = parse_interval(interval).map_err(|e| format!("{e} (in '{text}')"))?;
    let percent: f64 = share.trim().parse().map_err(|_| usage.clone())?;
    if !(percent.is_finite() && percent > 0.0 && percent <= 100.0) {
        return Err(format!(
            "the share in '{text}' must be more than 0 % and at most 100 %"
        ));
    }
    Ok(Scrub { interval, percent })
}

impl JobDef {
    /// The job's `config` file contents as the scheduler writes them before a run.
    pub fn job_config(&self) -> JobConfig {
        JobConfig {
            source: self.source.clone(),
            allow_copy: self.allow_copy,
            verification: self.verification,
        }
    }
}

impl Schedule {
    /// The longest interval in seconds (the range of a job's spread); 0 when
    /// the schedule has no tags, which a parsed configuration never has.
    pub fn max_interval(&self) -> u64 {
        self.tags.values().map(|r| r.interval).max().unwrap_or(0)
    }

    /// The shortest interval in seconds (the base of the SLA); 0 when the
    /// schedule has no tags, which a parsed configuration never has.
    pub fn min_interval(&self) -> u64 {
        self.tags.values().map(|r| r.interval).min().unwrap_or(0)
    }

    /// The tags with their rules, shortest interval first (ties by name).
    pub fn tags_by_interval(&self) -> Vec<(&str, &TagRule)> {
        let mut tags: Vec<(&str, &TagRule)> =
            self.tags.iter().map(|(t, r)| (t.as_str(), r)).collect();
        tags.sort_by_key(|(tag, rule)| (rule.interval, *tag));
        tags
    }

    /// Orders any tags for display: this schedule's tags by interval, shortest
    /// first, then the others (manual tags) by name.
    pub fn sorted_tags<'a>(&self, tags: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
        let mut tags: Vec<&'a str> = tags.into_iter().collect();
        tags.sort_by_key(|tag| match self.tags.get(*tag) {
            Some(rule) => (0, rule.interval, *tag),
            None => (1, 0, *tag),
        });
        tags.dedup();
        tags
    }

    /// Tags comma-joined in [`Schedule::sorted_tags`] order (`daily,weekly`), as
    /// the status file and `backy backup` want them.
    pub fn format_tags<'a>(&self, tags: impl IntoIterator<Item = &'a String>) -> String {
        self.sorted_tags(tags.into_iter().map(String::as_str))
            .join(",")
    }
}

/// Parses an interval: a whole number with an optional suffix `s`, `m`, `h`,
/// `d` or `w`; a bare number means seconds. The result is in seconds, between 1
/// and [`MAX_INTERVAL`].
pub fn parse_interval(text: &str) -> std::result::Result<u64, String> {
    let not_an_interval = || {
        format!("'{text}' is not an interval; use a whole number with s, m, h, d or w (e.g. 1d)")
    };
    let trimmed = text.trim();
    let (digits, unit) = match trimmed.char_indices().last() {
        Some((i, c)) if c.is_alphabetic() => (trimmed[..i].trim_end(), Some(c)),
        _ => (trimmed, None),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(not_an_interval());
    }
    let factor = match unit {
        None | Some('s') => 1,
        Some('m') => MINUTE,
        Some('h') => HOUR,
        Some('d') => DAY,
        Some('w') => WEEK,
        Some(other) => {
            return Err(format!(
                "'{text}' has an unknown unit '{other}'; use a whole number with s, m, h, d or w (e.g. 1d)"
            ));
        }
    };
    let seconds = digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
        .filter(|s| *s <= MAX_INTERVAL);
    match seconds {
        Some(0) => Err(format!("'{text}' is zero; an interval must be at least 1s")),
        Some(s) => Ok(s),
        None => Err(format!(
            "'{text}' is too long; an interval may be at most 36500d"
        )),
    }
}

impl Config {
    /// Reads and validates the configuration file.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::ConfigMissing {
                    which: ConfigFile::Scheduler,
                    file: path.to_path_buf(),
                }
            } else {
                Error::io("cannot read scheduler configuration", path)(e)
            }
        })?;
        Config::parse(&text).map_err(|problems| Error::Config {
            which: ConfigFile::Scheduler,
            file: path.to_path_buf(),
            problems: problems.0,
        })
    }

    /// Parses and validates the text of a configuration file. On failure, the
    /// error holds every problem found, each with its key path (displayed one
    /// per line).
    pub fn parse(text: &str) -> std::result::Result<Config, ConfigProblems> {
        validate::parse(text)
    }

    /// The schedule of a job (`None` only for a job not in this configuration).
    pub fn schedule_of(&self, job: &str) -> Option<&Schedule> {
        self.jobs
            .get(job)
            .and_then(|j| self.schedules.get(&j.schedule))
    }

    /// How long a run of `job` may take before the scheduler stops it: the
    /// job's `run-timeout`, else the global one, else the shortest interval of
    /// its schedule (a run that takes longer has missed its next slot anyway).
    pub fn run_timeout(&self, job: &str) -> Option<Duration> {
        let def = self.jobs.get(job)?;
        def.run_timeout.or(self.run_timeout).or_else(|| {
            self.schedules
                .get(&def.schedule)
                .map(|s| Duration::from_secs(s.min_interval().max(1)))
        })
    }

    /// The directory of a job.
    pub fn job_dir(&self, job: &str) -> PathBuf {
        self.base_dir.join(job)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CephOptions;
    use std::collections::BTreeSet;

    const SPEC_EXAMPLE: &str = "\
global:
  base-dir: /srv/backy
  worker-limit: 3
  status-file: /srv/backy/status
  status-interval: 30
  telnet-addrs: \"::1, 127.0.0.1\"
  telnet-port: 6023
schedules:
  default:
    daily:   {interval: 1d,  keep: 9}
    weekly:  {interval: 7d,  keep: 5}
    monthly: {interval: 30d, keep: 4}
jobs:
  vm01: {schedule: default, source: {type: file, filename: /var/lib/vm/vm01.img}}
";

    fn errors(text: &str) -> Vec<String> {
        match Config::parse(text) {
            Ok(c) => panic!("accepted: {c:?}"),
            Err(e) => e.iter().map(ToString::to_string).collect(),
        }
    }

    fn assert_error(text: &str, expected: &str) {
        let errors = errors(text);
        assert!(
            errors.iter().any(|e| e.contains(expected)),
            "no error containing {expected:?} in {errors:#?}"
        );
    }

    #[test]
    fn spec_example() {
        let c = Config::parse(SPEC_EXAMPLE).unwrap();
        assert_eq!(c.base_dir, PathBuf::from("/srv/backy"));
        assert_eq!(c.worker_limit, 3);
        assert_eq!(c.status_file, PathBuf::from("/srv/backy/status"));
        assert_eq!(c.status_interval, Duration::from_secs(30));
        assert_eq!(
            c.telnet_addrs,
            vec![
                "::1".parse::<IpAddr>().unwrap(),
                "127.0.0.1".parse().unwrap()
            ]
        );
        assert_eq!(c.telnet_port, 6023);
        let s = &c.schedules["default"];
        assert_eq!(
            s.tags["daily"],
            TagRule {
                interval: 86_400,
                keep: 9
            }
        );
        assert_eq!(
            s.tags["weekly"],
            TagRule {
                interval: 604_800,
                keep: 5
            }
        );
        assert_eq!(
            s.tags["monthly"],
            TagRule {
                interval: 2_592_000,
                keep: 4
            }
        );
        assert_eq!(s.max_interval(), 2_592_000);
        assert_eq!(s.min_interval(), 86_400);
        let order: Vec<&str> = s.tags_by_interval().iter().map(|(t, _)| *t).collect();
        assert_eq!(order, ["daily", "weekly", "monthly"]);
        let job = &c.jobs["vm01"];
        assert_eq!(job.name, "vm01");
        assert_eq!(job.schedule, "default");
        assert_eq!(
            job.source,
            SourceConfig::File {
                filename: "/var/lib/vm/vm01.img".into()
            }
        );
        assert!(!job.allow_copy);
        assert!(c.warnings.is_empty());
        assert_eq!(c.schedule_of("vm01"), Some(s));
        assert_eq!(c.job_dir("vm01"), PathBuf::from("/srv/backy/vm01"));
    }

    #[test]
    fn defaults() {
        let c = Config::parse(
            "schedules: {s: {hourly: {interval: 1h, keep: 24}}}\njobs: {a: {schedule: s, source: {type: file, filename: /a}}}",
        )
        .unwrap();
        assert_eq!(c.base_dir, PathBuf::from("/srv/backy"));
        assert_eq!(c.worker_limit, 1);
        assert_eq!(c.status_file, PathBuf::from("/srv/backy/status"));
        assert_eq!(c.status_interval, Duration::from_secs(30));
        assert_eq!(c.telnet_addrs.len(), 2);
        assert_eq!(c.telnet_port, 6023);
        // status-file follows base-dir, and `config:` is the global section too.
        let c = Config::parse("config: {base-dir: /b}\njobs:\nschedules:").unwrap();
        assert_eq!(c.status_file, PathBuf::from("/b/status"));
        assert!(c.jobs.is_empty());
    }

    #[test]
    fn intervals() {
        for (text, seconds) in [
            ("1", 1),
            ("90s", 90),
            ("5m", 300),
            ("12h", 43_200),
            ("1d", 86_400),
            ("2w", 1_209_600),
            (" 30d ", 2_592_000),
            ("36500d", MAX_INTERVAL),
        ] {
            assert_eq!(parse_interval(text), Ok(seconds), "{text}");
        }
        for text in [
            "",
            "d",
            "0",
            "0d",
            "-1d",
            "1.5d",
            "1y",
            "1D",
            "1 d x",
            "36501d",
            "99999999999999999999w",
        ] {
            assert!(parse_interval(text).is_err(), "{text}");
        }
        // A bare integer, quoted or not, means seconds (the original crashed on
        // an unquoted one).
        for value in ["3600", "'3600'", "1h"] {
            let text =
                format!("schedules: {{s: {{t: {{interval: {value}, keep: 1}}}}}}\njobs: {{}}");
            let c = Config::parse(&text).unwrap();
            assert_eq!(c.schedules["s"].tags["t"].interval, 3600, "{value}");
        }
    }

    /// The man page's own example: `type: flyingcircus,`, `vm: test03,` and a
    /// job on the undefined schedule `hourly`.
    #[test]
    fn sources_and_merge_keys() {
        let text = "\
schedules: {s: {daily: {interval: 1d, keep: 9}}}
defaults: &defaults {schedule: s}
jobs:
  a:
    <<: *defaults
    source: {type: ceph-rbd, pool: rbd, image: a.root, full-always: true, full-every: 7, verification-timeout: 60}
  b:
    <<: *defaults
    allow-copy: true
    source: {type: file, filename: /b}
  c: {schedule: s, source: {type: file, filename: /c, allow-copy: true}}
";
        // The anchor's own top-level key is not a section we know.
        assert_error(text, "defaults: unknown key");
        let text = text
            .replace("defaults: &defaults {schedule: s}\n", "")
            .replace(
                "jobs:\n",
                "jobs:\n  a0: &defaults {schedule: s, source: {type: file, filename: /a0}}\n",
            );
        let c = Config::parse(&text).unwrap();
        assert_eq!(
            c.jobs["a"].source,
            SourceConfig::CephRbd {
                pool: "rbd".into(),
                image: "a.root".into(),
                options: CephOptions {
                    full_always: true,
                    whole_object: false,
                    full_every: Some(7),
                    verification_timeout: Some(60),
                },
            }
        );
        assert_eq!(c.jobs["a"].schedule, "s");
        assert!(c.jobs["b"].allow_copy);
        assert!(c.jobs["c"].allow_copy);
        assert!(c.jobs["c"].job_config().allow_copy);
        assert_eq!(
            JobConfig::parse(&c.jobs["c"].job_config().to_yaml()).unwrap(),
            c.jobs["c"].job_config()
        );
    }

    #[test]
    fn run_and_console_timeouts() {
        let jobs = "jobs:\n  a: {schedule: s, source: {type: file, filename: /a}}\n  b: {schedule: s, run-timeout: 90s, source: {type: file, filename: /b}}\n";
        let schedules =
            "schedules: {s: {hourly: {interval: 1h, keep: 24}, daily: {interval: 1d, keep: 9}}}\n";
        let c = Config::parse(&format!("{schedules}{jobs}")).unwrap();
        // Default: the shortest interval; a job's own key wins.
        assert_eq!(c.run_timeout("a"), Some(Duration::from_secs(3600)));
        assert_eq!(c.run_timeout("b"), Some(Duration::from_secs(90)));
        assert_eq!(c.run_timeout("nope"), None);
        assert_eq!(c.console_timeout, Duration::from_secs(600));
        let c = Config::parse(&format!(
            "global: {{run-timeout: 2h, console-timeout: 5}}\n{schedules}{jobs}"
        ))
        .unwrap();
        assert_eq!(c.run_timeout("a"), Some(Duration::from_secs(7200)));
        assert_eq!(c.run_timeout("b"), Some(Duration::from_secs(90)));
        assert_eq!(c.console_timeout, Duration::from_secs(5));
        let bad = format!(
            "global: {{run-timeout: soon, console-timeout: 0}}\n{schedules}{}",
            jobs.replace("90s", "-1")
        );
        let errors = errors(&bad);
        for key in [
            "global.run-timeout: 'soon' is not an interval",
            "global.console-timeout: '0' is zero",
            "jobs.b.run-timeout: ",
        ] {
            assert!(
                errors.iter().any(|e| e.starts_with(key)),
                "{key}: {errors:#?}"
            );
        }
    }

    #[test]
    fn tag_order_for_display() {
        let c = Config::parse(SPEC_EXAMPLE).unwrap();
        let s = &c.schedules["default"];
        assert_eq!(
            s.sorted_tags(["monthly", "manual:x", "daily", "adhoc", "weekly"]),
            ["daily", "weekly", "monthly", "adhoc", "manual:x"]
        );
        let tags: BTreeSet<String> = ["weekly", "daily"].map(String::from).into();
        assert_eq!(s.format_tags(&tags), "daily,weekly");
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("backy.conf");
        let e = Config::load(&missing).unwrap_err().to_string();
        assert!(e.contains("does not exist"), "{e}");
        std::fs::write(
            &missing,
            "jobs: {a: {schedule: x, source: {type: file, filename: /a}}}",
        )
        .unwrap();
        let e = Config::load(&missing).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!(
                "scheduler configuration {} has 1 problem;",
                missing.display()
            )),
            "{e}"
        );
        assert!(
            e.ends_with("\njobs.a.schedule: unknown schedule 'x' (none are defined)"),
            "{e}"
        );
        std::fs::write(&missing, SPEC_EXAMPLE).unwrap();
        assert_eq!(Config::load(&missing).unwrap().jobs.len(), 1);
    }

    /// The problems reach the caller as a list, each with its key path.
    #[test]
    fn load_problems_are_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("backy.conf");
        std::fs::write(
            &path,
            "global: {worker-limit: 0}\nschedules: {s: {d: {interval: 1d, keep: '2'}}}\njobs: {a: {schedule: s, source: {type: ceph-rbd, pool: rbd, full-every: x}}}",
        )
        .unwrap();
        let Err(Error::Config {
            which: ConfigFile::Scheduler,
            file,
            problems,
        }) = Config::load(&path)
        else {
            panic!("not a config error");
        };
        assert_eq!(file, path);
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            ["global.worker-limit", "jobs.a.source", "jobs.a.source"]
        );
        assert_eq!(problems[1].message, "'image' is missing");
        // A quoted number is a number in a source too, as it is for `keep`.
        std::fs::write(
            &path,
            "schedules: {s: {d: {interval: 1d, keep: '2'}}}\njobs: {a: {schedule: s, source: {type: ceph-rbd, pool: rbd, image: a, full-every: '7'}}}",
        )
        .unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.schedules["s"].tags["d"].keep, 2);
        assert!(matches!(
            c.jobs["a"].source,
            SourceConfig::CephRbd {
                options: CephOptions {
                    full_every: Some(7),
                    ..
                },
                ..
            }
        ));
    }

    /// A job's `config` with problems names the file, once, with every problem.
    #[test]
    fn job_config_problems_are_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        let e = JobConfig::load(&path).unwrap_err();
        assert!(matches!(
            e,
            Error::ConfigMissing {
                which: ConfigFile::Job,
                ..
            }
        ));
        std::fs::write(&path, "{type: file}").unwrap();
        let e = JobConfig::load(&path).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "job config {} is malformed: 'filename' is missing; fix it or re-create the job with 'backy init'",
                path.display()
            )
        );
        let Error::Config { problems, .. } = e else {
            panic!("{e:?}");
        };
        assert_eq!(problems.len(), 1);
    }

    #[test]
    fn scrub_settings_parse_and_bad_ones_say_what_to_write() {
        assert_eq!(
            parse_scrub("7d 10%"),
            Ok(Scrub {
                interval: 7 * DAY,
                percent: 10.0
            })
        );
        assert_eq!(parse_scrub(" 12h  2.5 % ").unwrap().percent, 2.5);
        assert_eq!(parse_scrub("1w 100%").unwrap().interval, WEEK);
        for bad in ["7d", "10%", "7d 10", "7d ten%", "7d 10% daily", ""] {
            let e = parse_scrub(bad).unwrap_err();
            assert!(e.contains("e.g. '7d 10%'"), "{bad:?}: {e}");
        }
        assert!(parse_scrub("7x 10%").unwrap_err().contains("unknown unit"));
        for bad in ["7d 0%", "7d 101%", "7d -3%", "7d NaN%"] {
            let e = parse_scrub(bad).unwrap_err();
            assert!(
                e.contains("more than 0 % and at most 100 %") || e.contains("e.g."),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn jobs_take_verification_and_scrub() {
        let text = "schedules: {s: {daily: {interval: 1d, keep: 3}}}\njobs:\n  a: {schedule: s, verification: written, scrub: 7d 10%, source: {type: file, filename: /a}}\n  b: {schedule: s, source: {type: file, filename: /b}}\n";
        let c = Config::parse(text).unwrap();
        assert_eq!(c.jobs["a"].verification, VerificationMode::Written);
        assert_eq!(
            c.jobs["a"].job_config().verification,
            VerificationMode::Written
        );
        assert!(
            c.jobs["a"]
                .job_config()
                .to_yaml()
                .contains("verification: written")
        );
        assert_eq!(c.jobs["a"].scrub.unwrap().percent, 10.0);
        assert_eq!(c.jobs["b"].verification, VerificationMode::Full);
        assert_eq!(c.jobs["b"].scrub, None);
        let bad = "schedules: {s: {daily: {interval: 1d, keep: 3}}}\njobs:\n  a: {schedule: s, verification: some, scrub: 7d, source: {type: file, filename: /a}}\n  c: {schedule: s, verification: written, source: {type: ceph-rbd, pool: p, image: i}}\n";
        let e = Config::parse(bad).unwrap_err().to_string();
        assert!(
            e.contains("jobs.a.verification: must be full or written, not 'some'"),
            "{e}"
        );
        assert!(
            e.contains("jobs.a.scrub: '7d' is not a scrub setting"),
            "{e}"
        );
        assert!(
            e.contains("jobs.c.verification: written is for file sources only"),
            "{e}"
        );
    }
}
