//! The knock state machine: how a source's SYNs and datagrams advance, reset
//! or complete the sequences installed in the kernel.
//!
//! Written once over the [`KnockTables`] trait: the XDP program runs it on BPF
//! maps, host tests on plain collections.
//!
//! Matching many clients at once: every installed sequence has an index, and
//! a [`StepEntry`] says which indexes knock on a (port, protocol) at a given
//! step. A source's state keeps the bitmap of sequences that matched every
//! knock so far; each knock ANDs it with the next step's bitmap. Clients may
//! share ports freely: the bitmap keeps every reading alive until only the
//! true ones remain. Per packet this costs one state lookup and one step
//! lookup, whatever the number of clients.

use crate::{
    maps::{
        AllowEntry, Bitmap, Config, Event, KnockState, PROTO_TCP, PROTO_UDP, STATIC_SLOT,
        SequenceInfo, SourceKey, StepEntry, StepKey, UsedKey, allow_origin, event_kind,
    },
    verdict::Transport,
};

/// At most this many sequences finishing on the same knock are tried in
/// turn (a replayed one is skipped for the next). Keeps the loop bounded for
/// the verifier; more would need identical sequences in one step.
const MAX_FINISH_TRIES: usize = 4;

/// The maps the knock logic reads and writes.
pub trait KnockTables {
    fn knock_step(&self, key: &StepKey) -> Option<&StepEntry>;
    fn sequence(&self, index: u32) -> Option<&SequenceInfo>;
    fn knock_state(&self, src: &SourceKey) -> Option<KnockState>;
    fn set_knock_state(&self, src: &SourceKey, state: &KnockState);
    fn clear_knock_state(&self, src: &SourceKey);
    /// Marks a sequence used; false when it already was. Must be atomic:
    /// of two completions racing on two CPUs exactly one may win.
    fn claim(&self, key: &UsedKey, now_ns: u64) -> bool;
    /// Puts `src` in the allow map; false when the map is full.
    fn admit(&self, src: &SourceKey, entry: &AllowEntry) -> bool;
    fn config(&self) -> Config;
    /// Boot ns until which some knock may be in progress.
    fn knock_active_until(&self) -> u64;
    fn set_knock_active_until(&self, until_ns: u64);
    fn emit(&self, event: &Event);
}

impl Transport {
    /// The protocol number used in [`StepKey`].
    pub const fn number(self) -> u8 {
        match self {
            Transport::Tcp => PROTO_TCP,
            Transport::Udp => PROTO_UDP,
        }
    }
}

/// Handles a connection attempt (a bare TCP SYN, or a UDP datagram) from
/// `src`. `knock_port` says whether some installed sequence uses the port;
/// the caller drops such packets whatever happens here.
#[inline(always)]
pub fn on_attempt<T: KnockTables>(
    t: &T,
    src: &SourceKey,
    proto: Transport,
    port: u16,
    knock_port: bool,
    now_ns: u64,
) {
    let proto = proto.number();
    let config = t.config();
    if let Some(state) = t.knock_state(src) {
        if now_ns.saturating_sub(state.started_ns) > config.knock_timeout_ns {
            t.clear_knock_state(src);
            if state.done == 0 {
                emit_candidates(t, event_kind::TIMEOUT, src, &state.candidates, state.step);
            }
            // Fall through: this packet may start a new attempt.
        } else if state.last_port == port && state.last_proto == proto {
            // A retransmitted SYN (or repeated datagram) to the port just
            // knocked: not a new knock, not a mistake.
            return;
        } else if state.done != 0 {
            // After a completion the next attempt (typically the connection
            // to the protected port) just ends the old state.
            t.clear_knock_state(src);
        } else {
            if knock_port {
                let key = StepKey { port, proto, step: state.step };
                if let Some(step) = t.knock_step(&key) {
                    let matching = and(&state.candidates, &step.continues);
                    if any(&matching) {
                        advance(
                            t,
                            src,
                            state,
                            matching,
                            &step.finishes,
                            port,
                            proto,
                            now_ns,
                            &config,
                        );
                        return;
                    }
                }
            }
            // Anything else from this source ends the attempt, so spraying
            // ports in order never walks through a sequence.
            t.clear_knock_state(src);
            emit_candidates(t, event_kind::RESET, src, &state.candidates, state.step);
            // Fall through: the same packet may be a fresh first knock.
        }
    }
    if !knock_port {
        return;
    }
    // Only a first knock of an installed sequence creates state, so scans
    // and floods of random ports leave no trace in the map.
    let Some(first) = t.knock_step(&StepKey { port, proto, step: 0 }) else {
        return;
    };
    let state = KnockState { started_ns: now_ns, ..KnockState::default() };
    t.set_knock_active_until(now_ns.saturating_add(config.knock_timeout_ns));
    advance(t, src, state, first.continues, &first.finishes, port, proto, now_ns, &config);
}

#[expect(
    clippy::too_many_arguments,
    reason = "inlined into one BPF function; a struct would cost stack"
)]
#[inline(always)]
fn advance<T: KnockTables>(
    t: &T,
    src: &SourceKey,
    mut state: KnockState,
    matching: Bitmap,
    finishes: &Bitmap,
    port: u16,
    proto: u8,
    now_ns: u64,
    config: &Config,
) {
    state.candidates = matching;
    state.step = state.step.saturating_add(1);
    state.last_port = port;
    state.last_proto = proto;
    let finished = and(&matching, finishes);
    if any(&finished) {
        complete(t, src, finished, state.step, now_ns, config);
        state.done = 1;
        state.candidates = Bitmap::default();
    } else {
        emit_candidates(t, event_kind::PROGRESS, src, &matching, state.step);
    }
    t.set_knock_state(src, &state);
}

/// A sequence finished: admit the source, unless the sequence is outside its
/// validity or already used.
#[inline(always)]
fn complete<T: KnockTables>(
    t: &T,
    src: &SourceKey,
    mut finished: Bitmap,
    step: u8,
    now_ns: u64,
    config: &Config,
) {
    let mut refused: Option<SequenceInfo> = None;
    let mut outcome = event_kind::STALE;
    for _ in 0..MAX_FINISH_TRIES {
        let Some(index) = take_lowest(&mut finished) else {
            break;
        };
        let Some(&seq) = t.sequence(index) else {
            continue;
        };
        if now_ns < seq.valid_from_ns || now_ns >= seq.valid_until_ns {
            continue;
        }
        if seq.slot != STATIC_SLOT
            && !t.claim(&UsedKey { client: seq.client, _pad: 0, slot: seq.slot }, now_ns)
        {
            // Used already: perhaps another client has the same sequence.
            refused = Some(seq);
            outcome = event_kind::REPLAY;
            continue;
        }
        let entry = AllowEntry {
            deadline_ns: now_ns.saturating_add(config.open_window_ns),
            origin: allow_origin::KNOCK,
            client: seq.client,
        };
        let kind = if t.admit(src, &entry) { event_kind::OPENED } else { event_kind::ALLOW_FULL };
        emit(t, kind, src, Some(&seq), u32::from(step));
        return;
    }
    emit(t, outcome, src, refused.as_ref(), u32::from(step));
}

/// Emits an event naming the first candidate sequence (usually the only one).
#[inline(always)]
fn emit_candidates<T: KnockTables>(
    t: &T,
    kind: u32,
    src: &SourceKey,
    candidates: &Bitmap,
    step: u8,
) {
    let mut candidates = *candidates;
    let seq = take_lowest(&mut candidates).and_then(|index| t.sequence(index));
    emit(t, kind, src, seq, step);
}

#[inline(always)]
fn emit<T: KnockTables>(
    t: &T,
    kind: u32,
    src: &SourceKey,
    seq: Option<&SequenceInfo>,
    step: impl Into<u32>,
) {
    let (client, slot) = seq.map_or((0, 0), |s| (s.client, s.slot));
    t.emit(&Event { kind, client, slot, source: *src, step: step.into() });
}

#[inline(always)]
fn and(a: &Bitmap, b: &Bitmap) -> Bitmap {
    [a[0] & b[0], a[1] & b[1], a[2] & b[2], a[3] & b[3]]
}

#[inline(always)]
fn any(a: &Bitmap) -> bool {
    (a[0] | a[1] | a[2] | a[3]) != 0
}

/// Removes and returns the lowest set bit's index.
#[inline(always)]
fn take_lowest(bits: &mut Bitmap) -> Option<u32> {
    for (word_index, word) in bits.iter_mut().enumerate() {
        if *word != 0 {
            let lowest = *word & word.wrapping_neg();
            *word &= !lowest;
            return Some(word_index as u32 * 64 + bit_index(lowest));
        }
    }
    None
}

/// The index of the single set bit of `bit`, by binary search: the BPF
/// instruction set has no count-trailing-zeros.
#[inline(always)]
fn bit_index(bit: u64) -> u32 {
    let mut index = 0;
    let mut bit = bit;
    for shift in [32u32, 16, 8, 4, 2, 1] {
        if bit >> shift != 0 {
            bit >>= shift;
            index += shift;
        }
    }
    index
}

/// Sets bit `index` of a bitmap (userspace uses this to build step entries).
pub fn set_bit(bits: &mut Bitmap, index: u32) {
    bits[(index / 64) as usize] |= 1 << (index % 64);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        maps::{MAX_SEQUENCES, SLOTS_PER_CLIENT},
        model::{Model, SEC},
    };

    const A: SourceKey = SourceKey::v4([10, 0, 0, 2]);
    const B: SourceKey = SourceKey::v4([10, 0, 0, 3]);

    fn model() -> Model {
        let mut m = Model::new();
        m.install(0, 7, 100, &[1000, 2000, 3000, 4000]);
        m
    }

    #[test]
    fn the_sequence_opens_the_door_for_its_client() {
        let m = model();
        m.knock(A, &[1000, 2000, 3000, 4000], 1);
        let entry = m.allowed_entry(A).expect("admitted");
        assert_eq!(
            (entry.origin, entry.client, entry.deadline_ns),
            (allow_origin::KNOCK, 7, 31 * SEC)
        );
        assert_eq!(m.last_event(), event_kind::OPENED);
    }

    #[test]
    fn wrong_order_extra_port_and_missing_port_do_not() {
        for ports in [
            &[2000, 1000, 3000, 4000][..],
            &[1000, 2000, 2500, 3000, 4000],
            &[1000, 2000, 4000],
            &[1000, 3000, 2000, 4000],
        ] {
            let m = model();
            m.knock(A, ports, 1);
            assert_eq!(m.allowed_entry(A), None, "{ports:?}");
        }
    }

    #[test]
    fn retransmitted_syns_are_ignored() {
        let m = model();
        m.knock(A, &[1000, 1000, 2000, 2000, 2000, 3000, 4000, 4000], 1);
        assert!(m.allowed_entry(A).is_some());
        // The retransmission of the final knock is no replay.
        assert!(!m.events.borrow().iter().any(|e| e.kind == event_kind::REPLAY));
    }

    #[test]
    fn a_wrong_knock_restarts_cleanly_when_it_is_a_first_knock() {
        let m = model();
        m.knock(A, &[1000, 2000, 1000, 2000, 3000, 4000], 1);
        assert!(m.allowed_entry(A).is_some());
    }

    #[test]
    fn any_other_attempt_resets_even_on_ports_that_are_not_knock_ports() {
        let m = model();
        m.knock(A, &[1000, 2000], 1);
        m.syn(A, 22, 1);
        assert_eq!(m.last_event(), event_kind::RESET);
        m.knock(A, &[3000, 4000], 1);
        assert_eq!(m.allowed_entry(A), None);
    }

    #[test]
    fn spraying_every_port_in_order_never_opens() {
        let m = model();
        for _ in 0..2 {
            for port in 1..=u16::MAX {
                m.syn(A, port, 1);
            }
        }
        assert_eq!(m.allowed_entry(A), None);
    }

    #[test]
    fn scans_create_no_state() {
        let m = model();
        for port in (1..=u16::MAX).filter(|p| *p != 1000) {
            m.syn(B, port, 1);
        }
        assert!(m.states.borrow().is_empty());
        assert_eq!(*m.active.borrow(), 0);
    }

    #[test]
    fn too_slow_times_out() {
        let m = model();
        m.knock(A, &[1000, 2000, 3000], 1);
        m.syn(A, 4000, 12);
        assert_eq!(m.allowed_entry(A), None);
        assert!(m.events.borrow().iter().any(|e| e.kind == event_kind::TIMEOUT));
    }

    #[test]
    fn a_sequence_works_once_from_any_source() {
        let m = model();
        m.knock(A, &[1000, 2000, 3000, 4000], 1);
        m.knock(B, &[1000, 2000, 3000, 4000], 2);
        assert_eq!(m.allowed_entry(B), None);
        assert_eq!(m.last_event(), event_kind::REPLAY);
        // Not even from the first source again.
        m.allow.borrow_mut().clear();
        m.syn(A, 22, 3);
        m.knock(A, &[1000, 2000, 3000, 4000], 3);
        assert_eq!(m.allowed_entry(A), None);
    }

    #[test]
    fn outside_its_validity_a_sequence_is_stale() {
        let mut m = model();
        m.sequences.get_mut(&0).unwrap().valid_from_ns = 50 * SEC;
        m.knock(A, &[1000, 2000, 3000, 4000], 1);
        assert_eq!(m.allowed_entry(A), None);
        assert_eq!(m.last_event(), event_kind::STALE);
    }

    #[test]
    fn static_sequences_can_be_reused() {
        let mut m = Model::new();
        m.install(4, 9, STATIC_SLOT, &[7000, 8000, 9000]);
        m.knock(A, &[7000, 8000, 9000], 1);
        m.knock(B, &[7000, 8000, 9000], 1);
        assert!(m.allowed_entry(A).is_some() && m.allowed_entry(B).is_some());
    }

    #[test]
    fn clients_sharing_ports_knock_concurrently() {
        let mut m = Model::new();
        // Same first and last port, interleaved knocks from two sources.
        m.install(0, 1, 100, &[1000, 2000, 3000, 4000]);
        m.install(SLOTS_PER_CLIENT, 2, 100, &[1000, 3000, 2000, 4000]);
        for (a, b) in [(1000, 1000), (2000, 3000), (3000, 2000), (4000, 4000)] {
            m.syn(A, a, 1);
            m.syn(B, b, 1);
        }
        assert_eq!(m.allowed_entry(A).map(|e| e.client), Some(1));
        assert_eq!(m.allowed_entry(B).map(|e| e.client), Some(2));
    }

    #[test]
    fn identical_sequences_of_two_clients_both_work() {
        let mut m = Model::new();
        m.install(0, 1, 100, &[1000, 2000]);
        m.install(MAX_SEQUENCES - 1, 2, 100, &[1000, 2000]);
        m.knock(A, &[1000, 2000], 1);
        m.knock(B, &[1000, 2000], 1);
        assert_eq!(m.allowed_entry(A).map(|e| e.client), Some(1));
        assert_eq!(m.allowed_entry(B).map(|e| e.client), Some(2));
    }

    #[test]
    fn one_knock_sequences_complete_at_once() {
        let mut m = Model::new();
        m.install(3, 5, 100, &[1234]);
        m.syn(A, 1234, 1);
        assert!(m.allowed_entry(A).is_some());
    }

    #[test]
    fn bit_helpers() {
        for i in [0, 1, 63, 64, 100, 255] {
            let mut bits = Bitmap::default();
            set_bit(&mut bits, i);
            assert_eq!(take_lowest(&mut bits), Some(i));
            assert!(!any(&bits));
        }
    }
}
