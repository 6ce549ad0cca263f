//! Workload specs.

use serde::{Deserialize, Serialize};
use trove_hunt::{HuntConfig, PLAYERS_PER_HUNT_MAX};

/// A workload: the hunts to create, the players in them, and the mix of
/// events to send. See `workloads/standard.toml` for a commented example.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
        }
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
        let m = self.mix;
        if u64::from(m.moves) + u64::from(m.dig) + u64::from(m.scan) + u64::from(m.join_leave) == 0 {
            return err("mix", "all weights are zero".into());
        }
        if m.moves.max(m.dig).max(m.scan).max(m.join_leave) > 1_000_000 {
            return err("mix", "weights must be at most 1000000".into());
        }
        if self.virtual_events_per_s == 0 {
            return err("virtual_events_per_s", "must be positive".into());
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

/// Names the TOML key at a byte span, for error messages.
fn locate(text: &str, span: std::ops::Range<usize>) -> String {
    let line_start = text[..span.start.min(text.len())].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let key = line.split('=').next().unwrap_or("").trim();
    let key = key.trim_matches(|c| c == '[' || c == ']');
    if key.is_empty() { format!("byte {}", span.start) } else { key.to_string() }
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
