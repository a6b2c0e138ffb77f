//! Formatting sizes and durations the way backy 2.1's `status` did.

/// `N Bytes` below 1 KiB (`1 Byte` for one), else two decimals with kiB..TiB.
pub fn format_bytes(n: u64) -> String {
    if n == 1 {
        return "1 Byte".into();
    }
    if n < 1024 {
        return format!("{n} Bytes");
    }
    let mut value = n as f64;
    for unit in ["kiB", "MiB", "GiB", "TiB"] {
        value /= 1024.0;
        if value < 1024.0 || unit == "TiB" {
            return format!("{value:.2} {unit}");
        }
    }
    unreachable!("the loop returns at TiB")
}

/// `%.1f s`, or `0 s` for an incomplete revision.
pub fn format_duration(d: Option<f64>) -> String {
    match d {
        Some(d) => format!("{d:.1} s"),
        None => "0 s".into(),
    }
}

/// `1 job`, `2 jobs`: a count with its noun (regular plurals only).
pub fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_singular_for_one() {
        assert_eq!(count(0, "job"), "0 jobs");
        assert_eq!(count(1, "job"), "1 job");
        assert_eq!(count(2, "minute"), "2 minutes");
    }

    #[test]
    fn sizes() {
        assert_eq!(format_bytes(0), "0 Bytes");
        assert_eq!(format_bytes(1), "1 Byte");
        assert_eq!(format_bytes(1023), "1023 Bytes");
        assert_eq!(format_bytes(1024), "1.00 kiB");
        assert_eq!(format_bytes(10 * 1024 * 1024 * 1024), "10.00 GiB");
        assert_eq!(format_bytes(5 << 50), "5120.00 TiB");
    }

    #[test]
    fn durations() {
        assert_eq!(format_duration(Some(150.94)), "150.9 s");
        assert_eq!(format_duration(None), "0 s");
    }
}
