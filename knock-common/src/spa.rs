//! Single-packet authorization (docs/spa-v1.md): one UDP datagram,
//! authenticated with HMAC-SHA256 and verified inside the XDP program.
//!
//! ```text
//! offset  size  field
//!      0     1  version (1)
//!      1     1  flags: ADMIT (bytes 20..36 name the address to admit), ADMIT_V6
//!      2     2  client index, big-endian
//!      4     4  UNIX time in seconds, big-endian
//!      8    12  nonce
//!     20    16  address to admit (IPv4 in the first 4 bytes), zero without ADMIT
//!     36    16  MAC: HMAC-SHA256(key, bytes 0..36 || family || server address)[..16]
//! ```
//!
//! The MAC covers the address the client sent the datagram to (its family
//! byte, 4 or 6, then 16 bytes), so a datagram for one server is useless at
//! another. Cheap checks come first (size, version, flags, a key for the
//! index, the time within the skew), so a stranger's datagram costs a few
//! loads; only then the two SHA-256 compressions. A nonce is remembered
//! (atomically) once its MAC verified, so nothing an attacker sends without
//! the key leaves state behind, and no datagram works twice.

use bytemuck::{Pod, Zeroable};

use crate::{
    allow::{AllowEntry, AllowOrigin},
    event::{Event, EventKind},
    knock::KnockMaps,
    maps::Runtime,
    sha256,
    source::{FAMILY_V4, FAMILY_V6, SourceKey},
};

pub const VERSION: u8 = 1;
/// Bytes of a datagram.
pub const DATAGRAM_LEN: usize = 52;
/// Bytes covered by the MAC before the server's address.
pub const SIGNED_LEN: usize = 36;
/// Bytes of the truncated MAC.
pub const MAC_LEN: usize = 16;
/// Bytes of the nonce.
pub const NONCE_LEN: usize = 12;

/// Bits of the flags byte.
pub mod flags {
    /// Bytes 20..36 name the address to admit instead of the datagram's source.
    pub const ADMIT: u8 = 1 << 0;
    /// That address is IPv6 (else IPv4, in the first four bytes).
    pub const ADMIT_V6: u8 = 1 << 1;
    pub const ALL: u8 = ADMIT | ADMIT_V6;
}

/// Bits of [`SpaKey::policy`].
pub mod policy {
    /// The client may name an address to admit other than the datagram's
    /// source (for clients behind NAT). Naming the source itself, which
    /// binds the datagram to it, needs no permission.
    pub const MAY_ADMIT_OTHER: u32 = 1 << 0;
}

/// A client's key as the program holds it: HMAC-SHA256's inner and outer
/// midstates, so verifying costs two compressions and the key itself
/// never enters the kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct SpaKey {
    pub inner: [u32; 8],
    pub outer: [u32; 8],
    /// The client's id; 0 marks a free index.
    pub client: u32,
    /// Bits of [`policy`].
    pub policy: u32,
}

/// A nonce seen, per client index.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Pod, Zeroable)]
pub struct NonceKey {
    pub index: u32,
    pub nonce: [u8; NONCE_LEN],
}

/// Room for what checking one datagram needs: the datagram, the address it
/// was sent to, and SHA-256's block and state. The program keeps it in a
/// per-CPU map, off its 512-byte stack.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct Scratch {
    pub datagram: [u8; DATAGRAM_LEN],
    pub server: SourceKey,
    pub block: sha256::Block,
    pub state: [u32; 8],
    pub work: [u32; 8],
}

/// The maps SPA reads and writes, beside the knock maps.
pub trait SpaMaps: KnockMaps {
    fn spa_key(&self, index: u32) -> Option<&SpaKey>;
    /// Inserts `key` unless present; false when it was. Atomic.
    fn insert_nonce(&self, key: &NonceKey, now_ns: u64) -> bool;
    /// Runs `f` on this CPU's [`Scratch`].
    fn with_scratch<R>(&self, f: impl FnOnce(&mut Scratch) -> R) -> Option<R>;
}

/// What a datagram in the SPA range came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Failed a check: wrong version, flags or padding, no such client, a
    /// time outside the skew (or from before the maps existed), or a named
    /// address the client may not name.
    Rejected,
    /// The MAC did not verify.
    BadMac,
    /// A valid datagram seen before.
    Replay,
    /// The source, or the address it named, was admitted.
    Opened,
}

/// Bytes of the message the MAC covers: the datagram's first 36 bytes, the
/// server address's family byte and its 16 bytes.
pub const MESSAGE_LEN: usize = SIGNED_LEN + 17;

/// The message the MAC covers, padded into the one SHA-256 block that
/// follows the key's (53 bytes, then 0x80, zeros and the bit length),
/// written as words straight from the datagram into `block`.
#[inline(always)]
pub fn signed_block(datagram: &[u8; DATAGRAM_LEN], server: &SourceKey, block: &mut sha256::Block) {
    let byte = |i: usize| -> u8 {
        if i < SIGNED_LEN {
            datagram[i]
        } else if i == SIGNED_LEN {
            server.family
        } else if i < MESSAGE_LEN {
            server.addr[i - SIGNED_LEN - 1]
        } else if i == MESSAGE_LEN {
            0x80
        } else {
            0
        }
    };
    let mut w = 0;
    while w < 16 {
        block[w] =
            u32::from_be_bytes([byte(4 * w), byte(4 * w + 1), byte(4 * w + 2), byte(4 * w + 3)]);
        w += 1;
    }
    block[15] = ((64 + MESSAGE_LEN) * 8) as u32;
}

/// Whether the MAC of the datagram in `scratch` is right, compared in
/// constant time: every word whatever the first mismatch.
#[inline(always)]
pub fn mac_matches(key: &SpaKey, scratch: &mut Scratch) -> bool {
    mac_into(key, scratch);
    let mut diff = 0u32;
    let mut i = 0;
    while i < MAC_LEN / 4 {
        let at = SIGNED_LEN + 4 * i;
        let d = &scratch.datagram;
        diff |= scratch.state[i] ^ u32::from_be_bytes([d[at], d[at + 1], d[at + 2], d[at + 3]]);
        i += 1;
    }
    diff == 0
}

/// The MAC of the datagram in `scratch`, into `scratch.state` (its first
/// [`MAC_LEN`] bytes are the ones sent).
#[inline(always)]
pub fn mac_into(key: &SpaKey, scratch: &mut Scratch) {
    signed_block(&scratch.datagram, &scratch.server, &mut scratch.block);
    sha256::hmac_block(
        &key.inner,
        &key.outer,
        &mut scratch.block,
        &mut scratch.state,
        &mut scratch.work,
    );
}

/// Handles the datagram in `scratch` (its bytes and the address it was
/// sent to) from `src`. The clock (`now`, CLOCK_BOOTTIME ns) is read only
/// once the cheap checks have passed: it costs more than all of them.
#[inline(always)]
pub fn on_datagram<M: SpaMaps>(
    m: &M,
    src: &SourceKey,
    scratch: &mut Scratch,
    now: impl FnOnce() -> u64,
) -> Verdict {
    let datagram = &scratch.datagram;
    let flag_bits = datagram[1];
    if datagram[0] != VERSION || !well_formed(datagram, flag_bits) {
        return Verdict::Rejected;
    }
    let index = u32::from(u16::from_be_bytes([datagram[2], datagram[3]]));
    let Some(key) = m.spa_key(index) else {
        return Verdict::Rejected;
    };
    if key.client == 0 {
        return Verdict::Rejected;
    }
    let Some(settings) = m.settings() else {
        return Verdict::Rejected;
    };
    let sent = u64::from(u32::from_be_bytes([datagram[4], datagram[5], datagram[6], datagram[7]]));
    let now_ns = now();
    let unix_now = now_ns.wrapping_add(m.runtime(Runtime::UnixOffset)) / 1_000_000_000;
    // Nonces of datagrams sent before the maps existed (a fresh start)
    // are not remembered: such datagrams are refused, not replayable.
    if sent.abs_diff(unix_now) > settings.spa_skew_secs || sent < m.runtime(Runtime::SpaNotBefore) {
        return Verdict::Rejected;
    }
    if !mac_matches(key, scratch) {
        return Verdict::BadMac;
    }
    let datagram = &scratch.datagram;
    // The address to admit: the one the datagram names, if it names one,
    // else its source. Naming another address than the source takes the
    // client's permission; without it the datagram is refused, and before
    // its nonce is spent, so an observer who races a copy from its own
    // address gains nothing and costs the client nothing.
    let admit = if flag_bits & flags::ADMIT != 0 {
        let named = named_address(datagram, flag_bits);
        if named != *src && key.policy & policy::MAY_ADMIT_OTHER == 0 {
            return Verdict::Rejected;
        }
        named
    } else {
        *src
    };
    let mut nonce = NonceKey { index, nonce: [0; NONCE_LEN] };
    nonce.nonce.copy_from_slice(&datagram[8..8 + NONCE_LEN]);
    let event = |kind: EventKind, source: SourceKey| Event {
        kind: kind as u32,
        client: key.client,
        slot: sent,
        source,
        step: 0,
    };
    if !m.insert_nonce(&nonce, now_ns) {
        // Named by who sent it, whatever it asks to admit.
        m.emit(&event(EventKind::SpaReplay, *src));
        return Verdict::Replay;
    }
    let grant = AllowEntry {
        deadline_ns: now_ns.saturating_add(settings.open_window_ns),
        origin: AllowOrigin::Spa as u32,
        client: key.client,
    };
    let admitted = match grant.granted_over(m.allowed(&admit)) {
        Some(entry) => m.set_allowed(&admit, &entry),
        None => true,
    };
    m.emit(&event(if admitted { EventKind::SpaOpened } else { EventKind::AllowFull }, admit));
    Verdict::Opened
}

/// The rules no client may break, checked before the MAC: only known flag
/// bits, ADMIT_V6 only with ADMIT, and the address field zero where it does
/// not hold the named address.
#[inline(always)]
fn well_formed(datagram: &[u8; DATAGRAM_LEN], flag_bits: u8) -> bool {
    // Constant bounds only: the verifier (and the compiler) see every index.
    let any_of = |from: usize, to: usize| {
        let mut bits = 0u8;
        let mut i = from;
        while i < to {
            bits |= datagram[i];
            i += 1;
        }
        bits
    };
    let (v4_part, rest) = (any_of(20, 24), any_of(24, 36));
    match flag_bits {
        0 => v4_part | rest == 0,
        flags::ADMIT => rest == 0,
        flags::ALL => true,
        _ => false,
    }
}

/// The address a datagram with ADMIT names.
#[inline(always)]
fn named_address(datagram: &[u8; DATAGRAM_LEN], flag_bits: u8) -> SourceKey {
    let mut addr = [0u8; 16];
    addr.copy_from_slice(&datagram[20..36]);
    let family = if flag_bits & flags::ADMIT_V6 != 0 { FAMILY_V6 } else { FAMILY_V4 };
    SourceKey { family, _pad: [0; 3], addr }
}

#[cfg(any(test, feature = "std"))]
mod build;
#[cfg(any(test, feature = "std"))]
pub use build::{Request, datagram, key_from_secret, spa_key};

#[cfg(test)]
mod tests;
