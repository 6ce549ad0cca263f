//! Numbers and counts as the reports and progress lines print them.

/// `n` and `word`, plural unless `n` is 1: "1 shard", "2 shards",
/// "2 batches" (a word ending in s, x, z, ch or sh takes -es).
pub fn plural(n: u64, word: &str) -> String {
    if n == 1 {
        return format!("1 {word}");
    }
    let es = ["s", "x", "z", "ch", "sh"].iter().any(|end| word.ends_with(end));
    format!("{n} {word}{}", if es { "es" } else { "s" })
}

/// A value to about three significant digits: 12.0M, 250k, 0.42.
pub fn human(v: f64) -> String {
    if !v.is_finite() {
        return "-".to_string();
    }
    let (scaled, suffix) = match v.abs() {
        a if a >= 1e12 => (v / 1e12, "T"),
        a if a >= 1e9 => (v / 1e9, "G"),
        a if a >= 1e6 => (v / 1e6, "M"),
        a if a >= 1e3 => (v / 1e3, "k"),
        _ => (v, ""),
    };
    let digits = match scaled.abs() {
        a if a >= 100.0 => 0,
        a if a >= 10.0 => 1,
        a if a >= 0.01 || a == 0.0 => 2,
        _ => return format!("{v:.2e}"),
    };
    format!("{scaled:.digits$}{suffix}")
}

/// A measured value to three significant digits, without suffix or
/// trailing zeros: 1234.6 is 1235, 0.02104 is 0.021.
pub fn plain(v: f64) -> String {
    if !v.is_finite() {
        return "-".to_string();
    }
    if v == 0.0 {
        return "0".to_string();
    }
    let magnitude = v.abs().log10().floor();
    if !(-9.0..15.0).contains(&magnitude) {
        return format!("{v:.2e}");
    }
    let decimals = (2.0 - magnitude).max(0.0) as usize;
    let text = format!("{v:.decimals$}");
    if text.contains('.') { text.trim_end_matches('0').trim_end_matches('.').to_string() } else { text }
}

/// A setting as given: 10, 2.5, 0.25 (shortest exact form, within reason).
pub fn setting(v: f64) -> String {
    if (1e-3..1e9).contains(&v.abs()) || v == 0.0 { format!("{v}") } else { human(v) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_human() {
        assert_eq!(human(250_000.0), "250k");
        assert_eq!(human(12e6), "12.0M");
        assert_eq!(human(1.5e6), "1.50M");
        assert_eq!(human(0.0), "0.00");
        assert_eq!(human(f64::NAN), "-");
        assert_eq!(human(5000.0), "5.00k");
        assert_eq!(human(0.42), "0.42");
        assert_eq!(plain(1234.6), "1235");
        assert_eq!(plain(0.021_04), "0.021");
        assert_eq!(plain(-2.5), "-2.5");
        assert_eq!(plain(12.0), "12");
        assert_eq!(plain(1e-30), "1.00e-30");
    }
}
