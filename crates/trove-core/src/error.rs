//! The two ways a game's code reports failure, written by hand (this crate
//! has no dependencies, not even `thiserror`: docs/decisions/0022-typed-errors.md).
//!
//! - [`DecodeError`]: bytes from a file or the wire that do not decode.
//! - [`InvariantError`]: a broken invariant found by an exhaustive check.

use std::fmt;

use crate::game::WorldId;

/// Why bytes from a file or the wire did not decode. Decoding is total:
/// every hostile input ends here, never in a panic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer bytes than the encoding needs: `wanted` more at byte `at`.
    Truncated { at: usize, wanted: usize },
    /// Bytes left over after a whole value.
    LeftOver { bytes: usize },
    /// A value the encoding never produces (an unknown kind, a count its
    /// bytes cannot hold, a field out of range), said in words.
    Invalid(String),
}

impl DecodeError {
    /// The same error, its message led by `what` ("producer 3: ...").
    pub fn within(self, what: impl fmt::Display) -> DecodeError {
        DecodeError::Invalid(format!("{what}: {self}"))
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Truncated { at, wanted } => write!(f, "truncated at byte {at} (wanted {wanted} more)"),
            DecodeError::LeftOver { bytes } => write!(f, "{bytes} bytes left over"),
            DecodeError::Invalid(what) => f.write_str(what),
        }
    }
}

impl std::error::Error for DecodeError {}

impl From<String> for DecodeError {
    fn from(what: String) -> Self {
        DecodeError::Invalid(what)
    }
}

/// Decoded bytes whose value breaks an invariant are bytes the encoder
/// never wrote.
impl From<InvariantError> for DecodeError {
    fn from(e: InvariantError) -> Self {
        DecodeError::Invalid(e.to_string())
    }
}

impl From<&str> for DecodeError {
    fn from(what: &str) -> Self {
        DecodeError::Invalid(what.to_string())
    }
}

/// A broken invariant, found by [`Game::check_world`](crate::Game::check_world)
/// or [`GameState::check`](crate::GameState::check): a bug in the rules,
/// never bad input. Tests call the checks; the message says what broke.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvariantError {
    /// The world it broke in, once known.
    pub world: Option<WorldId>,
    /// What broke, in words.
    pub broken: String,
}

impl InvariantError {
    pub fn new(broken: impl Into<String>) -> Self {
        Self { world: None, broken: broken.into() }
    }

    /// The same error, placed in world `id`.
    pub fn in_world(self, id: WorldId) -> Self {
        Self { world: Some(id), ..self }
    }
}

impl fmt::Display for InvariantError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.world {
            Some(id) => write!(f, "world {id}: {}", self.broken),
            None => f.write_str(&self.broken),
        }
    }
}

impl std::error::Error for InvariantError {}

impl From<String> for InvariantError {
    fn from(broken: String) -> Self {
        Self::new(broken)
    }
}

impl From<&str> for InvariantError {
    fn from(broken: &str) -> Self {
        Self::new(broken)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Reader;

    #[test]
    fn a_reader_says_where_it_ran_out_and_what_was_left() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(r.u16(), Ok(0x0201));
        assert_eq!(r.u32(), Err(DecodeError::Truncated { at: 2, wanted: 4 }));
        assert_eq!(Reader::new(&[1, 2, 3]).finish(), Err(DecodeError::LeftOver { bytes: 3 }));
        // The messages are the ones the strings said before.
        assert_eq!(DecodeError::Truncated { at: 2, wanted: 4 }.to_string(), "truncated at byte 2 (wanted 4 more)");
        assert_eq!(DecodeError::LeftOver { bytes: 3 }.to_string(), "3 bytes left over");
        let e = DecodeError::from("bad kind").within("producer 5");
        assert_eq!(e, DecodeError::Invalid("producer 5: bad kind".into()));
    }

    #[test]
    fn an_invariant_error_names_its_world_once_placed() {
        let e = InvariantError::new("two treasures at (1, 2)");
        assert_eq!(e.to_string(), "two treasures at (1, 2)");
        assert_eq!(e.in_world(7).to_string(), "world 7: two treasures at (1, 2)");
    }
}
