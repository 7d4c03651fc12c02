//! The SHA-256 compression function (FIPS 180-4), for HMAC inside the XDP
//! program: userspace hands the program each key's inner and outer
//! midstates, so one HMAC of a short message is two compressions.
//!
//! Written for the verifier: fixed-size arrays, a bounded loop, and a
//! rolling 16-word message schedule that keeps the stack small.

/// The round constants.
const K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

/// The initial hash value.
pub const IV: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/// One 64-byte block, as sixteen big-endian words.
pub type Block = [u32; 16];

/// Folds one block into `state`. The block is used up: it becomes the
/// message schedule, so no copy of it takes stack.
#[inline(always)]
pub fn compress(state: &mut [u32; 8], w: &mut Block) {
    let mut work = [0; 8];
    compress_with(state, w, &mut work);
}

/// [`compress`] with its eight working variables in `work`, for the
/// program: there they live in map memory rather than in registers that
/// spill onto the 512-byte stack. The variables rotate through the array
/// instead of moving: in round `i`, variable `k` (a = 0 ... h = 7) sits at
/// `(k - i) & 7`, and a round writes only the new `a` (over the old `h`)
/// and the new `e` (over the old `d`).
#[inline(always)]
pub fn compress_with(state: &mut [u32; 8], w: &mut Block, work: &mut [u32; 8]) {
    *work = *state;
    let mut i = 0;
    while i < 64 {
        let at = |k: usize| (k + 64 - i) & 7;
        let word = if i < 16 {
            w[i & 15]
        } else {
            let (w15, w2) = (w[(i + 1) & 15], w[(i + 14) & 15]);
            let s0 = w15.rotate_right(7) ^ w15.rotate_right(18) ^ (w15 >> 3);
            let s1 = w2.rotate_right(17) ^ w2.rotate_right(19) ^ (w2 >> 10);
            let next = w[i & 15].wrapping_add(s0).wrapping_add(w[(i + 9) & 15]).wrapping_add(s1);
            w[i & 15] = next;
            next
        };
        let (e, f, g, h) = (work[at(4)], work[at(5)], work[at(6)], work[at(7)]);
        let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
        let ch = (e & f) ^ (!e & g);
        let t1 = h.wrapping_add(s1).wrapping_add(ch).wrapping_add(K[i & 63]).wrapping_add(word);
        let (a, b, c) = (work[at(0)], work[at(1)], work[at(2)]);
        let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
        let maj = (a & b) ^ (a & c) ^ (b & c);
        work[at(3)] = work[at(3)].wrapping_add(t1);
        work[at(7)] = t1.wrapping_add(s0.wrapping_add(maj));
        i += 1;
    }
    // 64 rounds: every variable is back at its own place.
    let mut k = 0;
    while k < 8 {
        state[k] = state[k].wrapping_add(work[k]);
        k += 1;
    }
}

/// The padded final block of a message that follows `prefix_blocks` whole
/// blocks. The message must be at most 55 bytes, so that it fits one block
/// with its padding: every message here is (a longer one would be cut).
#[inline(always)]
pub fn last_block(message: &[u8], prefix_blocks: u64) -> Block {
    let mut bytes = [0u8; 64];
    let len = if message.len() > 55 { 55 } else { message.len() };
    let mut i = 0;
    while i < len {
        bytes[i] = message[i];
        i += 1;
    }
    bytes[len] = 0x80;
    let bits = (prefix_blocks * 64 + len as u64) * 8;
    let tail = bits.to_be_bytes();
    let mut j = 0;
    while j < 8 {
        bytes[56 + j] = tail[j];
        j += 1;
    }
    to_words(&bytes)
}

/// Sixteen big-endian words of 64 bytes.
#[inline(always)]
pub fn to_words(bytes: &[u8; 64]) -> Block {
    let mut words = [0u32; 16];
    let mut i = 0;
    while i < 16 {
        words[i] = u32::from_be_bytes([
            bytes[4 * i],
            bytes[4 * i + 1],
            bytes[4 * i + 2],
            bytes[4 * i + 3],
        ]);
        i += 1;
    }
    words
}

/// The 32-byte digest of a state.
#[inline(always)]
pub fn digest(state: &[u32; 8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut i = 0;
    while i < 8 {
        let b = state[i].to_be_bytes();
        out[4 * i] = b[0];
        out[4 * i + 1] = b[1];
        out[4 * i + 2] = b[2];
        out[4 * i + 3] = b[3];
        i += 1;
    }
    out
}

/// HMAC-SHA256 from precomputed midstates, of a message of at most 55
/// bytes: the inner hash, then the outer one, one compression each.
#[inline(always)]
pub fn hmac_short(inner: &[u32; 8], outer: &[u32; 8], message: &[u8]) -> [u8; 32] {
    let (mut state, mut work) = ([0; 8], [0; 8]);
    hmac_block(inner, outer, &mut last_block(message, 1), &mut state, &mut work);
    digest(&state)
}

/// HMAC-SHA256 from precomputed midstates, of a message already padded into
/// `block` (the final block after the key's), into `state`. Works in place
/// in the buffers given: the program keeps them off its 512-byte stack.
#[inline(always)]
pub fn hmac_block(
    inner: &[u32; 8],
    outer: &[u32; 8],
    block: &mut Block,
    state: &mut [u32; 8],
    work: &mut [u32; 8],
) {
    *state = *inner;
    compress_with(state, block, work);
    // The outer block: the inner digest's words, then the padding.
    let mut i = 0;
    while i < 16 {
        block[i] = if i < 8 { state[i] } else { 0 };
        i += 1;
    }
    block[8] = 0x8000_0000;
    // The key's block, then the 32-byte inner digest.
    block[15] = (64 + 32) * 8;
    *state = *outer;
    compress_with(state, block, work);
}

/// The inner and outer midstates of HMAC-SHA256 with `key`: the states
/// after the key's padded block. Every key here is at most 64 bytes; a
/// longer one would first be hashed (RFC 2104), which this does not do.
pub fn hmac_midstates(key: &[u8; 32]) -> ([u32; 8], [u32; 8]) {
    let mut ipad = [0x36u8; 64];
    let mut opad = [0x5cu8; 64];
    for (i, k) in key.iter().enumerate() {
        ipad[i] ^= k;
        opad[i] ^= k;
    }
    let (mut inner, mut outer) = (IV, IV);
    compress(&mut inner, &mut to_words(&ipad));
    compress(&mut outer, &mut to_words(&opad));
    (inner, outer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_empty_message_and_abc() {
        // FIPS 180-4 examples.
        let mut state = IV;
        compress(&mut state, &mut last_block(b"", 0));
        assert_eq!(digest(&state)[..4], [0xe3, 0xb0, 0xc4, 0x42], "SHA-256('') starts e3b0c442");
        let mut state = IV;
        compress(&mut state, &mut last_block(b"abc", 0));
        assert_eq!(
            digest(&state),
            [
                0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40, 0xde, 0x5d, 0xae,
                0x22, 0x23, 0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17, 0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61,
                0xf2, 0x00, 0x15, 0xad
            ]
        );
    }

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        // Key "Jefe", data "what do ya want for nothing?".
        // "Jefe", zero-padded to 32 bytes: HMAC pads short keys with zeros.
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(b"Jefe");
        let (inner, outer) = hmac_midstates(&key);
        let mac = hmac_short(&inner, &outer, b"what do ya want for nothing?");
        assert_eq!(
            mac,
            [
                0x5b, 0xdc, 0xc1, 0x46, 0xbf, 0x60, 0x75, 0x4e, 0x6a, 0x04, 0x24, 0x26, 0x08, 0x95,
                0x75, 0xc7, 0x5a, 0x00, 0x3f, 0x08, 0x9d, 0x27, 0x39, 0x83, 0x9d, 0xec, 0x58, 0xb9,
                0x64, 0xec, 0x38, 0x43
            ]
        );
    }
}
