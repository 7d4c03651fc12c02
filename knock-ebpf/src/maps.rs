//! The program's maps, and the [`Maps`] / [`KnockMaps`] views the shared
//! decision and knock logic read and write through: plain gets and inserts.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_F_MMAPABLE, BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_NO_WAKEUP},
    helpers::{bpf_ktime_get_boot_ns, bpf_ktime_get_coarse_ns},
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf, lpm_trie::Key},
};
use knock_common::{
    allow::AllowEntry,
    decide::{Clocks, Maps},
    event::Event,
    filter,
    flow::{FlowEntry, FlowKey},
    knock::KnockMaps,
    maps::{
        ALLOW_MAX_ENTRIES, ALLOW_NETS_MAX_ENTRIES, Counter, EVENTS_BYTES, FLOWS_MAX_ENTRIES,
        KNOCK_EDGES_MAX_ENTRIES, KNOCK_STATE_MAX_ENTRIES, MAX_CLIENTS, MAX_SEQUENCES,
        MISSES_MAX_ENTRIES, PORT_COUNT, Runtime, SPA_NONCES_MAX_ENTRIES, Settings,
        USED_MAX_ENTRIES,
    },
    source::{NetKey, PrefixKey, SourceKey},
    spa::{NonceKey, Scratch, SpaKey, SpaMaps},
    trie::{Edge, EdgeKey, KnockState, SequenceInfo, UsedKey},
};

#[map]
static PORT_FLAGS: Array<u32> = Array::with_max_entries(PORT_COUNT, 0);

#[map]
static ALLOW: LruHashMap<SourceKey, AllowEntry> =
    LruHashMap::with_max_entries(ALLOW_MAX_ENTRIES, 0);

#[map]
static ALLOW_NETS: LpmTrie<NetKey, u32> = LpmTrie::with_max_entries(ALLOW_NETS_MAX_ENTRIES, 0);

#[map]
static FLOWS: LruHashMap<FlowKey, FlowEntry> = LruHashMap::with_max_entries(FLOWS_MAX_ENTRIES, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

#[map]
static KNOCK_EDGES: HashMap<EdgeKey, Edge> = HashMap::with_max_entries(KNOCK_EDGES_MAX_ENTRIES, 0);

#[map]
static SEQUENCES: Array<SequenceInfo> = Array::with_max_entries(MAX_SEQUENCES, 0);

#[map]
static KNOCK_STATE: LruHashMap<SourceKey, KnockState> =
    LruHashMap::with_max_entries(KNOCK_STATE_MAX_ENTRIES, 0);

#[map]
static USED: HashMap<UsedKey, u64> = HashMap::with_max_entries(USED_MAX_ENTRIES, 0);

#[map]
static MISSES: LruHashMap<PrefixKey, u64> = LruHashMap::with_max_entries(MISSES_MAX_ENTRIES, 0);

#[map]
static SPA_KEYS: Array<SpaKey> = Array::with_max_entries(MAX_CLIENTS, 0);

#[map]
static SPA_NONCES: LruHashMap<NonceKey, u64> =
    LruHashMap::with_max_entries(SPA_NONCES_MAX_ENTRIES, 0);

#[map]
static SPA_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

#[map]
static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);

#[map]
static RUNTIME: Array<u64> = Array::with_max_entries(Runtime::COUNT, 0);

/// Memory-mapped by the daemon, which rebuilds it (see `filter`).
#[map]
static ADMIT_FILTER: Array<u64> = Array::with_max_entries(filter::WORDS, BPF_F_MMAPABLE);

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

pub struct BpfMaps;

impl Maps for BpfMaps {
    #[inline(always)]
    fn port_flags(&self, port: u16) -> u32 {
        PORT_FLAGS.get(u32::from(port)).copied().unwrap_or(0)
    }

    #[inline(always)]
    fn in_allowed_network(&self, src: &SourceKey) -> bool {
        // The family byte is part of every stored prefix.
        self.has_allowed_networks() && ALLOW_NETS.get(Key::new(8 + 128, NetKey::of(src))).is_some()
    }

    #[inline(always)]
    fn has_allowed_networks(&self) -> bool {
        self.runtime(Runtime::Networks) != 0
    }

    #[inline(always)]
    fn may_be_admitted(&self, src: &SourceKey) -> bool {
        let (word, byte) = filter::place(src, self.runtime(Runtime::FilterHalf));
        match ADMIT_FILTER.get_ptr(word) {
            // SAFETY: `byte` < 8, inside the 8-byte value.
            Some(slot) => unsafe { slot.cast::<u8>().add(byte as usize).read_volatile() != 0 },
            // Unreachable for an index inside the array; look it up.
            None => true,
        }
    }

    #[inline(always)]
    fn update_flow<R>(&self, key: &FlowKey, f: impl FnOnce(&mut FlowEntry) -> R) -> Option<R> {
        let entry = FLOWS.get_ptr_mut(key)?;
        // SAFETY: a valid map value, written in place: no hash update per
        // packet. CPUs racing on one flow store values a packet apart.
        Some(f(unsafe { &mut *entry }))
    }

    #[inline(always)]
    fn insert_flow(&self, key: &FlowKey, entry: &FlowEntry) {
        if FLOWS.insert(key, entry, u64::from(BPF_ANY)).is_ok() {
            mark_admitted(&key.src);
        }
    }
}

/// Sets the filter slot of `src` in both halves, after its entry was
/// written (see `filter` for why the order matters).
#[inline(always)]
fn mark_admitted(src: &SourceKey) {
    for half in 0..2 {
        let (word, byte) = filter::place(src, half);
        if let Some(slot) = ADMIT_FILTER.get_ptr_mut(word) {
            // SAFETY: `byte` < 8, inside the 8-byte value. A one-byte store
            // never undoes another writer's store to a neighbouring slot.
            unsafe { slot.cast::<u8>().add(byte as usize).write_volatile(1) };
        }
    }
}

impl SpaMaps for BpfMaps {
    #[inline(always)]
    fn spa_key(&self, index: u32) -> Option<&SpaKey> {
        SPA_KEYS.get(index)
    }

    #[inline(always)]
    fn with_scratch<R>(&self, f: impl FnOnce(&mut Scratch) -> R) -> Option<R> {
        let scratch = SPA_SCRATCH.get_ptr_mut(0)?;
        // SAFETY: this CPU's slot; the program runs to completion on it
        // before anything else can use the slot.
        Some(f(unsafe { &mut *scratch }))
    }

    #[inline(always)]
    fn insert_nonce(&self, key: &NonceKey, now_ns: u64) -> bool {
        // BPF_NOEXIST: of two CPUs verifying the same datagram, one wins.
        SPA_NONCES.insert(key, now_ns, u64::from(BPF_NOEXIST)).is_ok()
    }
}

impl KnockMaps for BpfMaps {
    #[inline(always)]
    fn edge(&self, key: &EdgeKey) -> Option<Edge> {
        // SAFETY: copied out at once; userspace replaces whole entries.
        unsafe { KNOCK_EDGES.get(key) }.copied()
    }

    #[inline(always)]
    fn sequence(&self, index: u32) -> Option<SequenceInfo> {
        SEQUENCES.get(index).copied()
    }

    #[inline(always)]
    fn knock_state(&self, src: &SourceKey) -> Option<KnockState> {
        // SAFETY: copied out at once.
        unsafe { KNOCK_STATE.get(src) }.copied()
    }

    #[inline(always)]
    fn set_knock_state(&self, src: &SourceKey, state: &KnockState) {
        // In place when the source has a state (every knock after the
        // first): an LRU update takes a fresh node, several times the cost
        // of the lookup.
        if let Some(slot) = KNOCK_STATE.get_ptr_mut(src) {
            // SAFETY: a valid map value; CPUs racing on one source store
            // states a packet apart.
            unsafe { *slot = *state };
            return;
        }
        // An LRU insert only fails on allocation failure; the knock is then
        // simply not followed, which fails closed.
        let _ = KNOCK_STATE.insert(src, state, u64::from(BPF_ANY));
    }

    #[inline(always)]
    fn clear_knock_state(&self, src: &SourceKey) {
        let _ = KNOCK_STATE.remove(src);
    }

    #[inline(always)]
    fn insert_used(&self, key: &UsedKey, now_ns: u64) -> bool {
        // BPF_NOEXIST makes the insert the atomic test-and-set: of two CPUs
        // completing the same sequence at once, exactly one succeeds.
        USED.insert(key, now_ns, u64::from(BPF_NOEXIST)).is_ok()
    }

    #[inline(always)]
    fn allowed(&self, src: &SourceKey) -> Option<AllowEntry> {
        // SAFETY: the value is copied out at once; a concurrent update from
        // userspace can at worst give a torn deadline for one packet.
        unsafe { ALLOW.get(src) }.copied()
    }

    #[inline(always)]
    fn set_allowed(&self, src: &SourceKey, entry: &AllowEntry) -> bool {
        let written = ALLOW.insert(src, entry, u64::from(BPF_ANY)).is_ok();
        if written {
            mark_admitted(src);
        }
        written
    }

    #[inline(always)]
    fn misses(&self, prefix: &PrefixKey) -> Option<u64> {
        // SAFETY: copied out at once.
        unsafe { MISSES.get(prefix) }.copied()
    }

    #[inline(always)]
    fn set_misses(&self, prefix: &PrefixKey, tat_ns: u64) {
        // Racing CPUs may lose one miss of a prefix: the limit is a rate,
        // not an exact count.
        let _ = MISSES.insert(prefix, tat_ns, u64::from(BPF_ANY));
    }

    #[inline(always)]
    fn runtime(&self, word: Runtime) -> u64 {
        RUNTIME.get(word as u32).copied().unwrap_or(0)
    }

    #[inline(always)]
    fn set_runtime(&self, word: Runtime, value: u64) {
        if let Some(slot) = RUNTIME.get_ptr_mut(word as u32) {
            // SAFETY: a plain store into an array slot; racing writers store
            // values a few nanoseconds apart, any of which is right.
            unsafe { *slot = value };
        }
    }

    #[inline(always)]
    fn settings(&self) -> Option<&Settings> {
        SETTINGS.get(0)
    }

    #[inline(always)]
    fn emit(&self, event: &Event) {
        // Refusals may fill the ring only halfway, so an opening always
        // finds room.
        if !event.is_opening()
            && EVENTS.query(u64::from(BPF_RB_AVAIL_DATA)) >= u64::from(EVENTS_BYTES / 2)
        {
            return;
        }
        // A full ring buffer loses the event, never the decision. No wakeup:
        // waking the reader costs this packet microseconds; the daemon polls.
        let _ = EVENTS.output::<Event>(event, u64::from(BPF_RB_NO_WAKEUP));
    }
}

/// The kernel's clocks (see [`Clocks`] for which serves what).
pub struct KernelClocks;

impl Clocks for KernelClocks {
    #[inline(always)]
    fn boot_ns(&self) -> u64 {
        // SAFETY: a helper without arguments.
        unsafe { bpf_ktime_get_boot_ns() }
    }

    #[inline(always)]
    fn flow_ns(&self) -> u64 {
        // SAFETY: a helper without arguments.
        unsafe { bpf_ktime_get_coarse_ns() }
    }
}

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot; no other program run touches it concurrently.
        unsafe { *slot += 1 };
    }
}
