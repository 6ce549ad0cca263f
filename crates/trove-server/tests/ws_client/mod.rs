//! A blocking WebSocket client for the `trove-server` integration tests
//! that speak the JSON endpoint.

use serde_json::Value;
use tungstenite::Message;

pub type Ws = tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>;

/// The next text message as JSON (pings and other frames skipped); panics
/// if the server closes first.
pub fn recv(ws: &mut Ws) -> Value {
    loop {
        match ws.read().unwrap() {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Close(_) => panic!("closed"),
            _ => {}
        }
    }
}
