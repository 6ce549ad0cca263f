//! A line chart on log10 axes, written as SVG by hand: series of points
//! (a point that failed drawn hollow, a flagged one crossed), an optional
//! y = x diagonal, an optional horizontal limit line, labelled vertical
//! marks (`class="mark"`), labelled ticks, a legend. Generic over
//! what is charted; `load::report` says what. Deterministic: the same
//! chart gives the same bytes. Values that cannot go on a log axis (zero,
//! negative, NaN, infinite) are left out by the caller (`plottable`).

use std::fmt::{self, Write as _};

use crate::text::setting;

pub(crate) const WIDTH: f64 = 720.0;
pub(crate) const HEIGHT: f64 = 420.0;
/// The plot area; the legend sits right of it.
pub(crate) const PLOT_LEFT: f64 = 72.0;
pub(crate) const PLOT_RIGHT: f64 = 516.0;
pub(crate) const PLOT_TOP: f64 = 48.0;
pub(crate) const PLOT_BOTTOM: f64 = 362.0;
pub(crate) const LEGEND_X: f64 = 532.0;
/// Space between the plot's frame and the ends of its axes' ranges.
pub(crate) const INSET: f64 = 8.0;
/// Legend names longer than this are cut (the legend is ~180 px wide).
pub(crate) const LEGEND_CHARS: usize = 26;
/// Most labelled ticks on one axis.
pub(crate) const MAX_LABELS: usize = 12;
/// Values outside this range are left off the (log) charts.
pub(crate) const PLOTTABLE: std::ops::RangeInclusive<f64> = 1e-200..=1e200;

/// By mode index (Tableau 10).
pub(crate) const PALETTE: [&str; 10] =
    ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];

pub(crate) fn color(index: usize) -> &'static str {
    PALETTE[index % PALETTE.len()]
}

/// How an axis labels its ticks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Units {
    /// Events per second: 500, 250k, 1M, 10M.
    Rate,
    /// Milliseconds: 0.1, 1, 10, 1000.
    Millis,
}

#[derive(Debug)]
pub(crate) struct Point {
    pub(crate) x: f64,
    pub(crate) y: f64,
    pub(crate) passed: bool,
    /// Crossed: a point the chart's `flag_legend` says something about.
    pub(crate) flagged: bool,
    /// Tooltip.
    pub(crate) tip: String,
}

/// A labelled vertical line at `x`, in the colour of series `series`.
#[derive(Debug)]
pub(crate) struct Mark {
    pub(crate) x: f64,
    pub(crate) series: usize,
    pub(crate) label: String,
}

#[derive(Debug)]
pub(crate) struct Series<'a> {
    pub(crate) name: &'a str,
    /// Only plottable points, in step order.
    pub(crate) points: Vec<Point>,
}

#[derive(Debug)]
pub(crate) struct Chart<'a> {
    pub(crate) title: String,
    pub(crate) x_title: &'static str,
    pub(crate) y_title: &'static str,
    pub(crate) y_units: Units,
    pub(crate) series: Vec<Series<'a>>,
    /// Draw y = x, with both axes over the same range.
    pub(crate) diagonal: bool,
    /// Draw a horizontal line here, labelled SLO.
    pub(crate) slo: Option<f64>,
    /// Vertical marks (left out when `x` is off the axis); `marks_legend`
    /// names them in the legend.
    pub(crate) marks: Vec<Mark>,
    pub(crate) marks_legend: &'static str,
    /// What a crossed (flagged) point means, in the legend.
    pub(crate) flag_legend: &'static str,
}

pub(crate) fn plottable(v: f64) -> bool {
    PLOTTABLE.contains(&v)
}

/// A log10 axis mapping `[10^lo, 10^hi]` onto pixels `from..to`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Axis {
    pub(crate) lo: f64,
    pub(crate) hi: f64,
    pub(crate) from: f64,
    pub(crate) to: f64,
}

impl Axis {
    /// The range's ends sit [`INSET`] px inside `from` and `to`, so markers
    /// at them clear the frame.
    pub(crate) fn new((lo, hi): (f64, f64), from: f64, to: f64) -> Self {
        let inset = INSET.copysign(to - from);
        Self { lo: lo.log10(), hi: hi.log10(), from: from + inset, to: to - inset }
    }

    pub(crate) fn at(&self, v: f64) -> f64 {
        self.from + (v.log10() - self.lo) / (self.hi - self.lo) * (self.to - self.from)
    }

    pub(crate) fn px_per_decade(&self) -> f64 {
        (self.to - self.from).abs() / (self.hi - self.lo)
    }

    pub(crate) fn contains(&self, v: f64) -> bool {
        let l = v.log10();
        l >= self.lo - 1e-9 && l <= self.hi + 1e-9
    }
}

/// The range to plot `values` over on a log axis: their least and greatest
/// plottable values rounded outwards to 1, 2 or 5 times a power of ten,
/// padded first when they are (nearly) equal; 1 to 10 without any.
pub(crate) fn log_range(values: impl IntoIterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.into_iter().filter(|&v| plottable(v)) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if lo > hi {
        return (1.0, 10.0);
    }
    if hi <= lo * 1.0001 {
        lo /= 2.0;
        hi *= 2.0;
    }
    let (lo, hi) = (nice(lo, false), nice(hi, true));
    if hi > lo { (lo, hi) } else { (lo, lo * 10.0) }
}

/// `v` rounded down (or up) to 1, 2 or 5 times a power of ten.
pub(crate) fn nice(v: f64, up: bool) -> f64 {
    let power = 10f64.powf(v.log10().floor());
    let m = v / power;
    let mantissa = if up {
        [1.0, 2.0, 5.0, 10.0].into_iter().find(|&n| n >= m * (1.0 - 1e-9)).unwrap_or(10.0)
    } else {
        [10.0, 5.0, 2.0, 1.0].into_iter().find(|&n| n <= m * (1.0 + 1e-9)).unwrap_or(1.0)
    };
    mantissa * power
}

/// A tick at `m x 10^e`, kept as digits so its label is exact.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Tick {
    pub(crate) m: u32,
    pub(crate) e: i32,
}

impl Tick {
    pub(crate) fn value(self) -> f64 {
        f64::from(self.m) * 10f64.powi(self.e)
    }
}

/// Mantissas to label, densest first: the densest set whose labels don't
/// crowd each other wins, so a chart spanning one decade gets 1-2-3-5 and
/// one spanning three gets decades with 2 and 5 between, or decades alone.
pub(crate) const TICK_SETS: [&[u32]; 5] =
    [&[1, 2, 3, 4, 5, 6, 7, 8, 9], &[1, 2, 3, 4, 5, 6, 8], &[1, 2, 3, 5], &[1, 2, 5], &[1]];

/// The labelled ticks of an axis, and the unlabelled ones (tick marks only).
pub(crate) fn ticks(axis: &Axis, units: Units, horizontal: bool) -> (Vec<Tick>, Vec<Tick>) {
    let ppd = axis.px_per_decade();
    // Labels need their width apart along x, a line's height along y.
    let min_gap = |ts: &[Tick]| {
        if horizontal {
            ts.iter().map(|&t| label(t, units).chars().count()).max().unwrap_or(0) as f64 * 7.0 + 12.0
        } else {
            20.0
        }
    };
    let fits = |ts: &[Tick]| {
        let gap = min_gap(ts);
        ts.windows(2).all(|w| (w[1].value().log10() - w[0].value().log10()) * ppd >= gap)
    };
    let (first, last) = (axis.lo.floor() as i32 - 1, axis.hi.ceil() as i32);
    let all: Vec<Tick> =
        (first..=last).flat_map(|e| (1..=9).map(move |m| Tick { m, e })).filter(|t| axis.contains(t.value())).collect();
    let pick = |set: &[u32]| all.iter().copied().filter(|t| set.contains(&t.m)).collect::<Vec<_>>();

    let labelled = TICK_SETS
        .iter()
        .map(|set| pick(set))
        .find(|ts| ts.len() >= 2 && ts.len() <= MAX_LABELS && fits(ts))
        .unwrap_or_else(|| {
            let decades = pick(&[1]);
            if decades.len() < 2 {
                // Unreachable with ranges from `log_range` (its bounds are
                // 1-2-5 ticks), but never leave an axis bare.
                return pick(&[1, 2, 5]);
            }
            // Too many decades to label each: every `stride`th.
            let by_gap = (min_gap(&decades) / ppd.max(1e-9)).ceil();
            let by_count = decades.len().div_ceil(MAX_LABELS) as f64;
            let stride = by_gap.max(by_count).clamp(1.0, 1e6) as i32;
            let strided: Vec<Tick> = decades.iter().copied().filter(|t| t.e.rem_euclid(stride) == 0).collect();
            if strided.len() >= 2 { strided } else { vec![decades[0], decades[decades.len() - 1]] }
        });
    // Tick marks only where they stay apart.
    let minor_set: &[u32] = match ppd {
        40.0.. => &[1, 2, 3, 4, 5, 6, 7, 8, 9],
        5.0.. => &[1],
        _ => &[],
    };
    let minor = pick(minor_set).into_iter().filter(|t| !labelled.contains(t)).collect();
    (labelled, minor)
}

/// A tick's label: `250k`, `1M`, `10M` for rates; `0.5`, `1`, `100` for ms.
pub(crate) fn label(t: Tick, units: Units) -> String {
    match units {
        Units::Rate if (-3..=14).contains(&t.e) => {
            let (suffix, shift) = match t.e {
                12.. => ("T", 12),
                9.. => ("G", 9),
                6.. => ("M", 6),
                3.. => ("k", 3),
                _ => ("", 0),
            };
            format!("{}{suffix}", decimal(t.m, t.e - shift))
        }
        Units::Millis if (-3..=5).contains(&t.e) => decimal(t.m, t.e),
        _ => format!("{}e{}", t.m, t.e),
    }
}

/// `m x 10^e` written out: (25, 1) is 250, (5, -2) is 0.05.
pub(crate) fn decimal(m: u32, e: i32) -> String {
    let zeros = "0".repeat(e.unsigned_abs() as usize);
    if e >= 0 { format!("{m}{zeros}") } else { format!("0.{}{m}", &zeros[1..]) }
}

/// Text safe in XML content and attribute values.
pub(crate) fn xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Control characters are not allowed in XML 1.0 at all.
            '\t' | '\n' | '\r' => out.push(' '),
            c if c.is_control() => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

pub(crate) fn legend_name(name: &str) -> String {
    if name.chars().count() > LEGEND_CHARS {
        let cut: String = name.chars().take(LEGEND_CHARS - 1).collect();
        format!("{cut}\u{2026}")
    } else {
        name.to_string()
    }
}

impl Chart<'_> {
    pub(crate) fn render(&self) -> Result<String, fmt::Error> {
        let xs = self.series.iter().flat_map(|s| s.points.iter().map(|p| p.x));
        let ys = self.series.iter().flat_map(|s| s.points.iter().map(|p| p.y));
        let (x_range, y_range) = if self.diagonal {
            let r = log_range(xs.chain(ys));
            (r, r)
        } else {
            (log_range(xs), log_range(ys.chain(self.slo)))
        };
        let x = Axis::new(x_range, PLOT_LEFT, PLOT_RIGHT);
        let y = Axis::new(y_range, PLOT_BOTTOM, PLOT_TOP);
        let (x_ticks, x_minor) = ticks(&x, Units::Rate, true);
        let (y_ticks, y_minor) = ticks(&y, self.y_units, false);

        let mut s = String::new();
        writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" font-family="Helvetica, Arial, sans-serif" font-size="12">"#
        )?;
        writeln!(s, "<title>{}</title>", xml(&self.title))?;
        writeln!(s, r#"<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#)?;
        writeln!(
            s,
            r#"<text x="{:.1}" y="28" text-anchor="middle" font-size="15" font-weight="bold">{}</text>"#,
            WIDTH / 2.0,
            xml(&self.title)
        )?;

        // Grid, frame, ticks and their labels.
        writeln!(s, r##"<g stroke="#e4e4e4" stroke-width="1">"##)?;
        for t in &x_ticks {
            let px = x.at(t.value());
            writeln!(s, r#"<line x1="{px:.1}" y1="{PLOT_TOP}" x2="{px:.1}" y2="{PLOT_BOTTOM}"/>"#)?;
        }
        for t in &y_ticks {
            let py = y.at(t.value());
            writeln!(s, r#"<line x1="{PLOT_LEFT}" y1="{py:.1}" x2="{PLOT_RIGHT}" y2="{py:.1}"/>"#)?;
        }
        writeln!(s, "</g>")?;
        writeln!(
            s,
            r##"<rect x="{PLOT_LEFT}" y="{PLOT_TOP}" width="{:.1}" height="{:.1}" fill="none" stroke="#888888"/>"##,
            PLOT_RIGHT - PLOT_LEFT,
            PLOT_BOTTOM - PLOT_TOP
        )?;
        writeln!(s, r##"<g stroke="#888888" stroke-width="1">"##)?;
        for (ts, len) in [(&x_ticks, 6.0), (&x_minor, 3.0)] {
            for t in ts {
                let px = x.at(t.value());
                writeln!(s, r#"<line x1="{px:.1}" y1="{PLOT_BOTTOM}" x2="{px:.1}" y2="{:.1}"/>"#, PLOT_BOTTOM + len)?;
            }
        }
        for (ts, len) in [(&y_ticks, 6.0), (&y_minor, 3.0)] {
            for t in ts {
                let py = y.at(t.value());
                writeln!(s, r#"<line x1="{:.1}" y1="{py:.1}" x2="{PLOT_LEFT}" y2="{py:.1}"/>"#, PLOT_LEFT - len)?;
            }
        }
        writeln!(s, "</g>")?;
        writeln!(s, r##"<g fill="#333333">"##)?;
        for t in &x_ticks {
            writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                x.at(t.value()),
                PLOT_BOTTOM + 20.0,
                xml(&label(*t, Units::Rate))
            )?;
        }
        for t in &y_ticks {
            writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                PLOT_LEFT - 9.0,
                y.at(t.value()) + 4.0,
                xml(&label(*t, self.y_units))
            )?;
        }
        writeln!(s, "</g>")?;
        let (mid_x, mid_y) = ((PLOT_LEFT + PLOT_RIGHT) / 2.0, (PLOT_TOP + PLOT_BOTTOM) / 2.0);
        writeln!(
            s,
            r#"<text x="{mid_x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            PLOT_BOTTOM + 42.0,
            xml(self.x_title)
        )?;
        writeln!(
            s,
            r#"<text x="20" y="{mid_y:.1}" text-anchor="middle" transform="rotate(-90 20 {mid_y:.1})">{}</text>"#,
            xml(self.y_title)
        )?;

        // Reference lines.
        if self.diagonal {
            // y = x over the part of the range both axes share (all of it:
            // they share one range).
            let (t0, t1) = (x_range.0.max(y_range.0), x_range.1.min(y_range.1));
            if t0 < t1 {
                writeln!(
                    s,
                    r##"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#999999" stroke-width="1.5" stroke-dasharray="6 4"/>"##,
                    x.at(t0),
                    y.at(t0),
                    x.at(t1),
                    y.at(t1)
                )?;
            }
        }
        if let Some(slo) = self.slo {
            let py = y.at(slo);
            writeln!(
                s,
                r##"<line x1="{PLOT_LEFT}" y1="{py:.1}" x2="{PLOT_RIGHT}" y2="{py:.1}" stroke="#555555" stroke-width="1.5" stroke-dasharray="6 4"/>"##
            )?;
            writeln!(
                s,
                r##"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="#555555">SLO {} ms</text>"##,
                PLOT_RIGHT - 4.0,
                // Above the line, unless that would leave the plot.
                if py - 5.0 < PLOT_TOP + 14.0 { py + 15.0 } else { py - 5.0 },
                xml(&setting(slo))
            )?;
        }

        // Vertical marks, their labels stacked from the top so that two
        // near each other stay readable.
        let mut stacked = 0.0;
        for m in self.marks.iter().filter(|m| plottable(m.x) && x.contains(m.x)) {
            let (px, c) = (x.at(m.x), color(m.series));
            writeln!(
                s,
                r#"<line class="mark" x1="{px:.1}" y1="{PLOT_TOP}" x2="{px:.1}" y2="{PLOT_BOTTOM}" stroke="{c}" stroke-width="1.5" stroke-dasharray="2 3"/>"#
            )?;
            // Right of the line, or left of it near the plot's right edge.
            let (tx, anchor) = if px > PLOT_RIGHT - 120.0 { (px - 4.0, "end") } else { (px + 4.0, "start") };
            writeln!(
                s,
                r#"<text class="mark" x="{tx:.1}" y="{:.1}" text-anchor="{anchor}" fill="{c}" font-size="11">{}</text>"#,
                PLOT_TOP + 14.0 + stacked,
                xml(&m.label)
            )?;
            stacked = (stacked + 13.0) % (PLOT_BOTTOM - PLOT_TOP - 28.0);
        }

        // One polyline per mode (empty without points), markers filled for
        // steps that passed and hollow for those that failed.
        for (i, series) in self.series.iter().enumerate() {
            let c = color(i);
            let mut points = String::new();
            for p in &series.points {
                if !points.is_empty() {
                    points.push(' ');
                }
                write!(points, "{:.1},{:.1}", x.at(p.x), y.at(p.y))?;
            }
            writeln!(s, r#"<g data-mode="{}">"#, xml(series.name))?;
            writeln!(
                s,
                r#"<polyline points="{points}" fill="none" stroke="{c}" stroke-width="2" stroke-linejoin="round"/>"#
            )?;
            for p in &series.points {
                let fill = if p.passed { c } else { "white" };
                writeln!(
                    s,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{fill}" stroke="{c}" stroke-width="1.5"><title>{}</title></circle>"#,
                    x.at(p.x),
                    y.at(p.y),
                    xml(&p.tip)
                )?;
                if p.flagged {
                    let (cx, cy) = (x.at(p.x), y.at(p.y));
                    writeln!(
                        s,
                        r#"<path class="flagged" d="M{:.1} {:.1}L{:.1} {:.1}M{:.1} {:.1}L{:.1} {:.1}" stroke="{c}" stroke-width="2"/>"#,
                        cx - 6.0,
                        cy - 6.0,
                        cx + 6.0,
                        cy + 6.0,
                        cx - 6.0,
                        cy + 6.0,
                        cx + 6.0,
                        cy - 6.0
                    )?;
                }
            }
            writeln!(s, "</g>")?;
        }
        if self.series.iter().all(|s| s.points.is_empty()) {
            writeln!(
                s,
                r##"<text x="{mid_x:.1}" y="{:.1}" text-anchor="middle" fill="#999999" font-size="14">no data</text>"##,
                mid_y - 30.0
            )?;
        }

        // Legend.
        writeln!(s, r#"<g font-size="11">"#)?;
        let flagged = self.series.iter().any(|s| s.points.iter().any(|p| p.flagged));
        let rows = self.series.len()
            + usize::from(self.diagonal)
            + usize::from(self.slo.is_some())
            + usize::from(!self.marks.is_empty())
            + usize::from(flagged)
            + 1;
        let row_height = 20f64.min((HEIGHT - 16.0 - PLOT_TOP) / rows as f64);
        let mut row = PLOT_TOP + 10.0;
        let (sample0, sample1, text_x) = (LEGEND_X, LEGEND_X + 22.0, LEGEND_X + 28.0);
        for (i, series) in self.series.iter().enumerate() {
            let c = color(i);
            writeln!(
                s,
                r#"<line x1="{sample0}" y1="{row:.1}" x2="{sample1}" y2="{row:.1}" stroke="{c}" stroke-width="2"/>"#
            )?;
            writeln!(s, r#"<circle cx="{:.1}" cy="{row:.1}" r="3.5" fill="{c}"/>"#, (sample0 + sample1) / 2.0)?;
            writeln!(s, r#"<text x="{text_x}" y="{:.1}">{}</text>"#, row + 4.0, xml(&legend_name(series.name)))?;
            row += row_height;
        }
        let mut reference = |s: &mut String, text: &str| -> fmt::Result {
            writeln!(
                s,
                r##"<line x1="{sample0}" y1="{row:.1}" x2="{sample1}" y2="{row:.1}" stroke="#777777" stroke-width="1.5" stroke-dasharray="6 4"/>"##
            )?;
            writeln!(s, r#"<text x="{text_x}" y="{:.1}">{}</text>"#, row + 4.0, xml(text))?;
            row += row_height;
            Ok(())
        };
        if self.diagonal {
            reference(&mut s, "y = x (keeping up)")?;
        }
        if let Some(slo) = self.slo {
            reference(&mut s, &format!("SLO: p99 {} ms", setting(slo)))?;
        }
        if !self.marks.is_empty() {
            writeln!(
                s,
                r##"<line x1="{0:.1}" y1="{1:.1}" x2="{0:.1}" y2="{2:.1}" stroke="#777777" stroke-width="1.5" stroke-dasharray="2 3"/>"##,
                (sample0 + sample1) / 2.0,
                row - 7.0,
                row + 7.0
            )?;
            writeln!(s, r#"<text x="{text_x}" y="{:.1}">{}</text>"#, row + 4.0, xml(self.marks_legend))?;
            row += row_height;
        }
        if self.series.iter().any(|s| s.points.iter().any(|p| !p.passed)) {
            writeln!(
                s,
                r##"<text x="{sample0}" y="{:.1}" fill="#777777">hollow marker: step failed</text>"##,
                row + 4.0
            )?;
            row += row_height;
        }
        if flagged {
            writeln!(
                s,
                r##"<text x="{sample0}" y="{:.1}" fill="#777777">crossed: {}</text>"##,
                row + 4.0,
                xml(self.flag_legend)
            )?;
        }
        writeln!(s, "</g>")?;
        writeln!(s, "</svg>")?;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_round_out_and_pad() {
        assert_eq!(log_range([]), (1.0, 10.0));
        assert_eq!(log_range([f64::NAN, 0.0, -3.0]), (1.0, 10.0));
        assert_eq!(log_range([3e5, 1.2e7]), (2e5, 2e7));
        assert_eq!(log_range([1e6, 1e7]), (1e6, 1e7));
        assert_eq!(log_range([4e5]), (2e5, 1e6));
        let (lo, hi) = log_range([1.0, 1.0 + 1e-12]);
        assert!(lo < 1.0 && hi > 1.0);
    }

    fn labels(range: (f64, f64), units: Units, horizontal: bool) -> Vec<String> {
        let axis =
            if horizontal { Axis::new(range, PLOT_LEFT, PLOT_RIGHT) } else { Axis::new(range, PLOT_BOTTOM, PLOT_TOP) };
        ticks(&axis, units, horizontal).0.into_iter().map(|t| label(t, units)).collect()
    }

    #[test]
    fn ticks_suit_the_span() {
        // Within a decade: more than the bounds.
        assert_eq!(labels((2e5, 5e5), Units::Rate, true), ["200k", "300k", "400k", "500k"]);
        // One decade: 1-2-3-5 or denser.
        let one = labels((1e6, 1e7), Units::Rate, true);
        assert!(one.len() >= 4 && one.contains(&"1M".to_string()) && one.contains(&"10M".to_string()), "{one:?}");
        // Two: 1-2-5.
        assert_eq!(labels((1e5, 1e7), Units::Rate, true), ["100k", "200k", "500k", "1M", "2M", "5M", "10M"]);
        // Three: still room for 1-2-5 on x.
        assert_eq!(labels((1e4, 1e7), Units::Rate, true).len(), 10);
        // Four: decades only.
        assert_eq!(labels((1e3, 1e7), Units::Rate, true), ["1k", "10k", "100k", "1M", "10M"]);
        // Four on y: 1-2-5 would make 13 labels; decades.
        assert_eq!(labels((0.1, 1000.0), Units::Millis, false), ["0.1", "1", "10", "100", "1000"]);
        // Two on y (taller labels fit closer): 1-2-3-5.
        assert_eq!(labels((1.0, 100.0), Units::Millis, false), ["1", "2", "3", "5", "10", "20", "30", "50", "100"]);
        // Hundreds of decades: a stride of decades, never too many.
        let wide = labels((1e-150, 1e150), Units::Rate, true);
        assert!((2..=MAX_LABELS).contains(&wide.len()), "{wide:?}");
        // Every range labels at least two ticks.
        for (lo, hi) in [(1.0, 2.0), (5.0, 10.0), (2e-3, 5e-3), (1e-9, 1e9)] {
            for horizontal in [true, false] {
                let l = labels((lo, hi), Units::Millis, horizontal);
                assert!(l.len() >= 2, "{lo} {hi} {l:?}");
            }
        }
    }

    #[test]
    fn labels_are_human() {
        let t = |m, e| Tick { m, e };
        assert_eq!(label(t(2, 5), Units::Rate), "200k");
        assert_eq!(label(t(1, 6), Units::Rate), "1M");
        assert_eq!(label(t(1, 7), Units::Rate), "10M");
        assert_eq!(label(t(5, 8), Units::Rate), "500M");
        assert_eq!(label(t(3, 9), Units::Rate), "3G");
        assert_eq!(label(t(5, 2), Units::Rate), "500");
        assert_eq!(label(t(5, -1), Units::Rate), "0.5");
        assert_eq!(label(t(1, 20), Units::Rate), "1e20");
        assert_eq!(label(t(5, -1), Units::Millis), "0.5");
        assert_eq!(label(t(2, -3), Units::Millis), "0.002");
        assert_eq!(label(t(1, 3), Units::Millis), "1000");
        assert_eq!(label(t(1, -7), Units::Millis), "1e-7");
    }
}
