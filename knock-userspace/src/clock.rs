//! The clock allow deadlines are written in: CLOCK_BOOTTIME, which the XDP
//! program reads with `bpf_ktime_get_boot_ns()`.

use std::time::Duration;

/// Nanoseconds since boot, including time spent suspended.
pub fn boot_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid out-pointer; CLOCK_BOOTTIME always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_BOOTTIME) cannot fail");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A deadline `after` from now, in boot-clock nanoseconds.
pub fn deadline_after(after: Duration) -> u64 {
    boot_ns().saturating_add(after.as_nanos().min(u128::from(u64::MAX)) as u64)
}

/// Time left until `deadline_ns`, zero once it has passed.
pub fn remaining(deadline_ns: u64) -> Duration {
    Duration::from_nanos(deadline_ns.saturating_sub(boot_ns()))
}
