//! The Prometheus text exposition format, version 0.0.4, as node_exporter's
//! textfile collector reads it.
//!
//! ```text
//! # HELP backy_revisions Complete revisions of the job, by trust state.
//! # TYPE backy_revisions gauge
//! backy_revisions{job="vm01",trust="trusted"} 12
//! ```
//!
//! Each family is written as one block: `# HELP`, `# TYPE`, then its samples,
//! each a name, labels in braces and a value; the text ends with a newline.
//! Label values escape backslash, double quote and line feed (`\\`, `\"`,
//! `\n`), HELP texts backslash and line feed. No sample carries a timestamp:
//! the textfile collector refuses them. Families without samples are left out.

use std::fmt::Write as _;

/// A sample's value: counts and byte sizes stay exact integers, times and
/// durations are floating-point seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    /// A count or a size.
    Int(u64),
    /// Seconds and everything else.
    Float(f64),
}

impl From<u64> for Value {
    fn from(n: u64) -> Value {
        Value::Int(n)
    }
}

impl From<f64> for Value {
    fn from(x: f64) -> Value {
        Value::Float(x)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value::Int(u64::from(b))
    }
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Value::Int(n) => write!(f, "{n}"),
            Value::Float(x) if x.is_nan() => f.write_str("NaN"),
            Value::Float(x) if x == f64::INFINITY => f.write_str("+Inf"),
            Value::Float(x) if x == f64::NEG_INFINITY => f.write_str("-Inf"),
            // Rust's shortest round-trip form, never with an exponent.
            Value::Float(x) => write!(f, "{x}"),
        }
    }
}

/// One metric family: a gauge with its help text and samples.
#[derive(Debug, Clone)]
pub struct Family {
    name: &'static str,
    help: &'static str,
    samples: Vec<(Vec<(&'static str, String)>, Value)>,
}

impl Family {
    /// Adds a sample with `labels` (names from the code, values escaped
    /// when written).
    pub fn sample(&mut self, labels: &[(&'static str, &str)], value: impl Into<Value>) {
        debug_assert!(labels.iter().all(|(l, _)| is_label_name(l)));
        let labels = labels.iter().map(|(l, v)| (*l, (*v).to_owned())).collect();
        self.samples.push((labels, value.into()));
    }
}

/// Gauge families, written in the order they were declared.
#[derive(Debug, Clone, Default)]
pub struct Exposition {
    families: Vec<Family>,
}

impl Exposition {
    /// An empty exposition.
    pub fn new() -> Exposition {
        Exposition::default()
    }

    /// Declares the gauge `name` with `help` (once per name; the order of
    /// declaration is the order in the output) and returns it for its samples.
    pub fn gauge(&mut self, name: &'static str, help: &'static str) -> &mut Family {
        debug_assert!(is_metric_name(name), "bad metric name {name:?}");
        debug_assert!(
            self.families.iter().all(|f| f.name != name),
            "{name} declared twice"
        );
        self.families.push(Family {
            name,
            help,
            samples: Vec::new(),
        });
        let last = self.families.len() - 1;
        &mut self.families[last]
    }

    /// The text of all families that have samples.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for family in self.families.iter().filter(|f| !f.samples.is_empty()) {
            let _ = writeln!(out, "# HELP {} {}", family.name, escape_help(family.help));
            let _ = writeln!(out, "# TYPE {} gauge", family.name);
            for (labels, value) in &family.samples {
                out.push_str(family.name);
                if !labels.is_empty() {
                    let pairs: Vec<String> = labels
                        .iter()
                        .map(|(l, v)| format!("{l}=\"{}\"", escape_label_value(v)))
                        .collect();
                    let _ = write!(out, "{{{}}}", pairs.join(","));
                }
                let _ = writeln!(out, " {value}");
            }
        }
        out
    }
}

/// A label value as it goes between double quotes.
pub fn escape_label_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A HELP text: backslash and line feed escaped (double quotes stay).
pub fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`.
pub fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`, not starting with the reserved `__`.
pub fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    !name.starts_with("__")
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_escape_backslash_quote_and_newline() {
        assert_eq!(escape_label_value("vm01"), "vm01");
        assert_eq!(
            escape_label_value("a\\b\"c\nd"),
            "a\\\\b\\\"c\\nd",
            "each of the three, once"
        );
        // Other characters, tabs and non-ASCII included, pass as they are.
        assert_eq!(escape_label_value("ä\tß'"), "ä\tß'");
        assert_eq!(escape_help("a \"b\"\\\nc"), "a \"b\"\\\\\\nc");
    }

    #[test]
    fn values_are_exact_integers_or_shortest_floats() {
        assert_eq!(Value::from(u64::MAX).to_string(), "18446744073709551615");
        assert_eq!(Value::from(true).to_string(), "1");
        assert_eq!(Value::from(false).to_string(), "0");
        assert_eq!(Value::from(1.5).to_string(), "1.5");
        assert_eq!(Value::from(3.0).to_string(), "3");
        assert_eq!(Value::from(1_764_628_800.25).to_string(), "1764628800.25");
        assert_eq!(Value::from(1e-7).to_string(), "0.0000001");
        assert_eq!(Value::from(f64::NAN).to_string(), "NaN");
        assert_eq!(Value::from(f64::INFINITY).to_string(), "+Inf");
        assert_eq!(Value::from(f64::NEG_INFINITY).to_string(), "-Inf");
    }

    #[test]
    fn families_render_as_blocks_in_declaration_order() {
        let mut e = Exposition::new();
        e.gauge("b_size_bytes", "First.").sample(&[], 7u64);
        let a = e.gauge("a_ok", "Second, with a \\ and\na newline.");
        a.sample(&[("job", "x\"y")], true);
        a.sample(&[("job", "z"), ("trust", "verified")], 0.5);
        e.gauge("c_unused", "Never sampled.");
        assert_eq!(
            e.render(),
            "# HELP b_size_bytes First.\n\
             # TYPE b_size_bytes gauge\n\
             b_size_bytes 7\n\
             # HELP a_ok Second, with a \\\\ and\\na newline.\n\
             # TYPE a_ok gauge\n\
             a_ok{job=\"x\\\"y\"} 1\n\
             a_ok{job=\"z\",trust=\"verified\"} 0.5\n"
        );
        assert_eq!(Exposition::new().render(), "");
    }

    #[test]
    fn names_follow_the_format() {
        for good in ["backy_revisions", "_x", "a:b", "A9"] {
            assert!(is_metric_name(good), "{good}");
        }
        for bad in ["", "9a", "a-b", "a b", "ä"] {
            assert!(!is_metric_name(bad), "{bad}");
        }
        assert!(is_label_name("job") && is_label_name("_a1"));
        for bad in ["", "__name__", "a:b", "1a", "a-b"] {
            assert!(!is_label_name(bad), "{bad}");
        }
    }
}
