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

use aya::maps::{Array, HashMap, Map, MapData};
use knock_common::{
    ProtoPort,
    maps::{MAP_SEQUENCES, MAP_USED},
    trie::{SequenceInfo, UsedKey},
};

use knock_tests::{
    lab::{CLIENT_V4, CLIENT2_V4, Entry, Instance, Lab, SERVER_V4, eventually, eventually_within},
    privileged,
};

const SERVICE: u16 = 8022;
const SLOT_SECS: u64 = 4;
const GAP: Duration = Duration::from_millis(20);

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

fn slot_now() -> u64 {
    unix_ms() / 1000 / SLOT_SECS
}

/// Sleeps until `ms` milliseconds before the next slot boundary.
fn sleep_until_before_boundary(ms: u64) {
    let slot_ms = SLOT_SECS * 1000;
    let left = slot_ms - unix_ms() % slot_ms;
    thread::sleep(Duration::from_millis((left + slot_ms - ms) % slot_ms));
}

/// The middle of slot `slot`, for `knock-xdp sequence --at`.
fn middle_of(slot: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(slot * SLOT_SECS * 1000 + SLOT_SECS * 500)
}

/// A daemon (through nsenter, so the test can read its pinned maps)
/// protecting the service, with one client of four-second slots.
fn setup() -> (Lab, Instance, std::path::PathBuf) {
    let lab = Lab::new();
    lab.tcp_echo(SERVER_V4, SERVICE);
    let mut knock = Instance::new(&lab.server, Entry::NsenterNet);
    knock.attach(&[&lab.server_if]);
    knock.ok(&["protect", &format!("{SERVICE}/tcp")]);
    let profile = knock.add_client("edge", &["--slot", &format!("{SLOT_SECS}s")]);
    (lab, knock, profile)
}

/// The slots whose sequences the kernel holds now.
fn installed_slots(knock: &Instance) -> Vec<u64> {
    let data = MapData::from_pin(knock.pin_dir().join(MAP_SEQUENCES)).unwrap();
    let sequences: Array<MapData, SequenceInfo> = Array::try_from(Map::Array(data)).unwrap();
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
    lab.sequence(profile, Some(middle_of(slot)))
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
            let slot = slot_now();
            let seq = sequence(&lab, &profile, slot);
            lab.send_knocks(CLIENT_V4, SERVER_V4, &seq[..2], GAP);
            (slot_now() == slot).then_some((slot, seq))
        })
        .expect("three times the first half of a knock did not fit in 600 ms");
    // The boundary passes, and the daemon rotates: slot s-1 retired, s+2 in.
    rotated_into(&knock, slot + 1);
    assert!(!installed_slots(&knock).contains(&(slot - 1)), "{:?}", installed_slots(&knock));
    // The second half, still in slot s+1.
    lab.send_knocks(CLIENT_V4, SERVER_V4, &seq[2..], GAP);
    let finished = slot_now();
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
    let slot = slot_now();
    let seq = sequence(&lab, &profile, slot);
    lab.send_knocks(CLIENT_V4, SERVER_V4, &seq, GAP);
    assert_eq!(slot_now(), slot, "the knock left its slot: the machine is too slow");
    assert!(lab.tcp_exchange(CLIENT_V4, SERVER_V4, SERVICE), "the knock did not open");

    // In slot s+1, after its rotation, slot s's sequence is still
    // installed (accepted one slot either side) and its use still recorded.
    rotated_into(&knock, slot + 1);
    assert!(installed_slots(&knock).contains(&slot), "{:?}", installed_slots(&knock));
    let data = MapData::from_pin(knock.pin_dir().join(MAP_USED)).unwrap();
    let used: HashMap<MapData, UsedKey, u64> = HashMap::try_from(Map::HashMap(data)).unwrap();
    let used: Vec<u64> = used.keys().map(|k| k.unwrap().slot).collect();
    assert!(used.contains(&slot), "the use of slot {slot} was forgotten: {used:?}");

    // An eavesdropper replays it from another address: refused, as a replay.
    lab.send_knocks(CLIENT2_V4, SERVER_V4, &seq, GAP);
    assert_eq!(slot_now(), slot + 1, "the replay left slot s+1: the machine is too slow");
    assert!(!lab.tcp_exchange(CLIENT2_V4, SERVER_V4, SERVICE), "the replay opened the door");
    eventually("the replay was not refused as one", || {
        knock.daemon_log().contains("replayed sequence refused")
    });
}
