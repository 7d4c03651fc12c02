//! The admission filter: one byte per slot of a hashed source address, set
//! for every source that holds an allow entry or a flow. A stranger's
//! packet to a protected port finds its slot clear and drops after one array
//! load, instead of two hash lookups and a trie walk.
//!
//! A set slot only means "look it up": collisions and stale slots cost
//! lookups, never a wrong verdict. A clear slot must never hide a source
//! that is admitted, so every writer of an allow entry or a flow sets the
//! slot *after* writing the entry (the program in its map views, the daemon
//! in its own).
//!
//! Stale slots are cleared by rebuilding, without ever clearing a slot a
//! live source needs. The map holds two halves and [`Runtime::FilterHalf`]
//! names the one the program reads; writers set a slot in both. The daemon
//! zeroes the other half, sets the slots of every allow entry and flow it
//! then finds, and switches the program over. An entry written before the
//! zeroing was found by the scan; one written after set its own slot.
//!
//! [`Runtime::FilterHalf`]: crate::maps::Runtime::FilterHalf

use crate::source::SourceKey;

/// Slots per half: 2^17, so 16,384 admitted sources (the default allow
/// capacity) leave seven slots in eight clear.
pub const SLOT_BITS: u32 = 17;
pub const SLOTS: u32 = 1 << SLOT_BITS;
/// Bytes per map entry. The map is an array of `u64` words (array values
/// are stored in 8-byte steps, so one-byte values would waste seven).
pub const WORD_BYTES: u32 = 8;
/// Entries of the filter map: two halves of [`SLOTS`] bytes.
pub const WORDS: u32 = 2 * SLOTS / WORD_BYTES;

/// The slot of `src`: its address folded to 32 bits, then a multiplicative
/// hash. An attacker may pick sources that collide with an admitted one;
/// that buys them the lookups a filter-less program always does.
#[inline(always)]
pub fn slot(src: &SourceKey) -> u32 {
    let words: [u32; 4] = bytemuck::cast(src.addr);
    let folded = words[0] ^ words[1] ^ words[2] ^ words[3] ^ u32::from(src.family);
    folded.wrapping_mul(0x9e37_79b1) >> (32 - SLOT_BITS)
}

/// Where the slot of `src` lies in `half` (0 or 1): the map entry, and the
/// byte within it.
#[inline(always)]
pub fn place(src: &SourceKey, half: u64) -> (u32, u32) {
    let byte = (half as u32 & 1) * SLOTS + slot(src);
    (byte / WORD_BYTES, byte % WORD_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_spread_and_stay_in_their_half() {
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..1024u32 {
            let src = SourceKey::v4((0xc000_0200 + i).to_be_bytes());
            let (word, byte) = place(&src, 1);
            assert!((WORDS / 2..WORDS).contains(&word) && byte < WORD_BYTES);
            assert_eq!(place(&src, 0), (word - WORDS / 2, byte));
            seen.insert(slot(&src));
        }
        // Consecutive addresses (one /22) do not pile up on a few slots.
        assert!(seen.len() > 1000, "{} distinct slots", seen.len());
    }

    #[test]
    fn the_families_and_every_address_word_count() {
        let v6 = |last: u8| {
            let mut addr = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
            addr[15] = last;
            SourceKey::v6(addr)
        };
        assert_ne!(slot(&v6(1)), slot(&v6(2)));
        assert_ne!(slot(&SourceKey::v4([32, 1, 13, 184])), slot(&v6(0)));
    }
}
