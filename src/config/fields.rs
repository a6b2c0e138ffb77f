//! The one field reader of both configuration files (a job's `config` and the
//! scheduler's `backy.conf`): it reads typed values out of a YAML mapping and
//! records every problem, with its key path, instead of stopping at the first.

use std::fmt::{self, Display};

use serde_norway::{Mapping, Value};

/// One thing wrong with a configuration: where, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The key path (`jobs.vm01.source`, `global.worker-limit`); empty for the
    /// document as a whole.
    pub key: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl ConfigProblem {
    /// A problem at `key`.
    pub fn new(key: impl Into<String>, message: impl Display) -> ConfigProblem {
        ConfigProblem {
            key: key.into(),
            message: message.to_string(),
        }
    }
}

impl Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

/// The problems of one document, as returned by the parsers; displayed one
/// per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblems(pub Vec<ConfigProblem>);

impl Display for ConfigProblems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl std::ops::Deref for ConfigProblems {
    type Target = [ConfigProblem];
    fn deref(&self) -> &[ConfigProblem] {
        &self.0
    }
}

/// Errors and warnings collected while walking a document.
#[derive(Debug, Default)]
pub struct Problems {
    /// What makes the document unusable.
    pub errors: Vec<ConfigProblem>,
    /// What is accepted but worth telling the operator.
    pub warnings: Vec<ConfigProblem>,
}

impl Problems {
    /// Records an error at `key`.
    pub fn error(&mut self, key: &str, message: impl Display) {
        self.errors.push(ConfigProblem::new(key, message));
    }

    /// Records a warning at `key`.
    pub fn warn(&mut self, key: &str, message: impl Display) {
        self.warnings.push(ConfigProblem::new(key, message));
    }
}

/// How the reader reports a bad value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// A source mapping (a job's `config`, a scheduler job's `source:`): the
    /// problem sits at the mapping's path and names the key (`'full-every' must
    /// be ..., not 0`); an empty value counts as a missing one, as backy 2.1
    /// read it.
    Source,
    /// A section of the scheduler configuration: the problem sits at the key's
    /// own path (`global.worker-limit: must be ..., not the number 0`); an empty
    /// value is reported.
    Section,
}

/// Reads the fields of one mapping at `path`, recording problems in `problems`.
pub struct Fields<'a> {
    map: &'a Mapping,
    path: &'a str,
    style: Style,
    problems: &'a mut Problems,
}

impl<'a> Fields<'a> {
    /// A reader of `map`, found at `path`.
    pub fn new(map: &'a Mapping, path: &'a str, style: Style, problems: &'a mut Problems) -> Self {
        Fields {
            map,
            path,
            style,
            problems,
        }
    }

    /// The raw value of `key`; for [`Style::Source`], an empty value is `None`.
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        match (self.map.get(key), self.style) {
            (Some(Value::Null), Style::Source) => None,
            (value, _) => value,
        }
    }

    /// Records `message` about `key` in this reader's style (`message`
    /// completes "KEY ...").
    pub fn problem(&mut self, key: &str, message: impl Display) {
        match self.style {
            Style::Source => self.problems.error(self.path, format!("'{key}' {message}")),
            Style::Section => self.problems.error(&join(self.path, key), message),
        }
    }

    /// Records `message` about the mapping as a whole, at its path.
    pub fn problem_here(&mut self, message: impl Display) {
        self.problems.error(self.path, message);
    }

    /// How many errors were recorded so far (by any reader of this document).
    pub fn error_count(&self) -> usize {
        self.problems.errors.len()
    }

    fn describe(&self, value: &Value) -> String {
        match self.style {
            Style::Source => describe_short(value),
            Style::Section => describe(value),
        }
    }

    /// A `true`/`false` key; missing is `false`.
    pub fn flag(&mut self, key: &str) -> bool {
        match self.get(key) {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                let shown = self.describe(other);
                self.problem(key, format!("must be true or false, not {shown}"));
                false
            }
        }
    }

    /// An optional whole number between `min` and `max`; `what` says what it
    /// must be ("a whole number of seconds"). A bad value is reported and read
    /// as missing.
    pub fn whole_number(&mut self, key: &str, min: u64, max: u64, what: &str) -> Option<u64> {
        let value = self.get(key)?;
        match whole_number(value).filter(|n| (min..=max).contains(n)) {
            Some(n) => Some(n),
            None => {
                let shown = self.describe(value);
                self.problem(key, format!("must be {what}, not {shown}"));
                None
            }
        }
    }

    /// A non-empty text key (a number is read as its digits); missing is
    /// reported, and so is an empty value (`filename:` with nothing).
    pub fn text(&mut self, key: &str) -> Option<String> {
        match self.map.get(key) {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(other) => {
                let shown = self.describe(other);
                self.problem(key, format!("must be a non-empty string, not {shown}"));
                None
            }
            None => {
                self.problems
                    .error(self.path, format!("'{key}' is missing"));
                None
            }
        }
    }

    /// An optional text key: missing, empty and `''` are all `None`.
    pub fn optional_text(&mut self, key: &str) -> Option<String> {
        match self.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(_) => self.text(key),
        }
    }
}

/// A whole number: a YAML integer, or one quoted (`"7"`). Both configuration
/// files read numbers by this one rule (the scheduler's intervals took quoted
/// numbers since the start, and YAML users quote by habit).
pub fn whole_number(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => {
            let s = s.trim();
            if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
                s.parse().ok()
            } else {
                None
            }
        }
        _ => None,
    }
}

/// The key path of `key` below `path`; control characters in keys are escaped
/// so that each problem stays on one line.
pub fn join(path: &str, key: &str) -> String {
    let key: String = if key.chars().any(char::is_control) {
        key.escape_debug().collect()
    } else {
        key.to_string()
    };
    if path.is_empty() {
        key
    } else {
        format!("{path}.{key}")
    }
}

/// How a value looks in a scheduler message ("a list", "the number 3").
pub fn describe(value: &Value) -> String {
    match value {
        Value::Null => "empty".into(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the text '{s}'"),
        Value::Sequence(_) => "a list".into(),
        Value::Mapping(_) => "a mapping".into(),
        Value::Tagged(t) => format!("a value tagged {}", t.tag),
    }
}

/// A value as a source message names it: `7`, `'weekly'`, `an empty string`,
/// `a list`.
pub fn describe_short(value: &Value) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn map(text: &str) -> Mapping {
        serde_norway::from_str(text).unwrap()
    }

    /// One rule for numbers in both files: quoted digits count, other text does not.
    #[test]
    fn quoted_numbers_are_numbers_in_both_styles() {
        for style in [Style::Source, Style::Section] {
            let m = map("{a: '7', b: 7, c: ' 8 ', d: 'seven', e: -1, f: 2.5}");
            let mut p = Problems::default();
            let mut f = Fields::new(&m, "x", style, &mut p);
            assert_eq!(f.whole_number("a", 0, u64::MAX, "n"), Some(7));
            assert_eq!(f.whole_number("b", 0, u64::MAX, "n"), Some(7));
            assert_eq!(f.whole_number("c", 0, u64::MAX, "n"), Some(8));
            for key in ["d", "e", "f"] {
                assert_eq!(f.whole_number(key, 0, u64::MAX, "n"), None, "{key}");
            }
            assert_eq!(p.errors.len(), 3, "{:?}", p.errors);
        }
    }

    #[test]
    fn styles_place_the_key() {
        let m = map("{n: 0, t: '', b: ~}");
        let mut p = Problems::default();
        let mut f = Fields::new(&m, "jobs.a.source", Style::Source, &mut p);
        assert_eq!(f.whole_number("n", 1, u64::MAX, "one or more"), None);
        assert_eq!(f.text("t"), None);
        assert!(!f.flag("b"));
        assert_eq!(f.text("missing"), None);
        assert_eq!(f.text("b"), None);
        let shown: Vec<String> = p.errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "jobs.a.source: 'n' must be one or more, not 0",
                "jobs.a.source: 't' must be a non-empty string, not an empty string",
                "jobs.a.source: 'missing' is missing",
                "jobs.a.source: 'b' must be a non-empty string, not null",
            ]
        );
        let mut p = Problems::default();
        let mut f = Fields::new(&m, "global", Style::Section, &mut p);
        assert_eq!(f.whole_number("n", 1, u64::MAX, "one or more"), None);
        assert!(!f.flag("b"));
        let shown: Vec<String> = p.errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "global.n: must be one or more, not the number 0",
                "global.b: must be true or false, not empty",
            ]
        );
    }
}
