//! Slot boundaries end to end, with a real daemon rotating four-second
//! slots: a knock begun in slot s and finished in s+1, after the daemon
//! rotated, opens the door; a sequence used in slot s is refused when
//! replayed in s+1, after that rotation. Times are taken around every step
//! and checked, so neither test depends on where in a slot it starts.

use std::{
    path::Path,
    thread,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use knock_common::{
    ProtoPort,
    maps::{MAP_SEQUENCES, MAP_USED},
    trie::{SequenceInfo, UsedKey},
};
use knock_tests::{
    lab::{
        CLIENT_V4, CLIENT2_V4, Entry, Instance, Lab, SERVER_V4, SERVICE, eventually,
        eventually_within, middle_of_slot, slot_now,
    },
    privileged,
};

const SLOT_SECS: u64 = 4;
const GAP: Duration = Duration::from_millis(20);

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// Sleeps until `ms` milliseconds before the next slot boundary.
fn sleep_until_before_boundary(ms: u64) {
    let slot_ms = SLOT_SECS * 1000;
    let left = slot_ms - unix_ms() % slot_ms;
    thread::sleep(Duration::from_millis((left + slot_ms - ms) % slot_ms));
}

/// A daemon (through nsenter, so the test can read its pinned maps)
/// protecting the service, with one client of four-second slots.
fn setup() -> (Lab, Instance, std::path::PathBuf) {
    let lab = Lab::with_service();
    let knock = lab.protecting_daemon(Entry::NsenterNet, &[]);
    let profile = knock.add_client("edge", &["--slot", &format!("{SLOT_SECS}s")]);
    (lab, knock, profile)
}

/// The slots whose sequences the kernel holds now.
fn installed_slots(knock: &Instance) -> Vec<u64> {
    let sequences = knock.pinned_array::<SequenceInfo>(MAP_SEQUENCES);
    let mut slots: Vec<u64> = sequences
        .iter()
        .map(Result::unwrap)
        .filter(|info| info.valid_until_ns != 0)
        .map(|info| info.slot)
        .collect();
    slots.sort_unstable();
    slots
}

/// Waits until the daemon has rotated into slot `slot` (less than two
/// slots from now): it then installs `slot + 2`, which no earlier rotation
/// does.
fn rotated_into(knock: &Instance, slot: u64) {
    eventually_within(
        &format!("the daemon never rotated into slot {slot}"),
        Duration::from_secs(2 * SLOT_SECS),
        || installed_slots(knock).contains(&(slot + 2)),
    );
}

fn sequence(lab: &Lab, profile: &Path, slot: u64) -> Vec<ProtoPort> {
    lab.sequence(profile, Some(middle_of_slot(slot, SLOT_SECS)))
}

#[test]
fn a_knock_spanning_a_slot_boundary_and_a_rotation_completes() {
    if !privileged("a_knock_spanning_a_slot_boundary_and_a_rotation_completes") {
        return;
    }
    let (lab, knock, profile) = setup();
    // Half the knock just before a boundary (again, if the machine was so
    // slow that the half did not fit before it).
    let (slot, seq) = (0..3)
        .find_map(|_| {
            sleep_until_before_boundary(600);
            let slot = slot_now(SLOT_SECS);
            let seq = sequence(&lab, &profile, slot);
            lab.send_knocks(CLIENT_V4, SERVER_V4, &seq[..2], GAP);
            (slot_now(SLOT_SECS) == slot).then_some((slot, seq))
        })
        .expect("three times the first half of a knock did not fit in 600 ms");
    // The boundary passes, and the daemon rotates: slot s-1 retired, s+2 in.
    rotated_into(&knock, slot + 1);
    assert!(!installed_slots(&knock).contains(&(slot - 1)), "{:?}", installed_slots(&knock));
    // The second half, still in slot s+1.
    lab.send_knocks(CLIENT_V4, SERVER_V4, &seq[2..], GAP);
    let finished = slot_now(SLOT_SECS);
    assert_eq!(finished, slot + 1, "the second half left slot s+1: the machine is too slow");
    assert!(lab.tcp_exchange(CLIENT_V4, SERVER_V4, SERVICE), "the spanning knock did not open");
    // Opened by the sequence of slot s.
    let opened = format!("door opened client=edge source={CLIENT_V4} slot={slot}");
    eventually("the opening was not logged", || knock.daemon_log().contains(&opened));
}

#[test]
fn a_sequence_used_in_one_slot_is_refused_in_the_next_after_a_rotation() {
    if !privileged("a_sequence_used_in_one_slot_is_refused_in_the_next_after_a_rotation") {
        return;
    }
    let (lab, knock, profile) = setup();
    // Knocked early enough in slot s to be done in it.
    sleep_until_before_boundary(SLOT_SECS * 1000 - 300);
    let slot = slot_now(SLOT_SECS);
    let seq = sequence(&lab, &profile, slot);
    lab.send_knocks(CLIENT_V4, SERVER_V4, &seq, GAP);
    assert_eq!(slot_now(SLOT_SECS), slot, "the knock left its slot: the machine is too slow");
    assert!(lab.tcp_exchange(CLIENT_V4, SERVER_V4, SERVICE), "the knock did not open");

    // In slot s+1, after its rotation, slot s's sequence is still
    // installed (accepted one slot either side) and its use still recorded.
    rotated_into(&knock, slot + 1);
    assert!(installed_slots(&knock).contains(&slot), "{:?}", installed_slots(&knock));
    let used = knock.pinned_hash_map::<UsedKey, u64>(MAP_USED);
    let used: Vec<u64> = used.keys().map(|k| k.unwrap().slot).collect();
    assert!(used.contains(&slot), "the use of slot {slot} was forgotten: {used:?}");

    // An eavesdropper replays it from another address: refused, as a replay.
    lab.send_knocks(CLIENT2_V4, SERVER_V4, &seq, GAP);
    assert_eq!(slot_now(SLOT_SECS), slot + 1, "the replay left slot s+1: the machine is too slow");
    assert!(!lab.tcp_exchange(CLIENT2_V4, SERVER_V4, SERVICE), "the replay opened the door");
    eventually("the replay was not refused as one", || {
        knock.daemon_log().contains("replayed sequence refused")
    });
}
