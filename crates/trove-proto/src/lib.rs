//! Protocol v1 of trove's data plane: the frames, their byte layout, and a
//! codec that checks every length before it slices or allocates.
//!
//! docs/protocol.md is the specification; this crate is its one
//! implementation, used by the server and the client SDK alike. It does no
//! I/O: the caller reads bytes, asks [`frame::split`] whether a whole frame
//! is there, and decodes it with [`frame::decode`].

pub mod frame;
pub mod hunt;
pub mod wire;

pub use frame::{ErrorCode, Frame, FrameError, Header, Kind};
pub use wire::{UpdateEntry, WireGame};
