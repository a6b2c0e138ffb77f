//! Walking the YAML document of the scheduler configuration: every problem is
//! collected, with its key path, and reported together.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_norway::{Mapping, Value};

use super::{
    Config, DEFAULT_BASE_DIR, DEFAULT_CONSOLE_TIMEOUT, DEFAULT_CRASH_CONSISTENT_WARNING,
    DEFAULT_STATUS_INTERVAL, DEFAULT_TELNET_ADDRS, DEFAULT_TELNET_PORT, DEFAULT_WORKER_LIMIT,
    JobDef, Schedule, TagRule, parse_interval, parse_scrub,
};
use crate::config::{
    ConfigProblem, ConfigProblems, Fields, JobConfig, Problems, SourceConfig, SourceKind, Style,
    VerificationMode, describe, join,
};

/// Keys that backy 2.2 to 2.5 know; accepted anywhere with a warning.
const LATER_VERSION_KEYS: [&str; 3] = ["backend", "backup-completed-callback", "cow"];
/// Top-level sections of backy 2.5 (its HTTP API and peers); accepted with a warning.
const LATER_VERSION_SECTIONS: [&str; 2] = ["api", "peers"];
const GLOBAL_KEYS: [&str; 9] = [
    "base-dir",
    "worker-limit",
    "status-file",
    "status-interval",
    "telnet-addrs",
    "telnet-port",
    "run-timeout",
    "console-timeout",
    "crash-consistent-warning",
];
const TOP_KEYS: [&str; 4] = ["global", "config", "schedules", "jobs"];
const TAG_KEYS: [&str; 2] = ["interval", "keep"];
const JOB_KEYS: [&str; 6] = [
    "schedule",
    "source",
    "allow-copy",
    "run-timeout",
    "verification",
    "scrub",
];

/// Parses the text of a configuration file: see [`Config::parse`].
pub(super) fn parse(text: &str) -> std::result::Result<Config, ConfigProblems> {
    let whole = |message: String| ConfigProblems(vec![ConfigProblem::new("", message)]);
    let mut value: Value =
        serde_norway::from_str(text).map_err(|e| whole(format!("not valid YAML: {e}")))?;
    value
        .apply_merge()
        .map_err(|e| whole(format!("cannot apply a '<<' merge key: {e}")))?;
    let top = match value {
        Value::Mapping(m) => m,
        Value::Null => {
            return Err(whole(
                "the configuration is empty; it needs 'schedules' and 'jobs' sections".into(),
            ));
        }
        other => {
            return Err(whole(format!(
                "the configuration is {}, not a mapping of 'global', 'schedules' and 'jobs'",
                describe(&other)
            )));
        }
    };
    let mut p = Problems::default();
    p.check_keys(&top, "", &TOP_KEYS);
    let global = parse_global(&top, &mut p);
    let (schedules, schedule_names) = parse_schedules(top.get("schedules"), &mut p);
    let jobs = parse_jobs(top.get("jobs"), &schedule_names, &global, &mut p);
    if !p.errors.is_empty() {
        return Err(ConfigProblems(p.errors));
    }
    Ok(Config {
        base_dir: global.base_dir,
        worker_limit: global.worker_limit,
        status_file: global.status_file,
        status_interval: global.status_interval,
        telnet_addrs: global.telnet_addrs,
        telnet_port: global.telnet_port,
        run_timeout: global.run_timeout,
        console_timeout: global.console_timeout,
        schedules,
        jobs,
        warnings: p.warnings.iter().map(ToString::to_string).collect(),
        crash_consistent_warning: global.crash_consistent_warning,
    })
}

/// The scheduler's checks of keys.
impl Problems {
    /// Reports unknown keys of `map` (warns about later versions' keys).
    fn check_keys(&mut self, map: &Mapping, path: &str, known: &[&str]) {
        for key in map.keys() {
            let Some(name) = self.key_name(key, path) else {
                continue;
            };
            let here = join(path, &name);
            if known.contains(&name.as_str()) {
                continue;
            }
            if LATER_VERSION_KEYS.contains(&name.as_str())
                || (path.is_empty() && LATER_VERSION_SECTIONS.contains(&name.as_str()))
            {
                self.warn(
                    &here,
                    "is a setting of later backy versions; this version ignores it",
                );
                continue;
            }
            let spelled = name.to_ascii_lowercase().replace('_', "-");
            let hint = match known.iter().find(|k| **k == spelled) {
                Some(k) => format!("; did you mean '{k}'?"),
                None => String::new(),
            };
            self.error(
                &here,
                format!("unknown key (known here: {}){hint}", known.join(", ")),
            );
        }
    }

    /// A mapping key as text; non-string keys are reported.
    fn key_name(&mut self, key: &Value, path: &str) -> Option<String> {
        match key {
            Value::String(s) => Some(s.clone()),
            other => {
                let shown = key_text(other);
                self.error(
                    &join(path, &shown),
                    format!(
                        "this key is {}, not text; quote it (\"{shown}\")",
                        describe(other)
                    ),
                );
                None
            }
        }
    }
}

/// A key as it would be written, for paths (`1234`, `true`).
fn key_text(key: &Value) -> String {
    match key {
        Value::String(s) => s.clone(),
        other => serde_norway::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_string(),
    }
}

/// A hint for values like `flyingcircus,` (block-style YAML copied from flow style).
fn comma_hint(text: &str) -> &'static str {
    if text.trim_end().ends_with(',') {
        "; drop the trailing comma (block-style YAML needs none)"
    } else {
        ""
    }
}

/// A mapping section that may be missing or empty (`jobs:` with nothing below).
fn section<'a>(value: Option<&'a Value>, path: &str, p: &mut Problems) -> Option<&'a Mapping> {
    match value {
        None | Some(Value::Null) => None,
        Some(Value::Mapping(m)) => Some(m),
        Some(other) => {
            p.error(path, format!("must be a mapping, not {}", describe(other)));
            None
        }
    }
}

/// An interval given as a YAML integer (seconds) or as text with a unit.
fn interval_value(value: &Value) -> std::result::Result<u64, String> {
    match value {
        Value::Number(n) => match n.as_u64() {
            Some(s) => parse_interval(&s.to_string()),
            None => Err(format!(
                "{n} is not a whole, positive number of seconds; use e.g. 3600 or 1h"
            )),
        },
        Value::String(s) => parse_interval(s),
        other => Err(format!(
            "must be an interval such as 1d, 12h or 3600, not {}",
            describe(other)
        )),
    }
}

/// The validated `global` (or `config`) section.
struct Global {
    base_dir: PathBuf,
    worker_limit: usize,
    status_file: PathBuf,
    status_interval: Duration,
    telnet_addrs: Vec<IpAddr>,
    telnet_port: u16,
    run_timeout: Option<Duration>,
    console_timeout: Duration,
    crash_consistent_warning: u64,
}

fn parse_global(top: &Mapping, p: &mut Problems) -> Global {
    let name = match (top.contains_key("global"), top.contains_key("config")) {
        (true, true) => {
            p.error(
                "config",
                "a second global section; 'global' and 'config' are the same section, merge them into 'global'",
            );
            "global"
        }
        (false, true) => "config",
        _ => "global",
    };
    let map = section(top.get(name), name, p).cloned().unwrap_or_default();
    p.check_keys(&map, name, &GLOBAL_KEYS);
    let at = |key: &str| format!("{name}.{key}");
    // The one field reader, in the key order problems are listed in.
    let number = |p: &mut Problems, key: &str, min: u64, max: u64, what: &str| {
        Fields::new(&map, name, Style::Section, p).whole_number(key, min, max, what)
    };
    let base_dir = absolute_path(map.get("base-dir"), &at("base-dir"), p)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_BASE_DIR));
    let status_file = absolute_path(map.get("status-file"), &at("status-file"), p)
        .unwrap_or_else(|| base_dir.join("status"));
    let worker_limit = number(
        p,
        "worker-limit",
        1,
        usize::MAX as u64,
        "a whole number of parallel backups, at least 1",
    )
    .map_or(DEFAULT_WORKER_LIMIT, |n| n as usize);
    let status_interval = match map.get("status-interval") {
        None => DEFAULT_STATUS_INTERVAL,
        Some(v) => interval_value(v).unwrap_or_else(|e| {
            p.error(&at("status-interval"), e);
            DEFAULT_STATUS_INTERVAL
        }),
    };
    let telnet_port = number(
        p,
        "telnet-port",
        0,
        u16::MAX.into(),
        "a port number (0 to 65535)",
    )
    .map_or(DEFAULT_TELNET_PORT, |n| n as u16);
    let telnet_addrs = match map.get("telnet-addrs") {
        None => parse_addrs(DEFAULT_TELNET_ADDRS).unwrap_or_default(),
        Some(v) => telnet_addrs(v).unwrap_or_else(|e| {
            p.error(&at("telnet-addrs"), e);
            Vec::new()
        }),
    };
    let run_timeout = optional_interval(map.get("run-timeout"), &at("run-timeout"), p);
    let console_timeout = optional_interval(map.get("console-timeout"), &at("console-timeout"), p)
        .unwrap_or(Duration::from_secs(DEFAULT_CONSOLE_TIMEOUT));
    let crash_consistent_warning = number(
        p,
        "crash-consistent-warning",
        0,
        u64::MAX,
        "a whole number of revisions (0 turns the warning off)",
    )
    .unwrap_or(DEFAULT_CRASH_CONSISTENT_WARNING);
    Global {
        base_dir,
        worker_limit,
        status_file,
        status_interval: Duration::from_secs(status_interval),
        telnet_addrs,
        telnet_port,
        run_timeout,
        console_timeout,
        crash_consistent_warning,
    }
}

/// An optional interval key (`run-timeout: 2h`); a bad value is reported.
fn optional_interval(value: Option<&Value>, path: &str, p: &mut Problems) -> Option<Duration> {
    let value = value?;
    interval_value(value)
        .map(Duration::from_secs)
        .map_err(|e| p.error(path, e))
        .ok()
}

/// A path value that must be absolute (the scheduler and `backy check` run
/// from different directories, so a relative path would mean two places).
fn absolute_path(value: Option<&Value>, path: &str, p: &mut Problems) -> Option<PathBuf> {
    let value = value?;
    match value {
        Value::String(s) if s.starts_with('/') && !s.contains('\0') => Some(PathBuf::from(s)),
        Value::String(s) if s.contains('\0') => {
            p.error(path, "contains a NUL character; give a plain absolute path");
            None
        }
        Value::String(s) => {
            p.error(
                path,
                format!("'{s}' is not an absolute path; give one starting with '/'"),
            );
            None
        }
        other => {
            p.error(
                path,
                format!("must be an absolute path, not {}", describe(other)),
            );
            None
        }
    }
}

fn telnet_addrs(value: &Value) -> std::result::Result<Vec<IpAddr>, String> {
    match value {
        Value::String(s) => parse_addrs(s),
        Value::Sequence(items) => {
            let mut addrs = Vec::new();
            for item in items {
                match item {
                    Value::String(s) => addrs.extend(parse_addrs(s)?),
                    other => {
                        return Err(format!(
                            "must list IP addresses, but one entry is {}",
                            describe(other)
                        ));
                    }
                }
            }
            Ok(addrs)
        }
        other => Err(format!(
            "must be comma-separated IP addresses such as \"::1, 127.0.0.1\", not {}",
            describe(other)
        )),
    }
}

fn parse_addrs(text: &str) -> std::result::Result<Vec<IpAddr>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(|a| {
            let bare = a
                .strip_prefix('[')
                .and_then(|a| a.strip_suffix(']'))
                .unwrap_or(a);
            bare.parse::<IpAddr>().map_err(|_| {
                format!(
                    "'{a}' is not an IP address; list addresses such as \"::1, 127.0.0.1\" (no host names, no ports)"
                )
            })
        })
        .collect()
}

/// Parses `schedules`; also returns the names of all schedules given, valid or
/// not, so that jobs are not blamed for a schedule that was reported already.
fn parse_schedules(
    value: Option<&Value>,
    p: &mut Problems,
) -> (BTreeMap<String, Schedule>, BTreeSet<String>) {
    let mut schedules = BTreeMap::new();
    let mut names = BTreeSet::new();
    let Some(map) = section(value, "schedules", p) else {
        return (schedules, names);
    };
    for (key, body) in map {
        // A bad key is reported, and its body still checked.
        let key_ok = p.key_name(key, "schedules").is_some();
        let name = key_text(key);
        names.insert(name.clone());
        let path = join("schedules", &name);
        let tags = match body {
            Value::Mapping(m) if !m.is_empty() => m,
            Value::Mapping(_) | Value::Null => {
                p.error(
                    &path,
                    "has no tags; give at least one, e.g. daily: {interval: 1d, keep: 9}",
                );
                continue;
            }
            other => {
                p.error(
                    &path,
                    format!(
                        "must map tag names to {{interval, keep}}, not {}",
                        describe(other)
                    ),
                );
                continue;
            }
        };
        let errors_before = p.errors.len();
        let mut schedule = Schedule::default();
        for (tag_key, rule) in tags {
            let Some(tag) = p.key_name(tag_key, &path) else {
                continue;
            };
            if let Some(rule) = parse_tag_rule(&tag, rule, &join(&path, &tag), p) {
                schedule.tags.insert(tag, rule);
            }
        }
        if key_ok && p.errors.len() == errors_before {
            schedules.insert(name, schedule);
        }
    }
    (schedules, names)
}

fn parse_tag_rule(tag: &str, value: &Value, path: &str, p: &mut Problems) -> Option<TagRule> {
    let mut ok = true;
    if tag.is_empty() || tag.contains(',') || tag.chars().any(char::is_whitespace) {
        p.error(
            path,
            "a tag name must be a plain word without commas or spaces (it is passed as 'backy backup TAG,TAG')",
        );
        ok = false;
    } else if tag.starts_with("manual:") {
        p.error(
            path,
            "tags starting with 'manual:' are manual tags, which are never expired; choose another name",
        );
        ok = false;
    } else if let Some(reason) = crate::spec::tag_problem(tag) {
        p.error(
            path,
            format!("the tag {reason}; choose a word such as 'daily'"),
        );
        ok = false;
    }
    let Value::Mapping(map) = value else {
        p.error(
            path,
            format!(
                "must be a mapping such as {{interval: 1d, keep: 9}}, not {}",
                describe(value)
            ),
        );
        return None;
    };
    p.check_keys(map, path, &TAG_KEYS);
    let interval = match map.get("interval") {
        None => {
            p.error(path, "'interval' is missing; add e.g. interval: 1d");
            None
        }
        Some(v) => interval_value(v)
            .map_err(|e| p.error(&join(path, "interval"), e))
            .ok(),
    };
    let keep = match map.get("keep") {
        None => {
            p.error(path, "'keep' is missing; add e.g. keep: 9");
            None
        }
        Some(_) => Fields::new(map, path, Style::Section, p)
            .whole_number("keep", 1, u32::MAX.into(), "a positive whole number")
            .map(|n| n as u32),
    };
    match (ok, interval, keep) {
        (true, Some(interval), Some(keep)) => Some(TagRule { interval, keep }),
        _ => None,
    }
}

fn parse_jobs(
    value: Option<&Value>,
    schedule_names: &BTreeSet<String>,
    global: &Global,
    p: &mut Problems,
) -> BTreeMap<String, JobDef> {
    let mut jobs = BTreeMap::new();
    let Some(map) = section(value, "jobs", p) else {
        return jobs;
    };
    for (key, body) in map {
        // A bad name is reported, and the job's body still checked.
        let mut name_ok = p.key_name(key, "jobs").is_some();
        let name = key_text(key);
        let path = join("jobs", &name);
        if name_ok && let Err(e) = check_job_name(&name, global) {
            p.error(&path, e);
            name_ok = false;
        }
        let Value::Mapping(job) = body else {
            p.error(
                &path,
                format!(
                    "must be a mapping with 'schedule' and 'source', not {}",
                    describe(body)
                ),
            );
            continue;
        };
        let def = parse_job(&name, job, &path, schedule_names, p);
        if let (true, Some(def)) = (name_ok, def) {
            jobs.insert(name, def);
        }
    }
    jobs
}

/// Job names become directory names under the base directory.
fn check_job_name(name: &str, global: &Global) -> std::result::Result<(), String> {
    let plain =
        "a job name must be a plain directory name (no '/', no leading '.', no control characters)";
    if name.is_empty() {
        return Err(format!("{plain}, not empty"));
    }
    if name.starts_with('.') || name.contains('/') || name.chars().any(char::is_control) {
        return Err(format!("'{}' is not allowed: {plain}", name.escape_debug()));
    }
    if global.status_file == global.base_dir.join(name) {
        return Err(format!(
            "the job's directory would be the status file {}; rename the job or set global.status-file elsewhere",
            global.status_file.display()
        ));
    }
    Ok(())
}

fn parse_job(
    name: &str,
    job: &Mapping,
    path: &str,
    schedule_names: &BTreeSet<String>,
    p: &mut Problems,
) -> Option<JobDef> {
    p.check_keys(job, path, &JOB_KEYS);
    let schedule = match job.get("schedule") {
        None => {
            p.error(path, "'schedule' is missing; name one of the schedules");
            None
        }
        Some(Value::String(s)) if schedule_names.contains(s) => Some(s.clone()),
        Some(Value::String(s)) => {
            let known: Vec<&str> = schedule_names.iter().map(String::as_str).collect();
            let known = if known.is_empty() {
                "none are defined".to_string()
            } else {
                format!("defined: {}", known.join(", "))
            };
            p.error(
                &join(path, "schedule"),
                format!("unknown schedule '{s}' ({known}){}", comma_hint(s)),
            );
            None
        }
        Some(other) => {
            p.error(
                &join(path, "schedule"),
                format!("must be a schedule name, not {}", describe(other)),
            );
            None
        }
    };
    let allow_copy = Fields::new(job, path, Style::Section, p).flag("allow-copy");
    let source = match job.get("source") {
        None => {
            p.error(
                path,
                "'source' is missing; add e.g. source: {type: file, filename: /path/to/image}",
            );
            None
        }
        Some(Value::Mapping(m)) => parse_source(m, &join(path, "source"), p),
        Some(other) => {
            p.error(
                &join(path, "source"),
                format!(
                    "must be a mapping with 'type' and its settings, not {}",
                    describe(other)
                ),
            );
            None
        }
    };
    let run_timeout = optional_interval(job.get("run-timeout"), &join(path, "run-timeout"), p);
    let verification =
        match VerificationMode::read(job.get("verification"), source.as_ref().map(|s| &s.0)) {
            Ok(mode) => Some(mode),
            Err(message) => {
                p.error(&join(path, "verification"), message);
                None
            }
        };
    let scrub = match job.get("scrub") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => match parse_scrub(s) {
            Ok(scrub) => Some(scrub),
            Err(message) => {
                p.error(&join(path, "scrub"), message);
                None
            }
        },
        Some(other) => {
            p.error(
                &join(path, "scrub"),
                format!(
                    "must be an interval and a share, e.g. '7d 10%', not {}",
                    describe(other)
                ),
            );
            None
        }
    };
    let (source, source_allows_copy) = source?;
    Some(JobDef {
        name: name.to_string(),
        schedule: schedule?,
        source,
        allow_copy: allow_copy || source_allows_copy,
        run_timeout,
        verification: verification?,
        scrub,
    })
}

/// Checks the `type` and the keys of a source mapping here (unknown keys with
/// hints, trailing commas), then reads it with [`JobConfig::read_source`], so
/// that a job reads its `config` exactly as the scheduler read the source.
fn parse_source(map: &Mapping, path: &str, p: &mut Problems) -> Option<(SourceConfig, bool)> {
    let type_path = join(path, "type");
    let names = SourceKind::names();
    let kind = match map.get("type") {
        None => {
            p.error(path, format!("'type' is missing; add one of: {names}"));
            return None;
        }
        Some(Value::String(s)) => match SourceKind::from_name(s) {
            Some(kind) => kind,
            None => {
                p.error(&type_path, unknown_type(s));
                return None;
            }
        },
        Some(other) => {
            p.error(
                &type_path,
                format!("must be one of {names}, not {}", describe(other)),
            );
            return None;
        }
    };
    let known: Vec<&str> = ["type"]
        .into_iter()
        .chain(kind.keys())
        .chain(["allow-copy"])
        .collect();
    p.check_keys(map, path, &known);
    for (key, value) in map {
        if let (Value::String(k), Value::String(v)) = (key, value)
            && !comma_hint(v).is_empty()
        {
            // The token is a secret: never repeat it.
            let shown = if k == "consul_acl_token" {
                "the token".to_string()
            } else {
                format!("'{v}'")
            };
            p.warn(
                &join(path, k),
                format!("{shown} ends with a comma; if that is a typo, drop it (block-style YAML needs none)"),
            );
        }
    }
    let errors_before = p.errors.len();
    let source = JobConfig::read_source(map, path, p);
    let allow_copy = Fields::new(map, path, Style::Source, p).flag("allow-copy");
    match source {
        Some(source) if p.errors.len() == errors_before => Some((source, allow_copy)),
        _ => None,
    }
}

/// The message for an unknown source type, with a hint where one is likely.
fn unknown_type(type_name: &str) -> String {
    let cleaned = type_name
        .trim()
        .trim_end_matches(',')
        .trim()
        .to_ascii_lowercase();
    let hint = if SourceKind::from_name(&cleaned).is_some() {
        match comma_hint(type_name) {
            "" => format!("; did you mean '{cleaned}'?"),
            comma => comma.to_string(),
        }
    } else if cleaned == "ceph" || cleaned == "rbd" {
        format!("; did you mean '{}'?", SourceKind::CephRbd.name())
    } else {
        String::new()
    };
    format!(
        "unknown source type '{type_name}' (known: {}){hint}",
        SourceKind::names()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CephOptions;

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
    fn man_page_example_gets_clear_messages() {
        let text = "\
global:
    base-dir: /my/backydir
    worker-limit: 3
schedules:
    default:
        daily: {interval: 1d, keep: 7}
    frequent:
        hourly: {interval: 1h, keep: 24}
jobs:
    test01:
        schedule: default
        source:
            type: file
            filename: /path/to/vm/image
    test03:
        schedule: hourly
        source:
            type: flyingcircus,
            consul_acl_token: a211c244-846b-11e5-999b-081196cf15b4
            vm: test03,
            pool: test
            image: test03.root
";
        let errors = errors(text);
        assert_eq!(errors.len(), 2, "{errors:#?}");
        assert_eq!(
            errors[0],
            "jobs.test03.schedule: unknown schedule 'hourly' (defined: default, frequent)"
        );
        assert!(errors[1].starts_with(
            "jobs.test03.source.type: unknown source type 'flyingcircus,' (known: file, ceph-rbd, flyingcircus)"
        ));
        assert!(errors[1].contains("trailing comma"));
        let fixed = text
            .replace("flyingcircus,", "flyingcircus")
            .replace("schedule: hourly", "schedule: frequent");
        let c = Config::parse(&fixed).unwrap();
        assert_eq!(c.warnings.len(), 1);
        assert!(c.warnings[0].starts_with("jobs.test03.source.vm: 'test03,' ends with a comma"));
        assert_eq!(
            c.jobs["test03"].source,
            SourceConfig::FlyingCircus {
                pool: "test".into(),
                image: "test03.root".into(),
                vm: "test03,".into(),
                consul_acl_token: Some("a211c244-846b-11e5-999b-081196cf15b4".into()),
                consul_address: None,
                freeze_timeout: None,
                options: CephOptions {
                    full_always: false,
                    whole_object: false,
                    full_every: None,
                    verification_timeout: None,
                },
            }
        );
    }

    #[test]
    fn flyingcircus_keys_and_the_crash_consistent_warning() {
        let text = "\
global: {crash-consistent-warning: 5}
schedules:
  s: {daily: {interval: 1d, keep: 9}}
jobs:
  a:
    schedule: s
    source: {type: flyingcircus, pool: rbd, image: a, vm: a, consul_acl_token: 'secret,', consul-address: '127.0.0.1:8501', freeze-timeout: 30, full-every: 4}
";
        let c = Config::parse(text).unwrap();
        assert_eq!(c.crash_consistent_warning, 5);
        let SourceConfig::FlyingCircus {
            consul_address,
            freeze_timeout,
            options: CephOptions { full_every, .. },
            ..
        } = &c.jobs["a"].source
        else {
            panic!("{:?}", c.jobs["a"].source.type_name());
        };
        assert_eq!(consul_address.as_deref(), Some("127.0.0.1:8501"));
        assert_eq!((*freeze_timeout, *full_every), (Some(30), Some(4)));
        assert_eq!(c.warnings.len(), 1);
        assert!(!c.warnings[0].contains("secret"), "{:?}", c.warnings);
        let default = text.replace("global: {crash-consistent-warning: 5}\n", "");
        assert_eq!(Config::parse(&default).unwrap().crash_consistent_warning, 3);
        let bad = text
            .replace("warning: 5", "warning: many")
            .replace("freeze-timeout: 30", "freeze-timeout: 0")
            .replace("consul-adress", "x");
        let errors = errors(&bad);
        assert_eq!(errors.len(), 2, "{errors:#?}");
        assert!(errors[0].starts_with("global.crash-consistent-warning: must be a whole number"));
        assert!(
            errors[1]
                .starts_with("jobs.a.source: 'freeze-timeout' must be a whole number of seconds")
        );
        assert_error(
            &text.replace("consul-address", "consul_address"),
            "jobs.a.source.consul_address: unknown key",
        );
    }

    #[test]
    fn unknown_keys_everywhere() {
        let text = "\
global: {base-dir: /b, telnet_port: 1234}
schedule: {}
schedules:
  s:
    daily: {interval: 1d, keep: 9, kept: 3}
jobs:
  a:
    schedule: s
    sched: s
    source: {type: file, filename: /a, filenmae: /b}
";
        let errors = errors(text);
        assert_eq!(errors.len(), 5, "{errors:#?}");
        let expected = [
            "schedule: unknown key (known here: global, config, schedules, jobs)",
            "global.telnet_port: unknown key",
            "schedules.s.daily.kept: unknown key",
            "jobs.a.sched: unknown key",
            "jobs.a.source.filenmae: unknown key (known here: type, filename, allow-copy)",
        ];
        for e in expected {
            assert!(
                errors.iter().any(|l| l.starts_with(e)),
                "{e} not in {errors:#?}"
            );
        }
        assert!(
            errors
                .iter()
                .any(|l| l.ends_with("did you mean 'telnet-port'?"))
        );
    }

    #[test]
    fn later_versions_keys_warn() {
        let text = "\
global: {base-dir: /b, backup-completed-callback: /bin/true}
api: {addrs: '::1'}
schedules: {s: {daily: {interval: 1d, keep: 9}}}
jobs:
  a: {schedule: s, backend: chunked, source: {type: file, filename: /a, cow: false}}
";
        let c = Config::parse(text).unwrap();
        assert_eq!(
            c.warnings,
            [
                "api: is a setting of later backy versions; this version ignores it",
                "global.backup-completed-callback: is a setting of later backy versions; this version ignores it",
                "jobs.a.backend: is a setting of later backy versions; this version ignores it",
                "jobs.a.source.cow: is a setting of later backy versions; this version ignores it",
            ]
        );
        assert_eq!(
            c.jobs["a"].source,
            SourceConfig::File {
                filename: "/a".into()
            }
        );
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            (
                "global: {worker-limit: 0}",
                "global.worker-limit: must be a whole number",
            ),
            ("global: {worker-limit: many}", "global.worker-limit:"),
            (
                "global: {base-dir: srv/backy}",
                "global.base-dir: 'srv/backy' is not an absolute path",
            ),
            (
                "global: {base-dir: [a]}",
                "global.base-dir: must be an absolute path, not a list",
            ),
            (
                "global: {status-file: ~}",
                "global.status-file: must be an absolute path, not empty",
            ),
            (
                "global: {status-interval: soon}",
                "global.status-interval: 'soon' is not an interval",
            ),
            (
                "global: {telnet-port: 70000}",
                "global.telnet-port: must be a port number",
            ),
            (
                "global: {telnet-addrs: 'localhost'}",
                "global.telnet-addrs: 'localhost' is not an IP address",
            ),
            ("global: 3", "global: must be a mapping, not the number 3"),
            ("global: {}\nconfig: {}", "config: a second global section"),
            ("schedules: {s: {}}", "schedules.s: has no tags"),
            ("schedules: {s: [daily]}", "schedules.s: must map tag names"),
            (
                "schedules: {s: {daily: {keep: 1}}}",
                "schedules.s.daily: 'interval' is missing",
            ),
            (
                "schedules: {s: {daily: {interval: 1d}}}",
                "schedules.s.daily: 'keep' is missing",
            ),
            (
                "schedules: {s: {daily: {interval: 1d, keep: 0}}}",
                "schedules.s.daily.keep: must be a positive whole number, not the number 0",
            ),
            (
                "schedules: {s: {daily: {interval: 1d, keep: -2}}}",
                "schedules.s.daily.keep:",
            ),
            (
                "schedules: {s: {daily: {interval: 1d, keep: 2.5}}}",
                "schedules.s.daily.keep:",
            ),
            (
                "schedules: {s: {daily: {interval: 1.5, keep: 2}}}",
                "schedules.s.daily.interval: 1.5 is not a whole",
            ),
            (
                "schedules: {s: {daily: {interval: 0, keep: 2}}}",
                "schedules.s.daily.interval: '0' is zero",
            ),
            (
                "schedules: {s: {daily: {interval: 1x, keep: 2}}}",
                "schedules.s.daily.interval: '1x' has an unknown unit 'x'",
            ),
            (
                "schedules: {s: {'a,b': {interval: 1d, keep: 2}}}",
                "schedules.s.a,b: a tag name must be a plain word",
            ),
            (
                "schedules: {s: {'manual:x': {interval: 1d, keep: 2}}}",
                "schedules.s.manual:x: tags starting with 'manual:'",
            ),
            (
                "schedules: {s: {latest: {interval: 1d, keep: 2}}}",
                "schedules.s.latest: the tag is what '-r' reads as the newest",
            ),
            (
                "schedules: {s: {'1': {interval: 1d, keep: 2}}}",
                "schedules.s.1: the tag is a number, which '-r' reads",
            ),
            (
                "schedules: {s: {1: {interval: 1d, keep: 2}}}",
                "schedules.s.1: this key is the number 1, not text; quote it (\"1\")",
            ),
            (
                "jobs: {a: {source: {type: file, filename: /a}}}",
                "jobs.a: 'schedule' is missing",
            ),
            (
                "jobs: {a: {schedule: s, source: {type: file, filename: /a}}}",
                "jobs.a.schedule: unknown schedule 's' (none are defined)",
            ),
            (
                "jobs: {a: {schedule: [s]}}",
                "jobs.a.schedule: must be a schedule name, not a list",
            ),
            ("jobs: {a: {schedule: s}}", "jobs.a: 'source' is missing"),
            (
                "jobs: {a: {source: /a}}",
                "jobs.a.source: must be a mapping",
            ),
            (
                "jobs: {a: {source: {filename: /a}}}",
                "jobs.a.source: 'type' is missing; add one of: file, ceph-rbd, flyingcircus",
            ),
            (
                "jobs: {a: {source: {type: nfs}}}",
                "jobs.a.source.type: unknown source type 'nfs' (known: file, ceph-rbd, flyingcircus)",
            ),
            (
                "jobs: {a: {source: {type: ceph, pool: rbd, image: a}}}",
                "did you mean 'ceph-rbd'?",
            ),
            (
                "jobs: {a: {source: {type: File, filename: /a}}}",
                "unknown source type 'File' (known: file, ceph-rbd, flyingcircus); did you mean 'file'?",
            ),
            (
                "jobs: {a: {source: {type: 7}}}",
                "jobs.a.source.type: must be one of file, ceph-rbd, flyingcircus, not the number 7",
            ),
            (
                "jobs: {a: {source: {type: file}}}",
                "jobs.a.source: 'filename' is missing",
            ),
            (
                "jobs: {a: {source: {type: ceph-rbd, pool: rbd, image: a, full-always: maybe}}}",
                "jobs.a.source: 'full-always' must be true or false",
            ),
            (
                "jobs: {a: {allow-copy: yes please}}",
                "jobs.a.allow-copy: must be true or false",
            ),
            (
                "jobs: {a: 1}",
                "jobs.a: must be a mapping with 'schedule' and 'source'",
            ),
            ("jobs: [a]", "jobs: must be a mapping, not a list"),
        ];
        for (text, expected) in cases {
            assert_error(text, expected);
        }
    }

    #[test]
    fn job_names_are_plain_directory_names() {
        for name in [
            "''",
            "'.'",
            "'..'",
            "'.hidden'",
            "'a/b'",
            "'/abs'",
            "\"a\\0b\"",
            "\"a\\nb\"",
        ] {
            let text = format!(
                "schedules: {{s: {{d: {{interval: 1d, keep: 1}}}}}}\njobs: {{{name}: {{schedule: s, source: {{type: file, filename: /a}}}}}}"
            );
            let errors = errors(&text);
            assert_eq!(errors.len(), 1, "{name}: {errors:#?}");
            assert!(
                errors[0].contains("plain directory name"),
                "{name}: {errors:#?}"
            );
        }
        // A name that is not text is reported, and the job is still checked.
        let errors = errors(
            "schedules: {s: {d: {interval: 1d, keep: 1}}}\njobs: {1234: {schedule: s, source: {type: nfs}}}",
        );
        assert_eq!(
            errors,
            [
                "jobs.1234: this key is the number 1234, not text; quote it (\"1234\")",
                "jobs.1234.source.type: unknown source type 'nfs' (known: file, ceph-rbd, flyingcircus)",
            ]
        );
        // The default status file lives in the base directory.
        assert_error(
            "schedules: {s: {d: {interval: 1d, keep: 1}}}\njobs: {status: {schedule: s, source: {type: file, filename: /a}}}",
            "jobs.status: the job's directory would be the status file /srv/backy/status",
        );
        let ok = "global: {status-file: /var/lib/backy.status}\nschedules: {s: {d: {interval: 1d, keep: 1}}}\njobs: {status: {schedule: s, source: {type: file, filename: /a}}, 'vm01.example.com': {schedule: s, source: {type: file, filename: /b}}}";
        assert_eq!(Config::parse(ok).unwrap().jobs.len(), 2);
    }

    #[test]
    fn every_problem_at_once() {
        let text = "\
global: {worker-limit: 0, telnet-port: x}
schedules:
  s: {daily: {interval: 1q, keep: 0}}
jobs:
  a: {schedule: t, source: {type: nfs}}
  b: {schedule: s, source: {type: file}}
";
        let errors = errors(text);
        assert_eq!(errors.len(), 7, "{errors:#?}");
        // A job on a schedule that was given but is broken is not blamed twice.
        assert!(!errors.iter().any(|e| e.starts_with("jobs.b.schedule")));
    }

    #[test]
    fn not_a_config() {
        for (text, expected) in [
            ("", "the configuration is empty"),
            ("- a\n- b", "the configuration is a list"),
            ("a: [", "not valid YAML"),
            ("jobs: {a: 1}\njobs: {b: 2}", "not valid YAML"),
        ] {
            let e = Config::parse(text).unwrap_err().to_string();
            assert!(e.contains(expected), "{text:?}: {e}");
        }
    }
}
