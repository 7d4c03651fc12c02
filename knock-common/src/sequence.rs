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
mod tests;
