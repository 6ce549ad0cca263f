//! The control plane's request bodies on arbitrary bytes: `POST /hunts`
//! (`control::parse_create_body`, what the handler runs on the body it
//! read).
//!
//! Whatever the bytes: no panic, and a body that parses is a create with a
//! config that validates, and the body written back from it parses to the
//! same event.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::json;
use trove_hunt::{Action, TreasureHunt};
use trove_server::control::parse_create_body;
use trove_server::json::JsonGame;

fuzz_target!(|data: &[u8]| {
    let Ok(event) = parse_create_body(data) else { return };
    let Action::Create(config) = event.action else { panic!("{event:?} is not a create") };
    assert!(config.validate().is_ok(), "{config:?}");
    let as_json = TreasureHunt::event_to_json(&event);
    let body = json!({"id": event.hunt, "config": as_json["config"]}).to_string();
    assert_eq!(parse_create_body(body.as_bytes()), Ok(event), "{body}");
});
