//! Single-packet authorization end to end: knock-xdp's client sends one
//! datagram across a veth pair, the XDP program verifies it, the door
//! opens. Every attack of issue 16 is played here, each while a real
//! client's datagram still opens the door.

use std::{
    fs,
    net::{IpAddr, SocketAddr, UdpSocket},
    path::Path,
    process::Output,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use knock_common::Proto;
use knock_common::spa::{self, DATAGRAM_LEN, NONCE_LEN, Request};
use knock_tests::{
    flood,
    frames::Frame,
    lab::{
        CLIENT_V4, CLIENT_V6, CLIENT2_V4, Entry, Instance, Lab, SERVER_V4, SERVER_V6, SERVICE,
        eventually, eventually_within,
    },
    privileged, soak_scale,
};
use knock_userspace::profile::{Knock, Profile};

/// The SPA range of the tests' clients: small, so floods cover it.
const RANGE: (u16, u16) = (62_000, 62_009);

fn lab_and_daemon() -> (Lab, Instance) {
    let lab = Lab::with_service();
    let knock = lab.protecting_daemon(Entry::NsenterNet, &[]);
    (lab, knock)
}

fn add_spa_client(knock: &Instance, name: &str, extra: &[&str]) -> std::path::PathBuf {
    let ports = format!("{}-{}", RANGE.0, RANGE.1);
    let mut args = vec!["--spa", "--ports", &ports];
    args.extend_from_slice(extra);
    knock.add_client(name, &args)
}

/// The SPA key and index of a profile, as its owner (or an observer of one
/// of its datagrams who also holds the secret) has them.
fn key_of(profile: &Path) -> ([u8; 32], u16) {
    let profile = Profile::read(profile).unwrap();
    let Knock::Spa { index, .. } = profile.knock else { panic!("not an SPA profile") };
    (profile.spa_key().unwrap(), index as u16)
}

fn unix_now() -> u32 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as u32
}

fn request(index: u16, unix_secs: u32, tag: u8) -> Request {
    let mut nonce = [tag; NONCE_LEN];
    nonce[..4].copy_from_slice(&unix_now().to_be_bytes());
    Request { index, unix_secs, nonce, admit: None }
}

/// Sends `payload` as one UDP datagram from `source` to `server:port`.
fn send_from(lab: &Lab, source: &str, server: &str, port: u16, payload: &[u8]) {
    let (source, server): (IpAddr, IpAddr) = (source.parse().unwrap(), server.parse().unwrap());
    let payload = payload.to_vec();
    lab.client.enter(move || {
        let socket = UdpSocket::bind(SocketAddr::new(source, 0)).unwrap();
        socket.send_to(&payload, (server, port)).unwrap();
    });
    // The program decides before the datagram is queued; give the host a
    // moment before the next probe.
    thread::sleep(Duration::from_millis(20));
}

fn opens(lab: &Lab, source: &str, server: &str) -> bool {
    lab.tcp_exchange(source, server, SERVICE)
}

/// knock-xdp's own client, with --check.
fn knock_spa(lab: &Lab, profile: &Path, server: &str, extra: &[&str]) -> bool {
    knock_spa_output(lab, profile, server, extra).status.code() == Some(0)
}

/// The same, with the client's output.
fn knock_spa_output(lab: &Lab, profile: &Path, server: &str, extra: &[&str]) -> Output {
    let check = SERVICE.to_string();
    lab.knock_hosts(&[server], profile, &[&["--check", &check][..], extra].concat())
}

#[test]
fn a_datagram_opens_the_door_over_ipv4_and_ipv6_and_the_log_names_the_client() {
    if !privileged("a_datagram_opens_the_door_over_ipv4_and_ipv6_and_the_log_names_the_client") {
        return;
    }
    let (lab, knock) = lab_and_daemon();
    let profile = add_spa_client(&knock, "pocket", &[]);
    assert!(fs::read_to_string(&profile).unwrap().contains("spa = true"));
    assert!(!opens(&lab, CLIENT_V4, SERVER_V4), "open before any datagram");
    assert!(knock_spa(&lab, &profile, SERVER_V4, &[]), "{}", knock.daemon_log());
    assert!(opens(&lab, CLIENT_V4, SERVER_V4));
    assert!(!opens(&lab, CLIENT2_V4, SERVER_V4), "another source got in");
    let host = format!("[{SERVER_V6}]");
    assert!(knock_spa(&lab, &profile, &host, &[]));
    assert!(opens(&lab, CLIENT_V6, SERVER_V6));
    let listing = knock.list();
    assert!(listing.to_string().contains("spa (pocket)"), "{listing}");
    // The daemon writes the audit trail as it reads the program's events.
    let openings = || knock.ok(&["log", "--json", "--client", "pocket"]);
    eventually("the audit trail lacks an SPA opening", || {
        openings().matches("\"spa_opened\"").count() >= 2
    });
    let log = openings();
    assert_eq!(log.matches("\"spa_opened\"").count(), 2, "{log}");
    let status = knock.status();
    assert_eq!(status["counters"]["spa"], 2, "{status}");
}

#[test]
fn replays_flipped_bytes_old_times_and_other_servers_are_refused() {
    if !privileged("replays_flipped_bytes_old_times_and_other_servers_are_refused") {
        return;
    }
    let (lab, knock) = lab_and_daemon();
    let profile = add_spa_client(&knock, "pocket", &[]);
    let (key, index) = key_of(&profile);
    let server: IpAddr = SERVER_V4.parse().unwrap();
    let good = spa::datagram(&key, &request(index, unix_now(), 1), server);

    // Any single byte flipped, sent from the client's own address.
    for position in 0..DATAGRAM_LEN {
        let mut bytes = good;
        bytes[position] ^= 0x20;
        send_from(&lab, CLIENT_V4, SERVER_V4, RANGE.0, &bytes);
    }
    // Outside the ±30 s skew, either way.
    for offset in [-40i64, 40] {
        let at = (i64::from(unix_now()) + offset) as u32;
        send_from(
            &lab,
            CLIENT_V4,
            SERVER_V4,
            RANGE.0,
            &spa::datagram(&key, &request(index, at, 2), server),
        );
    }
    // Valid, but for another server.
    let other: IpAddr = "10.201.0.99".parse().unwrap();
    send_from(
        &lab,
        CLIENT_V4,
        SERVER_V4,
        RANGE.0,
        &spa::datagram(&key, &request(index, unix_now(), 3), other),
    );
    assert!(!opens(&lab, CLIENT_V4, SERVER_V4), "a bad datagram opened the door");
    assert_eq!(knock.status()["counters"]["spa"], DATAGRAM_LEN as u64 + 3);

    // The good one opens, once: replayed from the same source and from
    // another one (within the skew), it is refused and logged.
    send_from(&lab, CLIENT_V4, SERVER_V4, RANGE.1, &good);
    assert!(opens(&lab, CLIENT_V4, SERVER_V4));
    knock.ok(&["revoke", CLIENT_V4]);
    for source in [CLIENT_V4, CLIENT2_V4] {
        send_from(&lab, source, SERVER_V4, RANGE.0 + 3, &good);
        assert!(!opens(&lab, source, SERVER_V4), "a replay from {source} opened the door");
    }
    let log = knock.ok(&["log", "--json"]);
    assert_eq!(log.matches("\"spa_replay\"").count(), 2, "{log}");
    // The real client still gets in with a fresh datagram.
    assert!(knock_spa(&lab, &profile, SERVER_V4, &[]));
}

#[test]
fn a_named_address_is_admitted_only_for_clients_allowed_to_name_one() {
    if !privileged("a_named_address_is_admitted_only_for_clients_allowed_to_name_one") {
        return;
    }
    let (lab, knock) = lab_and_daemon();
    let nat = add_spa_client(&knock, "behind-nat", &["--allow-named-address"]);
    let plain = add_spa_client(&knock, "plain", &[]);
    // Sent from CLIENT_V4, asking for CLIENT2_V4 (its "public" address).
    assert!(!knock_spa(&lab, &nat, SERVER_V4, &["--admit", CLIENT2_V4, "--retries", "0"]));
    assert!(opens(&lab, CLIENT2_V4, SERVER_V4), "the named address was not admitted");
    assert!(!opens(&lab, CLIENT_V4, SERVER_V4), "the sender was admitted too");
    // A client not allowed to name another address is refused outright...
    knock.ok(&["revoke", CLIENT2_V4]);
    assert!(!knock_spa(&lab, &plain, SERVER_V4, &["--admit", CLIENT2_V4, "--retries", "0"]));
    assert!(!opens(&lab, CLIENT2_V4, SERVER_V4));
    // ...but may name its own, which binds the datagram to it: a copy raced
    // from another address is refused and the original still opens.
    let (key, index) = key_of(&plain);
    let server: IpAddr = SERVER_V4.parse().unwrap();
    let bound =
        Request { admit: Some(CLIENT_V4.parse().unwrap()), ..request(index, unix_now(), 7) };
    let bytes = spa::datagram(&key, &bound, server);
    send_from(&lab, CLIENT2_V4, SERVER_V4, RANGE.0, &bytes);
    assert!(!opens(&lab, CLIENT2_V4, SERVER_V4), "a raced copy opened the door");
    send_from(&lab, CLIENT_V4, SERVER_V4, RANGE.0, &bytes);
    assert!(opens(&lab, CLIENT_V4, SERVER_V4), "the original did not open after the race");
}

/// The daemon's CPU time (user + system), in clock ticks.
fn daemon_ticks(knock: &Instance) -> u64 {
    let pid = knock.pid();
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn floods_of_random_and_of_wrong_mac_datagrams_cost_the_daemon_nothing() {
    if !privileged("floods_of_random_and_of_wrong_mac_datagrams_cost_the_daemon_nothing") {
        return;
    }
    let (lab, knock) = lab_and_daemon();
    let profile = add_spa_client(&knock, "pocket", &[]);
    let (_, index) = key_of(&profile);
    let scale = soak_scale();
    for (what, wrong_mac_only) in [("random datagrams", false), ("wrong MACs", true)] {
        let ticks_before = daemon_ticks(&knock);
        let spa_before = knock.counter("spa");
        let packets = 1_000_000 * scale;
        let iface = lab.client_if.clone();
        let (stop, progress) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let (sent, knocked, out) = thread::scope(|scope| {
            let _stop = flood::StopOnDrop(stop.clone());
            let flood = scope.spawn(|| {
                let (stop, progress) = (stop.clone(), progress.clone());
                lab.client.enter(move || {
                    let (src, dst): (IpAddr, IpAddr) =
                        (CLIENT2_V4.parse().unwrap(), SERVER_V4.parse().unwrap());
                    let now = unix_now();
                    let done = || stop.load(Ordering::SeqCst);
                    flood::send_until(&iface, packets, done, &progress, |i| {
                        let mut payload = [0u8; DATAGRAM_LEN];
                        for (j, byte) in payload.iter_mut().enumerate() {
                            *byte = (i.wrapping_mul(2_654_435_761).wrapping_add(j as u64 * 97) >> 7)
                                as u8;
                        }
                        if wrong_mac_only {
                            // A well-formed header, a fresh time, the real index.
                            payload[0] = spa::VERSION;
                            payload[1] = 0;
                            payload[2..4].copy_from_slice(&index.to_be_bytes());
                            payload[4..8].copy_from_slice(&now.to_be_bytes());
                        }
                        let port = RANGE.0 + (i % u64::from(RANGE.1 - RANGE.0 + 1)) as u16;
                        Frame {
                            udp_payload: payload.to_vec(),
                            ..Frame::new(src, dst, Proto::Udp, port)
                        }
                        .build_with_sport(40_000)
                    })
                    .expect("flood")
                })
            });
            // The real client knocks once the flood reaches the program
            // (or has failed), and the flood goes on until she is done.
            let spa_now = || knock.counter("spa");
            let limit = Duration::from_secs(30);
            eventually_within("the flood never reached the program", limit, || {
                flood.is_finished() || spa_now() > spa_before
            });
            let started = Instant::now();
            let out = knock_spa_output(&lab, &profile, SERVER_V4, &[]);
            let knocked = (started, Instant::now());
            stop.store(true, Ordering::SeqCst);
            (flood.join().expect("flood thread"), knocked, out)
        });
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{what}: the real client's datagram failed: {stdout}"
        );
        assert!(
            sent.first < knocked.0 && knocked.1 < sent.last,
            "{what}: the client's datagram did not go out during the flood"
        );
        // Each of the flood's datagrams and the client's own reached the
        // program, and nothing else of SPA size.
        let datagrams = stdout.lines().filter(|l| l.starts_with("sent a single-packet")).count();
        let spa = knock.counter("spa") - spa_before;
        assert_eq!(spa, sent.frames + datagrams as u64, "{what}: datagrams the program saw");
        assert!(!opens(&lab, CLIENT2_V4, SERVER_V4), "{what}: the flood's source got in");
        // Nothing reaches userspace: at most a few ticks (10 ms each) of
        // the daemon's own timers.
        let ticks = daemon_ticks(&knock) - ticks_before;
        assert!(ticks <= 10, "{what}: the daemon used {ticks} ticks of CPU");
        knock.ok(&["revoke", CLIENT_V4]);
    }
}
