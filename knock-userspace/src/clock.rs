//! The program's clocks, read from userspace: CLOCK_BOOTTIME for deadlines
//! (`bpf_ktime_get_boot_ns()`), CLOCK_MONOTONIC_COARSE for the times of flows
//! (`bpf_ktime_get_coarse_ns()`; see `knock_common::decide::Clocks`).

use std::time::Duration;

fn read(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid out-pointer; both clocks always exist on Linux.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime cannot fail on Linux's own clocks");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Nanoseconds since boot, including time spent suspended.
pub fn boot_ns() -> u64 {
    read(libc::CLOCK_BOOTTIME)
}

/// The clock flows are timed with.
pub fn flow_ns() -> u64 {
    read(libc::CLOCK_MONOTONIC_COARSE)
}

/// A deadline `after` from now, in boot-clock nanoseconds.
pub fn deadline_after(after: Duration) -> u64 {
    boot_ns().saturating_add(after.as_nanos().min(u128::from(u64::MAX)) as u64)
}

/// Time left until `deadline_ns`, zero once it has passed.
pub fn remaining(deadline_ns: u64) -> Duration {
    Duration::from_nanos(deadline_ns.saturating_sub(boot_ns()))
}
