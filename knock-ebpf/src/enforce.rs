//! The maps the program reads, and the `Tables` view the shared decision uses.

use aya_ebpf::{
    helpers::bpf_ktime_get_boot_ns,
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};
use knock_common::{
    maps::{ALLOW_MAX_ENTRIES, AllowEntry, Counter, PORT_COUNT, SourceKey},
    verdict::Tables,
};

#[map]
static PORT_FLAGS: Array<u32> = Array::with_max_entries(PORT_COUNT, 0);

#[map]
static ALLOW: HashMap<SourceKey, AllowEntry> = HashMap::with_max_entries(ALLOW_MAX_ENTRIES, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

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
}

/// CLOCK_BOOTTIME, the clock allow deadlines are written in. Unlike the
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
