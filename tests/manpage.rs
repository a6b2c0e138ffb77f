//! The committed man page and completion scripts match what the code generates,
//! and they are well-formed.
//!
//! `scripts/gen-man.sh` regenerates them: it runs this file's tests with
//! `BACKY_REGENERATE_MAN=1`, which makes them write the files instead of
//! comparing.

mod util;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use clap::CommandFactory;
use util::{backy, find_tool, run_ok};

/// Shells whose completion scripts are committed, and the file each goes to.
const COMPLETIONS: &[(&str, &str)] = &[
    ("bash", "completions/backy.bash"),
    ("zsh", "completions/_backy"),
    ("fish", "completions/backy.fish"),
];

fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn regenerating() -> bool {
    std::env::var_os("BACKY_REGENERATE_MAN").is_some_and(|v| v == "1")
}

/// Compares `generated` with the committed file `rel`, or writes it when
/// regenerating; a difference fails with the first differing line and the fix.
fn check_generated(rel: &str, generated: &str) {
    let path = repo_path(rel);
    if regenerating() {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, generated).unwrap();
        eprintln!("wrote {}", path.display());
        return;
    }
    let committed = fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!("{rel} cannot be read ({e}); run scripts/gen-man.sh to generate it, then commit it")
    });
    if committed != generated {
        let line = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| committed.lines().count().min(generated.lines().count()));
        panic!(
            "{rel} is stale: it differs from what the code generates, first at line {} \
             (committed: {:?}, generated: {:?}). Run scripts/gen-man.sh and commit {rel}.",
            line + 1,
            committed.lines().nth(line).unwrap_or("<end of file>"),
            generated.lines().nth(line).unwrap_or("<end of file>"),
        );
    }
}

#[test]
fn committed_man_page_is_current() {
    check_generated("man/backy.1", &backy::manpage::render());
}

#[test]
fn committed_completions_are_current() {
    for (shell, rel) in COMPLETIONS {
        let out = run_ok(backy().args(["completions", shell]));
        check_generated(rel, &out.stdout);
    }
}

fn subcommand_names() -> Vec<String> {
    backy::cli::Cli::command()
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect()
}

#[test]
fn completions_name_every_subcommand() {
    for shell in ["bash", "zsh", "fish"] {
        let out = run_ok(backy().args(["completions", shell]));
        assert!(!out.stdout.trim().is_empty(), "{shell} completion is empty");
        for name in subcommand_names() {
            assert!(
                out.stdout.contains(&name),
                "the {shell} completion does not mention the subcommand {name}"
            );
        }
    }
}

/// Checks a completion script with `SHELL -n` (parse only), where that shell is installed.
fn shell_accepts(shell: &str, syntax_flag: &str) {
    let Some(program) = find_tool(shell) else {
        eprintln!("skipping: {shell} is not installed");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join(format!("backy.{shell}"));
    fs::write(&script, run_ok(backy().args(["completions", shell])).stdout).unwrap();
    run_ok(Command::new(program).arg(syntax_flag).arg(&script));
}

#[test]
fn bash_accepts_the_bash_completion() {
    // bash is part of every system this runs on: no skipping.
    assert!(find_tool("bash").is_some(), "bash not found");
    shell_accepts("bash", "-n");
}

#[test]
fn zsh_and_fish_accept_their_completions() {
    shell_accepts("zsh", "-n");
    shell_accepts("fish", "--no-execute");
}

#[test]
fn man_page_has_the_operator_sections() {
    let page = backy::manpage::render();
    for heading in [
        ".SH NAME",
        ".SH SYNOPSIS",
        ".SH DESCRIPTION",
        ".SH OPTIONS",
        ".SH COMMANDS",
        ".SH \"REVISION SPECIFICATIONS\"",
        ".SH \"JOB DIRECTORY\"",
        ".SH \"SCHEDULER CONFIGURATION\"",
        ".SH MONITORING",
        ".SH \"TELNET CONSOLE\"",
        ".SH ENVIRONMENT",
        ".SH \"EXIT STATUS\"",
        ".SH FILES",
        ".SH \"BTRFS MAINTENANCE\"",
    ] {
        assert!(page.contains(heading), "the man page lacks {heading}");
    }
    for name in subcommand_names() {
        assert!(
            page.contains(&format!(".SS {name}\n")),
            "no subsection for {name}"
        );
    }
    for var in [
        "BACKY_CMD",
        "BACKY_RBD",
        "CEPH_ARGS",
        "CEPH_CLUSTER",
        "CEPH_CONF",
    ] {
        assert!(page.contains(var), "ENVIRONMENT does not mention {var}");
    }
    assert!(page.contains("Do not defragment revisions."));
}

/// The verbatim example after `.SS heading` in the rendered page, unescaped.
fn man_page_example(heading: &str) -> String {
    let page = backy::manpage::render();
    let section = page
        .split_once(&format!(".SS {heading}\n"))
        .unwrap_or_else(|| panic!("no subsection {heading}"))
        .1;
    let example = section.split_once(".EX\n").unwrap().1;
    let example = example.split_once(".EE\n").unwrap().0;
    example
        .lines()
        .map(|line| match line {
            ".sp" => String::new(),
            _ => line
                .replace(r"\-", "-")
                .replace(r"\&", "")
                .replace(r"\*(Aq", "'")
                .replace(r"\\", r"\"),
        })
        .map(|line| line + "\n")
        .collect()
}

#[test]
fn example_configurations_are_valid() {
    let examples = [
        (
            "contrib/backy.conf.example",
            fs::read_to_string(repo_path("contrib/backy.conf.example")).unwrap(),
        ),
        ("the man page's example", man_page_example("Example")),
    ];
    for (name, text) in examples {
        if let Err(problems) = backy::schedule::config::Config::parse(&text) {
            panic!("{name} is not a valid configuration:\n{problems}\n\n{text}");
        }
    }
}

/// `groff -man -ww` over the page, at `width` columns; returns (stdout, stderr).
fn groff(width: u32) -> Option<(String, String)> {
    let Some(groff) = find_tool("groff") else {
        // A documentation tool, not something backy needs: skip even in CI.
        eprintln!("skipping: groff is not installed (apt-get install groff-base)");
        return None;
    };
    let mut child = Command::new(groff)
        .args(["-man", "-Tutf8", "-ww", &format!("-rLL={width}n")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let page = backy::manpage::render();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        stdin.write_all(page.as_bytes()).unwrap();
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success(), "groff failed: {out:?}");
    Some((
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[test]
fn man_page_renders_without_warnings_in_80_columns() {
    let Some((text, warnings)) = groff(80) else {
        return;
    };
    assert_eq!(warnings, "", "groff warns about the man page");
    let lines: Vec<String> = text.lines().map(plain).collect();
    for line in &lines {
        assert!(
            line.chars().count() <= 80,
            "a line of the man page is wider than 80 columns: {line:?}"
        );
    }
    assert!(lines.iter().any(|l| l == "REVISION SPECIFICATIONS"));
    assert!(
        lines
            .iter()
            .any(|l| l.trim() == "btrfs scrub start -B /srv/backy")
    );
}

/// A line of terminal output as plain text: without ANSI SGR escapes
/// (`ESC [ ... m`) and without the overstrikes (`x BS x`, `_ BS x`) that make
/// bold and underlined text.
fn plain(line: &str) -> String {
    let mut out: Vec<char> = Vec::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                for c in chars.by_ref() {
                    if c == 'm' {
                        break;
                    }
                }
            }
            '\u{8}' => {
                out.pop();
            }
            _ => out.push(c),
        }
    }
    out.into_iter().collect()
}
