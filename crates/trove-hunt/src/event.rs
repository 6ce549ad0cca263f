//! Treasure-hunt events and their 32-byte record.

use trove_core::Record;
use trove_core::record::le;

/// Player ids of a hunt are below its `players_max`, which is at most this.
/// It bounds the memory one hunt can make the engine allocate for players.
pub const PLAYERS_PER_HUNT_MAX: u32 = 1 << 20;
/// Largest map side.
pub const MAP_SIDE_MAX: u16 = 4096;

/// One event: who (`player`) does what (`action`) in which hunt.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HuntEvent {
    pub hunt: u32,
    pub player: u32,
    pub action: Action,
}

/// `repr(u8)` with the kind bytes as discriminants: the layout is then
/// defined (a `repr(C)` union of `repr(C)` structs, each starting with the
/// discriminant byte), so the journal's encoder reads the kind and a
/// move's steps without a jump on the kind (`HuntEvent::kind_and_steps`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(u8)]
pub enum Action {
    /// Creates hunt `hunt` (the `player` field is ignored).
    Create(HuntConfig) = kind::CREATE,
    Join = kind::JOIN,
    Leave = kind::LEAVE,
    /// Moves by (dx, dy); each must be within the hunt's `step_max`.
    Move {
        dx: i16,
        dy: i16,
    } = kind::MOVE,
    /// Digs at the player's cell.
    Dig = kind::DIG,
    /// Asks how far the nearest unclaimed treasure is.
    Scan = kind::SCAN,
    /// Deletes hunt `hunt` (the `player` field is ignored): its players,
    /// treasures and leaderboard are gone and its id is free to be
    /// created again, from scratch.
    Delete = kind::DELETE,
    /// A record whose kind byte names no action. Decoding never fails; the
    /// rules answer this with `Reject::InvalidEvent`.
    #[default]
    Invalid = 0,
}

/// A hunt's parameters, fixed at creation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HuntConfig {
    pub width: u16,
    pub height: u16,
    /// Seeds treasure placement and spawn points.
    pub seed: u32,
    pub treasures_per_round: u16,
    pub value_min: u16,
    pub value_max: u16,
    /// Engine time a player must wait between two digs.
    pub dig_cooldown_ms: u16,
    /// Largest |dx| and |dy| of one move.
    pub step_max: u8,
    /// Player ids must be below this.
    pub players_max: u32,
}

/// Why a `HuntConfig` is invalid; names the field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub field: &'static str,
    pub reason: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

impl std::error::Error for ConfigError {}

impl HuntConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |field, reason: String| Err(ConfigError { field, reason });
        if !(1..=MAP_SIDE_MAX).contains(&self.width) {
            return err("width", format!("{} is not in 1..={MAP_SIDE_MAX}", self.width));
        }
        if !(1..=MAP_SIDE_MAX).contains(&self.height) {
            return err("height", format!("{} is not in 1..={MAP_SIDE_MAX}", self.height));
        }
        // At most a quarter of the cells hold treasure, so placement by
        // rejection sampling needs at most 4/3 draws per treasure on average.
        let cells = u32::from(self.width) * u32::from(self.height);
        let treasures = u32::from(self.treasures_per_round);
        if treasures == 0 || treasures > cells / 4 {
            return err(
                "treasures_per_round",
                format!("{treasures} is not in 1..={} (a quarter of the {cells} cells)", cells / 4),
            );
        }
        if self.value_min == 0 {
            return err("value_min", "must be at least 1".into());
        }
        if self.value_max < self.value_min {
            return err("value_max", format!("{} is below value_min {}", self.value_max, self.value_min));
        }
        if self.step_max == 0 {
            return err("step_max", "must be at least 1".into());
        }
        if self.players_max == 0 || self.players_max > PLAYERS_PER_HUNT_MAX {
            return err("players_max", format!("{} is not in 1..={PLAYERS_PER_HUNT_MAX}", self.players_max));
        }
        Ok(())
    }
}

/// Kind bytes of the record encoding.
pub mod kind {
    pub const CREATE: u8 = 1;
    pub const JOIN: u8 = 2;
    pub const LEAVE: u8 = 3;
    pub const MOVE: u8 = 4;
    pub const DIG: u8 = 5;
    pub const SCAN: u8 = 6;
    /// The last kind the packed form's three kind bits hold.
    pub const DELETE: u8 = 7;
}

impl HuntEvent {
    /// The kind byte and a move's steps (zero for other kinds), for the
    /// encoders the journal calls per event, without a jump on the kind.
    ///
    /// The kinds come in no predictable order, and a `match` on them
    /// compiled to a jump table whose mispredictions took about a third of
    /// the journal encoder's time (docs/decisions/0031). So both are read
    /// from `Action`'s defined layout instead: the discriminant byte is the
    /// kind, and a move's `dx` and `dy` are the two `i16`s at offsets 2 and
    /// 4. Those bytes are read whatever the kind (as possibly uninitialised
    /// memory: a unit variant leaves them as padding) and only taken as
    /// steps when the kind is a move, which compiles to a conditional move.
    #[inline]
    #[allow(unsafe_code)]
    fn kind_and_steps(&self) -> (u8, i16, i16) {
        const { assert!(size_of::<Action>() >= 6 && align_of::<Action>() >= 2) };
        let at = std::ptr::from_ref(&self.action).cast::<u8>();
        // SAFETY: `Action` is `repr(u8)`, so its first byte is always its
        // (initialised) discriminant: the Reference, "Primitive
        // representation of enums with fields".
        let kind = unsafe { at.read() };
        // SAFETY: bytes 2..6 are within the value (at least 6 bytes, by the
        // assertion above) and 2-aligned (the enum's alignment is at least
        // 2), and are read as `MaybeUninit`, which any bytes are valid as.
        let raw = unsafe { at.add(2).cast::<std::mem::MaybeUninit<[i16; 2]>>().read() };
        // SAFETY: with the discriminant `MOVE` the value is the variant
        // `Move`, a `repr(C)` struct (u8 discriminant, i16 dx, i16 dy): dx
        // and dy are exactly these bytes, initialised.
        let [dx, dy] = if kind == kind::MOVE { unsafe { raw.assume_init() } } else { [0, 0] };
        (kind, dx, dy)
    }

    pub fn create(hunt: u32, config: HuntConfig) -> Self {
        Self { hunt, player: 0, action: Action::Create(config) }
    }
    pub fn join(hunt: u32, player: u32) -> Self {
        Self { hunt, player, action: Action::Join }
    }
    pub fn leave(hunt: u32, player: u32) -> Self {
        Self { hunt, player, action: Action::Leave }
    }
    pub fn move_by(hunt: u32, player: u32, dx: i16, dy: i16) -> Self {
        Self { hunt, player, action: Action::Move { dx, dy } }
    }
    pub fn dig(hunt: u32, player: u32) -> Self {
        Self { hunt, player, action: Action::Dig }
    }
    pub fn scan(hunt: u32, player: u32) -> Self {
        Self { hunt, player, action: Action::Scan }
    }
    pub fn delete(hunt: u32) -> Self {
        Self { hunt, player: 0, action: Action::Delete }
    }
}

/// The record layout (docs/protocol.md and docs/journal.md embed it):
///
/// | offset | size | field                       |
/// |-------:|-----:|-----------------------------|
/// | 0      | 4    | hunt                        |
/// | 4      | 4    | player                      |
/// | 8      | 1    | kind (1 create, 2 join, 3 leave, 4 move, 5 dig, 6 scan, 7 delete) |
/// | 9      | 1    | step_max (create)           |
/// | 10     | 2    | dx (move, i16) or width (create) |
/// | 12     | 2    | dy (move, i16) or height (create) |
/// | 14     | 2    | treasures_per_round (create)|
/// | 16     | 2    | value_min (create)          |
/// | 18     | 2    | value_max (create)          |
/// | 20     | 2    | dig_cooldown_ms (create)    |
/// | 22     | 2    | reserved, zero              |
/// | 24     | 4    | seed (create)               |
/// | 28     | 4    | players_max (create)        |
///
/// Fields a kind does not use are written as zero and ignored on read.
impl Record for HuntEvent {
    const SIZE: usize = 32;

    fn encode(&self, out: &mut [u8]) {
        let out = &mut out[..Self::SIZE];
        out.fill(0);
        le::put(out, 0, &self.hunt.to_le_bytes());
        le::put(out, 4, &self.player.to_le_bytes());
        let k = match self.action {
            Action::Create(c) => {
                out[9] = c.step_max;
                le::put(out, 10, &c.width.to_le_bytes());
                le::put(out, 12, &c.height.to_le_bytes());
                le::put(out, 14, &c.treasures_per_round.to_le_bytes());
                le::put(out, 16, &c.value_min.to_le_bytes());
                le::put(out, 18, &c.value_max.to_le_bytes());
                le::put(out, 20, &c.dig_cooldown_ms.to_le_bytes());
                le::put(out, 24, &c.seed.to_le_bytes());
                le::put(out, 28, &c.players_max.to_le_bytes());
                kind::CREATE
            }
            Action::Join => kind::JOIN,
            Action::Leave => kind::LEAVE,
            Action::Move { dx, dy } => {
                le::put(out, 10, &dx.to_le_bytes());
                le::put(out, 12, &dy.to_le_bytes());
                kind::MOVE
            }
            Action::Dig => kind::DIG,
            Action::Scan => kind::SCAN,
            Action::Delete => kind::DELETE,
            Action::Invalid => 0,
        };
        out[8] = k;
    }

    /// Hunt, player and kind (9 bytes), and a move's dx and dy (14): the
    /// fields each kind uses; a create in full. Written without a branch per
    /// kind (the journal thread calls this for every event, and the kinds
    /// come in no predictable order): every field of bytes 0..14 is
    /// written, only the length depends on the kind.
    #[inline]
    fn encode_prefix(&self, out: &mut [u8]) -> usize {
        let out = &mut out[..Self::SIZE];
        if let Action::Create(_) = self.action {
            self.encode(out);
            return Self::SIZE;
        }
        let (kind, dx, dy) = self.kind_and_steps();
        le::put(out, 0, &self.hunt.to_le_bytes());
        le::put(out, 4, &self.player.to_le_bytes());
        out[8] = kind;
        out[9] = 0;
        le::put(out, 10, &dx.to_le_bytes());
        le::put(out, 12, &dy.to_le_bytes());
        if kind == kind::MOVE { 14 } else { 9 }
    }

    /// The journal's storage form: a head byte (kind in bits 0-2; the
    /// hunt's and the player's byte counts minus one in bits 3-4 and 5-6;
    /// bit 7: a move whose steps fit one byte each), the hunt and the
    /// player in as few little-endian bytes as hold them, then a move's dx
    /// and dy (one byte each, or two). A create is its kind and the full
    /// 32-byte record. With hunt and player ids below 65,536 a move takes
    /// 5-7 bytes, a dig or a scan 3-5.
    const PACKED: bool = true;
    const PACKED_MAX: usize = 1 + Self::SIZE;

    /// Without a branch on the kind but for a create: every field is
    /// stored, only the advance depends on the values.
    #[inline]
    fn encode_packed(&self, out: &mut [u8]) -> usize {
        let out = &mut out[..Self::PACKED_MAX];
        if let Action::Create(_) = self.action {
            out[0] = kind::CREATE;
            self.encode(&mut out[1..]);
            return Self::PACKED_MAX;
        }
        let (kind, dx, dy) = self.kind_and_steps();
        let moves = kind == kind::MOVE;
        let narrow = i16::from(dx as i8) == dx && i16::from(dy as i8) == dy;
        let (hw, pw) = (width(self.hunt), width(self.player));
        out[0] = kind | ((hw - 1) as u8) << 3 | ((pw - 1) as u8) << 5 | u8::from(moves && narrow) << 7;
        // Four bytes stored each time; the next field overwrites the
        // unused ones.
        le::put(out, 1, &self.hunt.to_le_bytes());
        let mut w = 1 + hw;
        le::put(out, w, &self.player.to_le_bytes());
        w += pw;
        let steps = if narrow {
            u32::from(dx as u8) | u32::from(dy as u8) << 8
        } else {
            u32::from(dx as u16) | u32::from(dy as u16) << 16
        };
        le::put(out, w, &steps.to_le_bytes());
        w + usize::from(moves) * if narrow { 2 } else { 4 }
    }

    #[inline]
    fn packed_len(b: &[u8]) -> Option<usize> {
        let head = *b.first()?;
        let k = head & 7;
        let narrow = head & 0x80 != 0;
        let len = match k {
            kind::CREATE if head == kind::CREATE && b.get(1 + 8) == Some(&kind::CREATE) => Self::PACKED_MAX,
            kind::MOVE => {
                1 + usize::from(head >> 3 & 3) + 1 + usize::from(head >> 5 & 3) + 1 + if narrow { 2 } else { 4 }
            }
            0 | kind::JOIN | kind::LEAVE | kind::DIG | kind::SCAN | kind::DELETE if !narrow => {
                1 + usize::from(head >> 3 & 3) + 1 + usize::from(head >> 5 & 3) + 1
            }
            _ => return None,
        };
        (len <= b.len()).then_some(len)
    }

    fn decode_packed(b: &[u8]) -> Option<(Self, usize)> {
        let head = *b.first()?;
        let k = head & 7;
        if k == kind::CREATE {
            if head != kind::CREATE {
                return None;
            }
            let e = Self::decode(b.get(1..Self::PACKED_MAX)?);
            return matches!(e.action, Action::Create(_)).then_some((e, Self::PACKED_MAX));
        }
        let narrow = head & 0x80 != 0;
        if narrow && k != kind::MOVE {
            return None;
        }
        let hw = usize::from(head >> 3 & 3) + 1;
        let pw = usize::from(head >> 5 & 3) + 1;
        // A 4-byte load cut to `n` bytes where 4 are there (all but the
        // last few bytes of a frame's records), else byte by byte.
        let uint = |at: usize, n: usize| -> Option<u32> {
            match b.get(at..at + 4) {
                Some(w) => Some(le::u32_at(w, 0) & (u32::MAX >> (32 - 8 * n))),
                None => Some(b.get(at..at + n)?.iter().rev().fold(0u32, |v, &x| v << 8 | u32::from(x))),
            }
        };
        let hunt = uint(1, hw)?;
        let player = uint(1 + hw, pw)?;
        let mut at = 1 + hw + pw;
        let action = match k {
            0 => Action::Invalid,
            kind::JOIN => Action::Join,
            kind::LEAVE => Action::Leave,
            kind::DIG => Action::Dig,
            kind::SCAN => Action::Scan,
            kind::DELETE => Action::Delete,
            kind::MOVE if narrow => {
                let s = b.get(at..at + 2)?;
                at += 2;
                Action::Move { dx: i16::from(s[0] as i8), dy: i16::from(s[1] as i8) }
            }
            kind::MOVE => {
                let s = b.get(at..at + 4)?;
                at += 4;
                Action::Move { dx: le::i16_at(s, 0), dy: le::i16_at(s, 2) }
            }
            _ => return None,
        };
        Some((Self { hunt, player, action }, at))
    }

    fn decode(b: &[u8]) -> Self {
        let b = &b[..Self::SIZE];
        let action = match b[8] {
            kind::CREATE => Action::Create(HuntConfig {
                step_max: b[9],
                width: le::u16_at(b, 10),
                height: le::u16_at(b, 12),
                treasures_per_round: le::u16_at(b, 14),
                value_min: le::u16_at(b, 16),
                value_max: le::u16_at(b, 18),
                dig_cooldown_ms: le::u16_at(b, 20),
                seed: le::u32_at(b, 24),
                players_max: le::u32_at(b, 28),
            }),
            kind::JOIN => Action::Join,
            kind::LEAVE => Action::Leave,
            kind::MOVE => Action::Move { dx: le::i16_at(b, 10), dy: le::i16_at(b, 12) },
            kind::DIG => Action::Dig,
            kind::SCAN => Action::Scan,
            kind::DELETE => Action::Delete,
            _ => Action::Invalid,
        };
        Self { hunt: le::u32_at(b, 0), player: le::u32_at(b, 4), action }
    }
}

/// How many little-endian bytes hold `x` (at least one).
#[inline]
fn width(x: u32) -> usize {
    1 + usize::from(x > 0xff) + usize::from(x > 0xffff) + usize::from(x > 0xff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn config() -> HuntConfig {
        HuntConfig {
            width: 256,
            height: 256,
            seed: 7,
            treasures_per_round: 64,
            value_min: 1,
            value_max: 100,
            dig_cooldown_ms: 250,
            step_max: 4,
            players_max: 1000,
        }
    }

    #[test]
    fn validation_names_the_field() {
        assert_eq!(config().validate(), Ok(()));
        type Mutate = fn(&mut HuntConfig);
        let cases: [(Mutate, &str); 9] = [
            (|c| c.width = 0, "width"),
            (|c| c.width = 4097, "width"),
            (|c| c.height = 0, "height"),
            (|c| c.treasures_per_round = 0, "treasures_per_round"),
            (|c| c.treasures_per_round = 16_385, "treasures_per_round"),
            (|c| c.value_min = 0, "value_min"),
            (|c| c.value_max = 0, "value_max"),
            (|c| c.step_max = 0, "step_max"),
            (|c| c.players_max = PLAYERS_PER_HUNT_MAX + 1, "players_max"),
        ];
        for (mutate, field) in cases {
            let mut c = config();
            mutate(&mut c);
            assert_eq!(c.validate().unwrap_err().field, field, "{c:?}");
        }
        let mut c = config();
        c.value_min = 10;
        c.value_max = 9;
        assert_eq!(c.validate().unwrap_err().field, "value_max");
    }

    fn action() -> impl Strategy<Value = Action> {
        prop_oneof![
            Just(Action::Join),
            Just(Action::Leave),
            Just(Action::Dig),
            Just(Action::Scan),
            Just(Action::Delete),
            Just(Action::Invalid),
            (any::<i16>(), any::<i16>()).prop_map(|(dx, dy)| Action::Move { dx, dy }),
            (any::<[u16; 6]>(), any::<u8>(), any::<u32>(), any::<u32>()).prop_map(|(a, s, seed, pm)| {
                Action::Create(HuntConfig {
                    width: a[0],
                    height: a[1],
                    treasures_per_round: a[2],
                    value_min: a[3],
                    value_max: a[4],
                    dig_cooldown_ms: a[5],
                    step_max: s,
                    seed,
                    players_max: pm,
                })
            }),
        ]
    }

    proptest! {
        #[test]
        fn record_round_trips(hunt: u32, player: u32, action in action()) {
            let e = HuntEvent { hunt, player, action };
            let mut buf = [0xAAu8; 40];
            e.encode(&mut buf);
            prop_assert_eq!(&buf[32..], &[0xAA; 8]);
            prop_assert_eq!(HuntEvent::decode(&buf), e);
        }

        /// The prefix is the full encoding's, and everything after it is
        /// zero: storing the prefix loses nothing, whatever was in the
        /// buffer before.
        #[test]
        fn prefix_encoding_is_a_prefix(hunt: u32, player: u32, action in action(), junk: u8) {
            let e = HuntEvent { hunt, player, action };
            let mut full = [0u8; 32];
            e.encode(&mut full);
            let mut buf = [junk; 32];
            let len = e.encode_prefix(&mut buf);
            prop_assert!(len <= 32);
            prop_assert_eq!(&buf[..len], &full[..len]);
            prop_assert!(full[len..].iter().all(|&b| b == 0));
        }

        /// What `kind_and_steps` reads from the enum's layout is what a
        /// `match` on it says, for every variant.
        #[test]
        fn layout_read_agrees_with_a_match(hunt: u32, player: u32, action in action()) {
            let e = HuntEvent { hunt, player, action };
            let want = match action {
                Action::Create(_) => (kind::CREATE, 0, 0),
                Action::Join => (kind::JOIN, 0, 0),
                Action::Leave => (kind::LEAVE, 0, 0),
                Action::Move { dx, dy } => (kind::MOVE, dx, dy),
                Action::Dig => (kind::DIG, 0, 0),
                Action::Scan => (kind::SCAN, 0, 0),
                Action::Delete => (kind::DELETE, 0, 0),
                Action::Invalid => (0, 0, 0),
            };
            prop_assert_eq!(e.kind_and_steps(), want);
        }

        /// The storage form gives back the event and its length, whatever
        /// follows it, for small ids and steps (the usual case) and wide ones.
        #[test]
        fn packed_form_round_trips(
            hunt in prop_oneof![0u32..300, any::<u32>()],
            player in prop_oneof![0u32..70_000, any::<u32>()],
            action in prop_oneof![
                (-128i16..128, -128i16..128).prop_map(|(dx, dy)| Action::Move { dx, dy }),
                action(),
            ],
            junk: u8,
        ) {
            let e = HuntEvent { hunt, player, action };
            let mut buf = [junk; HuntEvent::PACKED_MAX + 8];
            let len = e.encode_packed(&mut buf);
            prop_assert!(len <= HuntEvent::PACKED_MAX);
            prop_assert_eq!(HuntEvent::decode_packed(&buf), Some((e, len)));
            prop_assert_eq!(HuntEvent::decode_packed(&buf[..len]), Some((e, len)));
            prop_assert_eq!(HuntEvent::packed_len(&buf), Some(len));
            prop_assert_eq!(HuntEvent::decode_packed(&buf[..len - 1]), None);
            prop_assert_eq!(HuntEvent::packed_len(&buf[..len - 1]), None);
        }

        /// Bytes from a damaged file: no panic, and whatever decodes is an
        /// event whose own storage form decodes to it again.
        #[test]
        fn any_bytes_decode_packed_or_not(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            let decoded = HuntEvent::decode_packed(&bytes);
            prop_assert_eq!(HuntEvent::packed_len(&bytes), decoded.map(|(_, n)| n));
            if let Some((e, len)) = decoded {
                prop_assert!(len <= bytes.len());
                let mut buf = [0u8; HuntEvent::PACKED_MAX];
                let n = e.encode_packed(&mut buf);
                prop_assert_eq!(HuntEvent::decode_packed(&buf[..n]), Some((e, n)));
            }
        }

        #[test]
        fn any_bytes_decode(bytes in proptest::array::uniform32(any::<u8>())) {
            let e = HuntEvent::decode(&bytes);
            // Re-encoding canonicalises: decoding again is a fixed point.
            let mut buf = [0u8; 32];
            e.encode(&mut buf);
            prop_assert_eq!(HuntEvent::decode(&buf), e);
        }
    }
}
