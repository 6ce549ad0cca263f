//! The frame decoder on arbitrary bytes: as the server and the SDK read a
//! stream, split it into frames and decode each, game payloads included.
//! Whatever the input: no panic, no allocation beyond the limit, and a frame
//! that decodes re-encodes to a frame that decodes the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trove_hunt::TreasureHunt;
use trove_proto::frame::{self, HEADER_LEN, Sizes};
use trove_proto::wire::{decode_entries, decode_outcomes};
use trove_proto::Frame;

const SIZES: Sizes = Sizes { record: 32, outcome: 16 };

fuzz_target!(|data: &[u8]| {
    // The first byte picks the limit, as peers configure different ones.
    let Some((&pick, mut rest)) = data.split_first() else { return };
    let max = [frame::HELLO_BODY_MAX, 4096, frame::FRAME_BODY_MAX_DEFAULT][usize::from(pick % 3)];
    loop {
        let (h, total) = match frame::split(rest, max) {
            Ok(Some(x)) => x,
            Ok(None) | Err(_) => return,
        };
        assert!(h.len <= max && total <= rest.len());
        if let Ok(f) = frame::decode(h, &rest[HEADER_LEN..total], SIZES) {
            match f {
                Frame::Update { count, entries, .. } => {
                    if let Ok(e) = decode_entries::<TreasureHunt>(entries) {
                        assert_eq!(e.len(), count as usize);
                    }
                }
                Frame::Ack { outcomes: Some(o), count, .. } => {
                    if let Ok(o) = decode_outcomes::<TreasureHunt>(o) {
                        assert_eq!(o.len(), count as usize);
                    }
                }
                Frame::Events { first_seq, count, records } => {
                    let mut again = Vec::new();
                    frame::encode_events_raw(&mut again, first_seq, count, records);
                    assert_eq!(again, rest[..total]);
                }
                _ => {}
            }
        }
        rest = &rest[total..];
    }
});
