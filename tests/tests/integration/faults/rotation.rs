//! A daemon killed in the middle of a rotation: after every one of its map
//! writes (through the daemon's test hook), and with its tables left half
//! written by hand. The next daemon repairs them, and no stranger gets
//! through at any moment.

use std::{
    collections::BTreeSet,
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::Duration,
};

use knock_common::{
    Proto,
    maps::{MAP_KNOCK_EDGES, MAP_PORT_FLAGS, MAP_SEQUENCES, port_flags},
    trie::{Edge, EdgeKey, ROOT, SequenceInfo},
};
use knock_tests::{
    flood,
    frames::Frame,
    lab::{
        CLIENT_V4, CLIENT2_V4, Entry, Instance, Lab, SERVER_V4, SERVICE, eventually_within, field,
        move_thread_into, tcp_knocks,
    },
    privileged,
    sniff::{Sniffer, ipv4_tcp},
};
use knock_userspace::{maps::TEST_ABORT_AFTER_WRITES, profile::Profile};

use super::{SERVICE2, lab_with_services};

/// Whether the kernel's knock tables are whole for the one client of
/// `profile`: four sequences installed, each one's knocks (derived here
/// from the profile) a path of edges that ends in it, and not one edge
/// that no sequence takes. Otherwise, what is wrong.
fn tables_whole(knock: &Instance, profile: &Profile) -> Result<(), String> {
    let edges: std::collections::BTreeMap<EdgeKey, Edge> =
        knock.pinned_hash_map(MAP_KNOCK_EDGES).iter().map(Result::unwrap).collect();
    let pinned = knock.pinned_array::<SequenceInfo>(MAP_SEQUENCES);
    let sequences: Vec<(u32, SequenceInfo)> = (pinned.iter().enumerate())
        .map(|(index, info)| (index as u32, info.unwrap()))
        .filter(|(_, info)| info.valid_until_ns != 0)
        .collect();
    if sequences.len() != 4 {
        return Err(format!("{} sequences installed", sequences.len()));
    }
    let mut taken = BTreeSet::new();
    for (index, info) in &sequences {
        let steps = profile.sequence_for_slot(info.slot, None).unwrap();
        let mut node = ROOT;
        let mut last = None;
        for step in &steps {
            let key = EdgeKey::new(node, step.proto, step.port);
            let edge = edges.get(&key).ok_or(format!("slot {}: no edge {key:?}", info.slot))?;
            taken.insert(key);
            node = edge.child;
            last = Some(edge);
        }
        if !last.is_some_and(|edge| edge.finishes.contains(&(index + 1))) {
            return Err(format!("slot {}: its path does not end in sequence {index}", info.slot));
        }
    }
    let stray = edges.len() - taken.len();
    if stray > 0 {
        return Err(format!("{stray} edges no sequence takes"));
    }
    Ok(())
}

/// A stranger at CLIENT2_V4 sending a SYN to SERVICE every 5 ms until dropped,
/// while a tap on the server's interface records what XDP lets through.
struct Stranger {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    sender: Option<thread::JoinHandle<()>>,
    tap: Option<Sniffer>,
}

impl Stranger {
    fn start(lab: &Lab) -> Self {
        let tap = Sniffer::start(&lab.server, &lab.server_if);
        let (stop, sent) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let (flag, count, iface) = (stop.clone(), sent.clone(), lab.client_if.clone());
        let path = lab.client.path();
        let sender = thread::spawn(move || {
            move_thread_into(&path);
            let (src, dst): (IpAddr, IpAddr) =
                (CLIENT2_V4.parse().unwrap(), SERVER_V4.parse().unwrap());
            while !flag.load(Ordering::SeqCst) {
                let i = count.load(Ordering::SeqCst);
                let frame = Frame::new(src, dst, Proto::Tcp, SERVICE);
                flood::send(&iface, 1, |_| frame.build_with_sport(20_000 + (i % 40_000) as u16))
                    .expect("stranger's SYN");
                count.fetch_add(1, Ordering::SeqCst);
                thread::sleep(Duration::from_millis(5));
            }
        });
        Self { stop, sent, sender: Some(sender), tap: Some(tap) }
    }

    /// Stops; the SYNs sent, and the frames to SERVICE the tap saw from the
    /// stranger and from the client.
    fn finish(mut self) -> (u64, usize, usize) {
        self.stop.store(true, Ordering::SeqCst);
        self.sender.take().unwrap().join().expect("the stranger's thread panicked");
        let frames = self.tap.take().unwrap().finish();
        let to_port = |from: &str| {
            let from: std::net::Ipv4Addr = from.parse().unwrap();
            frames.iter().filter(|f| ipv4_tcp(f) == Some((from, SERVICE))).count()
        };
        (self.sent.load(Ordering::SeqCst), to_port(CLIENT2_V4), to_port(CLIENT_V4))
    }
}

impl Drop for Stranger {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(sender) = self.sender.take() {
            let _ = sender.join();
        }
    }
}

/// The most writes one rotation is tried with; a one-second client makes
/// about ten.
const MAX_WRITES: u32 = 40;

#[test]
fn a_daemon_killed_after_any_map_write_of_a_rotation_loses_nothing() {
    if !privileged("a_daemon_killed_after_any_map_write_of_a_rotation_loses_nothing") {
        return;
    }
    let lab = lab_with_services();
    // nsenter: every daemon shares the host's bpffs, so the pins carry over.
    let mut knock = lab.protecting_daemon(Entry::NsenterNet, &[]);
    // A new sequence every second: each rotation retires one, installs one.
    let profile_path = knock.add_client("rotor", &["--slot", "1s"]);
    let profile = Profile::read(&profile_path).unwrap();
    let stranger = Stranger::start(&lab);
    let probing = std::time::Instant::now();

    // Daemon after daemon, each told to die after write `write` of a
    // rotation, until one outlives four rotations: its `write` is past the
    // writes a rotation makes. After each, a daemon without the hook takes
    // over, must make the tables whole, and the client's knock opens.
    let mut cuts: Vec<(u32, Result<(), String>)> = Vec::new();
    for write in 1..=MAX_WRITES {
        knock.kill_daemon();
        knock.attach_env(&[&lab.server_if], &[(TEST_ABORT_AFTER_WRITES, &write.to_string())]);
        let Some(status) = knock.daemon_exit_within(Duration::from_secs(4)) else {
            // Past the writes of a rotation: this one lives. Replace it
            // with a daemon without the hook.
            knock.kill_daemon();
            knock.attach(&[&lab.server_if]);
            break;
        };
        let said = format!("killed after map write {write} of a rotation");
        assert!(knock.daemon_log().contains(&said), "{status}: {}", knock.daemon_log());
        cuts.push((write, tables_whole(&knock, &profile)));

        knock.attach(&[&lab.server_if]);
        eventually_within(
            &format!("after a cut at write {write}, the tables stayed broken"),
            Duration::from_secs(5),
            || tables_whole(&knock, &profile).is_ok(),
        );
        let out = lab.knock(&profile_path, &["--check", &SERVICE.to_string()]);
        assert_eq!(out.status.code(), Some(0), "after a cut at write {write}: {out:?}");
        assert!(lab.tcp_exchange(CLIENT_V4, SERVER_V4, SERVICE), "after a cut at write {write}");
        knock.ok(&["revoke", CLIENT_V4]);
    }
    let writes = cuts.len() as u32;
    assert!(writes < MAX_WRITES, "every daemon died: the hook never stopped firing");
    // Retire one sequence, four edges out and four in, publish one: a
    // shared first port may save an edge.
    assert!(writes >= 9, "a rotation made only {writes} writes");
    // Every cut but the one after the last write left the tables half
    // written: the kills really landed inside rotations. Each daemon cuts
    // a rotation of its own, and one that saved an edge ends a write
    // early, so up to two cuts may come after a rotation's last write.
    let half = cuts.iter().filter(|(_, whole)| whole.is_err()).count() as u32;
    assert!(
        half + 2 >= writes,
        "only {half} of {writes} cuts left the tables half written: {cuts:?}"
    );

    // Through all of it, not one of the stranger's SYNs got past the
    // program, while the tap saw the client's own connections.
    let (sent, stranger_seen, client_seen) = stranger.finish();
    assert_eq!(stranger_seen, 0, "the stranger got through {stranger_seen} times of {sent}");
    assert!(client_seen >= writes as usize, "the tap saw only {client_seen} client frames");
    // A lapse of a tenth of a second would have met a SYN or two.
    let every = probing.elapsed() / sent.max(1) as u32;
    assert!(every < Duration::from_millis(50), "the stranger sent a SYN only every {every:?}");

    // The last daemon runs whole.
    eventually_within("the last daemon's tables are broken", Duration::from_secs(5), || {
        tables_whole(&knock, &profile).is_ok()
    });
    let list = knock.list();
    assert_eq!(list["protected"], serde_json::json!([{ "port": SERVICE, "proto": "tcp" }]));
    let clients: serde_json::Value =
        serde_json::from_str(&knock.ok(&["client", "list", "--json"])).unwrap();
    assert_eq!(field(&clients, "name"), ["rotor"]);
    assert_eq!(knock.status()["sequences"], 4);
    eprintln!(
        "rotation cut after each of {writes} writes: {cuts:?}; the stranger sent {sent} SYNs"
    );
}

#[test]
fn a_rotation_cut_short_between_map_writes_is_repaired_on_restart() {
    if !privileged("a_rotation_cut_short_between_map_writes_is_repaired_on_restart") {
        return;
    }
    let lab = lab_with_services();
    let mut knock = lab.protecting_daemon(Entry::NsenterNet, &[]);
    // A static sequence never rotates, so nothing would fix it later.
    knock.add_client("door", &["--static", "7101,7102,7103"]);
    knock.kill_daemon();

    // A rotation writes the trie's edges, then the sequences; the knock
    // space is flagged after. Killed in between, it leaves half a path, a
    // stray edge and unflagged ports behind, made here by hand.
    let mut edges = knock.pinned_hash_map::<EdgeKey, Edge>(MAP_KNOCK_EDGES);
    let keys: Vec<EdgeKey> = edges.keys().map(Result::unwrap).collect();
    assert_eq!(keys.len(), 3, "one path of three edges");
    let last = keys.iter().find(|k| k.port == 7103).unwrap();
    edges.remove(last).unwrap();
    let stray = EdgeKey::new(ROOT, Proto::Tcp, SERVICE2);
    edges.insert(stray, Edge { child: 999, ..Edge::default() }, 0).unwrap();
    drop(edges);
    let mut flags = knock.pinned_array::<u32>(MAP_PORT_FLAGS);
    for port in 7101..=7103 {
        let value = flags.get(&port, 0).unwrap();
        flags.set(port, value & !port_flags::KNOCK_SPACE_TCP, 0).unwrap();
    }
    drop(flags);
    let knocks = tcp_knocks(&[7101, 7102, 7103]);
    // It really bites: the door does not open (a full 2 s connect, so a
    // slow answer is not taken for a closed door).
    lab.send_knocks(CLIENT_V4, SERVER_V4, &knocks, Duration::from_millis(20));
    assert!(!lab.tcp_exchange(CLIENT_V4, SERVER_V4, SERVICE), "the broken door opened");

    // The next daemon takes the kernel's maps as they are and repairs them.
    knock.attach(&[&lab.server_if]);
    let repaired = knock.pinned_hash_map::<EdgeKey, Edge>(MAP_KNOCK_EDGES);
    assert!(repaired.get(&stray, 0).is_err(), "the stray edge is gone");
    assert_eq!(repaired.keys().count(), 3);
    drop(repaired);
    lab.send_knocks(CLIENT_V4, SERVER_V4, &knocks, Duration::from_millis(20));
    assert!(lab.tcp_exchange(CLIENT_V4, SERVER_V4, SERVICE), "the static door did not open");
    assert!(!lab.tcp_exchange(CLIENT2_V4, SERVER_V4, SERVICE), "a stranger got in");
}
