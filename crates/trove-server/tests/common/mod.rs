//! Helpers shared by the `trove-server` integration tests.

use trove_hunt::HuntConfig;

/// A small hunt: a 64x64 map, up to 1,000 players, no dig cooldown.
pub fn hunt_config() -> HuntConfig {
    HuntConfig {
        width: 64,
        height: 64,
        seed: 7,
        treasures_per_round: 64,
        value_min: 1,
        value_max: 9,
        dig_cooldown_ms: 0,
        step_max: 4,
        players_max: 1000,
    }
}
