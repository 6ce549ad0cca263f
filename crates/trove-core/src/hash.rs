//! A stable state hash.
//!
//! The hash must be the same on every run, build and machine, so it cannot
//! be std's `DefaultHasher` (unspecified, may change between releases). The
//! algorithm is specified here and frozen: changing it changes every
//! recorded hash, so bump [`StateHasher::VERSION`] if it ever has to.
//!
//! Each 64-bit word `w` is absorbed as `h = rotl(h ^ (w * K1), 31) * K2`
//! (xxHash's round), and `finish` applies MurmurHash3's 64-bit finaliser.
//! Callers feed fields in a canonical order; smaller integers are widened.

use std::sync::Arc;

use crate::record::Record;

const K1: u64 = 0x9E37_79B1_85EB_CA87;
const K2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const SEED: u64 = 0x2716_0B1D_7465_7276; // "trove" era seed, arbitrary and fixed

/// A stable, order-sensitive 64-bit hasher for game state.
#[derive(Clone, Debug)]
pub struct StateHasher {
    h: u64,
    words: u64,
}

impl Default for StateHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl StateHasher {
    /// Version of the algorithm above.
    pub const VERSION: u32 = 1;

    pub fn new() -> Self {
        Self { h: SEED, words: 0 }
    }

    #[inline]
    pub fn u64(&mut self, w: u64) {
        self.h = (self.h ^ w.wrapping_mul(K1)).rotate_left(31).wrapping_mul(K2);
        self.words += 1;
    }

    #[inline]
    pub fn u32(&mut self, w: u32) {
        self.u64(u64::from(w));
    }

    #[inline]
    pub fn u16(&mut self, w: u16) {
        self.u64(u64::from(w));
    }

    #[inline]
    pub fn bool(&mut self, b: bool) {
        self.u64(u64::from(b));
    }

    pub fn finish(&self) -> u64 {
        let mut x = self.h ^ self.words;
        x ^= x >> 33;
        x = x.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
        x ^= x >> 33;
        x = x.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
        x ^= x >> 33;
        x
    }
}

/// Records up to this size are fingerprinted without an allocation.
const FINGERPRINT_INLINE_BYTES: usize = 64;

/// `record_fingerprints` encodes this many bytes of records at a time, on
/// the stack, before it hashes them.
const FINGERPRINT_CHUNK_BYTES: usize = 8192;

/// A record's fingerprint: the low 32 bits of a [`StateHasher`] fed the
/// record's full encoding (`Record::encode`) as little-endian u64 words,
/// the last one padded with zeros. Deduplication keeps one per applied
/// event, so that a sequence number reused for another event is told from
/// a retry of the same one; snapshots store them, so this is frozen like
/// the hasher (docs/journal.md). Two events that encode alike (the same
/// values; an invalid kind byte encodes as 0) have the same fingerprint;
/// two that differ collide with probability about 2^-32.
#[inline]
pub fn record_fingerprint<R: Record>(record: &R) -> u32 {
    if R::SIZE <= FINGERPRINT_INLINE_BYTES {
        let mut buf = [0u8; FINGERPRINT_INLINE_BYTES];
        encode_full(record, &mut buf[..R::SIZE]);
        hash_encoding(&buf[..R::SIZE])
    } else {
        let mut buf = vec![0u8; R::SIZE];
        record.encode(&mut buf);
        hash_encoding(&buf)
    }
}

/// The fingerprints of `records`, in order (`record_fingerprint` of each).
///
/// In two passes over chunks of records: encode every record of a chunk,
/// then hash the encodings. Hashing a record right after encoding it reads
/// words whose bytes were written by several narrower stores still in
/// flight, which the CPU cannot forward: that stall was half the cost
/// (treasure-hunt records: about 15 ns one at a time, 7-8 ns in two passes,
/// on a loaded 2-core VM).
pub fn record_fingerprints<'a, R: Record + 'a>(records: impl ExactSizeIterator<Item = &'a R>) -> Arc<[u32]> {
    let mut out = Vec::with_capacity(records.len());
    if R::SIZE == 0 || R::SIZE > FINGERPRINT_CHUNK_BYTES {
        out.extend(records.map(record_fingerprint));
        return out.into();
    }
    let per_chunk = FINGERPRINT_CHUNK_BYTES / R::SIZE;
    let mut buf = [0u8; FINGERPRINT_CHUNK_BYTES];
    let mut records = records.peekable();
    while records.peek().is_some() {
        let mut n = 0;
        for (record, slot) in records.by_ref().take(per_chunk).zip(buf.chunks_exact_mut(R::SIZE)) {
            encode_full(record, slot);
            n += 1;
        }
        out.extend(buf[..n * R::SIZE].chunks_exact(R::SIZE).map(hash_encoding));
    }
    out.into()
}

/// Writes `record`'s full encoding to `out` (exactly `R::SIZE` bytes), by
/// the prefix form: no branch per kind for the games that have one.
#[inline]
fn encode_full<R: Record>(record: &R, out: &mut [u8]) {
    let n = record.encode_prefix(out);
    out[n..].fill(0);
}

#[inline]
fn hash_encoding(bytes: &[u8]) -> u32 {
    let mut h = StateHasher::new();
    absorb_words(&mut h, bytes);
    h.finish() as u32
}

#[inline]
fn absorb_words(h: &mut StateHasher, bytes: &[u8]) {
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        h.u64(u64::from_le_bytes(w.try_into().expect("8 bytes")));
    }
    let tail = words.remainder();
    if !tail.is_empty() {
        let mut w = [0u8; 8];
        w[..tail.len()].copy_from_slice(tail);
        h.u64(u64::from_le_bytes(w));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record of `N` bytes, for fingerprints of both sizes.
    #[derive(Clone, Copy, Debug, PartialEq)]
    struct Bytes<const N: usize>([u8; N]);

    impl<const N: usize> Default for Bytes<N> {
        fn default() -> Self {
            Self([0; N])
        }
    }

    impl<const N: usize> Record for Bytes<N> {
        const SIZE: usize = N;
        fn encode(&self, out: &mut [u8]) {
            out[..N].copy_from_slice(&self.0);
        }
        fn decode(bytes: &[u8]) -> Self {
            Self(bytes[..N].try_into().expect("N bytes"))
        }
    }

    /// Pins the fingerprint: snapshots store it, so if this fails, stored
    /// fingerprints no longer match and reused sequence numbers go unseen.
    #[test]
    fn fingerprints_are_fixed_and_tell_records_apart() {
        let mut a = [0u8; 32];
        a[0] = 1;
        a[8] = 2;
        assert_eq!(record_fingerprint(&Bytes(a)), 0x45c7_12ac);
        let mut h = StateHasher::new();
        for w in [1u64, 2, 0, 0] {
            h.u64(w);
        }
        assert_eq!(record_fingerprint(&Bytes(a)), h.finish() as u32, "the words of the encoding");
        let mut b = a;
        b[31] = 1;
        assert_ne!(record_fingerprint(&Bytes(a)), record_fingerprint(&Bytes(b)));
        // A record above the inline size, and one with a partial last word,
        // hash the same way.
        let long = Bytes([7u8; 100]);
        let mut h = StateHasher::new();
        for _ in 0..12 {
            h.u64(0x0707_0707_0707_0707);
        }
        h.u64(0x0707_0707);
        assert_eq!(record_fingerprint(&long), h.finish() as u32);
    }

    #[test]
    fn many_fingerprints_are_each_ones() {
        let records: Vec<Bytes<32>> = (0..1000u32)
            .map(|i| {
                let mut b = [0u8; 32];
                b[..4].copy_from_slice(&i.to_le_bytes());
                b[31] = (i % 7) as u8;
                Bytes(b)
            })
            .collect();
        let one_by_one: Vec<u32> = records.iter().map(record_fingerprint).collect();
        assert_eq!(&*record_fingerprints(records.iter()), &one_by_one[..], "across chunks of 256");
        assert!(record_fingerprints(records[..0].iter()).is_empty());
        let long = [Bytes([7u8; 100]), Bytes([8u8; 100])];
        let want: Vec<u32> = long.iter().map(record_fingerprint).collect();
        assert_eq!(&*record_fingerprints(long.iter()), &want[..]);
    }

    /// Pins the algorithm: if this fails, every recorded hash changed.
    #[test]
    fn known_values() {
        assert_eq!(StateHasher::new().finish(), 0xb4af_c5f8_9d7c_adf8);
        let mut h = StateHasher::new();
        h.u64(1);
        h.u32(2);
        assert_eq!(h.finish(), 0x0b96_2d35_2a99_6345);
    }

    #[test]
    fn order_sensitive() {
        let mut a = StateHasher::new();
        a.u64(1);
        a.u64(2);
        let mut b = StateHasher::new();
        b.u64(2);
        b.u64(1);
        assert_ne!(a.finish(), b.finish());
        // A trailing zero word is not the same as no word.
        let mut c = StateHasher::new();
        c.u64(1);
        c.u64(2);
        c.u64(0);
        assert_ne!(a.finish(), c.finish());
    }
}
