//! Fixed-size records.

/// A value with a fixed-size byte encoding.
///
/// `decode` is total: any `SIZE` bytes decode to some value, and a value
/// that makes no sense to the game (an unknown kind, say) is rejected by
/// the game's `apply` with a typed reason. The codec and the journal can
/// therefore carry records without knowing what they mean, and no byte
/// string from outside can make decoding fail or panic.
pub trait Record: Copy + Send + Sync + Default + std::fmt::Debug + PartialEq + 'static {
    /// Encoded size in bytes.
    const SIZE: usize;

    /// Writes exactly `SIZE` bytes to the front of `out`.
    ///
    /// # Panics
    /// If `out` is shorter than `SIZE` (a caller bug, not an input error).
    fn encode(&self, out: &mut [u8]);

    /// Reads a value from the first `SIZE` bytes of `bytes`.
    ///
    /// # Panics
    /// If `bytes` is shorter than `SIZE` (a caller bug: frame decoders check
    /// lengths before they slice records).
    fn decode(bytes: &[u8]) -> Self;

    /// Writes the first bytes of the encoding to the front of `out` (at
    /// least `SIZE` long) and returns how many; every byte of the full
    /// encoding after them is zero. Storage uses it to keep records short.
    /// The default encodes in full and cuts the trailing zeros; a record
    /// type that knows its layout can do better.
    #[inline]
    fn encode_prefix(&self, out: &mut [u8]) -> usize {
        self.encode(out);
        trimmed_len(&out[..Self::SIZE])
    }

    /// Whether the type has a storage form of its own (`encode_packed`),
    /// shorter than trimming; the journal then stores that.
    const PACKED: bool = false;

    /// The most bytes `encode_packed` writes (and needs room for).
    const PACKED_MAX: usize = Self::SIZE;

    /// Writes the storage form to the front of `out` (at least `PACKED_MAX`
    /// long) and returns its length. The default is the full encoding.
    #[inline]
    fn encode_packed(&self, out: &mut [u8]) -> usize {
        self.encode(out);
        Self::SIZE
    }

    /// Reads a value in the storage form from the front of `bytes`, and how
    /// many bytes it took; `None` if the bytes are not one (too short, or
    /// not a form `encode_packed` writes). Never panics: the bytes come from
    /// files on disk.
    #[inline]
    fn decode_packed(bytes: &[u8]) -> Option<(Self, usize)> {
        bytes.get(..Self::SIZE).map(|b| (Self::decode(b), Self::SIZE))
    }

    /// The length of the storage form at the front of `bytes`: `Some`
    /// exactly when `decode_packed` would be, without decoding (the journal
    /// checks a whole frame before it reads any event).
    #[inline]
    fn packed_len(bytes: &[u8]) -> Option<usize> {
        Self::decode_packed(bytes).map(|(_, n)| n)
    }
}

/// The length of `bytes` without its trailing zero bytes, a word at a time.
#[inline]
pub fn trimmed_len(bytes: &[u8]) -> usize {
    let (words, tail) = bytes.split_at(bytes.len() - bytes.len() % 8);
    if let Some(i) = tail.iter().rposition(|&b| b != 0) {
        return words.len() + i + 1;
    }
    let mut end = words.len();
    for w in words.chunks_exact(8).rev() {
        let x = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
        if x != 0 {
            return end - (x.leading_zeros() / 8) as usize;
        }
        end -= 8;
    }
    0
}

/// Little-endian field readers and writers for `Record` implementations.
pub mod le {
    #[inline]
    pub fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes([b[at], b[at + 1]])
    }
    #[inline]
    pub fn i16_at(b: &[u8], at: usize) -> i16 {
        i16::from_le_bytes([b[at], b[at + 1]])
    }
    #[inline]
    pub fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }
    #[inline]
    pub fn u64_at(b: &[u8], at: usize) -> u64 {
        let mut x = [0u8; 8];
        x.copy_from_slice(&b[at..at + 8]);
        u64::from_le_bytes(x)
    }
    #[inline]
    pub fn put(b: &mut [u8], at: usize, bytes: &[u8]) {
        b[at..at + bytes.len()].copy_from_slice(bytes);
    }
}
