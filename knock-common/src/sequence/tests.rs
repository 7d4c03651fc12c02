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
    assert_eq!(none.as_slice(), [64_530, 61_818, 62_464, 62_925, 63_936, 61_021, 62_246, 65_206]);
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
