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
