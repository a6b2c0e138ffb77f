//! The manual page `backy(1)`.
//!
//! The title, NAME, SYNOPSIS, DESCRIPTION, global OPTIONS and VERSION come from the
//! clap definitions in [`crate::cli`] through `clap_mangen`. The COMMANDS section is
//! rendered here from the same definitions, one subsection per subcommand with its
//! options, because `clap_mangen` only lists subcommands as references to separate
//! pages (`backy-init(1)`) that do not exist. The prose (DESCRIPTION, more about
//! each command, and the sections after COMMANDS) lives in `template.md` beside
//! this file, in a small line-oriented markup (see `Markup`) so that roff escaping
//! is done by the `roff` crate, not by hand.
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
    let prose = Prose::parse(TEMPLATE);
    let cmd = Cli::command().long_about(prose.description.clone());
    let man = Man::new(cmd.clone()).title("BACKY").manual("backy manual");
    let mut page = Page::default();
    page.mangen(|w| man.render_title(w));
    page.roff(&layout());
    page.mangen(|w| man.render_name_section(w));
    page.mangen(|w| man.render_synopsis_section(w));
    page.roff(&command_synopses(&cmd));
    page.mangen(|w| man.render_description_section(w));
    page.mangen(|w| man.render_options_section(w));
    page.roff(&commands_section(&cmd, &prose));
    page.roff(&Markup::parse(&prose.sections));
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
fn commands_section(cmd: &Command, prose: &Prose) -> Roff {
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
        if let Some(more) = prose.command(sub.get_name()) {
            roff.control("PP", []);
            roff.extend([Markup::parse(more)]);
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

/// The prose of the page: `template.md` beside this file (its header says the markup).
const TEMPLATE: &str = include_str!("template.md");

/// The template split at its markers.
struct Prose {
    /// DESCRIPTION, as plain text for `clap_mangen` (an empty line starts a paragraph).
    description: String,
    /// Per subcommand, what COMMANDS says after its options.
    commands: Vec<(String, String)>,
    /// The sections after COMMANDS, in order.
    sections: String,
}

impl Prose {
    /// Splits [`TEMPLATE`]: `@@description`, `@@command NAME` and `@@sections`
    /// start parts, `%%` lines are comments.
    fn parse(template: &str) -> Prose {
        let mut prose = Prose {
            description: String::new(),
            commands: Vec::new(),
            sections: String::new(),
        };
        enum Part {
            None,
            Description,
            Command,
            Sections,
        }
        let mut part = Part::None;
        for line in template.lines().filter(|l| !l.starts_with("%%")) {
            if line == "@@description" {
                part = Part::Description;
            } else if let Some(name) = line.strip_prefix("@@command ") {
                prose.commands.push((name.to_string(), String::new()));
                part = Part::Command;
            } else if line == "@@sections" {
                part = Part::Sections;
            } else {
                let text = match part {
                    Part::None => panic!("man page template: text before the first @@ marker"),
                    Part::Description => &mut prose.description,
                    Part::Command => &mut prose.commands.last_mut().expect("a command").1,
                    Part::Sections => &mut prose.sections,
                };
                text.push_str(line);
                text.push('\n');
            }
        }
        for (_, text) in &mut prose.commands {
            text.truncate(text.trim_end().len());
        }
        // clap_mangen wants one line per paragraph.
        prose.description = prose
            .description
            .trim_end()
            .split("\n\n")
            .map(|p| p.split('\n').collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
            .join("\n\n");
        prose
    }

    fn command(&self, name: &str) -> Option<&str> {
        self.commands
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.as_str())
    }
}

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

    #[test]
    fn the_template_names_only_real_commands_and_has_every_part() {
        let prose = Prose::parse(TEMPLATE);
        let cmd = Cli::command();
        for (name, text) in &prose.commands {
            assert!(
                cmd.get_subcommands().any(|s| s.get_name() == name),
                "template.md has @@command {name}, which is no subcommand"
            );
            assert!(!text.is_empty(), "@@command {name} is empty");
        }
        assert!(prose.description.starts_with("backy backs up"));
        assert!(!prose.description.contains("%%"));
        assert!(
            prose.sections.starts_with("# "),
            "{}",
            &prose.sections[..40]
        );
        let parsed =
            Prose::parse("%% c\n@@description\na\nb\n\nc\n@@command x\n  y\n\n@@sections\n# S\n");
        assert_eq!(parsed.description, "a b\n\nc");
        assert_eq!(parsed.command("x"), Some("  y"));
        assert_eq!(parsed.sections, "# S\n");
    }
}
