//! Workload specs.

use serde::{Deserialize, Serialize};
use trove_hunt::{HuntConfig, PLAYERS_PER_HUNT_MAX};

/// A workload: the hunts to create, the players in them, and the mix of
/// events to send. See `workloads/standard.toml` for a commented example,
/// and `workloads/hot.toml` and `workloads/join-storm.toml` for the optional
/// `hunt_zipf` and `[storm]`.
///
/// Not `Eq`: `hunt_zipf` is a float.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSpec {
    pub name: String,
    /// Seeds the event stream (and, through `hunt_seed`, the hunts).
    pub seed: u64,
    pub hunts: u32,
    pub players_per_hunt: u32,
    pub map_width: u16,
    pub map_height: u16,
    pub treasures_per_round: u16,
    pub value_min: u16,
    pub value_max: u16,
    pub dig_cooldown_ms: u16,
    pub step_max: u8,
    /// Relative weights of the event kinds.
    pub mix: Mix,
    /// How fast synthetic engine time runs in in-process runs, where no
    /// engine clock stamps events: event i is stamped at
    /// `i * 1_000_000 / virtual_events_per_s` microseconds.
    pub virtual_events_per_s: u64,
    /// Skew of the hunt an event goes to: a Zipf exponent `s` in
    /// `0..=HUNT_ZIPF_MAX`. Within a generator's partition, the hunt of rank
    /// `k` (1-based, in hunt order) is drawn with weight `1 / k^s`. 0 (the
    /// default) draws hunts uniformly, exactly as before the key existed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub hunt_zipf: f64,
    /// Periodic bursts with a mix of their own (default: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storm: Option<Storm>,
}

/// The largest `hunt_zipf` (at 4, the top hunt already takes 92% of events).
pub const HUNT_ZIPF_MAX: f64 = 4.0;

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

/// Periodic bursts: event `i` of a generator's stream (counted from 0 after
/// setup) uses `mix` when `i % period_events < burst_events`, the
/// workload's `[mix]` otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Storm {
    /// Events from the start of one burst to the start of the next (> 0).
    pub period_events: u64,
    /// Events in each burst, `1..=period_events`.
    pub burst_events: u64,
    /// The mix during a burst.
    pub mix: Mix,
}

/// Relative weights of event kinds (they need not sum to 100).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mix {
    #[serde(rename = "move")]
    pub moves: u32,
    pub dig: u32,
    pub scan: u32,
    /// A join if the drawn player is out of the hunt, a leave if it is in.
    pub join_leave: u32,
}

impl Mix {
    /// `field` names the mix in errors (`mix`, `storm.mix`).
    fn validate(&self, field: &str) -> Result<(), SpecError> {
        let err = |reason: &str| Err(SpecError { field: field.into(), reason: reason.into() });
        let m = self;
        if u64::from(m.moves) + u64::from(m.dig) + u64::from(m.scan) + u64::from(m.join_leave) == 0 {
            return err("all weights are zero");
        }
        if m.moves.max(m.dig).max(m.scan).max(m.join_leave) > 1_000_000 {
            return err("weights must be at most 1000000");
        }
        Ok(())
    }
}

/// A workload that cannot be used, naming the field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecError {
    pub field: String,
    pub reason: String,
}

impl std::fmt::Display for SpecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "workload field `{}`: {}", self.field, self.reason)
    }
}

impl std::error::Error for SpecError {}

impl WorkloadSpec {
    /// The standard workload: 1,000 hunts x 1,000 players, 256 x 256 maps,
    /// 64 treasures a round, 70% move, 20% dig, 9% scan, 1% join/leave.
    /// `workloads/standard.toml` holds the same (a test keeps them equal).
    pub fn standard() -> Self {
        Self {
            name: "standard".into(),
            seed: 0x7E57_AB1E,
            hunts: 1000,
            players_per_hunt: 1000,
            map_width: 256,
            map_height: 256,
            treasures_per_round: 64,
            value_min: 10,
            value_max: 100,
            dig_cooldown_ms: 250,
            step_max: 4,
            mix: Mix { moves: 70, dig: 20, scan: 9, join_leave: 1 },
            virtual_events_per_s: 10_000_000,
            hunt_zipf: 0.0,
            storm: None,
        }
    }

    /// The names [`WorkloadSpec::builtin`] knows, for `--workload NAME`.
    pub const BUILTIN_NAMES: [&'static str; 3] = ["standard", "hot", "join-storm"];

    /// A built-in workload by name (see [`WorkloadSpec::BUILTIN_NAMES`]).
    pub fn builtin(name: &str) -> Option<Self> {
        match name {
            "standard" => Some(Self::standard()),
            "hot" => Some(Self::hot()),
            "join-storm" => Some(Self::join_storm()),
            _ => None,
        }
    }

    /// `workloads/hot.toml`: the standard workload with hunts drawn Zipf
    /// (`hunt_zipf = 1.1`), so a few hunts, and the shards that own them,
    /// get most of the events.
    pub fn hot() -> Self {
        Self::embedded(include_str!("../../../workloads/hot.toml"))
    }

    /// `workloads/join-storm.toml`: the standard workload plus, every 2M
    /// events, a burst of 200k events that are 90% joins and leaves.
    pub fn join_storm() -> Self {
        Self::embedded(include_str!("../../../workloads/join-storm.toml"))
    }

    fn embedded(text: &str) -> Self {
        Self::from_toml(text).unwrap_or_else(|e| panic!("built-in workload: {e}"))
    }

    /// Parses and validates a TOML workload.
    pub fn from_toml(text: &str) -> Result<Self, SpecError> {
        let spec: Self = toml::from_str(text).map_err(|e| SpecError {
            field: e.span().map_or_else(|| "?".into(), |s| locate(text, s)),
            reason: e.message().to_string(),
        })?;
        spec.validate()?;
        Ok(spec)
    }

    pub fn validate(&self) -> Result<(), SpecError> {
        let err = |field: &str, reason: String| Err(SpecError { field: field.into(), reason });
        if self.name.is_empty() || self.name.len() > 64 {
            return err("name", "must be 1 to 64 characters".into());
        }
        if self.hunts == 0 || self.hunts > 1 << 20 {
            return err("hunts", format!("{} is not in 1..={}", self.hunts, 1 << 20));
        }
        if self.players_per_hunt == 0 || self.players_per_hunt > PLAYERS_PER_HUNT_MAX {
            return err("players_per_hunt", format!("{} is not in 1..={PLAYERS_PER_HUNT_MAX}", self.players_per_hunt));
        }
        if u64::from(self.hunts) * u64::from(self.players_per_hunt) > 1 << 27 {
            return err("players_per_hunt", "hunts x players_per_hunt is above 2^27".into());
        }
        self.mix.validate("mix")?;
        if self.virtual_events_per_s == 0 {
            return err("virtual_events_per_s", "must be positive".into());
        }
        if !(self.hunt_zipf.is_finite() && (0.0..=HUNT_ZIPF_MAX).contains(&self.hunt_zipf)) {
            return err("hunt_zipf", format!("{} is not in 0..={HUNT_ZIPF_MAX}", self.hunt_zipf));
        }
        if let Some(storm) = &self.storm {
            if storm.period_events == 0 {
                return err("storm.period_events", "must be positive".into());
            }
            if storm.burst_events == 0 || storm.burst_events > storm.period_events {
                return err(
                    "storm.burst_events",
                    format!("{} is not in 1..={} (storm.period_events)", storm.burst_events, storm.period_events),
                );
            }
            storm.mix.validate("storm.mix")?;
        }
        self.hunt_config(0).validate().or_else(|e| err(e.field, e.reason))
    }

    /// The config of hunt `index` (hunts differ by seed only).
    pub fn hunt_config(&self, index: u32) -> HuntConfig {
        HuntConfig {
            width: self.map_width,
            height: self.map_height,
            seed: trove_core::rng::mix64(self.seed ^ u64::from(index)) as u32,
            treasures_per_round: self.treasures_per_round,
            value_min: self.value_min,
            value_max: self.value_max,
            dig_cooldown_ms: self.dig_cooldown_ms,
            step_max: self.step_max,
            players_max: self.players_per_hunt,
        }
    }
}

/// Names the TOML key at a byte span, for error messages, with the table
/// it is in (`storm.mix.dig`).
fn locate(text: &str, span: std::ops::Range<usize>) -> String {
    let line_start = text[..span.start.min(text.len())].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    fn header(line: &str) -> Option<&str> {
        line.trim().strip_prefix('[').map(|h| h.trim_matches(|c| c == '[' || c == ']').trim())
    }
    if let Some(table) = header(line) {
        return if table.is_empty() { format!("byte {}", span.start) } else { table.to_string() };
    }
    let key = line.split('=').next().unwrap_or("").trim();
    if key.is_empty() {
        return format!("byte {}", span.start);
    }
    match text[..line_start].lines().rev().find_map(header) {
        Some(table) if !table.is_empty() => format!("{table}.{key}"),
        _ => key.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_file_matches_code() {
        let text = include_str!("../../../workloads/standard.toml");
        assert_eq!(WorkloadSpec::from_toml(text).unwrap(), WorkloadSpec::standard());
    }

    #[test]
    fn builtins_are_their_files_and_standard_plus_one_setting() {
        let hot = include_str!("../../../workloads/hot.toml");
        let storm = include_str!("../../../workloads/join-storm.toml");
        assert_eq!(WorkloadSpec::from_toml(hot).unwrap(), WorkloadSpec::hot());
        assert_eq!(WorkloadSpec::from_toml(storm).unwrap(), WorkloadSpec::join_storm());
        assert_eq!(
            WorkloadSpec::hot(),
            WorkloadSpec { name: "hot".into(), hunt_zipf: 1.1, ..WorkloadSpec::standard() }
        );
        let storm = Storm {
            period_events: 2_000_000,
            burst_events: 200_000,
            mix: Mix { moves: 10, dig: 0, scan: 0, join_leave: 90 },
        };
        assert_eq!(
            WorkloadSpec::join_storm(),
            WorkloadSpec { name: "join-storm".into(), storm: Some(storm), ..WorkloadSpec::standard() }
        );
        for name in WorkloadSpec::BUILTIN_NAMES {
            let spec = WorkloadSpec::builtin(name).unwrap();
            assert_eq!(spec.name, name);
            spec.validate().unwrap();
        }
        assert_eq!(WorkloadSpec::builtin("standard.toml"), None);
    }

    #[test]
    fn new_settings_are_optional_and_zipf_takes_an_integer() {
        let good = include_str!("../../../workloads/standard.toml");
        let spec = WorkloadSpec::from_toml(good).unwrap();
        assert_eq!((spec.hunt_zipf, spec.storm), (0.0, None));
        let hot = include_str!("../../../workloads/hot.toml");
        assert_eq!(WorkloadSpec::from_toml(&hot.replace("hunt_zipf = 1.1", "hunt_zipf = 1")).unwrap().hunt_zipf, 1.0);
        assert_eq!(WorkloadSpec::from_toml(&hot.replace("hunt_zipf = 1.1", "hunt_zipf = 4.0")).unwrap().hunt_zipf, 4.0);
    }

    #[test]
    fn bad_new_settings_name_the_field() {
        let hot = include_str!("../../../workloads/hot.toml").to_string();
        let storm = include_str!("../../../workloads/join-storm.toml").to_string();
        let zipf = |v: &str| hot.replace("hunt_zipf = 1.1", &format!("hunt_zipf = {v}"));
        let cases = [
            (zipf("-0.5"), "hunt_zipf"),
            (zipf("nan"), "hunt_zipf"),
            (zipf("inf"), "hunt_zipf"),
            (zipf("-inf"), "hunt_zipf"),
            (zipf("4.01"), "hunt_zipf"),
            (zipf("1e300"), "hunt_zipf"),
            (zipf("\"high\""), "hunt_zipf"),
            (storm.replace("burst_events = 200000", "burst_events = 0"), "storm.burst_events"),
            (storm.replace("burst_events = 200000", "burst_events = 2000001"), "storm.burst_events"),
            (storm.replace("burst_events = 200000", "burst_events = -1"), "storm.burst_events"),
            (storm.replace("period_events = 2000000", "period_events = 0"), "storm.period_events"),
            (storm.replace("burst_events = 200000", "burst_events = 200000\nburst = 5"), "storm.burst"),
            (storm.replace("join_leave = 90", "join_leave = 90\njoin = 1"), "storm.mix.join"),
            (storm.replace("move = 10", "move = 0").replace("join_leave = 90", "join_leave = 0"), "storm.mix"),
            (storm.replace("join_leave = 90", "join_leave = 1000001"), "storm.mix"),
            (storm.replace("burst_events = 200000\n", ""), "burst_events"),
        ];
        for (text, field) in cases {
            assert!(text != hot && text != storm, "case for {field} did not change the text");
            let e = WorkloadSpec::from_toml(&text).unwrap_err();
            assert!(e.field.contains(field) || e.reason.contains(field), "{field}: {e}");
        }
        // The key that is wrong, and its table.
        let e = WorkloadSpec::from_toml(&storm.replace("burst_events = 200000", "burst_events = 0")).unwrap_err();
        assert_eq!(e.field, "storm.burst_events", "{e}");
        let e = WorkloadSpec::from_toml(&storm.replace("join_leave = 90", "join_leave = 90\njoin = 1")).unwrap_err();
        assert_eq!(e.field, "storm.mix.join", "{e}");
    }

    #[test]
    fn bad_files_name_the_field() {
        let good = include_str!("../../../workloads/standard.toml").to_string();
        let cases = [
            (good.replace("hunts = 1000", "hunts = 0"), "hunts"),
            (good.replace("map_width = 256", "map_width = 5000"), "width"),
            (good.replace("hunts = 1000", "hunts = \"many\""), "hunts"),
            (good.replace("hunts = 1000", "huntz = 1000"), "huntz"),
            (good.replace("dig = 20", "dig = -1"), "dig"),
            (
                good.replace(
                    "move = 70\ndig = 20\nscan = 9\njoin_leave = 1",
                    "move = 0\ndig = 0\nscan = 0\njoin_leave = 0",
                ),
                "mix",
            ),
            (good.replace("value_max = 100", "value_max = 1"), "value_max"),
        ];
        for (text, field) in cases {
            assert_ne!(text, good, "case for {field} did not change the text");
            let e = WorkloadSpec::from_toml(&text).unwrap_err();
            assert!(e.field.contains(field) || e.reason.contains(field), "{field}: {e}");
        }
    }
}
