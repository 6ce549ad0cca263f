//! The Prometheus text format as this project reads it: samples by name
//! and labels, sums over series, a histogram's buckets, and the fine
//! latency buckets (`trove_latency_fine_total`) as a histogram.

use trove_shard::HistogramSnapshot;
use trove_shard::metrics::{BUCKETS, bucket_index};

/// One sample: name, labels as written (without braces), value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: String,
    pub value: f64,
}

/// A parsed scrape.
#[derive(Clone, Debug, Default)]
pub struct Scrape {
    pub samples: Vec<Sample>,
}

/// Parses the text format; lines that do not parse are skipped.
pub fn parse(text: &str) -> Scrape {
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = match line.rsplit_once(' ') {
            Some(x) => x,
            None => continue,
        };
        let Ok(value) = value.parse::<f64>() else { continue };
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.strip_suffix('}').unwrap_or(l)),
            None => (series, ""),
        };
        samples.push(Sample { name: name.to_string(), labels: labels.to_string(), value });
    }
    Scrape { samples }
}

impl Scrape {
    /// The sum of `name`'s samples whose labels contain every one of `with`.
    pub fn sum(&self, name: &str, with: &[&str]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name && with.iter().all(|w| s.labels.contains(w)))
            .map(|s| s.value)
            .sum()
    }

    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name == name)
    }

    /// Cumulative bucket counts of histogram `name` summed over series
    /// whose labels contain one of `series`, by upper bound.
    pub fn buckets(&self, name: &str, series: &[&str]) -> Vec<(f64, f64)> {
        let mut out: Vec<(f64, f64)> = Vec::new();
        let bucket = format!("{name}_bucket");
        for s in self.samples.iter().filter(|s| s.name == bucket && series.iter().any(|r| s.labels.contains(r))) {
            let Some(le) = s.labels.split("le=\"").nth(1).and_then(|r| r.split('"').next()) else { continue };
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap_or(f64::NAN) };
            if le.is_nan() {
                continue;
            }
            match out.iter_mut().find(|(b, _)| *b == le) {
                Some((_, c)) => *c += s.value,
                None => out.push((le, s.value)),
            }
        }
        out.sort_by(|a, b| a.0.total_cmp(&b.0));
        out
    }
}

impl Scrape {
    /// The fine buckets (`trove_latency_fine_total`) of `histogram`, over
    /// the series whose labels contain every one of `with`.
    pub fn fine(&self, histogram: &str, with: &[&str]) -> HistogramSnapshot {
        let mut buckets = vec![0u64; BUCKETS];
        let which = format!("histogram=\"{histogram}\"");
        let series = self.samples.iter().filter(|s| {
            s.name == "trove_latency_fine_total"
                && s.labels.contains(&which)
                && with.iter().all(|w| s.labels.contains(w))
        });
        for s in series {
            let from = s.labels.split("from_ns=\"").nth(1).and_then(|r| r.split('"').next());
            let Some(from) = from.and_then(|f| f.parse::<u64>().ok()) else { continue };
            // A hostile or garbled count is clamped, never a panic.
            let n = if s.value.is_finite() && s.value > 0.0 { s.value.min(u64::MAX as f64) as u64 } else { 0 };
            let b = &mut buckets[bucket_index(from)];
            *b = b.saturating_add(n);
        }
        HistogramSnapshot { buckets, sum: 0 }
    }
}

impl Scrape {
    /// The value of the series written exactly `series` (a name, or a name
    /// with its labels as the server writes them: `name{a="1"}`).
    pub fn value(&self, series: &str) -> Option<f64> {
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.strip_suffix('}').unwrap_or(l)),
            None => (series, ""),
        };
        self.samples.iter().find(|s| s.name == name && s.labels == labels).map(|s| s.value)
    }
}

/// `promtool check metrics` on a scrape, when promtool is installed (CI
/// installs it): panics, with promtool's words, on a scrape it refuses.
pub fn promtool_check(text: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("note: promtool is not on PATH; skipping `promtool check metrics` (CI installs it)");
            return;
        }
        Err(e) => panic!("running promtool: {e}"),
    };
    child.stdin.take().expect("piped").write_all(text.as_bytes()).expect("promtool reads its input");
    let out = child.wait_with_output().expect("promtool ends");
    assert!(
        out.status.success(),
        "promtool check metrics failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_skips_what_it_cannot_read() {
        let s = parse("a 1\nb{x=\"1\"} 2.5\nc notanumber\n\n# c 3\nnospace\n");
        assert_eq!(s.samples.len(), 2);
        assert_eq!(s.sum("b", &["x=\"1\""]), 2.5);
        assert_eq!(
            (s.value("a"), s.value("b{x=\"1\"}"), s.value("b"), s.value("c")),
            (Some(1.0), Some(2.5), None, None)
        );
    }
}
