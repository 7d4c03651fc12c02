//! Knock sequence derivation: spec version 1 (`docs/sequence-v1.md`) and
//! version 2 (`docs/sequence-v2.md`), which adds a server identity.
//!
//! A client holding a 256-bit secret knocks, in time slot `s`, on a list of
//! distinct ports drawn from a candidate range with HMAC-SHA256 keyed by the
//! secret. The server derives the same list to recognise the knock. A fleet
//! client (version 2) gets a different list for every server, so a sequence
//! seen at one server is useless at another; the two versions differ only in
//! the HMAC message.
//!
//! This module is `no_std` and allocation-free: the candidate ports live in a
//! fixed 8 KiB bitmap on the stack (see `Candidates`). It is userspace only
//! (feature `sequence`); the XDP program never derives sequences.

use core::fmt;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Spec version of [`derive`]; it is also the `v1` in [`DOMAIN_TAG`].
pub const SPEC_VERSION: u32 = 1;

/// Spec version of [`derive_v2`], the `v2` in [`DOMAIN_TAG_V2`].
pub const SPEC_VERSION_V2: u32 = 2;

/// Most ports a sequence can have.
pub const MAX_SEQUENCE_LEN: usize = 16;

/// Longest slot a profile may use, in seconds (one day).
pub const MAX_SLOT_SECS: u32 = 86_400;

/// ASCII prefix of every version 1 HMAC message.
pub const DOMAIN_TAG: &[u8] = b"knock-xdp sequence v1";

/// ASCII prefix of every version 2 HMAC message. As long as the v1 tag, so
/// no v1 message is the prefix of a v2 one or the other way round.
pub const DOMAIN_TAG_V2: &[u8] = b"knock-xdp sequence v2";

/// Longest server identity version 2 takes: its length is one byte.
pub const MAX_IDENTITY_LEN: usize = 255;

/// Number of HMAC blocks after which derivation gives up with
/// [`SequenceError::Exhausted`].
pub const MAX_BLOCKS: u32 = 4096;

type HmacSha256 = Hmac<Sha256>;

/// Longest HMAC message: the v2 tag, the identity's length byte and its
/// bytes, the u64 slot and the u32 block counter.
const MAX_MESSAGE_LEN: usize = DOMAIN_TAG_V2.len() + 1 + MAX_IDENTITY_LEN + 8 + 4;

/// The HMAC message of one slot, its block counter (the last 4 bytes)
/// filled in block by block.
struct Message {
    bytes: [u8; MAX_MESSAGE_LEN],
    len: usize,
}

impl Message {
    /// Version 1: tag || u64be(slot) || u32be(block).
    fn v1(slot: u64) -> Self {
        let mut m = Message { bytes: [0; MAX_MESSAGE_LEN], len: 0 };
        m.push(DOMAIN_TAG);
        m.push(&slot.to_be_bytes());
        m.push(&[0; 4]);
        m
    }

    /// Version 2: tag || u8(len(identity)) || identity || u64be(slot) ||
    /// u32be(block). The length byte keeps every (identity, slot) pair its
    /// own message.
    fn v2(identity: &[u8], slot: u64) -> Result<Self, SequenceError> {
        if identity.is_empty() || identity.len() > MAX_IDENTITY_LEN {
            return Err(SequenceError::BadIdentity);
        }
        let mut m = Message { bytes: [0; MAX_MESSAGE_LEN], len: 0 };
        m.push(DOMAIN_TAG_V2);
        m.push(&[identity.len() as u8]);
        m.push(identity);
        m.push(&slot.to_be_bytes());
        m.push(&[0; 4]);
        Ok(m)
    }

    fn push(&mut self, bytes: &[u8]) {
        self.bytes[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    fn set_block(&mut self, block: u32) {
        self.bytes[self.len - 4..self.len].copy_from_slice(&block.to_be_bytes());
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// The time slot that UNIX time `unix_secs` (whole seconds, UTC) falls in, for
/// slots of `slot_secs` seconds: `floor(unix_secs / slot_secs)`.
///
/// # Panics
///
/// If `slot_secs` is 0. Profiles keep it within `1..=MAX_SLOT_SECS`.
pub fn slot_at(unix_secs: u64, slot_secs: u32) -> u64 {
    assert!(slot_secs != 0, "slot length must be at least one second");
    unix_secs / u64::from(slot_secs)
}

/// Parameters of a derived sequence. `exclude` need not be sorted or
/// deduplicated, and entries outside `port_lo..=port_hi` are ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params<'a> {
    /// Number of ports in the sequence, 1 to [`MAX_SEQUENCE_LEN`].
    pub length: u8,
    /// Lowest candidate port (at least 1).
    pub port_lo: u16,
    /// Highest candidate port (at least `port_lo`).
    pub port_hi: u16,
    /// Ports in the range that are never used.
    pub exclude: &'a [u16],
}

/// A derived knock sequence: distinct ports, in knocking order.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Sequence {
    // Entries past `len` are always 0, so the derived equality is exact.
    ports: [u16; MAX_SEQUENCE_LEN],
    len: u8,
}

impl Sequence {
    /// The ports, in the order they are knocked on.
    pub fn as_slice(&self) -> &[u16] {
        &self.ports[..usize::from(self.len)]
    }
}

impl fmt::Debug for Sequence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Sequence").field(&self.as_slice()).finish()
    }
}

/// Why a sequence cannot be derived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SequenceError {
    /// `length` is 0 or above [`MAX_SEQUENCE_LEN`].
    BadLength,
    /// `port_lo` is 0 or above `port_hi`.
    BadRange,
    /// Fewer candidate ports than the sequence length.
    TooFewPorts { available: u32, needed: u8 },
    /// [`MAX_BLOCKS`] HMAC blocks did not yield enough distinct ports.
    Exhausted,
    /// A version 2 server identity that is empty or longer than
    /// [`MAX_IDENTITY_LEN`] bytes.
    BadIdentity,
}

impl fmt::Display for SequenceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SequenceError::BadLength => {
                write!(f, "sequence length must be between 1 and {MAX_SEQUENCE_LEN} ports")
            }
            SequenceError::BadRange => {
                f.write_str("port range must satisfy 1 <= low <= high <= 65535")
            }
            SequenceError::TooFewPorts { available, needed } => write!(
                f,
                "port range has {available} usable ports, fewer than the sequence length {needed}"
            ),
            SequenceError::Exhausted => {
                write!(f, "no sequence of distinct ports found within {MAX_BLOCKS} HMAC blocks")
            }
            SequenceError::BadIdentity => {
                write!(f, "a server identity has 1 to {MAX_IDENTITY_LEN} bytes")
            }
        }
    }
}

impl core::error::Error for SequenceError {}

/// Number of candidate ports `N`: ports in `port_lo..=port_hi` that are not
/// excluded. 0 when the range itself is invalid.
pub fn available_ports(params: &Params) -> u32 {
    match check_range(params) {
        Ok(()) => Candidates::new(params).count,
        Err(_) => 0,
    }
}

/// Derives the knock sequence of `secret` for time `slot` (version 1: the
/// same on every server).
pub fn derive(secret: &[u8; 32], slot: u64, params: &Params) -> Result<Sequence, SequenceError> {
    derive_bounded(secret, Message::v1(slot), params, MAX_BLOCKS)
}

/// Derives the knock sequence of `secret` for time `slot` at the server
/// named `identity` (version 2). `identity` is taken as given, 1 to
/// [`MAX_IDENTITY_LEN`] bytes; [`crate::server_id::ServerId`] gives the
/// normalized form both sides must agree on.
pub fn derive_v2(
    secret: &[u8; 32],
    identity: &[u8],
    slot: u64,
    params: &Params,
) -> Result<Sequence, SequenceError> {
    derive_bounded(secret, Message::v2(identity, slot)?, params, MAX_BLOCKS)
}

/// The derivation over a ready message, with the block limit as a
/// parameter, so tests can reach [`SequenceError::Exhausted`].
fn derive_bounded(
    secret: &[u8; 32],
    mut message: Message,
    params: &Params,
    max_blocks: u32,
) -> Result<Sequence, SequenceError> {
    let needed = params.length;
    if needed == 0 || usize::from(needed) > MAX_SEQUENCE_LEN {
        return Err(SequenceError::BadLength);
    }
    check_range(params)?;
    let candidates = Candidates::new(params);
    let n = candidates.count;
    if n < u32::from(needed) {
        return Err(SequenceError::TooFewPorts { available: n, needed });
    }
    // Values at or above `limit` are rejected so that `v % n` is uniform.
    let limit = 65_536 - 65_536 % n;

    // HMAC accepts keys of any length, so this cannot fail.
    let keyed = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");

    let mut seq = Sequence { ports: [0; MAX_SEQUENCE_LEN], len: 0 };
    for block in 0..max_blocks {
        message.set_block(block);
        let mut mac = keyed.clone();
        mac.update(message.as_bytes());
        let digest = mac.finalize().into_bytes();
        for pair in digest.chunks_exact(2) {
            let v = u32::from(u16::from_be_bytes([pair[0], pair[1]]));
            if v >= limit {
                continue;
            }
            let port = candidates.get(v % n);
            if seq.as_slice().contains(&port) {
                continue;
            }
            seq.ports[usize::from(seq.len)] = port;
            seq.len += 1;
            if seq.len == needed {
                return Ok(seq);
            }
        }
    }
    Err(SequenceError::Exhausted)
}

fn check_range(params: &Params) -> Result<(), SequenceError> {
    if params.port_lo == 0 || params.port_lo > params.port_hi {
        return Err(SequenceError::BadRange);
    }
    Ok(())
}

const BITMAP_WORDS: usize = 65_536 / 64;

/// The candidate list `C` as a bitmap over all 65536 ports: bit `p` is set
/// when port `p` is a candidate.
///
/// A bitmap needs no allocation, takes `exclude` in any order and with
/// duplicates, puts no limit on its length, and turns "k-th candidate" into
/// a popcount walk over at most 1024 words. 8 KiB of stack is fine in
/// userspace, the only place sequences are derived.
struct Candidates {
    bits: [u64; BITMAP_WORDS],
    count: u32,
}

impl Candidates {
    /// Candidates of a valid range (see [`check_range`]).
    fn new(params: &Params) -> Self {
        let lo = usize::from(params.port_lo);
        let hi = usize::from(params.port_hi);
        let mut bits = [0u64; BITMAP_WORDS];
        for (i, word) in bits.iter_mut().enumerate().take(hi / 64 + 1).skip(lo / 64) {
            let first = i * 64;
            let from = lo.max(first) - first; // bit of `lo` in this word, or 0
            let to = hi.min(first + 63) - first; // bit of `hi` in this word, or 63
            *word = (u64::MAX >> (63 - to)) & (u64::MAX << from);
        }
        for &port in params.exclude {
            bits[usize::from(port) / 64] &= !(1u64 << (port % 64));
        }
        let count = bits.iter().map(|w| w.count_ones()).sum();
        Candidates { bits, count }
    }

    /// `C[k]`, the k-th candidate in ascending order; `k < self.count`.
    fn get(&self, mut k: u32) -> u16 {
        for (i, &word) in self.bits.iter().enumerate() {
            let ones = word.count_ones();
            if k < ones {
                let mut w = word;
                for _ in 0..k {
                    w &= w - 1; // drop the lowest set bit
                }
                // i < 1024 and the bit index < 64, so this fits in a u16.
                return (i * 64) as u16 + w.trailing_zeros() as u16;
            }
            k -= ones;
        }
        unreachable!("candidate index out of range")
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::collections::HashSet;
    use std::vec::Vec;

    use super::*;

    const SECRET: [u8; 32] = {
        let mut s = [0u8; 32];
        let mut i = 0;
        while i < 32 {
            s[i] = i as u8;
            i += 1;
        }
        s
    };

    fn params(length: u8, port_lo: u16, port_hi: u16, exclude: &[u16]) -> Params<'_> {
        Params { length, port_lo, port_hi, exclude }
    }

    /// The candidate list written the obvious way, to check the bitmap.
    fn naive_candidates(p: &Params) -> Vec<u16> {
        (p.port_lo..=p.port_hi).filter(|port| !p.exclude.contains(port)).collect()
    }

    fn assert_valid(seq: &Sequence, p: &Params) {
        let ports = seq.as_slice();
        assert_eq!(ports.len(), usize::from(p.length));
        let distinct: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "repeated port in {seq:?}");
        for port in ports {
            assert!((p.port_lo..=p.port_hi).contains(port), "{port} out of range");
            assert!(!p.exclude.contains(port), "{port} is excluded");
        }
    }

    #[test]
    fn slot_is_floor_of_time_over_length() {
        assert_eq!(slot_at(0, 30), 0);
        assert_eq!(slot_at(29, 30), 0);
        assert_eq!(slot_at(30, 30), 1);
        assert_eq!(slot_at(1_764_072_000, 30), 58_802_400);
        assert_eq!(slot_at(1_764_072_029, 30), 58_802_400);
        assert_eq!(slot_at(u64::MAX, 1), u64::MAX);
        assert_eq!(slot_at(86_399, MAX_SLOT_SECS), 0);
        assert_eq!(slot_at(86_400, MAX_SLOT_SECS), 1);
    }

    #[test]
    #[should_panic]
    fn zero_slot_length_panics() {
        slot_at(100, 0);
    }

    #[test]
    fn message_layout() {
        assert_eq!(DOMAIN_TAG.len(), 21);
        assert_eq!(DOMAIN_TAG_V2.len(), 21);
        let mut v1 = Message::v1(0x0102_0304_0506_0708);
        v1.set_block(0x0a0b_0c0d);
        assert_eq!(v1.as_bytes().len(), 33);
        assert_eq!(&v1.as_bytes()[..21], b"knock-xdp sequence v1");
        assert_eq!(&v1.as_bytes()[21..], [1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13]);

        // The spec's example: tag, length byte, identity, slot, block.
        let mut v2 = Message::v2(b"web1.example.org", 58_802_400).unwrap();
        v2.set_block(1);
        let bytes = v2.as_bytes();
        assert_eq!(bytes.len(), 21 + 1 + 16 + 8 + 4);
        assert_eq!(&bytes[..21], b"knock-xdp sequence v2");
        assert_eq!(bytes[21], 16);
        assert_eq!(&bytes[22..38], b"web1.example.org");
        assert_eq!(&bytes[38..46], 58_802_400u64.to_be_bytes());
        assert_eq!(&bytes[46..], [0, 0, 0, 1]);
        let longest = [b'a'; MAX_IDENTITY_LEN];
        assert_eq!(Message::v2(&longest, 0).unwrap().as_bytes().len(), MAX_MESSAGE_LEN);
    }

    #[test]
    fn version_2_depends_on_the_identity_and_differs_from_version_1() {
        let p = params(4, 61_000, 65_535, &[]);
        let v1 = derive(&SECRET, 100, &p).unwrap();
        let web1 = derive_v2(&SECRET, b"web1.example.org", 100, &p).unwrap();
        let web2 = derive_v2(&SECRET, b"web2.example.org", 100, &p).unwrap();
        assert_valid(&web1, &p);
        assert_ne!(web1, v1);
        assert_ne!(web1, web2);
        assert_eq!(derive_v2(&SECRET, b"web1.example.org", 100, &p).unwrap(), web1);
        assert_ne!(derive_v2(&SECRET, b"web1.example.org", 101, &p).unwrap(), web1);
        assert_ne!(derive_v2(&[0; 32], b"web1.example.org", 100, &p).unwrap(), web1);
        // One byte and 255 bytes are the shortest and longest identities.
        assert!(derive_v2(&SECRET, b"a", 100, &p).is_ok());
        assert!(derive_v2(&SECRET, &[b'a'; 255], 100, &p).is_ok());
        assert_eq!(derive_v2(&SECRET, b"", 100, &p), Err(SequenceError::BadIdentity));
        assert_eq!(derive_v2(&SECRET, &[b'a'; 256], 100, &p), Err(SequenceError::BadIdentity));
        // The rest of the derivation is version 1's: parameters are checked
        // the same way, and a shorter sequence is a prefix of a longer one.
        assert_eq!(
            derive_v2(&SECRET, b"a", 0, &params(0, 61_000, 65_535, &[])),
            Err(SequenceError::BadLength)
        );
        let long = derive_v2(&SECRET, b"web1", 7, &params(16, 61_000, 65_535, &[])).unwrap();
        let short = derive_v2(&SECRET, b"web1", 7, &params(5, 61_000, 65_535, &[])).unwrap();
        assert_eq!(short.as_slice(), &long.as_slice()[..5]);
    }

    #[test]
    fn candidates_match_naive_list() {
        let cases: &[(u16, u16, &[u16])] = &[
            (1, 1, &[]),
            (1, 65_535, &[]),
            (65_535, 65_535, &[]),
            (61_000, 65_535, &[]),
            (63, 64, &[]),
            (64, 127, &[64, 127]),
            (100, 300, &[5, 100, 300, 200, 200, 65_535, 128, 191, 192]),
            (1, 65_535, &[1, 2, 3, 65_535, 32_768, 4_000]),
            (5_000, 5_009, &[5_001, 5_003, 5_005, 5_007, 5_009]),
            (10, 12, &[10, 11, 12]),
        ];
        for &(lo, hi, exclude) in cases {
            let p = params(1, lo, hi, exclude);
            let naive = naive_candidates(&p);
            let c = Candidates::new(&p);
            assert_eq!(c.count as usize, naive.len(), "N for {lo}..={hi}");
            assert_eq!(available_ports(&p) as usize, naive.len());
            let step = (naive.len() / 500).max(1);
            for k in (0..naive.len()).step_by(step).chain(naive.len().checked_sub(1)) {
                assert_eq!(c.get(k as u32), naive[k], "C[{k}] for {lo}..={hi}");
            }
        }
    }

    #[test]
    fn sequences_are_distinct_in_range_and_not_excluded() {
        let exclude = [61_001, 61_002, 61_003, 61_010, 61_010, 80];
        for length in 1..=MAX_SEQUENCE_LEN as u8 {
            for (lo, hi) in [(61_000, 65_535), (61_000, 61_030), (1, 65_535), (7, 30)] {
                let p = params(length, lo, hi, &exclude);
                for slot in [0, 1, 58_802_400, u64::MAX] {
                    let seq = derive(&SECRET, slot, &p).unwrap();
                    assert_valid(&seq, &p);
                }
            }
        }
    }

    #[test]
    fn derivation_is_deterministic() {
        // Fixed values, computed by the independent Python implementation
        // (tests/python/sequence_v1.py): the same inputs give these ports in
        // every run, on every machine. Comparing `derive` with itself would
        // hold for any function without hidden state.
        let expected = [64_538, 61_828, 62_477, 62_936, 63_939, 61_032, 62_257, 65_209];
        let p = params(8, 61_000, 65_535, &[62_000]);
        let a = derive(&SECRET, 12_345, &p).unwrap();
        assert_eq!(a.as_slice(), expected);
        // Order and duplicates in `exclude` do not matter...
        let p2 = params(8, 61_000, 65_535, &[62_000, 62_000, 1]);
        assert_eq!(derive(&SECRET, 12_345, &p2).unwrap(), a);
        // ...but what it holds does: without 62000 every port at or above
        // it shifts down by one candidate, and excluding a chosen port
        // removes it.
        let none = derive(&SECRET, 12_345, &params(8, 61_000, 65_535, &[])).unwrap();
        assert_eq!(
            none.as_slice(),
            [64_530, 61_818, 62_464, 62_925, 63_936, 61_021, 62_246, 65_206]
        );
        let without_first = derive(&SECRET, 12_345, &params(8, 61_000, 65_535, &[64_538])).unwrap();
        assert!(!without_first.as_slice().contains(&64_538), "{without_first:?}");
    }

    #[test]
    fn slots_and_secrets_change_the_sequence() {
        let p = params(4, 61_000, 65_535, &[]);
        let base = derive(&SECRET, 100, &p).unwrap();
        assert_ne!(derive(&SECRET, 101, &p).unwrap(), base);
        assert_ne!(derive(&SECRET, 99, &p).unwrap(), base);
        assert_ne!(derive(&[0; 32], 100, &p).unwrap(), base);
        let mut other = SECRET;
        other[31] ^= 1;
        assert_ne!(derive(&other, 100, &p).unwrap(), base);
    }

    #[test]
    fn longer_sequence_extends_shorter_one() {
        // The sampling is the same stream whatever the length, so a shorter
        // sequence is a prefix of a longer one over the same candidates.
        let long = derive(&SECRET, 7, &params(16, 61_000, 65_535, &[])).unwrap();
        for length in 1..16 {
            let short = derive(&SECRET, 7, &params(length, 61_000, 65_535, &[])).unwrap();
            assert_eq!(short.as_slice(), &long.as_slice()[..usize::from(length)]);
        }
    }

    #[test]
    fn full_length_is_a_permutation_of_the_candidates() {
        let exclude = [40_002, 40_005];
        for (lo, hi, exclude) in [
            (40_000u16, 40_015u16, &[][..]),
            (40_000, 40_005, &[][..]),
            (40_000, 40_017, &exclude[..]),
            (1, 3, &[][..]),
            (65_535, 65_535, &[][..]),
        ] {
            let p = Params { length: 0, port_lo: lo, port_hi: hi, exclude };
            let all = naive_candidates(&p);
            let p = Params { length: all.len() as u8, ..p };
            for slot in 0..20 {
                let seq = derive(&SECRET, slot, &p).unwrap();
                assert_valid(&seq, &p);
                let mut sorted = seq.as_slice().to_vec();
                sorted.sort_unstable();
                assert_eq!(sorted, all);
            }
        }
    }

    #[test]
    fn bad_parameters_are_rejected() {
        let ok = params(4, 61_000, 65_535, &[]);
        assert!(derive(&SECRET, 0, &ok).is_ok());
        for (p, err) in [
            (params(0, 61_000, 65_535, &[]), SequenceError::BadLength),
            (params(17, 61_000, 65_535, &[]), SequenceError::BadLength),
            (params(255, 61_000, 65_535, &[]), SequenceError::BadLength),
            (params(4, 0, 65_535, &[]), SequenceError::BadRange),
            (params(4, 0, 0, &[]), SequenceError::BadRange),
            (params(4, 2_000, 1_999, &[]), SequenceError::BadRange),
            (params(4, 1_000, 1_002, &[]), SequenceError::TooFewPorts { available: 3, needed: 4 }),
            (
                params(4, 1_000, 1_004, &[1_001, 1_003, 9]),
                SequenceError::TooFewPorts { available: 3, needed: 4 },
            ),
            (
                params(1, 1_000, 1_001, &[1_000, 1_001]),
                SequenceError::TooFewPorts { available: 0, needed: 1 },
            ),
        ] {
            assert_eq!(derive(&SECRET, 0, &p), Err(err), "{p:?}");
        }
        assert_eq!(available_ports(&params(4, 0, 10, &[])), 0);
        assert_eq!(available_ports(&params(4, 11, 10, &[])), 0);
    }

    #[test]
    fn block_limit_gives_exhausted() {
        let p = params(16, 40_000, 40_015, &[]);
        assert_eq!(derive_bounded(&SECRET, Message::v1(0), &p, 0), Err(SequenceError::Exhausted));
        // One block is 16 values: 16 distinct out of 16 from it would be a
        // 16!/16^16 (about 1e-6) chance.
        assert_eq!(derive_bounded(&SECRET, Message::v1(0), &p, 1), Err(SequenceError::Exhausted));
        assert!(derive_bounded(&SECRET, Message::v1(0), &p, MAX_BLOCKS).is_ok());
    }

    #[test]
    fn errors_display_one_line() {
        use std::string::ToString;
        for err in [
            SequenceError::BadLength,
            SequenceError::BadRange,
            SequenceError::TooFewPorts { available: 3, needed: 4 },
            SequenceError::Exhausted,
            SequenceError::BadIdentity,
        ] {
            let text = err.to_string();
            assert!(!text.is_empty() && !text.contains('\n'), "{text:?}");
        }
        assert_eq!(
            SequenceError::TooFewPorts { available: 3, needed: 4 }.to_string(),
            "port range has 3 usable ports, fewer than the sequence length 4"
        );
    }

    #[test]
    fn debug_shows_only_the_ports() {
        let seq = derive(&SECRET, 0, &params(2, 1, 2, &[])).unwrap();
        let text = std::format!("{seq:?}");
        assert!(text == "Sequence([1, 2])" || text == "Sequence([2, 1])", "{text}");
    }
}
