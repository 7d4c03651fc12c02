//! Waiting: for a condition to come true, and for the right moment in a
//! knock slot.

use std::{
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

/// Waits (3 s at most) until `done` holds: the kernel frees programs and
/// links after an RCU grace period, not at the moment their last user goes.
pub fn eventually(what: &str, done: impl Fn() -> bool) {
    eventually_within(what, Duration::from_secs(3), done);
}

/// Waits until `done` holds, for `limit` at most (then panics with `what`):
/// for what a daemon does on a timer of its own.
pub fn eventually_within(what: &str, limit: Duration, done: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what} (waited {limit:?})");
        thread::sleep(Duration::from_millis(20));
    }
}

/// The slot of `slot_secs` seconds that now falls in.
pub fn slot_now(slot_secs: u64) -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() / slot_secs
}

/// The middle of slot `slot` of `slot_secs` seconds: knocked `--at` that
/// time, a sequence stays accepted longest whichever boundary comes first.
pub fn middle_of_slot(slot: u64, slot_secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(slot * slot_secs * 1000 + slot_secs * 500)
}

/// A time as `--at` takes it: RFC 3339, whole seconds.
pub fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

/// Waits, if needed, so that at least `needed` is left in the current slot.
pub fn away_from_slot_boundary(slot_secs: u64, needed: Duration) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let into_slot =
        Duration::from_nanos((now.as_nanos() % (u128::from(slot_secs) * 1_000_000_000)) as u64);
    let left = Duration::from_secs(slot_secs) - into_slot;
    if left < needed {
        thread::sleep(left + Duration::from_millis(200));
    }
}
