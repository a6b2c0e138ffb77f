//! `backy metrics`: a scheduler configuration with a job backed up by the real
//! `backy backup` on btrfs, a broken job and a job whose name needs escaping;
//! the output is read back by a strict parser of the Prometheus text format
//! 0.0.4, with the rules of `promtool check metrics` that apply to gauges.

mod util;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use util::*;

const MIB: u64 = 1 << 20;

/// One sample's labels, by name.
type Labels = BTreeMap<String, String>;

/// A metric family as parsed.
#[derive(Debug)]
struct Family {
    help: String,
    samples: Vec<(Labels, f64)>,
}

/// Parses the text exposition format strictly: every family is `# HELP`,
/// `# TYPE ... gauge`, then at least one sample of that name, each name once;
/// label names and escapes as the format defines them; no timestamps, no
/// empty or other lines; a final newline. Panics, naming the line, otherwise.
fn parse(text: &str) -> BTreeMap<String, Family> {
    assert!(text.ends_with('\n'), "no final newline:\n{text}");
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut lines = text.lines().enumerate().peekable();
    while let Some((n, line)) = lines.next() {
        let bad = |why: &str| -> ! { panic!("line {}: {why}: {line:?}\n{text}", n + 1) };
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest
                .split_once(' ')
                .unwrap_or_else(|| bad("HELP without text"));
            check_metric_name(name).unwrap_or_else(|e| bad(&e));
            if families.contains_key(name) {
                bad("a family appears twice");
            }
            let help = unescape(help, false).unwrap_or_else(|e| bad(&e));
            let Some((_, type_line)) = lines.next() else {
                bad("HELP without TYPE")
            };
            if type_line != format!("# TYPE {name} gauge") {
                bad(&format!(
                    "HELP not followed by its TYPE gauge line: {type_line:?}"
                ));
            }
            families.insert(
                name.to_string(),
                Family {
                    help,
                    samples: Vec::new(),
                },
            );
            current = Some(name.to_string());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            bad("neither HELP, TYPE after HELP, nor a sample");
        }
        let name_end = line
            .find(['{', ' '])
            .unwrap_or_else(|| bad("a sample without a value"));
        let name = &line[..name_end];
        if current.as_deref() != Some(name) {
            bad("a sample outside its family's block");
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end + 1..]).unwrap_or_else(|e| bad(&e))
        } else {
            (Labels::new(), &line[name_end..])
        };
        let value = rest
            .strip_prefix(' ')
            .unwrap_or_else(|| bad("no space before the value"));
        if value.contains(' ') {
            bad("a timestamp (the textfile collector refuses them) or trailing text");
        }
        let value: f64 = match value {
            "NaN" => f64::NAN,
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| bad("a value that is not a number")),
        };
        let family = families.get_mut(name).unwrap();
        if family.samples.iter().any(|(l, _)| *l == labels) {
            bad("the same series twice");
        }
        family.samples.push((labels, value));
    }
    for (name, family) in &families {
        assert!(!family.samples.is_empty(), "{name} has no samples:\n{text}");
    }
    families
}

/// `name="value",...}` and what follows the closing brace.
fn parse_labels(mut s: &str) -> Result<(Labels, &str), String> {
    let mut labels = Labels::new();
    loop {
        if let Some(rest) = s.strip_prefix('}') {
            return Ok((labels, rest));
        }
        let (name, rest) = s.split_once("=\"").ok_or("a label without =\"")?;
        check_label_name(name)?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next().ok_or("an unterminated label value")? {
                (i, '"') => break i,
                (_, '\\') => match chars.next().ok_or("a lone backslash")?.1 {
                    '\\' => value.push('\\'),
                    '"' => value.push('"'),
                    'n' => value.push('\n'),
                    c => return Err(format!("the unknown escape \\{c}")),
                },
                (_, '\n') => return Err("a raw line feed in a label value".into()),
                (_, c) => value.push(c),
            }
        };
        if labels.insert(name.to_string(), value).is_some() {
            return Err(format!("the label {name} twice"));
        }
        s = &rest[end + 1..];
        s = s.strip_prefix(',').unwrap_or(s);
    }
}

/// HELP text (`quotes: false`) escapes: `\\` and `\n` only.
fn unescape(s: &str, quotes: bool) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some('"') if quotes => out.push('"'),
            other => return Err(format!("a bad escape \\{other:?}")),
        }
    }
    Ok(out)
}

/// The name rule of the format, and promtool's lints for gauges: no `_total`
/// (counters only), no `_count`/`_sum`/`_bucket` (histograms, summaries), no
/// colons (recording rules), no camel case, base units spelled out.
fn check_metric_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!("{name} is not a metric name"));
    }
    if name.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(format!("{name} is camel case"));
    }
    for suffix in ["_total", "_count", "_sum", "_bucket"] {
        if name.ends_with(suffix) {
            return Err(format!("{name}: a gauge must not end in {suffix}"));
        }
    }
    let words: Vec<&str> = name.split('_').collect();
    for abbreviation in ["sec", "secs", "ms", "msec", "byte", "b", "kb", "mb", "gb"] {
        if words.contains(&abbreviation) {
            return Err(format!("{name}: abbreviated unit {abbreviation}"));
        }
    }
    if !name.starts_with("backy_") {
        return Err(format!("{name} lacks the backy_ prefix"));
    }
    Ok(())
}

fn check_label_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok = !name.starts_with("__")
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    // Prometheus sets `job` and `instance` itself when scraping.
    if !ok || name == "job" || name == "instance" {
        return Err(format!("{name} is not a usable label name"));
    }
    Ok(())
}

/// The value of `name` with exactly `labels`.
fn get(families: &BTreeMap<String, Family>, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: Labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    families
        .get(name)?
        .samples
        .iter()
        .find(|(l, _)| *l == want)
        .map(|(_, v)| *v)
}

#[test]
fn the_parser_refuses_what_the_format_does_not_allow() {
    let ok = "# HELP backy_a_bytes A \\\\ b.\n# TYPE backy_a_bytes gauge\nbacky_a_bytes{backy_job=\"x\\\"y\\\\z\\n\"} 1.5\n";
    let f = parse(ok);
    assert_eq!(f["backy_a_bytes"].help, "A \\ b.");
    assert_eq!(
        get(&f, "backy_a_bytes", &[("backy_job", "x\"y\\z\n")]),
        Some(1.5)
    );
    for bad in [
        "# HELP backy_a_bytes A.\n# TYPE backy_a_bytes gauge\nbacky_a_bytes 1",
        "# HELP backy_a_bytes A.\nbacky_a_bytes 1\n",
        "# HELP backy_a_bytes A.\n# TYPE backy_a_bytes gauge\nbacky_a_bytes 1 1700000000\n",
        "# HELP backy_a_bytes A.\n# TYPE backy_a_bytes gauge\nbacky_a_bytes{job=\"x\"} 1\n",
        "# HELP backy_a_bytes A.\n# TYPE backy_a_bytes gauge\nbacky_a_bytes{l=\"a\\tb\"} 1\n",
        "# HELP backy_a_bytes A.\n# TYPE backy_a_bytes gauge\nbacky_b_bytes 1\n",
        "# HELP backy_a_total A.\n# TYPE backy_a_total gauge\nbacky_a_total 1\n",
        "# HELP backy_a_bytes A.\n# TYPE backy_a_bytes gauge\nbacky_a_bytes 1\nbacky_a_bytes 2\n",
    ] {
        let result = std::panic::catch_unwind(|| parse(bad));
        assert!(result.is_err(), "accepted {bad:?}");
    }
}

/// Writes the scheduler configuration with three jobs under `base`.
fn write_config(conf: &Path, base: &Path, source: &Path) {
    fs::write(
        conf,
        format!(
            "global:\n  base-dir: {base}\nschedules:\n  s:\n    daily: {{interval: 1d, keep: 7}}\njobs:\n  vm01: {{schedule: s, source: {{type: file, filename: {src}}}}}\n  broken: {{schedule: s, source: {{type: file, filename: /nonexistent.img}}}}\n  'odd \"name\" \\ x': {{schedule: s, source: {{type: file, filename: /nonexistent.img}}}}\n",
            base = base.display(),
            src = source.display()
        ),
    )
    .unwrap();
}

/// A status file as the scheduler writes it, listing `jobs` with their SLA.
fn write_status(base: &Path, jobs: &[(&str, &str)]) {
    let mut text = String::new();
    for (job, sla) in jobs {
        text.push_str(&format!(
            "- job: '{job}'\n  sla: {sla}\n  status: finished\n  last_time: '-'\n  last_tags: ''\n  last_duration: '-'\n  next_time: '-'\n  next_tags: ''\n"
        ));
    }
    fs::write(base.join("status"), text).unwrap();
}

/// Three jobs under `fs`: vm01 with two revisions made by `backy backup`, the
/// older one distrusted and protected, the newer verified by `backy verify`; `broken`,
/// whose directory is a file; and one whose name needs escaping, with an
/// empty directory. Returns the configuration and vm01's directory.
fn three_jobs(fs: &TestFs) -> (PathBuf, PathBuf) {
    let base = fs.join("base");
    let source = fs.join("src.img");
    write_file(
        &source,
        8 * MIB,
        &[(0, &pattern_bytes(1, 2 * MIB as usize))],
    );
    let conf = fs.join("backy.conf");
    write_config(&conf, &base, &source);
    let vm01 = base.join("vm01");
    fs::create_dir_all(&base).unwrap();
    run_ok(backy_job(&vm01).arg("init").arg("file").arg(&source));
    run_ok(backy_job(&vm01).args(["backup", "daily"]));
    let oldest = run_ok(backy_job(&vm01).args(["find", "-r", "0"])).stdout;
    // 64 KiB changed in the second revision.
    write_at(&source, 3 * MIB, &pattern_bytes(2, 64 << 10));
    run_ok(backy_job(&vm01).args(["backup", "daily"]));
    // Damage the first revision's image: verify distrusts it, verifies the other.
    write_at(Path::new(oldest.trim()), 0, &pattern_bytes(3, 4096));
    run(backy_job(&vm01).arg("verify")).code(1);
    run_ok(backy_job(&vm01).args(["protect", "-r", "1", "--reason", "kept for the audit"]));
    // A file where the broken job's directory should be: it cannot be opened.
    fs::write(base.join("broken"), "not a directory").unwrap();
    // The oddly named job's directory exists, without revisions.
    fs::create_dir_all(base.join("odd \"name\" \\ x")).unwrap();
    write_status(&base, &[("vm01", "OK"), ("broken", "TOO OLD")]);
    (conf, vm01)
}

#[test]
fn metrics_of_a_backed_up_a_broken_and_an_oddly_named_job() {
    let fs = require_fs!(FsKind::Btrfs, 256);
    let (conf, vm01) = three_jobs(&fs);
    let base = vm01.parent().unwrap();
    let before = SystemTime::now();
    let r = run_ok(backy().arg("metrics").arg("-c").arg(&conf));
    let after = SystemTime::now();
    // One job's trouble is a warning, not a failure of the output.
    assert!(r.stderr.contains("Job broken: "), "{}", r.stderr);
    let m = parse(&r.stdout);

    let revs: Vec<serde_json::Value> =
        serde_json::from_str(&run_ok(backy_job(&vm01).args(["status", "--json"])).stdout).unwrap();
    assert_eq!(revs.len(), 2, "{revs:?}");
    let newest = &revs[1];
    let started = chrono::DateTime::parse_from_rfc3339(newest["timestamp"].as_str().unwrap())
        .unwrap()
        .timestamp_micros() as f64
        / 1e6;
    let duration = newest["duration"].as_f64().unwrap();
    let vm = [("backy_job", "vm01")];
    let last = get(&m, "backy_last_success_timestamp_seconds", &vm).unwrap();
    assert!(
        (last - (started + duration)).abs() < 1e-5,
        "last success {last} is not start {started} + duration {duration}"
    );
    assert_eq!(
        get(&m, "backy_last_backup_duration_seconds", &vm),
        Some(duration)
    );
    assert_eq!(
        get(&m, "backy_last_backup_changed_bytes", &vm),
        newest["bytes_changed"].as_u64().map(|n| n as f64)
    );
    assert_eq!(
        get(&m, "backy_last_backup_changed_bytes", &vm),
        Some(65536.0)
    );
    for (trust, n) in [("trusted", 0.0), ("verified", 1.0), ("distrusted", 1.0)] {
        assert_eq!(
            get(
                &m,
                "backy_revisions",
                &[("backy_job", "vm01"), ("trust", trust)]
            ),
            Some(n),
            "{trust}"
        );
    }
    assert_eq!(get(&m, "backy_damaged_revisions", &vm), Some(0.0));
    assert_eq!(get(&m, "backy_future_revisions", &vm), Some(0.0));
    assert_eq!(get(&m, "backy_protected_revisions", &vm), Some(1.0));
    // Space as `status` measures it; the two revisions share their data.
    let space = &newest["job_space"];
    let physical = get(&m, "backy_physical_bytes", &vm).unwrap();
    let logical = get(&m, "backy_logical_bytes", &vm).unwrap();
    assert_eq!(
        physical,
        (space["physical"].as_u64().unwrap() + space["manifests_physical"].as_u64().unwrap())
            as f64,
        "{space}"
    );
    assert_eq!(logical, space["logical"].as_u64().unwrap() as f64);
    assert!(
        2.0 * MIB as f64 <= physical && physical < logical,
        "physical {physical}, logical {logical}"
    );
    assert_eq!(
        get(&m, "backy_space_exact", &vm),
        Some(0.0),
        "btrfs: an estimate"
    );

    assert_eq!(get(&m, "backy_sla_limit_seconds", &vm), Some(129600.0));

    let odd = [("backy_job", "odd \"name\" \\ x")];
    let broken = [("backy_job", "broken")];
    for (labels, readable, sla) in [(&vm, 1.0, 1.0), (&broken, 0.0, 0.0), (&odd, 1.0, 0.0)] {
        assert_eq!(
            get(&m, "backy_job_readable", labels),
            Some(readable),
            "{labels:?}"
        );
        assert_eq!(get(&m, "backy_sla_ok", labels), Some(sla), "{labels:?}");
    }
    // The broken job has nothing from its directory; the empty one only counts.
    for name in ["backy_revisions", "backy_damaged_revisions"] {
        assert!(
            m[name]
                .samples
                .iter()
                .all(|(l, _)| l["backy_job"] != "broken"),
            "{name}"
        );
    }
    assert_eq!(get(&m, "backy_damaged_revisions", &odd), Some(0.0));
    assert_eq!(get(&m, "backy_physical_bytes", &odd), Some(0.0));
    assert_eq!(get(&m, "backy_last_success_timestamp_seconds", &odd), None);

    let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    let generated = get(&m, "backy_metrics_generated_timestamp_seconds", &[]).unwrap();
    assert!(
        secs(before) - 1e-3 <= generated && generated <= secs(after) + 1e-3,
        "{generated}"
    );
    let status_mtime = fs::metadata(base.join("status"))
        .unwrap()
        .modified()
        .unwrap();
    let status_ts = get(&m, "backy_status_file_timestamp_seconds", &[]).unwrap();
    assert!((status_ts - secs(status_mtime)).abs() < 1e-5, "{status_ts}");
    assert_eq!(
        get(&m, "backy_status_file_max_age_seconds", &[]),
        Some(300.0)
    );
    let names: BTreeSet<&str> = m.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "backy_damaged_revisions",
            "backy_future_revisions",
            "backy_job_readable",
            "backy_last_backup_changed_bytes",
            "backy_last_backup_duration_seconds",
            "backy_last_success_timestamp_seconds",
            "backy_logical_bytes",
            "backy_metrics_generated_timestamp_seconds",
            "backy_physical_bytes",
            "backy_protected_revisions",
            "backy_revisions",
            "backy_sla_limit_seconds",
            "backy_sla_ok",
            "backy_space_exact",
            "backy_status_file_max_age_seconds",
            "backy_status_file_timestamp_seconds",
        ])
    );
    for (name, family) in &m {
        assert!(family.help.ends_with('.'), "{name}: {:?}", family.help);
    }

    // `check` keeps its Nagios role over the same files: vm01 is fine, the
    // others are not scheduled.
    let r = run(backy().arg("check").arg("-c").arg(&conf)).code(2);
    assert!(r.stdout.starts_with("CRITICAL: "), "{}", r.stdout);
}

/// `--textfile` replaces the file by a rename (a new inode every time, never a
/// partly written file for a reader), with mode 0644 whatever the umask, and
/// a relative path works; a missing directory is an error naming it; so is a
/// missing configuration.
#[test]
fn textfile_is_replaced_atomically_with_mode_0644() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    fs::create_dir_all(&base).unwrap();
    let conf = dir.path().join("backy.conf");
    write_config(&conf, &base, Path::new("/nonexistent.img"));
    write_status(&base, &[("vm01", "OK")]);
    let out = dir.path().join("textfile");
    fs::create_dir(&out).unwrap();
    let prom = out.join("backy.prom");

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (stop, prom) = (stop.clone(), prom.clone());
        std::thread::spawn(move || {
            let mut reads = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(text) = fs::read_to_string(&prom) {
                    // Every read sees a whole file.
                    parse(&text);
                    reads += 1;
                }
            }
            reads
        })
    };
    // The previous file, held open so that its inode cannot be reused.
    let mut previous: Option<(fs::File, u64)> = None;
    for n in 0..20 {
        let mut cmd = backy();
        cmd.current_dir(&out)
            .arg("metrics")
            .arg("-c")
            .arg(&conf)
            .args(["--textfile", "backy.prom"]);
        let mut cmd = if n % 2 == 0 {
            cmd
        } else {
            // umask 077 must not make the file unreadable to node_exporter.
            let mut sh = std::process::Command::new("sh");
            sh.current_dir(&out).arg("-c").arg(format!(
                "umask 077 && exec {} metrics -c '{}' --textfile backy.prom",
                env!("CARGO_BIN_EXE_backy"),
                conf.display()
            ));
            sh
        };
        let r = run_ok(&mut cmd);
        assert_eq!(r.stdout, "", "nothing on stdout with --textfile");
        let meta = fs::metadata(&prom).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o644);
        if let Some((_file, ino)) = &previous {
            assert_ne!(meta.ino(), *ino, "run {n} rewrote the file in place");
        }
        previous = Some((fs::File::open(&prom).unwrap(), meta.ino()));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reads = reader.join().unwrap();
    assert!(reads > 0, "the reader never saw the file");
    let names: Vec<_> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["backy.prom"], "no temporary file is left behind");
    let m = parse(&fs::read_to_string(&prom).unwrap());
    assert_eq!(get(&m, "backy_sla_ok", &[("backy_job", "vm01")]), Some(1.0));
    assert_eq!(
        get(&m, "backy_job_readable", &[("backy_job", "vm01")]),
        Some(0.0)
    );

    let r = run(backy()
        .arg("metrics")
        .arg("-c")
        .arg(&conf)
        .arg("--textfile")
        .arg(dir.path().join("missing/backy.prom")))
    .code(1);
    assert!(r.stderr.contains("missing/backy.prom"), "{}", r.stderr);
    let r = run(backy()
        .arg("metrics")
        .arg("-c")
        .arg(dir.path().join("nope.conf")))
    .code(1);
    assert!(
        r.stderr.contains("nope.conf does not exist"),
        "{}",
        r.stderr
    );
    assert_eq!(r.stdout, "");
}

/// promtool, the linter of the Prometheus project, which parses with the same
/// library as node_exporter's textfile collector, accepts the output and has
/// nothing to remark.
#[test]
fn promtool_accepts_the_output_without_remarks() {
    let Some(promtool) = find_tool("promtool").or_else(|| {
        skip("`promtool` not found (the prometheus package; run scripts/setup-test-deps.sh)")
    }) else {
        return;
    };
    let fs = require_fs!(FsKind::Btrfs, 256);
    let (conf, _) = three_jobs(&fs);
    let prom = fs.join("backy.prom");
    run_ok(
        backy()
            .arg("metrics")
            .arg("-c")
            .arg(&conf)
            .arg("--textfile")
            .arg(&prom),
    );
    // It reads stdin, which `run` closes: a shell redirects the file.
    let r = run(std::process::Command::new("sh").arg("-c").arg(format!(
        "exec '{}' check metrics < '{}'",
        promtool.display(),
        prom.display()
    )));
    assert_eq!(
        (r.code, r.stdout.as_str(), r.stderr.as_str()),
        (Some(0), "", ""),
        "{}",
        fs::read_to_string(&prom).unwrap()
    );
}
