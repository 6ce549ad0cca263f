//! The game's JSON form, for the WebSocket endpoint (docs/protocol.md,
//! "WebSocket"). Field names follow the Rust types in snake_case.

use serde_json::{Value, json};
use trove_core::Game;
use trove_hunt::{Action, HuntBroadcast, HuntConfig, HuntEvent, HuntOutcome, Top10, TreasureHunt};

/// A game the JSON endpoint can carry.
pub trait JsonGame: Game {
    /// Reads an event; the value comes from a client: check everything and
    /// name the field that is wrong.
    fn event_from_json(v: &Value) -> Result<Self::Event, String>;
    fn event_to_json(e: &Self::Event) -> Value;
    fn outcome_to_json(o: &Self::Outcome) -> Value;
    fn broadcast_to_json(b: &Self::Broadcast) -> Value;
}

fn field<'a>(v: &'a Value, name: &str) -> Result<&'a Value, String> {
    v.get(name).ok_or_else(|| format!("missing field `{name}`"))
}

fn uint<T: TryFrom<u64>>(v: &Value, name: &str) -> Result<T, String> {
    let x = field(v, name)?.as_u64().ok_or_else(|| format!("`{name}` must be a non-negative integer"))?;
    T::try_from(x).map_err(|_| format!("`{name}` = {x} is out of range"))
}

/// A field of an event's `config` object; errors name it `config.<name>`.
fn config_uint<T: TryFrom<u64>>(c: &Value, name: &str) -> Result<T, String> {
    uint(c, name).map_err(|e| e.replacen(&format!("`{name}`"), &format!("`config.{name}`"), 1))
}

fn int16(v: &Value, name: &str) -> Result<i16, String> {
    let x = field(v, name)?.as_i64().ok_or_else(|| format!("`{name}` must be an integer"))?;
    i16::try_from(x).map_err(|_| format!("`{name}` = {x} is out of range"))
}

/// A hunt's config, as events and the control plane show it.
pub(crate) fn config_json(c: &HuntConfig) -> Value {
    json!({
        "width": c.width, "height": c.height, "seed": c.seed,
        "treasures_per_round": c.treasures_per_round, "value_min": c.value_min,
        "value_max": c.value_max, "dig_cooldown_ms": c.dig_cooldown_ms,
        "step_max": c.step_max, "players_max": c.players_max,
    })
}

/// A top-10 as `[{"player", "score"}]`.
pub(crate) fn top_json(top: &Top10) -> Value {
    Value::Array(top.entries().iter().map(|e| json!({"player": e.player, "score": e.score})).collect())
}

impl JsonGame for TreasureHunt {
    fn event_from_json(v: &Value) -> Result<HuntEvent, String> {
        if !v.is_object() {
            return Err("an event must be an object".into());
        }
        let hunt = uint(v, "hunt")?;
        let action = field(v, "action")?.as_str().ok_or("`action` must be a string")?;
        let player = || uint::<u32>(v, "player");
        Ok(match action {
            "create" => {
                let c = field(v, "config")?;
                let config = HuntConfig {
                    width: config_uint(c, "width")?,
                    height: config_uint(c, "height")?,
                    seed: config_uint(c, "seed")?,
                    treasures_per_round: config_uint(c, "treasures_per_round")?,
                    value_min: config_uint(c, "value_min")?,
                    value_max: config_uint(c, "value_max")?,
                    dig_cooldown_ms: config_uint(c, "dig_cooldown_ms")?,
                    step_max: config_uint(c, "step_max")?,
                    players_max: config_uint(c, "players_max")?,
                };
                config.validate().map_err(|e| format!("config.{e}"))?;
                HuntEvent::create(hunt, config)
            }
            "join" => HuntEvent::join(hunt, player()?),
            "leave" => HuntEvent::leave(hunt, player()?),
            "move" => HuntEvent::move_by(hunt, player()?, int16(v, "dx")?, int16(v, "dy")?),
            "dig" => HuntEvent::dig(hunt, player()?),
            "scan" => HuntEvent::scan(hunt, player()?),
            other => {
                return Err(format!("unknown action `{other}`: expected create, join, leave, move, dig or scan"));
            }
        })
    }

    fn event_to_json(e: &HuntEvent) -> Value {
        let (hunt, player) = (e.hunt, e.player);
        match e.action {
            Action::Create(c) => json!({"hunt": hunt, "action": "create", "config": config_json(&c)}),
            Action::Join => json!({"hunt": hunt, "player": player, "action": "join"}),
            Action::Leave => json!({"hunt": hunt, "player": player, "action": "leave"}),
            Action::Move { dx, dy } => json!({"hunt": hunt, "player": player, "action": "move", "dx": dx, "dy": dy}),
            Action::Dig => json!({"hunt": hunt, "player": player, "action": "dig"}),
            Action::Scan => json!({"hunt": hunt, "player": player, "action": "scan"}),
            Action::Invalid => json!({"hunt": hunt, "player": player, "action": "invalid"}),
        }
    }

    fn outcome_to_json(o: &HuntOutcome) -> Value {
        match *o {
            HuntOutcome::Created { round } => json!({"outcome": "created", "round": round}),
            HuntOutcome::Joined { x, y, score } => json!({"outcome": "joined", "x": x, "y": y, "score": score}),
            HuntOutcome::Left => json!({"outcome": "left"}),
            HuntOutcome::Moved { x, y } => json!({"outcome": "moved", "x": x, "y": y}),
            HuntOutcome::DigFound { value, score } => json!({"outcome": "dig_found", "value": value, "score": score}),
            HuntOutcome::DigNothing => json!({"outcome": "dig_nothing"}),
            HuntOutcome::Hint { band } => json!({"outcome": "hint", "band": format!("{band:?}").to_lowercase()}),
            HuntOutcome::Rejected { reason } => json!({"outcome": "rejected", "reason": reason.name()}),
        }
    }

    fn broadcast_to_json(b: &HuntBroadcast) -> Value {
        match b {
            HuntBroadcast::TreasureFound { round, player, x, y, value, score, treasures_left } => json!({
                "broadcast": "treasure_found", "round": round, "player": player, "x": x, "y": y,
                "value": value, "score": score, "treasures_left": treasures_left}),
            HuntBroadcast::LeaderboardChanged { round, top } => {
                json!({"broadcast": "leaderboard_changed", "round": round, "top": top_json(top)})
            }
            HuntBroadcast::RoundFinished { round, top } => {
                json!({"broadcast": "round_finished", "round": round, "top": top_json(top)})
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_and_bad_fields_are_named() {
        let events = [
            HuntEvent::join(1, 2),
            HuntEvent::move_by(1, 2, -3, 4),
            HuntEvent::dig(1, 2),
            HuntEvent::scan(1, 2),
            HuntEvent::leave(1, 2),
            HuntEvent::create(
                9,
                HuntConfig {
                    width: 64,
                    height: 64,
                    seed: 1,
                    treasures_per_round: 8,
                    value_min: 1,
                    value_max: 5,
                    dig_cooldown_ms: 10,
                    step_max: 2,
                    players_max: 100,
                },
            ),
        ];
        for e in events {
            assert_eq!(TreasureHunt::event_from_json(&TreasureHunt::event_to_json(&e)), Ok(e));
        }
        let err = |v: Value| TreasureHunt::event_from_json(&v).unwrap_err();
        assert!(err(json!({"action": "join", "player": 1})).contains("`hunt`"));
        assert!(err(json!({"hunt": 1, "action": "move", "player": 1, "dx": 40000, "dy": 0})).contains("`dx`"));
        assert!(err(json!({"hunt": 1, "action": "fly", "player": 1})).contains("fly"));
        assert!(err(json!({"hunt": -1, "action": "join", "player": 1})).contains("`hunt`"));
        let bad = json!({"hunt": 1, "action": "create", "config": {"width": 0, "height": 1, "seed": 1,
            "treasures_per_round": 1, "value_min": 1, "value_max": 1, "dig_cooldown_ms": 0, "step_max": 1,
            "players_max": 1}});
        assert!(err(bad).contains("config.width"));
    }
}
