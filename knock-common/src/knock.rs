//! The knock state machine: how a source's SYNs and datagrams in a knock
//! space advance, reset or complete the sequences installed in the trie,
//! and how failed knocks are limited.
//!
//! Written once over the [`KnockMaps`] trait: the XDP program runs it on BPF
//! maps, the model on plain collections. It never decides a packet's fate:
//! knocks pass to the host like any packet to a closed port, so a scan
//! cannot tell an installed knock port from its neighbours.

use crate::{
    allow::{AllowEntry, AllowOrigin},
    event::{Event, EventKind},
    maps::{Runtime, Settings},
    proto::Proto,
    source::{PrefixKey, SourceKey},
    trie::{Edge, EdgeKey, KnockState, MAX_FINISHERS, ROOT, STATIC_SLOT, SequenceInfo, UsedKey},
};

/// The maps the knock logic reads and writes: plain gets and inserts; every
/// rule is in this module.
pub trait KnockMaps {
    fn edge(&self, key: &EdgeKey) -> Option<Edge>;
    fn sequence(&self, index: u32) -> Option<SequenceInfo>;
    fn knock_state(&self, src: &SourceKey) -> Option<KnockState>;
    fn set_knock_state(&self, src: &SourceKey, state: &KnockState);
    fn clear_knock_state(&self, src: &SourceKey);
    /// Inserts `key` unless present; false when it was. Atomic: of two
    /// completions racing on two CPUs exactly one may win.
    fn insert_used(&self, key: &UsedKey, now_ns: u64) -> bool;
    fn allowed(&self, src: &SourceKey) -> Option<AllowEntry>;
    /// Writes an allow entry; false when the map had no room.
    fn set_allowed(&self, src: &SourceKey, entry: &AllowEntry) -> bool;
    fn misses(&self, prefix: &PrefixKey) -> Option<u64>;
    fn set_misses(&self, prefix: &PrefixKey, tat_ns: u64);
    fn runtime(&self, word: Runtime) -> u64;
    fn set_runtime(&self, word: Runtime, value: u64);
    /// `None` only before the daemon wrote any: then nothing is admitted.
    fn settings(&self) -> Option<&Settings>;
    fn emit(&self, event: &Event);
}

/// What an attempt in a knock space did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// Its prefix is over the failed-knock limit: nothing happened.
    Ignored,
    /// A retransmission of the knock just made.
    Repeated,
    /// A knock started or went on.
    Progress,
    /// A sequence completed and opened the door.
    Opened,
    /// A failed knock: it matched nothing, or it ended a knock without
    /// opening the door. Counted against the prefix and the host.
    Missed,
}

/// Handles a connection attempt (a bare TCP SYN, or a UDP datagram) from
/// `src` to a port in the knock space of `proto`. A function of its own in
/// the program (see `decide`).
#[cfg_attr(target_arch = "bpf", inline(never))]
#[cfg_attr(not(target_arch = "bpf"), inline(always))]
pub fn on_attempt<M: KnockMaps>(
    m: &M,
    src: &SourceKey,
    proto: Proto,
    port: u16,
    now_ns: u64,
) -> Attempt {
    let Some(settings) = m.settings() else {
        return Attempt::Ignored;
    };
    let rate = settings.miss_rate();
    let prefix = src.miss_prefix();
    let misses = m.misses(&prefix);
    if let Some(tat) = misses
        && rate.exhausted(tat, now_ns)
    {
        return Attempt::Ignored;
    }
    let attempt = walk(m, src, proto, port, now_ns, settings);
    if attempt == Attempt::Missed {
        charge(m, src, &prefix, misses, now_ns, settings);
    }
    attempt
}

/// Counts a miss against the prefix and the host.
#[inline(always)]
fn charge<M: KnockMaps>(
    m: &M,
    src: &SourceKey,
    prefix: &PrefixKey,
    misses: Option<u64>,
    now_ns: u64,
    settings: &Settings,
) {
    let (rate, global) = (settings.miss_rate(), settings.global_miss_rate());
    let global_tat = m.runtime(Runtime::GlobalMisses);
    let tat = if global.exhausted(global_tat, now_ns) {
        // Misses from everywhere at once: a distributed search, or a flood
        // that makes the LRU forget prefixes. Then no prefix gets a burst.
        rate.emptied(now_ns)
    } else {
        m.set_runtime(Runtime::GlobalMisses, global.charged(Some(global_tat), now_ns));
        rate.charged(misses, now_ns)
    };
    m.set_misses(prefix, tat);
    if rate.exhausted(tat, now_ns) && misses.is_none_or(|old| !rate.exhausted(old, now_ns)) {
        emit(m, EventKind::Limited, src, None, 0u32);
    }
}

/// Follows the attempt through the source's state and the trie.
#[inline(always)]
fn walk<M: KnockMaps>(
    m: &M,
    src: &SourceKey,
    proto: Proto,
    port: u16,
    now_ns: u64,
    settings: &Settings,
) -> Attempt {
    let mut failed = false;
    if let Some(state) = m.knock_state(src) {
        if now_ns.saturating_sub(state.started_ns) > settings.knock_timeout_ns {
            m.clear_knock_state(src);
            if state.node != KnockState::DONE {
                emit_via(m, EventKind::Timeout, src, state.via, state.step);
                failed = true;
            }
            // This packet may start a new attempt.
        } else if state.last_port == port && state.last_proto == proto.number() {
            // A retransmitted SYN (or repeated datagram) to the port just
            // knocked: not a new knock, not a mistake.
            return Attempt::Repeated;
        } else if state.node == KnockState::DONE {
            // After a completion the next attempt just ends the old state.
            m.clear_knock_state(src);
        } else if let Some(edge) = m.edge(&EdgeKey::new(state.node, proto, port)) {
            return advance(m, src, state, &edge, proto, port, now_ns, settings);
        } else {
            // Anything else in the knock space ends the attempt, so spraying
            // ports in order never walks through a sequence.
            m.clear_knock_state(src);
            emit_via(m, EventKind::Reset, src, state.via, state.step);
            failed = true;
            // This packet may be a fresh first knock.
        }
    }
    // Only a first knock of an installed sequence creates state, so scans
    // and floods of random ports leave no trace in the map.
    let Some(first) = m.edge(&EdgeKey::new(ROOT, proto, port)) else {
        return Attempt::Missed;
    };
    let state = KnockState { started_ns: now_ns, node: ROOT, ..KnockState::default() };
    let attempt = advance(m, src, state, &first, proto, port, now_ns, settings);
    if failed { Attempt::Missed } else { attempt }
}

#[expect(
    clippy::too_many_arguments,
    reason = "inlined into one BPF function; a struct would cost stack"
)]
#[inline(always)]
fn advance<M: KnockMaps>(
    m: &M,
    src: &SourceKey,
    mut state: KnockState,
    edge: &Edge,
    proto: Proto,
    port: u16,
    now_ns: u64,
    settings: &Settings,
) -> Attempt {
    state.node = edge.child;
    state.via = edge.via;
    state.step = state.step.saturating_add(1);
    state.last_port = port;
    state.last_proto = proto.number();
    let attempt = if edge.finishes[0] != 0 {
        state.node = KnockState::DONE;
        complete(m, src, edge, state.step, now_ns, settings)
    } else {
        Attempt::Progress
    };
    m.set_knock_state(src, &state);
    attempt
}

/// A sequence finished: admit the source, unless the sequence is outside its
/// validity or already used.
#[inline(always)]
fn complete<M: KnockMaps>(
    m: &M,
    src: &SourceKey,
    edge: &Edge,
    step: u8,
    now_ns: u64,
    settings: &Settings,
) -> Attempt {
    let mut refused: Option<SequenceInfo> = None;
    let mut outcome = EventKind::Stale;
    for place in 0..MAX_FINISHERS {
        let index = edge.finishes[place];
        if index == 0 {
            break;
        }
        let Some(seq) = m.sequence(index - 1) else {
            continue;
        };
        if now_ns < seq.valid_from_ns || now_ns >= seq.valid_until_ns {
            continue;
        }
        if seq.slot != STATIC_SLOT
            && !m.insert_used(&UsedKey { client: seq.client, _pad: 0, slot: seq.slot }, now_ns)
        {
            // Used already: perhaps another client has the same sequence.
            refused = Some(seq);
            outcome = EventKind::Replay;
            continue;
        }
        let grant = AllowEntry {
            deadline_ns: now_ns.saturating_add(settings.open_window_ns),
            origin: AllowOrigin::Knock as u32,
            client: seq.client,
        };
        let admitted = match grant.granted_over(m.allowed(src)) {
            Some(entry) => m.set_allowed(src, &entry),
            None => true,
        };
        let kind = if admitted { EventKind::Opened } else { EventKind::AllowFull };
        emit(m, kind, src, Some(&seq), step);
        // A full allow map is no failed guess.
        return Attempt::Opened;
    }
    emit(m, outcome, src, refused.as_ref(), step);
    Attempt::Missed
}

/// Emits an event naming the sequence `via` (index + 1) when it is known.
#[inline(always)]
fn emit_via<M: KnockMaps>(m: &M, kind: EventKind, src: &SourceKey, via: u32, step: u8) {
    let seq = if via == 0 { None } else { m.sequence(via - 1) };
    emit(m, kind, src, seq.as_ref(), step);
}

#[inline(always)]
fn emit<M: KnockMaps>(
    m: &M,
    kind: EventKind,
    src: &SourceKey,
    seq: Option<&SequenceInfo>,
    step: impl Into<u32>,
) {
    let (client, slot) = seq.map_or((0, 0), |s| (s.client, s.slot));
    m.emit(&Event { kind: kind as u32, client, slot, source: *src, step: step.into() });
}

#[cfg(test)]
mod tests;
