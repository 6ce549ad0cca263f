//! The session rules (src/session.rs) stay free of I/O: no socket, no
//! runtime, no clock read, no await, so that both endpoints can drive
//! them and their unit tests need no server (docs/decisions/0021).

#[test]
fn the_session_names_no_socket_runtime_or_clock() {
    const FORBIDDEN: [&str; 10] = [
        "tokio",
        "std::net",
        "std::io",
        "std::fs",
        "std::thread",
        "Instant::now",
        "SystemTime",
        "async ",
        ".await",
        "Shared",
    ];
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/session.rs");
    let text = std::fs::read_to_string(&path).expect("src/session.rs");
    // Its unit tests may read the clock to make arrivals; the rules may not.
    let rules = text.split("#[cfg(test)]").next().expect("some text");
    assert!(rules.contains("pub(crate) struct Session"), "the rules are above the tests");
    for word in FORBIDDEN {
        assert!(!rules.contains(word), "src/session.rs mentions `{word}`");
    }
}
