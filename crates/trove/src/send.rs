//! `trove send`: plays events from the command line, a file or standard
//! input (JSON lines, the WebSocket endpoint's event form of
//! docs/protocol.md) through the Rust SDK's `Producer`, and prints each
//! event's outcome as a JSON line, in order.
//!
//! Input is read as a stream and judged line by line: a line that is not
//! an event stops the run with its line number, after the events before it
//! were sent and answered (their outcomes are printed). Lines are bounded
//! ([`LINE_BYTES_MAX`]); blank lines and lines starting with `#` are
//! skipped.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use trove_client::{Acks, ClientConfig, ClientError, Producer};
use trove_hunt::TreasureHunt;
use trove_server::json::JsonGame;

/// The longest input line read (an event is under 200 bytes).
pub const LINE_BYTES_MAX: usize = 64 << 10;

/// Where the events come from.
#[derive(Debug)]
pub enum Input {
    /// Events given as arguments, one JSON object each.
    Args(Vec<String>),
    /// A file of JSON lines, or standard input for `-`.
    File(PathBuf),
}

/// What `trove send` needs.
#[derive(Debug)]
pub struct SendArgs {
    pub client: ClientConfig,
    pub input: Input,
}

/// Sends every event, prints every outcome; returns how many were
/// answered.
pub fn run(args: SendArgs) -> Result<u64, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))?;
    let lines: Box<dyn BufRead + Send> = match &args.input {
        Input::Args(events) => Box::new(std::io::Cursor::new(events.join("\n").into_bytes())),
        Input::File(path) if path.as_os_str() == "-" => Box::new(std::io::BufReader::new(std::io::stdin())),
        Input::File(path) => Box::new(std::io::BufReader::new(
            std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?,
        )),
    };
    runtime.block_on(send(args.client, lines))
}

async fn send(mut client: ClientConfig, mut input: Box<dyn BufRead + Send>) -> Result<u64, String> {
    client.want_outcomes = true;
    let target = client.addr.clone();
    let (mut producer, acks) =
        Producer::<TreasureHunt>::connect(client).await.map_err(|e| format!("connecting to {target}: {e}"))?;
    // The line of each event sent, in sequence order (sequences are
    // consecutive from the first).
    let first_seq = producer.next_seq();
    let (lines_tx, lines_rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
    let printer = tokio::spawn(print_outcomes(acks, first_seq, lines_rx));
    let mut line = Vec::new();
    let mut number = 0usize;
    let mut stop = None;
    loop {
        line.clear();
        number += 1;
        match read_line(&mut input, &mut line) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                stop = Some(format!("line {number}: {e}"));
                break;
            }
        }
        let text = match std::str::from_utf8(&line) {
            Ok(t) => t.trim(),
            Err(_) => {
                stop = Some(format!("line {number}: not UTF-8"));
                break;
            }
        };
        if text.is_empty() || text.starts_with('#') {
            continue;
        }
        let event = serde_json::from_str::<serde_json::Value>(text)
            .map_err(|e| format!("not JSON: {e}"))
            .and_then(|v| TreasureHunt::event_from_json(&v).map_err(|e| e.to_string()));
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                stop = Some(format!("line {number}: {e}"));
                break;
            }
        };
        // Queued before the send: its answer may come while `send_wait`
        // waits. The printer outlives every send (it ends with the acks).
        let _ = lines_tx.send(number);
        if let Err(e) = producer.send_wait(event).await {
            stop = Some(format!("sending line {number}: {e}"));
            break;
        }
    }
    drop(lines_tx);
    let closed = producer.close().await;
    let printed = printer.await.map_err(|e| format!("the outcome printer: {e}"))??;
    closed.map_err(|e| format!("closing: {e}"))?;
    match stop {
        Some(why) => Err(format!("{why} (the {printed} events before it were sent and answered)")),
        None => Ok(printed),
    }
}

/// Reads one line into `line` (without its end); false at the end of the
/// input. A line longer than [`LINE_BYTES_MAX`] is an error, read no
/// further than the limit.
fn read_line(input: &mut dyn BufRead, line: &mut Vec<u8>) -> Result<bool, String> {
    let mut limited = std::io::Read::take(&mut *input, LINE_BYTES_MAX as u64 + 1);
    let n = limited.read_until(b'\n', line).map_err(|e| e.to_string())?;
    if n == 0 {
        return Ok(false);
    }
    if line.last() == Some(&b'\n') {
        line.pop();
    } else if line.len() > LINE_BYTES_MAX {
        return Err(format!("longer than {LINE_BYTES_MAX} bytes"));
    }
    Ok(true)
}

/// Prints `{"line", "seq", "outcome"}` for each answered event, in order;
/// a refused batch is printed as `{"line", "seq", "error"}` per event.
async fn print_outcomes(
    mut acks: Acks<TreasureHunt>,
    first_seq: u64,
    mut lines: tokio::sync::mpsc::UnboundedReceiver<usize>,
) -> Result<u64, String> {
    let mut next_seq = first_seq;
    let mut printed = 0u64;
    // Not locked across the awaits: the task may move.
    let mut out = std::io::stdout();
    while let Some(ack) = acks.next().await {
        let (seqs, each): (std::ops::Range<u64>, Box<dyn Fn(u64) -> serde_json::Value>) = match ack {
            Ok(ack) => {
                let outcomes: Vec<serde_json::Value> =
                    ack.outcomes.iter().flatten().map(TreasureHunt::outcome_to_json).collect();
                let first = ack.first_seq;
                (
                    ack.seqs(),
                    Box::new(move |seq| {
                        outcomes.get((seq - first) as usize).cloned().unwrap_or(serde_json::Value::Null)
                    }),
                )
            }
            Err(ClientError::BatchRefused { first_seq, count, error }) => {
                let message = error.to_string();
                (first_seq..first_seq + u64::from(count), Box::new(move |_| serde_json::json!({"error": message})))
            }
            Err(e) => return Err(format!("the connection failed: {e}")),
        };
        for seq in seqs {
            if seq < next_seq {
                continue;
            }
            // Acks come in sequence order, each sequence once, and every
            // acked event's line was queued before its send returned.
            let line = lines.try_recv().unwrap_or(0);
            let answer = each(seq);
            let record = if answer.get("error").is_some() {
                serde_json::json!({"line": line, "seq": seq, "error": answer["error"]})
            } else {
                serde_json::json!({"line": line, "seq": seq, "outcome": answer})
            };
            if writeln!(out, "{record}").is_err() {
                return Ok(printed);
            }
            printed += 1;
            next_seq = seq + 1;
        }
    }
    let _ = out.flush();
    Ok(printed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_bounded_and_split() {
        let mut input = std::io::Cursor::new(b"one\ntwo".to_vec());
        let mut line = Vec::new();
        assert_eq!(read_line(&mut input, &mut line), Ok(true));
        assert_eq!(line, b"one");
        line.clear();
        assert_eq!(read_line(&mut input, &mut line), Ok(true));
        assert_eq!(line, b"two");
        line.clear();
        assert_eq!(read_line(&mut input, &mut line), Ok(false));
        let mut long = std::io::Cursor::new(vec![b'x'; LINE_BYTES_MAX + 10]);
        line.clear();
        assert!(read_line(&mut long, &mut line).is_err());
        assert_eq!(line.len(), LINE_BYTES_MAX + 1, "read no further than the limit");
    }
}
