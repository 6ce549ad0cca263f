//! WebSocket subscribers: a minimal client of what the server's `/`
//! endpoint speaks (text messages of JSON, and with `"compression":
//! "deflate"` updates as binary messages of raw DEFLATE; server frames are
//! unmasked and unfragmented).

use std::net::SocketAddr;

use tokio::net::TcpStream;

use super::WS_MESSAGE_MAX;
use super::reader::{Scan, Sub, applied, gap, news, write_all};

pub(super) async fn ws_handshake(
    stream: &mut TcpStream,
    addr: SocketAddr,
    token: Option<&trove_client::Token>,
) -> Result<(), String> {
    let bearer = token.map(|t| format!("Authorization: Bearer {}\r\n", t.to_hex())).unwrap_or_default();
    let req = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{bearer}\r\n"
    );
    write_all(stream, req.as_bytes()).await
}

/// A masked client text frame (the mask is zero: masking is then the identity).
pub(super) fn ws_text(payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x81];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(payload);
    out
}

/// One whole server frame at the front of `buf`: (opcode, payload range, total).
pub(super) fn ws_frame(buf: &[u8]) -> Result<Option<(u8, std::ops::Range<usize>)>, String> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x80 == 0 || b0 & 0x0F == 0 {
        return Err("a fragmented WebSocket message (the bench reads whole messages)".into());
    }
    if b1 & 0x80 != 0 {
        return Err("a masked frame from the server".into());
    }
    let (len, head) = match b1 & 0x7F {
        126 if buf.len() >= 4 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
        127 if buf.len() >= 10 => (u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes")), 10),
        126 | 127 => return Ok(None),
        n => (u64::from(n), 2),
    };
    if len > WS_MESSAGE_MAX as u64 {
        return Err(format!("a WebSocket message of {len} bytes"));
    }
    let end = head + len as usize;
    Ok((buf.len() >= end).then_some((b0 & 0x0F, head..end)))
}

/// Reads the upgrade's answer, then `subscribed` (after the `welcome` a
/// `hello` is answered with): true once subscribed.
pub(super) fn ws_setup(buf: &[u8], at: &mut usize, sub: &mut Sub, head_read: &mut bool) -> Result<bool, String> {
    if !*head_read {
        let Some(end) = find(buf, b"\r\n\r\n") else { return Ok(false) };
        if !buf.starts_with(b"HTTP/1.1 101") {
            let line = String::from_utf8_lossy(&buf[..end.min(200)]).into_owned();
            return Err(format!("the WebSocket upgrade was answered {line}"));
        }
        *at = end + 4;
        *head_read = true;
    }
    // The next messages answer the hello, if one was sent, and the
    // subscription.
    while let Some((op, range)) = ws_frame(&buf[*at..])? {
        let msg = &buf[*at + range.start..*at + range.end];
        *at += range.end;
        if op != 1 {
            return Err(format!("WebSocket opcode {op} before `subscribed`"));
        }
        let v: serde_json::Value = serde_json::from_slice(msg).map_err(|e| e.to_string())?;
        match v["type"].as_str() {
            Some("welcome") => continue,
            Some("subscribed") => {
                sub.next_seq = v["next_seq"].as_u64().ok_or("`subscribed` without next_seq")?;
                return Ok(true);
            }
            _ => return Err(format!("unexpected message before `subscribed`: {}", String::from_utf8_lossy(msg))),
        }
    }
    Ok(false)
}

thread_local! {
    /// A fleet thread's decompressor and the message it inflates into,
    /// reused from message to message.
    static INFLATER: std::cell::RefCell<(flate2::Decompress, Vec<u8>)> =
        std::cell::RefCell::new((flate2::Decompress::new(false), Vec::new()));
}

/// Inflates `packed` (raw DEFLATE) into `out`: at most `max` bytes, and
/// one whole stream, or an error.
pub(super) fn inflate(d: &mut flate2::Decompress, packed: &[u8], out: &mut Vec<u8>, max: usize) -> Result<(), String> {
    d.reset(false);
    out.clear();
    loop {
        if out.capacity() == out.len() {
            if out.len() >= max {
                return Err(format!("a compressed update inflates past {max} bytes"));
            }
            // Exact: the room never passes `max` (a growth policy's doubling would).
            out.reserve_exact((out.len().max(packed.len() * 4).max(1024)).min(max - out.len()));
        }
        let read = usize::try_from(d.total_in()).map_err(|_| "past usize")?;
        let before = (d.total_in(), out.len());
        let status = d
            .decompress_vec(&packed[read..], out, flate2::FlushDecompress::None)
            .map_err(|e| format!("a compressed update that does not inflate: {e}"))?;
        if out.len() > max {
            return Err(format!("a compressed update inflates past {max} bytes"));
        }
        if status == flate2::Status::StreamEnd {
            return if usize::try_from(d.total_in()).ok() == Some(packed.len()) {
                Ok(())
            } else {
                Err("bytes after a compressed update's end".into())
            };
        }
        // No progress with room to write: the input ended mid-stream.
        if before == (d.total_in(), out.len()) && out.capacity() > out.len() {
            return Err("a compressed update cut short".into());
        }
    }
}

/// The value of `"key":N` in a flat part of a JSON message.
pub(super) fn json_u64(msg: &[u8], key: &[u8]) -> Option<u64> {
    let at = find(msg, key)? + key.len();
    let digits = msg[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&msg[at..at + digits]).ok()?.parse().ok()
}

/// The player of a `treasure_found` body in `entry` (an update entry's
/// text before its kind: `{"body":{"broadcast":"treasure_found",
/// "player":P,...},`).
fn treasure_found_player(entry: &[u8]) -> Option<u32> {
    const FOUND: &[u8] = br#""broadcast":"treasure_found","player":"#;
    let at = find(entry, FOUND)? + FOUND.len();
    let digits = entry[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&entry[at..at + digits]).ok()?.parse().ok()
}

pub(super) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}

/// What starts an update entry's kind.
const KIND: &[u8] = br#""kind":""#;

/// Scans the whole WebSocket frames at the front of `buf`. An `update`
/// (keys sorted, as serde_json writes them: `{"entries":[...],
/// "first_seq":N,"hunt":H,"type":"update"}`) is counted by its
/// `"kind":"applied"` and `"kind":"broadcast"` (no other field of an
/// entry is named `kind`).
pub(super) fn scan_ws(buf: &[u8], sub: &mut Sub, scan: &mut Scan<'_>) -> Result<usize, String> {
    static FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(KIND));
    let kind = &*FINDER;
    let mut at = 0;
    while let Some((op, range)) = ws_frame(&buf[at..])? {
        let msg = &buf[at + range.start..at + range.end];
        at += range.end;
        match op {
            1 => scan_message(msg, sub, scan, kind)?,
            // Only updates come compressed.
            2 => INFLATER.with_borrow_mut(|(d, text)| {
                inflate(d, msg, text, WS_MESSAGE_MAX)?;
                if !text.ends_with(br#""type":"update"}"#) {
                    return Err("a binary message that is not an update".to_string());
                }
                scan_message(text, sub, scan, kind)
            })?,
            8 => return Err(format!("the server closed: {}", String::from_utf8_lossy(msg.get(2..).unwrap_or(&[])))),
            9 | 10 => continue,
            _ => return Err(format!("WebSocket opcode {op}")),
        }
    }
    Ok(at)
}

/// One JSON message (text, or inflated): an update's entries counted and
/// timed, a gap noted.
fn scan_message(
    msg: &[u8],
    sub: &mut Sub,
    scan: &mut Scan<'_>,
    kind: &memchr::memmem::Finder<'_>,
) -> Result<(), String> {
    if msg.ends_with(br#""type":"update"}"#) {
        let tail = msg.len().saturating_sub(80);
        let first_seq = json_u64(&msg[tail..], br#""first_seq":"#).ok_or("an update without first_seq")?;
        if first_seq != sub.next_seq && sub.synced {
            sub.synced = false;
            scan.tally.desynced += 1;
        }
        let (mut count, mut entry_from) = (0u64, 0);
        for i in kind.find_iter(msg) {
            let v = &msg[i + KIND.len()..];
            count += 1;
            if v.starts_with(b"applied\"") {
                applied(sub, scan);
            } else if !v.starts_with(b"broadcast\"") {
                return Err("an update entry of an unknown kind".into());
            } else if sub.news {
                // The entry's body comes before its kind (keys sorted).
                news(sub, treasure_found_player(&msg[entry_from..i]), scan);
            }
            entry_from = i + KIND.len();
        }
        sub.next_seq = first_seq.checked_add(count).ok_or("an update past sequence 2^64")?;
        scan.tally.entries += count;
    } else if msg.ends_with(br#""type":"gap"}"#) {
        let first = json_u64(msg, br#""first_missed":"#).ok_or("a gap without first_missed")?;
        let missed = json_u64(msg, br#""missed":"#).ok_or("a gap without missed")?;
        gap(sub, first, missed, scan.tally);
    } else if msg.ends_with(br#""type":"pong"}"#) || msg.ends_with(br#""type":"subscribed"}"#) {
    } else {
        return Err(format!("unexpected message: {}", String::from_utf8_lossy(&msg[..msg.len().min(200)])));
    }
    Ok(())
}
