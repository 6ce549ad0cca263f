//! The game's JSON form, for the WebSocket endpoint (docs/protocol.md,
//! "WebSocket") and the control plane's hunt routes (docs/control.md).
//! Field names follow the Rust types in snake_case. The one file of
//! trove-server that knows the treasure hunt: the endpoints and the
//! control plane are generic over the game ([`JsonGame`],
//! [`ControlGame`]).

use serde_json::{Value, json};
use trove_core::Game;
use trove_hunt::{Action, Hunt, HuntBroadcast, HuntConfig, HuntEvent, HuntOutcome, Reject, Top10, TreasureHunt};

use crate::control::{ControlGame, CreateAnswer};

pub use crate::error::JsonError;

/// A game the JSON endpoint can carry.
pub trait JsonGame: Game {
    /// Reads an event; the value comes from a client: check everything and
    /// name the field that is wrong.
    fn event_from_json(v: &Value) -> Result<Self::Event, JsonError>;
    fn event_to_json(e: &Self::Event) -> Value;
    fn outcome_to_json(o: &Self::Outcome) -> Value;
    fn broadcast_to_json(b: &Self::Broadcast) -> Value;
}

fn field<'a>(v: &'a Value, name: &str) -> Result<&'a Value, JsonError> {
    v.get(name).ok_or_else(|| JsonError::Missing(name.into()))
}

fn uint<T: TryFrom<u64>>(v: &Value, name: &str) -> Result<T, JsonError> {
    let x = field(v, name)?.as_u64().ok_or_else(|| JsonError::NotUnsigned(name.into()))?;
    T::try_from(x).map_err(|_| JsonError::OutOfRange { field: name.into(), value: x.into() })
}

/// A field of an event's `config` object; errors name it `config.<name>`.
fn config_uint<T: TryFrom<u64>>(c: &Value, name: &str) -> Result<T, JsonError> {
    uint(c, name).map_err(JsonError::in_config)
}

fn int16(v: &Value, name: &str) -> Result<i16, JsonError> {
    let x = field(v, name)?.as_i64().ok_or_else(|| JsonError::NotAnInteger(name.into()))?;
    i16::try_from(x).map_err(|_| JsonError::OutOfRange { field: name.into(), value: x.into() })
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
    fn event_from_json(v: &Value) -> Result<HuntEvent, JsonError> {
        if !v.is_object() {
            return Err(JsonError::NotAnObject);
        }
        let hunt = uint(v, "hunt")?;
        let action = field(v, "action")?.as_str().ok_or_else(|| JsonError::NotAString("action".into()))?;
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
                config.validate().map_err(|e| JsonError::Config(e.to_string()))?;
                HuntEvent::create(hunt, config)
            }
            "join" => HuntEvent::join(hunt, player()?),
            "leave" => HuntEvent::leave(hunt, player()?),
            "move" => HuntEvent::move_by(hunt, player()?, int16(v, "dx")?, int16(v, "dy")?),
            "dig" => HuntEvent::dig(hunt, player()?),
            "scan" => HuntEvent::scan(hunt, player()?),
            "delete" => HuntEvent::delete(hunt),
            other => {
                return Err(JsonError::UnknownAction(other.into()));
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
            Action::Delete => json!({"hunt": hunt, "action": "delete"}),
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
            HuntOutcome::Deleted { round } => json!({"outcome": "deleted", "round": round}),
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
            HuntBroadcast::HuntDeleted { round, top } => {
                json!({"broadcast": "hunt_deleted", "round": round, "top": top_json(top)})
            }
        }
    }
}

/// Reads a `POST /hunts` body, `{"id": 7, "config": {...}}`, into the
/// create event it asks for; the error names what is wrong (answered as
/// 400 `bad_request`). Public for the fuzz target (fuzz/).
pub fn parse_create_body(body: &[u8]) -> Result<HuntEvent, JsonError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| JsonError::NotJson(e.to_string()))?;
    let id = field(&v, "id")?;
    if id.as_u64().and_then(|i| u32::try_from(i).ok()).is_none() {
        return Err(JsonError::BadId(id.to_string()));
    }
    let config = field(&v, "config")?;
    TreasureHunt::event_from_json(&json!({"hunt": id, "action": "create", "config": config}))
}

impl ControlGame for TreasureHunt {
    fn world_summary(h: &Hunt) -> Value {
        json!({"id": h.id(), "round": h.round(), "players": h.players_joined(), "treasures_left": h.treasures_left()})
    }

    fn world_detail(h: &Hunt) -> Value {
        let mut v = Self::world_summary(h);
        v["config"] = config_json(h.config());
        v["leaderboard"] = top_json(h.leaderboard());
        v
    }

    fn world_events(h: &Hunt) -> u64 {
        h.events_applied()
    }

    fn world_leaderboard(h: &Hunt) -> Value {
        json!({"id": h.id(), "round": h.round(), "top": top_json(h.leaderboard())})
    }

    fn world_player(h: &Hunt, player: u32) -> Option<Value> {
        let p = h.player(player).filter(|p| p.joined())?;
        Some(json!({"hunt": h.id(), "player": player, "x": p.x, "y": p.y, "score": p.score, "round": h.round()}))
    }

    fn create_from_body(body: &[u8]) -> Result<HuntEvent, JsonError> {
        parse_create_body(body)
    }

    fn create_answer(event: &HuntEvent, outcome: &HuntOutcome) -> CreateAnswer {
        use axum::http::StatusCode;
        let refused = |status, code, message| CreateAnswer::Refused { status, code, message };
        match *outcome {
            HuntOutcome::Created { round } => CreateAnswer::Created(json!({"id": event.hunt, "round": round})),
            HuntOutcome::Rejected { reason: Reject::HuntExists } => {
                refused(StatusCode::CONFLICT, "hunt_exists", format!("hunt {} exists", event.hunt))
            }
            HuntOutcome::Rejected { reason: Reject::TooManyHunts } => refused(
                StatusCode::INSUFFICIENT_STORAGE,
                "too_many_hunts",
                "the engine holds as many hunts as it is configured for".into(),
            ),
            HuntOutcome::Rejected { reason } => {
                refused(StatusCode::UNPROCESSABLE_ENTITY, reason.name(), "rejected".into())
            }
            other => refused(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("unexpected outcome {other:?}")),
        }
    }

    fn delete_event(id: u32) -> HuntEvent {
        HuntEvent::delete(id)
    }

    fn delete_answer(event: &HuntEvent, outcome: &HuntOutcome) -> CreateAnswer {
        use axum::http::StatusCode;
        let refused = |status, code, message| CreateAnswer::Refused { status, code, message };
        match *outcome {
            HuntOutcome::Deleted { round } => CreateAnswer::Created(json!({"id": event.hunt, "round": round})),
            HuntOutcome::Rejected { reason: Reject::UnknownHunt } => {
                refused(StatusCode::NOT_FOUND, "unknown_hunt", format!("no hunt {}", event.hunt))
            }
            HuntOutcome::Rejected { reason } => {
                refused(StatusCode::UNPROCESSABLE_ENTITY, reason.name(), "rejected".into())
            }
            other => refused(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("unexpected outcome {other:?}")),
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
            HuntEvent::delete(1),
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
        let err = |v: Value| TreasureHunt::event_from_json(&v).unwrap_err().to_string();
        assert!(err(json!({"action": "join", "player": 1})).contains("`hunt`"));
        assert!(err(json!({"hunt": 1, "action": "move", "player": 1, "dx": 40000, "dy": 0})).contains("`dx`"));
        assert!(err(json!({"hunt": 1, "action": "fly", "player": 1})).contains("fly"));
        assert!(err(json!({"hunt": -1, "action": "join", "player": 1})).contains("`hunt`"));
        let bad = json!({"hunt": 1, "action": "create", "config": {"width": 0, "height": 1, "seed": 1,
            "treasures_per_round": 1, "value_min": 1, "value_max": 1, "dig_cooldown_ms": 0, "step_max": 1,
            "players_max": 1}});
        assert!(err(bad).contains("config.width"));
        // The messages are the ones clients have always read.
        assert_eq!(err(json!(5)), "an event must be an object");
        assert_eq!(err(json!({"hunt": 1, "action": 3})), "`action` must be a string");
        assert_eq!(err(json!({"hunt": 1, "action": "join", "player": -2})), "`player` must be a non-negative integer");
        assert_eq!(err(json!({"hunt": 1, "action": "move", "player": 1, "dx": "a"})), "`dx` must be an integer");
        assert_eq!(
            err(json!({"hunt": 1, "action": "move", "player": 1, "dx": -40000, "dy": 0})),
            "`dx` = -40000 is out of range"
        );
        assert_eq!(err(json!({"hunt": 1, "action": "create", "config": {}})), "missing field `config.width`");
        assert_eq!(
            err(json!({"hunt": 1, "action": "create", "config": {"width": 70000}})),
            "`config.width` = 70000 is out of range"
        );
        assert_eq!(
            err(json!({"hunt": 1, "action": "fly"})),
            "unknown action `fly`: expected create, join, leave, move, dig, scan or delete"
        );
    }
}
