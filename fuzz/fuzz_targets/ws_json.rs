//! The WebSocket endpoint's JSON decoding on arbitrary text: the message
//! as `ws.rs` reads it (`serde_json`, then its `type`), and every event of
//! an `events` message through the game's JSON decoder
//! (`JsonGame::event_from_json`, crates/trove-server/src/json.rs), whose
//! errors are the `malformed` answers.
//!
//! Whatever the text: no panic, and an event that decodes re-encodes
//! (`event_to_json`) to JSON that decodes to the same event.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use trove_hunt::TreasureHunt;
use trove_server::json::JsonGame;

fn event(v: &Value) {
    if let Ok(e) = TreasureHunt::event_from_json(v) {
        let again = TreasureHunt::event_to_json(&e);
        assert_eq!(TreasureHunt::event_from_json(&again), Ok(e), "{v} -> {again}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(v) = serde_json::from_str::<Value>(text) else { return };
    let _ = v.get("type").and_then(Value::as_str);
    let _ = v.get("first_seq").map(Value::as_u64);
    let _ = v.get("hunt").and_then(Value::as_u64).and_then(|h| u32::try_from(h).ok());
    match v.get("events").and_then(Value::as_array) {
        Some(list) => list.iter().for_each(event),
        None => event(&v),
    }
});
