//! The manual page `backy(1)`.
//!
//! The title, NAME, SYNOPSIS, DESCRIPTION, global OPTIONS and VERSION come from the
//! clap definitions in [`crate::cli`] through `clap_mangen`. The COMMANDS section is
//! rendered here from the same definitions, one subsection per subcommand with its
//! options, because `clap_mangen` only lists subcommands as references to separate
//! pages (`backy-init(1)`) that do not exist. The remaining sections are prose,
//! written below in a small line-oriented markup (see [`Markup`]) so that roff
//! escaping is done by the `roff` crate, not by hand.
//!
//! `man/backy.1` is generated from [`render`] by `scripts/gen-man.sh`;
//! `tests/manpage.rs` fails when the committed page is stale.

use clap::builder::PossibleValue;
use clap::{Arg, ArgAction, Command, CommandFactory};
use clap_mangen::Man;
use clap_mangen::roff::{Inline, Roff, bold, italic, roman};

use crate::cli::Cli;

/// The complete man page, as roff source for `man -l`.
pub fn render() -> String {
    let cmd = Cli::command().long_about(DESCRIPTION);
    let man = Man::new(cmd.clone()).title("BACKY").manual("backy manual");
    let mut page = Page::default();
    page.mangen(|w| man.render_title(w));
    page.roff(&layout());
    page.mangen(|w| man.render_name_section(w));
    page.mangen(|w| man.render_synopsis_section(w));
    page.roff(&command_synopses(&cmd));
    page.mangen(|w| man.render_description_section(w));
    page.mangen(|w| man.render_options_section(w));
    page.roff(&commands_section(&cmd));
    for section in SECTIONS {
        page.roff(&Markup::parse(section));
    }
    page.mangen(|w| man.render_version_section(w));
    page.text
}

/// No hyphenation (it would break option names such as `--reflink=always` when
/// copied from the page) and a ragged right margin, as mandoc renders pages.
fn layout() -> Roff {
    let mut roff = Roff::new();
    roff.control("nh", []).control("ad", ["l"]);
    roff
}

/// Concatenates roff fragments, each of which starts with the same preamble
/// (a string definition that keeps apostrophes upright); only the first keeps it.
#[derive(Default)]
struct Page {
    text: String,
}

impl Page {
    fn mangen(&mut self, f: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>) {
        let mut buf = Vec::new();
        f(&mut buf).expect("writing roff to memory cannot fail");
        self.push(String::from_utf8(buf).expect("roff output of UTF-8 input is UTF-8"));
    }

    fn roff(&mut self, roff: &Roff) {
        self.push(roff.render());
    }

    fn push(&mut self, fragment: String) {
        let preamble = Roff::new().render();
        match fragment.strip_prefix(&preamble) {
            Some(body) if !self.text.is_empty() => self.text.push_str(body),
            _ => self.text.push_str(&fragment),
        }
    }
}

// ---------------------------------------------------------------------------
// Generated from the clap definitions

/// The command's own arguments: neither the propagated global ones nor help/version.
fn own_args(cmd: &Command) -> Vec<&Arg> {
    cmd.get_arguments()
        .filter(|a| !a.is_hide_set() && !a.is_global_set())
        .filter(|a| !matches!(a.get_action(), ArgAction::Help | ArgAction::Version))
        .collect()
}

fn value_name(arg: &Arg) -> String {
    match arg.get_value_names() {
        Some(names) => names.join(" "),
        None => arg.get_id().as_str().to_uppercase(),
    }
}

fn takes_value(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::Set | ArgAction::Append)
}

/// One synopsis line per subcommand, below `clap_mangen`'s generic one.
fn command_synopses(cmd: &Command) -> Roff {
    let mut roff = Roff::new();
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        roff.control("br", []);
        roff.text(synopsis(sub));
    }
    roff
}

/// `backy [GLOBAL OPTIONS] restore [-r SPEC] [-f] TARGET`.
fn synopsis(sub: &Command) -> Vec<Inline> {
    let mut line = vec![
        bold("backy"),
        roman(" ["),
        italic("GLOBAL OPTIONS"),
        roman("] "),
        bold(sub.get_name()),
    ];
    let args = own_args(sub);
    let (positionals, options): (Vec<&Arg>, Vec<&Arg>) =
        args.into_iter().partition(|a| a.is_positional());
    for arg in options.into_iter().chain(positionals) {
        let required = arg.is_required_set();
        line.push(roman(if required { " " } else { " [" }));
        if !arg.is_positional() {
            let flag = match (arg.get_short(), arg.get_long()) {
                (Some(short), _) => format!("-{short}"),
                (None, Some(long)) => format!("--{long}"),
                (None, None) => continue,
            };
            line.push(bold(flag));
            if takes_value(arg) {
                line.push(roman(" "));
            }
        }
        if arg.is_positional() || takes_value(arg) {
            line.push(italic(value_name(arg)));
        }
        if !required {
            line.push(roman("]"));
        }
    }
    line
}

/// COMMANDS: per subcommand its synopsis, help, options and, where written, more.
fn commands_section(cmd: &Command) -> Roff {
    let mut roff = Roff::new();
    roff.control("SH", ["COMMANDS"]);
    roff.text([roman(
        "The global options go before the command, the command's own options after it.",
    )]);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        roff.control("SS", [sub.get_name()]);
        roff.text(synopsis(sub));
        if let Some(about) = sub.get_long_about().or_else(|| sub.get_about()) {
            roff.control("PP", []);
            roff.text([roman(about.to_string())]);
        }
        let args = own_args(sub);
        let (positionals, options): (Vec<&Arg>, Vec<&Arg>) =
            args.into_iter().partition(|a| a.is_positional());
        for arg in options.into_iter().chain(positionals) {
            render_arg(&mut roff, arg);
        }
        if let Some(more) = COMMAND_DETAILS.iter().find(|(n, _)| *n == sub.get_name()) {
            roff.control("PP", []);
            roff.extend([Markup::parse(more.1)]);
        }
    }
    roff
}

fn render_arg(roff: &mut Roff, arg: &Arg) {
    let mut header = Vec::new();
    if arg.is_positional() {
        header.push(italic(value_name(arg)));
    } else {
        if let Some(short) = arg.get_short() {
            header.push(bold(format!("-{short}")));
            if arg.get_long().is_some() {
                header.push(roman(", "));
            }
        }
        if let Some(long) = arg.get_long() {
            header.push(bold(format!("--{long}")));
        }
        if takes_value(arg) {
            header.push(roman(" "));
            header.push(italic(value_name(arg)));
        }
    }
    let defaults: Vec<String> = arg
        .get_default_values()
        .iter()
        .map(|v| v.to_string_lossy().into_owned())
        .collect();
    if !defaults.is_empty() && !arg.is_hide_default_value_set() {
        header.push(roman(format!(" (default: {})", defaults.join(","))));
    }
    roff.control("TP", []);
    roff.text(header);
    let help = arg.get_long_help().or_else(|| arg.get_help());
    roff.text([roman(help.map(|h| h.to_string()).unwrap_or_default())]);
    if arg.is_positional() || takes_value(arg) {
        render_possible_values(roff, &arg.get_possible_values());
    }
}

fn render_possible_values(roff: &mut Roff, values: &[PossibleValue]) {
    let values: Vec<&PossibleValue> = values.iter().filter(|v| !v.is_hide_set()).collect();
    if values.is_empty() {
        return;
    }
    if values.iter().all(|v| v.get_help().is_none()) {
        let mut line = vec![roman(" One of: ")];
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                line.push(roman(", "));
            }
            line.push(bold(v.get_name()));
        }
        line.push(roman("."));
        roff.text(line);
        return;
    }
    roff.control("RS", []);
    for v in values {
        roff.control("TP", []);
        roff.text([bold(v.get_name())]);
        roff.text([roman(
            v.get_help().map(|h| h.to_string()).unwrap_or_default(),
        )]);
    }
    roff.control("RE", []);
}

// ---------------------------------------------------------------------------
// The markup

/// A tiny markup for the prose sections, line by line:
///
/// - `# TITLE` starts a section (`.SH`), `## Title` a subsection (`.SS`);
/// - an empty line ends a paragraph;
/// - `: term` starts a tagged paragraph (`.TP`); the lines after it are its body;
/// - `- text` starts a bullet item;
/// - a line of three backticks opens or closes a verbatim example (`.EX`);
/// - any other line is text. Inside text, `` `literal` `` is bold and `*name*`
///   italic; a backslash makes the next character literal.
struct Markup;

impl Markup {
    fn parse(src: &str) -> Roff {
        let mut roff = Roff::new();
        // Whether the next text line starts a new paragraph, and whether that
        // paragraph follows a tagged one (then it needs `.PP` to end the indent).
        let mut new_paragraph = false;
        let mut verbatim = false;
        for line in src.lines() {
            if line.trim_end() == "```" {
                if verbatim {
                    roff.control("EE", []).control("RE", []);
                    new_paragraph = true;
                } else {
                    roff.control("PP", [])
                        .control("RS", ["4"])
                        .control("EX", []);
                }
                verbatim = !verbatim;
            } else if verbatim {
                if line.is_empty() {
                    roff.control("sp", []);
                } else {
                    roff.text([roman(line)]);
                }
            } else if let Some(title) = line.strip_prefix("## ") {
                roff.control("SS", [title]);
                new_paragraph = false;
            } else if let Some(title) = line.strip_prefix("# ") {
                roff.control("SH", [title]);
                new_paragraph = false;
            } else if line.trim().is_empty() {
                new_paragraph = true;
            } else if let Some(term) = line.strip_prefix(": ") {
                roff.control("TP", []);
                roff.text(inline(term));
                new_paragraph = false;
            } else if let Some(item) = line.strip_prefix("- ") {
                roff.control("IP", ["\\(bu", "2"]);
                roff.text(inline(item));
                new_paragraph = false;
            } else {
                if new_paragraph {
                    roff.control("PP", []);
                    new_paragraph = false;
                }
                roff.text(inline(line.trim_start()));
            }
        }
        assert!(!verbatim, "unterminated ``` block in the man page source");
        roff
    }
}

/// Splits a text line into roman, `` `bold` `` and `*italic*` runs.
fn inline(line: &str) -> Vec<Inline> {
    #[derive(Clone, Copy, PartialEq)]
    enum Font {
        Roman,
        Bold,
        Italic,
    }
    let mut out = Vec::new();
    let mut font = Font::Roman;
    let mut run = String::new();
    let flush = |out: &mut Vec<Inline>, run: &mut String, font: Font| {
        if !run.is_empty() {
            let text = std::mem::take(run);
            out.push(match font {
                Font::Roman => roman(text),
                Font::Bold => bold(text),
                Font::Italic => italic(text),
            });
        }
    };
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        let next = match (c, font) {
            ('\\', _) => {
                run.extend(chars.next());
                continue;
            }
            ('`', Font::Bold) | ('*', Font::Italic) => Font::Roman,
            ('`', Font::Roman) => Font::Bold,
            ('*', Font::Roman) => Font::Italic,
            _ => {
                run.push(c);
                continue;
            }
        };
        flush(&mut out, &mut run, font);
        font = next;
    }
    assert!(
        font == Font::Roman,
        "unbalanced markup in man page line: {line}"
    );
    flush(&mut out, &mut run, font);
    out
}

// ---------------------------------------------------------------------------
// The prose

/// DESCRIPTION, as plain text for `clap_mangen` (an empty line starts a paragraph).
const DESCRIPTION: &str = "\
backy backs up virtual machine disk images on a dedicated backup server. \
Every backup revision is a full, sparse, raw image file in the job's directory. \
A new revision is a reflink clone (FICLONE) of the previous one, patched with only \
what changed, so the copy-on-write filesystem (btrfs, XFS made with reflink=1, ZFS) \
shares everything else: a year of daily revisions of a 100 GiB disk costs 100 GiB \
plus the changes. Revisions are ordinary files, so cp, dd, rsync, losetup and kpartx \
restore from them without backy.

Usually backy scheduler runs from the init system with a configuration file that \
describes all jobs. A job is a source (an image file, a block device, or a Ceph RBD \
image) and a schedule, and owns a job directory below the base directory. The \
scheduler runs the low-level commands (backup, expire) when they are due. Commands \
run by hand take the same locks and do not disturb it.

Each revision carries tags such as daily or weekly. The schedule gives each tag an \
interval and a number of revisions to keep; a tag expires on old revisions, and a \
revision is deleted when its last tag is gone.

Each backup is verified before it counts: the new image is read back and compared \
with checksums taken from the source. A revision is complete only when its metadata \
says so; an interrupted backup leaves an incomplete revision that no command ever \
chooses and the next backup removes.

backy is the successor of the Python backy 2.0/2.1 of Flying Circus. It has the same \
command line and reads and writes the same job directories, in both directions.";

/// More text for some subcommands, appended to their generated subsection.
const COMMAND_DETAILS: &[(&str, &str)] = &[
    (
        "init",
        "\
`backy -b `*DIR*` init file `*PATH* backs up an image file or block device,
`init ceph-rbd `*POOL*`/`*IMAGE* a Ceph RBD image, and
`init flyingcircus `*POOL*`/`*IMAGE*`,`*VM*[`,`*TOKEN*] a Ceph image whose guest is
frozen by its hypervisor, asked through Consul, before each snapshot. The job's
`config` file records the source (see SOURCE TYPES); it is made 0600 when it holds
the token, and the token is shown as `***` in the logged command line. Jobs of the scheduler need no `init`: the scheduler writes each job's
`config` from its configuration file.",
    ),
    (
        "backup",
        "\
Takes the job's backup lock (another backup of the same job makes this one fail at
once), removes incomplete revisions, clones the newest complete revision, lets the
source patch the clone, verifies it, and marks it complete (`stats.duration` in the
`.rev` file, written last). `last` and `last.rev` then point to it.
Only blocks whose checksum changed are compared, and inside them only the 4 KiB pages
that differ are written, so unchanged data stays shared with the parent. All-zero
ranges become holes.

The new revision is dated now, unless the clock is behind the newest revision's date
(the clock was ahead when that one was made, then corrected): then it is dated one
microsecond after it, so that it is the newest for every command, and the backup
warns. Damaged revisions (see `status`) are left alone: never the parent, never
removed. `last` or `last.rev` that are not symbolic links (a copy left by `cp -rL`
or `rsync -L`, a directory) are renamed to *name*`.bak-`*time* and replaced.
A tag that `-r` could never select is refused: a number (`0`, `1`, ...), `last` and
`latest`.

A job directory on a filesystem without reflinks (ext4, tmpfs, NFS) is refused with
a message that names the filesystem, unless `--allow-copy` is given or the job's
`config` says `allow-copy: true`; each revision is then a full sparse copy, recorded
as `reflink: false` in its stats.

When verification finds blocks that differ although the backup shared them unchanged
with the parent, the parent's image is damaged on disk (it no longer holds what its
manifest says). The parent is then marked `distrusted` (logged as a warning, shown by
`status`) and, for the `file` source, the revision is made again at once comparing
every block with the source, so the job heals in the same run. A `ceph-rbd` backup
fails instead; the next one, with the parent distrusted, compares the whole snapshot.

A source that is now empty (0 bytes) while the parent is not gets a warning and
`source_shrunk_to_zero: true` in the revision's stats.",
    ),
    (
        "restore",
        "\
A file target is written sparse; on the same filesystem as the job it is a reflink
clone. A block device is written in full. *TARGET* `-` writes the raw image to
standard output, e.g. `backy -b /srv/backy/vm01 restore -r 1 - | rbd import - rbd/vm01.old`.
A character device or FIFO (`/dev/null`) is written as a stream, without truncation.
Incomplete revisions are never restored.

A target that is a file of the job directory, however it is reached (`last`, the path
`find` prints, a symlink, a hard link, a bind mount, a loop device over an image), or a
new file directly in the job directory, is refused with a message naming the revision it
would destroy; `--force` does not change this.

Before anything is written, the image's size is compared with its checksum manifest; a
mismatch fails the restore and marks the revision distrusted. A distrusted revision, or
one whose backup verified it only partly (`stats.verification` other than `full`, as
with sampled Ceph verification), restores with a warning in the log and on stderr.
With `--verify` every block is compared with the manifest before it is written (a
reflink clone is read back instead); the first mismatch stops the restore with its
offset, marks the revision distrusted and removes a partial file target. A revision
without a manifest (made by backy 2.1) cannot be restored with `--verify`; it restores
with a warning, and for a file job its image size is compared with the source size its
`.rev` records (`bytes_written`).

A block device is opened exclusively (`O_EXCL`), so a device that is mounted or in use
is refused and left untouched. A file target that the restore created or truncated is
removed when the restore fails, e.g. because the target's filesystem is full; the
message names that filesystem's mount point.",
    ),
    (
        "find",
        "\
Prints only the path, for scripts: in the job directory,
`dd if=$(backy find -r daily) of=/dev/vg/vm01 bs=4M` copies the newest daily
revision to a volume.",
    ),
    (
        "status",
        "\
Prints a table of the revisions, oldest first, with the columns Date (UTC), ID, Size,
Durat and Tags (and Trust, and for Ceph jobs Consistency: `frozen` when the
hypervisor froze the guest for the snapshot, `crash` when backy took it without
freezing, `-` for revisions of older versions), followed by a summary such as
`4 revisions containing 10.37 GiB data (estimated)`. *Size* is what the backup wrote
as backy 2.1 counted it (the source size for full backups), *Durat* the backup's
duration in seconds. An incomplete revision shows `0 s`; the next backup removes it;
the summary does not count it.
Tags are listed by their schedule's interval, shortest first, where known.
Then one `Warning:` line for each damaged revision (a `.rev` that cannot be read, or a
complete revision whose image is missing), naming the file and what is wrong, for each
revision dated in the future, and for `last`/`last.rev` when they are not the links
backy writes. A damaged revision is never chosen by `-r`, never a parent, and never
removed except by `forget --force`.
`--json` prints the same as JSON, with `future`, `damaged` (`file`, `reason`),
`consistency` and `consistency_reason` (why the guest was not frozen) per revision.",
    ),
    (
        "verify",
        "\
Re-reads the image and compares every 64 KiB block with the revision's checksum
manifest (`.sums`). A revision that matches is marked `verified`. One that does not
is marked `distrusted`, the offsets of the bad blocks are listed, and the command
exits 1; the next backup of the job then compares the whole source with the image
instead of trusting checksums. A revision made by backy 2.1 has no manifest and
cannot be verified this way; the command says so, and says when the manifest of a
revision this backy made is missing. Without `-r`, damaged revisions are named and
skipped, and a job without complete revisions gets \"Nothing to verify\" (exit 0);
a `-r` that names no revision exits 1.",
    ),
    (
        "forget",
        "\
Deletes the revision's image, `.rev` and `.sums` files, by exact name. A damaged
revision (see `status`) is deleted only with `--force` and its exact ID.",
    ),
    (
        "scheduler",
        "\
Runs in the foreground until SIGTERM; see SCHEDULER CONFIGURATION and SCHEDULING.
Exits with status 69 when another scheduler already holds the base directory's lock.",
    ),
    (
        "check",
        "Prints one Nagios status line (and the late jobs); see MONITORING.",
    ),
    (
        "expire",
        "\
Applies the retention rules of the job's schedule (see SCHEDULING) to the job given
with `-b`, under the job's backup lock, as the scheduler does after each run.",
    ),
    (
        "nbd-server",
        "\
Serves the job's revisions to NBD clients until SIGINT or SIGTERM (see NBD SERVER).
`-p 0` picks a free port; the log line `Serving the revisions of ... on ADDR:PORT`
says which.",
    ),
    (
        "completions",
        "\
For example `backy completions bash > /etc/bash_completion.d/backy`, or for zsh
`backy completions zsh > /usr/local/share/zsh/site-functions/_backy`.",
    ),
];

/// The sections after COMMANDS, in order.
const SECTIONS: &[&str] = &[
    REVISIONS,
    JOB_DIRECTORY,
    SOURCE_TYPES,
    SCHEDULER_CONFIGURATION,
    SCHEDULING,
    MONITORING,
    CONSOLE,
    NBD_SERVER,
    LOGGING,
    ENVIRONMENT,
    EXIT_STATUS,
    FILES,
    BTRFS_MAINTENANCE,
    EXAMPLES,
    SEE_ALSO,
];

const REVISIONS: &str = "\
# REVISION SPECIFICATIONS
The `-r `*SPEC* option of `find`, `restore`, `verify` and `forget` selects one
revision. *SPEC* is tried in this order, and the first rule that matches wins:

- a non-negative integer *N*: the *N*-th newest revision (`0` is the newest, `1` the
  one before). A negative number is an error; a number beyond the history falls
  through to the next rules;
- an exact revision ID, as `backy status` prints it;
- `last` or `latest`: the newest revision;
- a tag: the newest revision carrying it;
- a prefix of exactly one revision ID. A prefix that several IDs share is an error
  that lists them.

Only complete revisions are ever chosen: a backup that is running or crashed is never
\"the newest\", and neither is a damaged revision. `find` and `restore` use `latest`
when `-r` is not given.

Revisions are ordered by their timestamp (then ID), everywhere: `-r`, `last`, the
parent of the next backup, retention and the scheduler's SLA. A backup never dates its
revision before its parent, so the newest is the one made last even after the clock
was set back.

New revision IDs are random UUIDs written in base 57 (22 characters, such as
`Q5N5Ng5kFzNFVv6FDDDCHi`), as backy 2.1 wrote them. IDs from other backy versions
(36-character UUIDs, padded base 57) are used as they are.
";

const JOB_DIRECTORY: &str = "\
# JOB DIRECTORY
A job directory holds one job's revisions; its layout is that of backy 2.1:

```
/srv/backy/            base directory (base-dir)
  .lock                held by the running scheduler
  status               written by the scheduler
  vm01/                a job directory
    .backup            backup lock
    .purge             purge lock
    config             the job's source (YAML)
    ID                 raw sparse image of revision ID
    ID.rev             its metadata (YAML)
    ID.sums            its checksum manifest
    last -> ID         the newest complete revision
    last.rev -> ID.rev
    backy.log          the job's log
```

: *ID*
The revision's disk image: a raw, sparse file exactly as large as the source. It is
an ordinary file: copy it with `cp --reflink=always`, attach it with
`losetup -r`, or map its partitions with `kpartx -av`.
: *ID*`.rev`
A YAML mapping: `uuid`, `timestamp` (UTC), `parent` (the ID of the revision it was
cloned from, or null), `tags` (a list), `stats` (`bytes_written`, `duration` in
seconds and, from this backy, `bytes_changed` and `reflink`), and `trust`
(`trusted`, `distrusted` or `verified`; missing means trusted). The revision is
complete exactly when `stats.duration` is present; that key is written last, in one
atomic rename. Unknown keys are kept when backy rewrites the file.
: *ID*`.sums`
The checksum manifest, written by this backy (the original ignores it): a 4 KiB
header (magic `BACKYSUM`, format version, hash algorithm, block size 65536, digest
length, image size; little-endian), then one 32-byte BLAKE3 digest per 64 KiB block of
the image, 32 zero bytes for an all-zero block. A new revision's manifest is a reflink
clone of its parent's, patched where blocks changed. It lets a backup read only the
source, and `verify` check a revision long after the source has changed. A complete
revision without one (made by backy 2.1) is valid; the next backup compares with its
image instead.
: `.backup`, `.purge`
Locks (`flock`) taken without waiting; a held lock makes the command fail with a
message that names it. A backup holds `.backup` exclusively and `.purge` shared;
`restore` and `verify` hold `.purge` shared; `expire` and `forget` hold both
exclusively. So a manual backup never runs beside the scheduler's backup of the same
job, and no revision is deleted while it is being read.
: `last`, `last.rev`
Relative symbolic links to the newest complete revision. They are convenience only:
a missing or broken link never stops a backup, which replaces a wrong one; a regular
file or directory in their place is renamed to *name*`.bak-`*time*, never deleted.

Job directories written by backy 2.1 are used as they are, and backy 2.1 can use the
ones this backy writes. Job directories of backy 2.2 and later with the chunked
backend are refused with a message; they are not raw images. Deleting a job directory
deletes the job's backups.
";

const SOURCE_TYPES: &str = "\
# SOURCE TYPES
The job's `config` file, and the `source` mapping of a job in the scheduler's
configuration, name the source `type` and its keys:

: `type: file`
`filename`: an image file or block device (a symbolic link to one is followed).
FIFOs, sockets and character devices (such as `/dev/zero`) are refused with a
message naming the type; the source is opened non-blocking and its type checked again
on what was opened. It is read without a snapshot, so it must not change during the
backup (see below). Holes in the file are not read at all, neither in the source nor
in the new image, so a sparse source costs what its data costs.
: `type: ceph-rbd`
`pool`, `image`: the RBD image. Each revision *ID* takes a snapshot `backy-`*ID*.
When the parent revision's snapshot still exists, `rbd export-diff --from-snap`
streams only the changes into the clone; otherwise the snapshot's allocated data is
compared with the clone. Only the newest revision's snapshot is kept; other
`backy-*` snapshots are removed, snapshots with other names are never touched.
The new revision is verified by sampling 1% of its 4 MiB blocks (at least one, plus
the tail) against the snapshot within a time limit; the revision records
`ceph-verification: partial`. Optional keys: `full-always: true` (never use diffs,
keep no snapshot), `full-every: `*N* (every *N*th backup compares the whole
snapshot with the clone even when a diff is possible, so that changes a faulty
object map hid from `export-diff` are caught; unchanged data stays shared),
`whole-object: true` (pass `--whole-object` to rbd),
`verification-timeout: `*SECONDS* (default 300). All calls go through the `rbd`
command (see ENVIRONMENT); sampling uses librbd, loaded at run time.
: `type: flyingcircus`
As `ceph-rbd` (with the same optional keys), plus `vm` (the guest), and optionally
`consul_acl_token` (default `$CONSUL_HTTP_TOKEN`), `consul-address`
(*HOST*`:`*PORT* or `http://`*HOST*`:`*PORT* of the Consul agent; default
`$CONSUL_HTTP_ADDR`, else `127.0.0.1:8500`; plain HTTP only) and
`freeze-timeout: `*SECONDS* (default 90). Instead of taking the snapshot itself,
the backup puts the Consul key `snapshot/`*UUID* = `{\"vm\": `*VM*`, \"snapshot\": \"backy-`*ID*`\"}`,
with the token in the `X-Consul-Token` header; the hypervisor freezes the guest's
filesystems (through the QEMU guest agent) and takes the snapshot. backy looks for it
with `rbd snap ls` every 2 seconds until `freeze-timeout` passes, then deletes its key
in any case, together with stale `snapshot/*` keys for the same VM whose snapshot
starts with `backy-` (left by crashed runs). When Consul cannot be reached, refuses
the token, answers like something else, or the hypervisor is too slow, the backup
does not fail: backy takes the snapshot itself and logs a warning that says why. Each
Ceph revision records `consistency: frozen` or `consistency: crash`, and
`consistency_reason` for a fallback; a snapshot the hypervisor made just after backy
stopped waiting is used and counts as frozen. `backy check` warns about jobs that are
not frozen repeatedly (see MONITORING). The token is never logged; a `config` holding
it that others can read gets a warning.

A job's `config` may also say `allow-copy: true` (see `backup --allow-copy`).

## Sources written during a backup
A `file` source that is written while backy reads it gives an image that matches no
state the source ever had, although each block matches what was read. backy checks:

- for a regular file, its size, modification time (mtime), change time (ctime) and
  inode, as `fstat` reports them when it was opened and after it was read, and
  whether its path still names the same file;
- for a block device (whose times do not move when it is written), its size, and,
  after it was read, a second read of the blocks this backup wrote (all of them up
  to 1 GiB, else a random 1 GiB of them) and of a random 1% of the other blocks (at
  most 1 GiB), each compared with the checksum taken in the first read.

A change found fails the backup with \"source *PATH* was written during the
backup\", what changed, and how to freeze the source; the new revision is removed
and the exit status is 75 (see EXIT STATUS).

Not detected: on a block device, writes that touch none of the re-read blocks
(between two backups of a busy device, the written blocks are where writes happen, so
that is where it looks), and writes that leave a block as it was read; on a regular
file, writes that do not move mtime or ctime, which are writes through a shared
memory mapping whose pages were already dirty, and, on kernels before 6.13 (coarse
timestamps), a write in the same clock tick (a few milliseconds) as the start of
the backup. Changes before the backup starts or after it ends are not changes during
the backup. A `ceph-rbd` source reads a snapshot, which does not change, and is not
checked this way.

To back up a source that is in use, freeze it for the backup: back up a snapshot of
it (LVM, btrfs, ZFS, or `ceph-rbd`), `fsfreeze` the guest's filesystems (or use the
guest agent), or stop the VM.
";

const SCHEDULER_CONFIGURATION: &str = "\
# SCHEDULER CONFIGURATION
`backy scheduler` and `backy check` read a YAML file, by default `/etc/backy.conf`,
with three top-level keys. Unknown keys, unknown schedules, unknown source types and
bad values are errors: all problems are reported at once, one line each, starting
with the key's path (such as `jobs.vm01.source.type`). Keys that later backy versions
know (`backend`, `backup-completed-callback`, `cow`, and backy 2.5's `api` and
`peers` sections) are accepted with a warning and have no effect.
## global
Scheduler settings (`config` is accepted as another name for this key, as the backy
2.0 manual called it):

: `base-dir: `*DIR*
Directory that holds one job directory per job. Default `/srv/backy`. It must exist:
the scheduler never creates it, so that an unmounted backup volume does not fill the
filesystem below its mount point. The scheduler refuses to start without it, and a
run finds it missing fails (mount the volume or create the directory).
: `worker-limit: `*N*
How many backups run at the same time. Default 1.
: `status-file: `*PATH*
The status file that `backy check` reads. Default *base-dir*`/status`.
: `status-interval: `*SECONDS*
How often the status file is rewritten, in seconds or with a suffix as for
`interval`. Default 30.
: `telnet-addrs: `*ADDRESSES*
Comma-separated addresses of the console. Default `::1, 127.0.0.1`; an empty string
turns the console off.
: `telnet-port: `*PORT*
Port of the console. Default 6023.
: `run-timeout: `*INTERVAL*
How long a backup may run before the scheduler stops it, as for `interval`; also a
key of each job, which wins. Default: the smallest interval of the job's schedule.
See Running a backup under SCHEDULING.
: `console-timeout: `*INTERVAL*
How long a console connection may stay idle before it is closed, as for
`interval`. Default 10 minutes.
: `crash-consistent-warning: `*N*
After how many crash-consistent revisions in a row a `flyingcircus` job makes
`backy check` report WARNING. Default 3; 0 turns the warning off.
## schedules
Each key names a schedule. A schedule maps tag names (free-form, such as `daily`) to
two parameters:

: `interval: `*INTERVAL*
How often a revision with this tag is made: an integer with an optional suffix `s`
(seconds), `m` (minutes), `h` (hours), `d` (days) or `w` (weeks), such as `1d`,
`12h` or `1w`. A bare integer, quoted or not, means seconds.
: `keep: `*N*
A positive integer: how many revisions with this tag are kept at least (see
Retention under SCHEDULING).
## jobs
Each key names a job; its job directory is *base-dir*`/`*job*.

: `schedule: `*NAME*
One of the schedules.
: `source:`
A mapping with the source `type` and its keys (see SOURCE TYPES). The scheduler
writes it to the job's `config` file before each run when it changed.
: `allow-copy: true`
Back up this job even on a filesystem without reflinks, with full copies (see
`backup --allow-copy`).
: `run-timeout: `*INTERVAL*
This job's run timeout (see `global`).
## Example
```
global:
  base-dir: /srv/backy
  worker-limit: 3
  status-interval: 30
  telnet-addrs: \"::1, 127.0.0.1\"
  telnet-port: 6023
schedules:
  default:
    daily:   {interval: 1d,  keep: 9}
    weekly:  {interval: 7d,  keep: 5}
    monthly: {interval: 30d, keep: 4}
  frequent:
    hourly:  {interval: 1h, keep: 24}
    daily:   {interval: 1d, keep: 7}
    weekly:  {interval: 1w, keep: 12}
jobs:
  vm01:
    schedule: default
    source: {type: file, filename: /var/lib/vm/vm01.img}
  vm02:
    schedule: frequent
    source:
      type: ceph-rbd
      pool: rbd
      image: vm02.root
  vm03:
    schedule: default
    source:
      type: flyingcircus
      pool: rbd
      image: vm03.root
      vm: vm03
      consul_acl_token: a211c244-846b-11e5-999b-081196cf15b4
      freeze-timeout: 60
```

The default schedule keeps at least 9 daily, 5 weekly and 4 monthly revisions; a
monthly run is also a weekly and a daily one when their times coincide.
";

const SCHEDULING: &str = "\
# SCHEDULING
## Spread
Each job gets a fixed offset between 0 and the largest interval of its schedule,
computed from the MD5 of the job's name exactly as backy 2.x computed it. Jobs thus
spread evenly over the day, keep their time across restarts, and keep it when a site
moves from the Python scheduler.
## Run times
The run times of a tag are 0001-01-01 00:00 UTC plus a multiple of its interval plus
the job's offset modulo the interval: a daily tag runs at a fixed time of day (UTC),
a `7d` tag on a fixed weekday. A job's next run is the earliest run time of its tags,
and it carries every tag due at that moment.
## Catch-up
A tag is missed when the job has no complete revision with that tag younger than the
tag's interval, for example after the backup server was down. A job without any
revision is backed up at once with all tags. Missed tags run at once, alone, when the
job's next run is more than 5 minutes away, and join the next run otherwise. A running
job is never counted as overdue.
## Running a backup
For each run the scheduler writes the job's `config` and starts
`backy -b `*base-dir*`/`*job*` -l `*base-dir*`/`*job*`/backy.log backup `*tags*,
with the child's output appended to the same log: at most `worker-limit` at a time,
earliest run time first. It starts the `backy` beside its own executable, not the one
on `PATH` (`BACKY_CMD` overrides). The logged command line quotes words as a shell
would. The scheduler reads the child's standard error: the child's closing
`backy: `*error* line is not copied into the job log (the child logged it there
already) but becomes the reason the scheduler logs; when the job log cannot be
written (a full filesystem) the scheduler's own log says so.

A failing backup is logged with its reason (the exit status and the child's error,
or the signal that ended it) and retried after 2, 4, 8, ... minutes, at most 6 hours
(min(2^*n*, 360) minutes after *n* failures in a row). A success resets the count; a
`run` from the console does not. Exit status 75 (the source was written during the
backup) gets its own line, which says so and advises to freeze or snapshot the
source.

A backup that runs longer than its `run-timeout` (a source that blocks, a hung
storage) is stopped: SIGTERM, then SIGKILL if it has not ended after the timeout
again (at most 30 seconds later). The run counts as failed, with backoff as any
failure, and the log says so, so that one stuck job cannot hold the workers while the
others fall out of their SLA. A backup whose job a reload removed runs to its end (or
its timeout), and its end is logged.
## Retention
After each run the scheduler expires the job's revisions under the job's backup lock
(`backy expire` does the same by hand). For each tag of the schedule it takes the
complete revisions with that tag, oldest first. If there are at least `keep` of them,
the tag is removed from every revision that is both older than the newest `keep` ones
and older than `keep` times the interval. Revisions left without tags are then
deleted. With `daily: {interval: 1d, keep: 9}`, the nine newest daily revisions and
all daily revisions of the last nine days stay.

Tags that the schedule does not name (given by hand to `backy backup`) never expire,
and neither do tags that start with `manual:`. Incomplete revisions are not counted.
## Status file
Every `status-interval` seconds the scheduler replaces the status file (atomically)
with a YAML list of one mapping per job: `job`; `sla` (`OK` or `TOO OLD`); `status`
(`waiting for deadline`, `queued for execution`, `running`, `failed` or `finished`);
`last_time`, `last_tags`, `last_duration` for the newest complete revision; and
`next_time`, `next_tags`. Times are written as `2015-11-05 11:56:10 UTC`, durations
as `50.7 s`, and `-` stands for none. While a job's latest run failed, two more keys
say why (we add them; older readers ignore them): `last_failure`, for people, and
`last_failure_kind`, one of `source-written`, `timeout`, `exit`, `signal`, `start`
and `base-dir-missing`.
## Signals
The scheduler holds a lock on *base-dir*`/.lock`; a second scheduler for the same
base directory exits with status 69. SIGTERM, SIGINT and SIGQUIT stop the scheduler
cleanly: a running backup either finishes or is stopped, and never leaves a revision
that looks complete but is not. SIGHUP reloads the configuration file (a bad new
configuration is logged and the old one kept) and reopens the log file.
";

const MONITORING: &str = "\
# MONITORING
`backy check -c `*CONFIG* reads the configuration that the scheduler uses and the
status file it names, and compares the two. It prints one line for Nagios-compatible
monitoring, with performance data after a `|` (`jobs=`*n* configured jobs,
`out_of_sla=`*n*, and `oldest_backup_age=`*seconds*`s`, the age of the oldest
newest backup over all jobs, `U` when no job has one), then one line per job or file
concerned. The first line is the worst of:

: `OK: `*n*` jobs within SLA`
Every configured job is in the status file and within its SLA. Exit status 0.
: `WARNING: `...
A job within its SLA whose latest backup failed because the source was written
during it, or a job in the status file that the configuration no longer has (the
scheduler runs an older configuration: reload it). Exit status 1.
: `CRITICAL: `*n*` jobs not within SLA`
Followed by one line *job*` (last time: `*time*`)` per late job, with the reason
of the latest failed run after it. Exit status 2.
: `CRITICAL: `*n*` jobs configured but not scheduled`
A configured job is missing from the status file (an empty status file lists none):
the running scheduler does not back it up, so it is CRITICAL, not UNKNOWN, until the
scheduler is reloaded (SIGHUP) or restarted. Exit status 2.
: `CRITICAL: Status file `*path*` is older than 5 minutes` ...
The scheduler is not running, or hangs. The limit is 5 minutes or twice the
configured `status-interval`, whichever is longer, and the line says how old the file
is. Exit status 2.
: `UNKNOWN: No status file found at `*path*
Exit status 3.

Several findings are joined with `;` on the first line, the worst first.

A job is within its SLA when its newest complete revision is younger than 1.5 times
the smallest interval of its schedule: 36 hours for a daily schedule. A job that has
never completed a backup is out of SLA once it has existed longer than that.
Incomplete revisions do not count.

A revision dated in the future does not count either (its age is unknown): the job
is within its SLA while the scheduler has seen a backup succeed recently enough.
Damaged revision files and revisions dated in the future make the check report
`WARNING: `*n*` of `*m*` jobs have damaged or future-dated revisions` with one
*job*`: `*problem* line each, exit status 1 (after the late jobs, when there are any).
A `flyingcircus` job whose last `crash-consistent-warning` (default 3) revisions were
all crash-consistent, because the guest could not be frozen, makes it report
`WARNING: `*n*` flyingcircus jobs are not frozen: `*jobs* with one *job*`: `*why*
line each, exit status 1 (likewise after the late jobs); a frozen revision ends it.
";

const CONSOLE: &str = "\
# TELNET CONSOLE
The scheduler serves a console for live inspection on `telnet-addrs` and
`telnet-port` (default `::1` and `127.0.0.1`, port 6023), and nowhere else. It has no
authentication: keep it on the loopback addresses. Connect with
`telnet localhost 6023`. The prompt shows the version, as in `backy-3.0.0 %`.
Commands:

: `jobs` [*REGEX*]
A table of the jobs, sorted by name: Job, SLA, Status, Last Backup (UTC), Last Tags,
Last Dur, Next Backup (UTC), Next Tags, and when there are Ceph jobs Consistency
(the newest revision's `frozen` or `crash`, `crash (WARNING)` for a job that
`backy check` warns about); then *n*` jobs shown`. *REGEX* is a regular
expression searched anywhere in the job name.
: `status`
How many jobs are in each status.
: `run `*job*
Starts the job's backup now instead of at its next run time. An unknown job gets
`Unknown job `*job*.
: `runall`
As `run`, for every job.
: `help`
Lists the commands.
: `quit`, `exit`
Close the connection.

Anything else gets *cmd*`: command not found.` The console runs nothing but these
commands. Below the `jobs` table, each job whose latest run failed gets a line with
the reason. At most 32 clients are served at once; a connection that sends nothing
for `console-timeout` (default 10 minutes) is told so and closed.
";

const NBD_SERVER: &str = "\
# NBD SERVER
`backy nbd-server` serves the job's complete revisions over the NBD protocol (fixed
newstyle handshake) to `nbd-client`, `qemu-img`, `qemu-io`, `nbdinfo`, `nbdcopy`,
`nbdfuse` and other clients. It listens on 127.0.0.1 port 9000 unless `-H`, `-p` or
`--socket` say otherwise; a non-loopback address gets a warning, since NBD has no
authentication.

The export name is any revision specification (see REVISION SPECIFICATIONS): an
ID, a number, a tag, `last`, a unique prefix; the empty name is the newest
revision. Listing the exports (`nbd-client -l`, `nbdinfo --list`) shows the bare
IDs, newest first, with date and tags as descriptions. Incomplete and damaged
revisions are never served. Reads of holes are reported as holes (structured
replies, `base:allocation` block status), so `qemu-img convert` and `nbdcopy` write
sparse copies.

Exports are read-only: writes get `EPERM`. With `--overlay` each export is writable
through a throw-away reflink clone of the revision (`.nbd-overlay.*` in the job
directory), shared by all connections to that export and removed when the last one
disconnects; a filesystem whose journal needs recovery can then be mounted. The
revision itself never changes.

The server takes no job lock: backups and expiry run as usual. A client that is
reading a revision that `expire` or `forget` removes goes on reading it until it
disconnects; the revision is no longer listed.

Limits: `--max-connections` (default 16) connections at once (more are refused with
a message), 64 options and 30 seconds per handshake, 64 KiB of option data, names
of 4096 bytes, 32 MiB per request. There is no idle timeout once an export is open:
a mount may sit idle for hours. SIGINT or SIGTERM lets requests in flight finish.

Single-file restore on a machine with the nbd kernel module (`-b 512` for kernels
whose default block size is larger than the guest's sectors):

```
cd /srv/backy/vm01; backy nbd-server
nbd-client -b 512 -N daily localhost 9000 /dev/nbd0
mount -o ro /dev/nbd0p1 /mnt/restore
```

Without it, `nbdfuse` makes the export a file that a loop device can mount at the
partition's offset (see EXAMPLES). A VM can even run straight from a revision with
`--overlay`: `qemu-system-x86_64 -drive file=nbd://127.0.0.1:9000/daily,format=raw ...`.
";

const LOGGING: &str = "\
# LOGGING
Without `-l`, log lines go to standard error, never to standard output, so that
`restore -` stays clean. With `-l `*FILE* they are appended to *FILE*, as
`2015-11-05 11:56:10 [`*pid*`] INFO `*message* (UTC). A command's lines start
with its command line after `$`, as in `$ backy backup daily`, and end with
`Backy operation complete.` or `Backy operation failed.` Each line of a message that
spans lines carries the time stamp. If the log file cannot be written (a full
filesystem), the lines go to standard error instead.

SIGTERM and SIGINT stop `backup`, `restore`, `verify`, `expire`, `forget` and
`init`: the command stops at its next chunk, cleans up as after any failure (a
backup removes its incomplete revision), logs `Backy operation failed.` and exits
with 128 plus the signal number. A command that does not stop within 5 seconds (one
blocked in the kernel), or gets a second signal, exits at once; the next backup then
removes what it left.

Output on standard output that cannot be written is an error, such as
`cannot write to stdout: No space left on device` for a full disk (exit status 1); a reader that went
away (`backy status | head -1`) ends the command quietly with exit status 141, as a
shell reports SIGPIPE.

The log file is reopened when it has been renamed or removed, so logrotate needs
neither `copytruncate` nor a signal. A progress bar is shown only when standard error
is a terminal.
";

const ENVIRONMENT: &str = "\
# ENVIRONMENT
: `BACKY_CMD`
The `backy` program the scheduler runs for each backup. Default: the `backy` in the
directory of the running scheduler's executable.
: `BACKY_RBD`
The `rbd` program used for Ceph sources. Default `rbd` from `PATH`.
: `CEPH_ARGS`
Extra arguments for every Ceph client, such as `--id backy`; passed to `rbd`
unchanged.
: `CEPH_CLUSTER`
The Ceph cluster name (default `ceph`), which selects `/etc/ceph/`*cluster*`.conf`;
passed to `rbd` and librbd.
: `CEPH_CONF`
The Ceph configuration file; passed to `rbd` and librbd.
: `CONSUL_HTTP_ADDR`
The Consul agent of `flyingcircus` jobs without `consul-address`, as
*HOST*`:`*PORT* or `http://`*HOST*`:`*PORT*. Default `127.0.0.1:8500`.
: `CONSUL_HTTP_TOKEN`
The Consul ACL token of `flyingcircus` jobs without `consul_acl_token`.

All times that backy shows or writes are UTC, whatever `TZ` says.
";

const EXIT_STATUS: &str = "\
# EXIT STATUS
: 0
Success.
: 1
Any failure: a bad argument value, a missing source, a failed verification, a held
lock, a full disk. The message says what and where. Also `backy check`: WARNING.
: 2
A command-line usage error (unknown option, missing argument).
Also `backy check`: CRITICAL. (`backy check`: 1 is WARNING.)
: 3
`backy check`: UNKNOWN (no status file).
: 69
`backy scheduler`: another scheduler holds the base directory's lock. A service
manager should not restart it (`RestartPreventExitStatus=69`).
: 75
`backy backup`: the source was written during the backup (EX_TEMPFAIL; see
\"Sources written during a backup\"). No revision was made; the next try may work,
but only a frozen source is sure to.
: 130, 143
Stopped by SIGINT or SIGTERM (see LOGGING).
: 141
Standard output was a pipe whose reader went away.
";

const FILES: &str = "\
# FILES
: `/etc/backy.conf`
The scheduler's configuration (see SCHEDULER CONFIGURATION).
: `/srv/backy`
The default base directory, with one job directory per job.
: `/srv/backy/.lock`
Held by the running scheduler.
: `/srv/backy/status`
The status file that `backy check` reads.
: `/srv/backy/`*job*`/config`
The job's source, written by `backy init` or by the scheduler, so that the low-level
commands work in the job directory without the scheduler's configuration.
: `/srv/backy/`*job*`/backy.log`
The job's log, written by the backups the scheduler starts.

The source distribution's `contrib/` directory has a systemd unit for the scheduler,
a logrotate configuration, a systemd timer for btrfs maintenance, and an example
configuration.
";

const BTRFS_MAINTENANCE: &str = "\
# BTRFS MAINTENANCE
Put the base directory on a filesystem that shares data between reflinked files:
btrfs, XFS made with `mkfs.xfs -m reflink=1`, or ZFS with block cloning. Without
reflinks backy refuses to run unless told to make full copies.

*Do not defragment revisions.* `btrfs filesystem defragment` rewrites the extents it
defragments and so unshares them from every other revision that shared them: each
revision then occupies its full size. The backy 2.0 manual recommended
`btrfs filesystem defragment -r /srv/backy` in a cron job; do not follow that advice.
Measured on a loop-mounted btrfs (Linux 6.18, btrfs-progs 6.2): a 256 MiB image and
five reflinked revisions of it, each with 16 changed 4 KiB pages, used 256.3 MiB of
data (`btrfs filesystem du -s`: 1.50 GiB total, 256.25 MiB shared, 64 KiB exclusive).
After `btrfs filesystem defragment -r` on the directory they used 1.49 GiB (1.48 GiB
exclusive, 4 MiB shared): six times the space. Do not mount with `autodefrag` either;
it unshares data the same way. The same holds for any tool that rewrites a
revision's data.

Revisions do fragment over time, which makes reading old revisions slower than
reading a plain file; that is the price of sharing. What keeps a btrfs backup store
healthy is, monthly:

```
btrfs scrub start -B /srv/backy
btrfs balance start -dusage=50 -musage=50 /srv/backy
```

Scrub reads all data and metadata and checks their checksums (and repairs them from
the second copy where there is one), so silent corruption is found before a restore
needs the data. The filtered balance compacts block groups that are less than half
full and returns them to the free pool, which prevents running out of metadata space
while `df` still shows free space; relocated extents stay shared. A full balance, as
the backy 2.0 manual suggested, rewrites the whole filesystem and is not needed.
`contrib/btrfs-maintenance.timer` runs both once a month. Mounting with
`compress=zstd` works with reflinks and saves space on most images.
";

const EXAMPLES: &str = "\
# EXAMPLES
Back up an image file by hand, list its revisions and restore one:

```
backy -b /srv/backy/vm01 init file /var/lib/vm/vm01.img
backy -b /srv/backy/vm01 backup daily,weekly
backy -b /srv/backy/vm01 status
backy -b /srv/backy/vm01 restore -r daily /tmp/vm01.img
backy -b /srv/backy/vm01 restore -r 0 /dev/vg/vm01
```

Copy a revision instantly on the same filesystem, or stream one into Ceph
(`-b` defaults to the current directory):

```
cd /srv/backy/vm01
cp --reflink=always \"$(backy find -r daily)\" /tmp/vm01.img
backy restore -r 1 - | rbd import - rbd/vm01.restored
```

Get files out of a revision without copying it, with a loop device at the
partition's offset (`fdisk -l` or `parted ... unit B print` tell the offset;
1048576 is the usual first partition):

```
cd /srv/backy/vm01
losetup --find --show -r -o 1048576 \"$(backy find -r daily)\"
mount -o ro /dev/loop0 /mnt/restore
cp /mnt/restore/home/user/important-file /tmp/
umount /mnt/restore; losetup -d /dev/loop0
```

The same through NBD, from another machine or with a dirty journal (see NBD SERVER):

```
cd /srv/backy/vm01; backy nbd-server --overlay &
nbdfuse /mnt/nbd/disk nbd://127.0.0.1:9000/daily &
losetup --find --show -o 1048576 /mnt/nbd/disk
mount /dev/loop0 /mnt/restore
```

Run the scheduler in the foreground and check it:

```
backy -l /var/log/backy/scheduler.log scheduler -c /etc/backy.conf
backy check -c /etc/backy.conf
```
";

const SEE_ALSO: &str = "\
# SEE ALSO
*btrfs-filesystem*(8), *btrfs-scrub*(8), *btrfs-balance*(8), *cp*(1), *fsfreeze*(8),
*kpartx*(8), *losetup*(8), *rbd*(8), *logrotate*(8), *systemd.service*(5)
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_markup_splits_fonts_and_honours_escapes() {
        let got = inline(r"a `b `*c*` d` \*e\* `f*g`");
        assert_eq!(
            got,
            vec![
                roman("a "),
                bold("b "),
                italic("c"),
                bold(" d"),
                roman(" *e* "),
                bold("f*g"),
            ]
        );
    }

    #[test]
    fn markup_makes_sections_lists_and_examples() {
        let roff = Markup::parse("# S\ntext\n\n: `t`\nbody\n\nafter\n```\nx -y\n\n```\n- item\n");
        let out = roff.to_roff();
        assert_eq!(
            out,
            ".SH S\ntext\n.TP\n\\fBt\\fR\nbody\n.PP\nafter\n.PP\n.RS 4\n.EX\nx \\-y\n.sp\n.EE\n.RE\n\
             .IP \\(bu 2\nitem\n"
        );
    }

    #[test]
    fn every_subcommand_has_a_subsection() {
        let page = render();
        for sub in Cli::command().get_subcommands() {
            assert!(
                page.contains(&format!(".SS {}\n", sub.get_name())),
                "no subsection for {}",
                sub.get_name()
            );
        }
    }
}
