//! The maps the program reads and writes, and the `Tables` / `KnockTables`
//! views the shared decision and knock logic use.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_NO_WAKEUP},
    helpers::bpf_ktime_get_boot_ns,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf, lpm_trie::Key},
};
use knock_common::{
    knock::KnockTables,
    maps::{
        ALLOW_MAX_ENTRIES, ALLOW_NETS_MAX_ENTRIES, AllowEntry, Config, Counter, EVENTS_BYTES,
        Event, FLOWS_MAX_ENTRIES, FlowEntry, FlowKey, KNOCK_STATE_MAX_ENTRIES,
        KNOCK_STEPS_MAX_ENTRIES, KnockState, MAX_SEQUENCES, NetKey, PORT_COUNT, SequenceInfo,
        SourceKey, StepEntry, StepKey, USED_MAX_ENTRIES, UsedKey, event_kind,
    },
    verdict::Tables,
};

#[map]
static PORT_FLAGS: Array<u32> = Array::with_max_entries(PORT_COUNT, 0);

#[map]
static ALLOW: LruHashMap<SourceKey, AllowEntry> =
    LruHashMap::with_max_entries(ALLOW_MAX_ENTRIES, 0);

#[map]
static FLOWS: LruHashMap<FlowKey, FlowEntry> = LruHashMap::with_max_entries(FLOWS_MAX_ENTRIES, 0);

#[map]
static ALLOW_NETS: LpmTrie<NetKey, u32> = LpmTrie::with_max_entries(ALLOW_NETS_MAX_ENTRIES, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

#[map]
static KNOCK_STEPS: HashMap<StepKey, StepEntry> =
    HashMap::with_max_entries(KNOCK_STEPS_MAX_ENTRIES, 0);

#[map]
static SEQUENCES: Array<SequenceInfo> = Array::with_max_entries(MAX_SEQUENCES, 0);

#[map]
static KNOCK_STATE: LruHashMap<SourceKey, KnockState> =
    LruHashMap::with_max_entries(KNOCK_STATE_MAX_ENTRIES, 0);

#[map]
static USED: HashMap<UsedKey, u64> = HashMap::with_max_entries(USED_MAX_ENTRIES, 0);

#[map]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[map]
static KNOCK_ACTIVE: Array<u64> = Array::with_max_entries(1, 0);

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

pub struct Maps;

impl Tables for Maps {
    #[inline(always)]
    fn port_flags(&self, port: u16) -> u32 {
        PORT_FLAGS.get(u32::from(port)).copied().unwrap_or(0)
    }

    #[inline(always)]
    fn allowed(&self, src: &SourceKey) -> Option<AllowEntry> {
        // SAFETY: the value is copied out at once; a concurrent update from
        // userspace can at worst give a torn deadline for one packet.
        unsafe { ALLOW.get(src) }.copied()
    }

    #[inline(always)]
    fn in_allowed_network(&self, src: &SourceKey) -> bool {
        // The family byte is part of every stored prefix.
        ALLOW_NETS.get(Key::new(8 + 128, NetKey::of(src))).is_some()
    }

    #[inline(always)]
    fn flow(&self, key: &FlowKey) -> Option<FlowEntry> {
        // SAFETY: copied out at once.
        unsafe { FLOWS.get(key) }.copied()
    }

    #[inline(always)]
    fn set_flow(&self, key: &FlowKey, entry: &FlowEntry) {
        // In place when the flow exists (the common case: no hash update).
        if let Some(slot) = FLOWS.get_ptr_mut(key) {
            // SAFETY: a valid map value; racing writers store equivalent times.
            unsafe { *slot = *entry };
        } else {
            let _ = FLOWS.insert(key, entry, u64::from(BPF_ANY));
        }
    }
}

impl KnockTables for Maps {
    #[inline(always)]
    fn knock_step(&self, key: &StepKey) -> Option<&StepEntry> {
        // SAFETY: read-only use; userspace replaces whole entries.
        unsafe { KNOCK_STEPS.get(key) }
    }

    #[inline(always)]
    fn sequence(&self, index: u32) -> Option<&SequenceInfo> {
        SEQUENCES.get(index)
    }

    #[inline(always)]
    fn knock_state(&self, src: &SourceKey) -> Option<KnockState> {
        // SAFETY: copied out at once.
        unsafe { KNOCK_STATE.get(src) }.copied()
    }

    #[inline(always)]
    fn set_knock_state(&self, src: &SourceKey, state: &KnockState) {
        // An LRU insert only fails on allocation failure; the knock is then
        // simply not followed, which fails closed.
        let _ = KNOCK_STATE.insert(src, state, u64::from(BPF_ANY));
    }

    #[inline(always)]
    fn clear_knock_state(&self, src: &SourceKey) {
        let _ = KNOCK_STATE.remove(src);
    }

    #[inline(always)]
    fn claim(&self, key: &UsedKey, now_ns: u64) -> bool {
        // BPF_NOEXIST makes the insert the atomic test-and-set: of two CPUs
        // completing the same sequence at once, exactly one succeeds.
        USED.insert(key, now_ns, u64::from(BPF_NOEXIST)).is_ok()
    }

    #[inline(always)]
    fn admit(&self, src: &SourceKey, entry: &AllowEntry) -> bool {
        // Never shorten a longer window (e.g. a manual allow for an hour).
        // SAFETY: copied out at once.
        if let Some(old) = unsafe { ALLOW.get(src) }
            && old.deadline_ns >= entry.deadline_ns
        {
            return true;
        }
        ALLOW.insert(src, entry, u64::from(BPF_ANY)).is_ok()
    }

    #[inline(always)]
    fn config(&self) -> Config {
        CONFIG.get(0).copied().unwrap_or_default()
    }

    #[inline(always)]
    fn knock_active_until(&self) -> u64 {
        KNOCK_ACTIVE.get(0).copied().unwrap_or(0)
    }

    #[inline(always)]
    fn set_knock_active_until(&self, until_ns: u64) {
        if let Some(slot) = KNOCK_ACTIVE.get_ptr_mut(0) {
            // SAFETY: a plain store into an array slot; racing writers all
            // store "now + timeout", so any of their values is right.
            unsafe {
                if *slot < until_ns {
                    *slot = until_ns;
                }
            }
        }
    }

    #[inline(always)]
    fn emit(&self, event: &Event) {
        // Progress and refusals are what anybody can cause by the thousand
        // (a spoofed first knock, then any packet): they may fill the ring
        // only halfway, so an opening always finds room.
        if event.kind != event_kind::OPENED
            && EVENTS.query(u64::from(BPF_RB_AVAIL_DATA)) >= u64::from(EVENTS_BYTES / 2)
        {
            return;
        }
        // A full ring buffer loses the event, never the decision. No wakeup:
        // waking the reader costs this packet microseconds; the daemon polls.
        let _ = EVENTS.output::<Event>(event, u64::from(BPF_RB_NO_WAKEUP));
    }
}

/// CLOCK_BOOTTIME, the clock all deadlines are written in. Unlike the
/// monotonic clock it keeps counting across suspend, so a window never
/// outlives its wall-clock length.
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_boot_ns() }
}

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot; no other program run touches it concurrently.
        unsafe { *slot += 1 };
    }
}
