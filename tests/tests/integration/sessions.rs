//! Sessions and lock-out safety: connections outlive the open window while
//! active, idle ones end, established sessions survive `protect`,
//! always-allowed networks need no knock, and `revoke` ends flows at once.

use std::{
    net::{IpAddr, Ipv4Addr},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use knock_common::{
    Proto,
    proto::tcp_flags::{ACK, FIN, RST},
};
use knock_tests::{
    flood,
    frames::Frame,
    lab::{
        CLIENT_V4, CLIENT_V6, CLIENT2_V4, Entry, Instance, Lab, SERVER_V4, SERVER_V6, SERVICE,
        TcpSession, UDP_SERVICE, eventually, eventually_within,
    },
    privileged,
    sniff::Sniffer,
};

/// A daemon protecting both echo services.
fn daemon(lab: &Lab, extra: &[&str]) -> Instance {
    let knock = lab.daemon(Entry::NetnsExec, extra);
    knock.protect_services();
    knock
}

fn flows(knock: &Instance) -> Vec<serde_json::Value> {
    knock.list()["flows"].as_array().unwrap().clone()
}

/// The open windows `allow` gives here: seconds, so that the first packet
/// hits it on a busy machine (checked, not assumed).
const WINDOW: Duration = Duration::from_secs(3);

/// An `allow ADDR --for` window, timed from the test: the daemon sets its
/// deadline between the two instants around the command.
struct Window {
    asked: Instant,
    answered: Instant,
    length: Duration,
}

impl Window {
    fn allow(knock: &Instance, addr: &str, length: Duration) -> Self {
        let asked = Instant::now();
        knock.ok(&["allow", addr, "--for", &format!("{}s", length.as_secs())]);
        Self { asked, answered: Instant::now(), length }
    }

    /// Fails unless the window is certainly still open: what the test did
    /// since `allow` must have fit in it.
    fn assert_still_open(&self, what: &str) {
        let taken = self.asked.elapsed();
        assert!(taken < self.length, "{what} came {taken:?} after allow: the machine is too slow");
    }

    /// Whether the window has certainly ended.
    fn certainly_over(&self) -> bool {
        self.answered.elapsed() > self.length + Duration::from_millis(200)
    }

    /// Waits until the window has certainly ended.
    fn wait_over(&self) {
        while !self.certainly_over() {
            thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn connections_outlive_the_open_window_over_tcp_udp_ipv4_and_ipv6() {
    if !privileged("connections_outlive_the_open_window_over_tcp_udp_ipv4_and_ipv6") {
        return;
    }
    let lab = Lab::with_services();
    let knock = daemon(&lab, &[]);
    for (client, server) in [(CLIENT_V4, SERVER_V4), (CLIENT_V6, SERVER_V6)] {
        let window = Window::allow(&knock, client, WINDOW);
        let mut tcp = lab.tcp_session(client, server, SERVICE).expect("connect while allowed");
        let udp = lab.udp_session(client, server, UDP_SERVICE);
        assert!(tcp.exchange() && udp.exchange(), "{client}: first exchange");
        window.assert_still_open("the first exchange");
        // Keep talking past the window, and as long again.
        let mut round = 0;
        while !window.certainly_over() || round < 4 {
            thread::sleep(Duration::from_millis(500));
            assert!(tcp.exchange(), "{client}: tcp round {round}");
            assert!(udp.exchange(), "{client}: udp round {round}");
            round += 1;
        }
        // New connections (and a new UDP flow) are refused.
        assert!(lab.tcp_session(client, server, SERVICE).is_none(), "{client}: new tcp connection");
        assert!(!lab.udp_session(client, server, UDP_SERVICE).exchange(), "{client}: new udp flow");
        // The old ones still work.
        assert!(tcp.exchange() && udp.exchange(), "{client}: after refusals");
    }
    let flows = flows(&knock);
    assert_eq!(flows.len(), 4, "{flows:?}");
    assert!(
        flows
            .iter()
            .any(|f| f["proto"] == "udp" && f["port"] == UDP_SERVICE && f["source"] == CLIENT_V6)
    );
    // The IPv4 flows last spoke before the IPv6 round began.
    assert!(flows.iter().all(|f| f["idle_ms"].as_u64().unwrap() < 15_000), "{flows:?}");
}

#[test]
fn an_idle_connection_ends_after_the_idle_timeout() {
    if !privileged("an_idle_connection_ends_after_the_idle_timeout") {
        return;
    }
    let lab = Lab::with_services();
    let idle = Duration::from_secs(6);
    let knock = daemon(&lab, &["--idle-timeout", "6s"]);
    let window = Window::allow(&knock, CLIENT_V4, WINDOW);
    let mut tcp = lab.tcp_session(CLIENT_V4, SERVER_V4, SERVICE).unwrap();
    let udp = lab.udp_session(CLIENT_V4, SERVER_V4, UDP_SERVICE);
    assert!(tcp.exchange() && udp.exchange());
    let active = Instant::now();
    window.assert_still_open("the first exchange");
    // Past the open window, activity within the idle timeout keeps them
    // alive (no allow entry could explain it)...
    window.wait_over();
    let quiet = active.elapsed();
    assert!(quiet + Duration::from_secs(1) < idle, "{quiet:?} quiet: the machine is too slow");
    assert!(tcp.exchange() && udp.exchange(), "activity within the idle timeout");
    // ...silence longer than it ends them.
    thread::sleep(idle + Duration::from_secs(1));
    assert!(!tcp.exchange(), "the idle tcp connection still works");
    assert!(!udp.exchange(), "the idle udp flow still works");
}

#[test]
fn a_connection_established_before_protect_survives_it() {
    if !privileged("a_connection_established_before_protect_survives_it") {
        return;
    }
    let lab = Lab::with_services();
    let mut knock = lab.daemon(Entry::NetnsExec, &[]);
    // The operator's session, opened while the port is still open.
    let mut session = lab.tcp_session(CLIENT_V4, SERVER_V4, SERVICE).unwrap();
    let mut v6_session = lab.tcp_session(CLIENT_V6, SERVER_V6, SERVICE).unwrap();
    assert!(session.exchange() && v6_session.exchange());

    knock.protect_service();
    assert!(session.exchange(), "protect cut the established session");
    assert!(v6_session.exchange(), "protect cut the established IPv6 session");
    assert!(lab.tcp_session(CLIENT_V4, SERVER_V4, SERVICE).is_none(), "a new connection got in");
    assert!(knock.daemon_log().contains("established connection kept open"));

    // A daemon starting with the port protected keeps them too.
    knock.ok(&["detach"]);
    knock.wait_daemon();
    assert!(session.exchange());
    knock.attach(&[&lab.server_if]);
    assert!(session.exchange(), "a restart cut the established session");
    assert!(lab.tcp_session(CLIENT_V4, SERVER_V4, SERVICE).is_none());
}

#[test]
fn always_allowed_networks_need_no_knock_until_revoked() {
    if !privileged("always_allowed_networks_need_no_knock_until_revoked") {
        return;
    }
    let lab = Lab::with_services();
    let mut knock = daemon(&lab, &[]);
    assert!(lab.tcp_session(CLIENT_V4, SERVER_V4, SERVICE).is_none());
    knock.ok(&["allow", "10.201.0.2/32", "--permanent"]);
    knock.ok(&["allow", "fd00:201::/64", "--permanent"]);
    assert!(lab.tcp_session(CLIENT_V4, SERVER_V4, SERVICE).is_some());
    assert!(lab.tcp_session(CLIENT_V6, SERVER_V6, SERVICE).is_some());
    // Longest prefix: the neighbour address is not in 10.201.0.2/32.
    assert!(lab.tcp_session(CLIENT2_V4, SERVER_V4, SERVICE).is_none());

    let listing = knock.list();
    assert_eq!(listing["permanent"], serde_json::json!(["10.201.0.2/32", "fd00:201::/64"]));
    assert!(
        listing["allowed"].as_array().unwrap().is_empty(),
        "permanent networks are listed apart"
    );

    // Persisted across restarts.
    knock.ok(&["detach"]);
    knock.wait_daemon();
    knock.attach(&[&lab.server_if]);
    assert!(lab.tcp_session(CLIENT_V4, SERVER_V4, SERVICE).is_some(), "lost across a restart");

    knock.ok(&["revoke", "10.201.0.2/32"]);
    knock.ok(&["revoke", "fd00:201::/64"]);
    assert!(lab.tcp_session(CLIENT_V4, SERVER_V4, SERVICE).is_none());
    assert!(lab.tcp_session(CLIENT_V6, SERVER_V6, SERVICE).is_none());
}

#[test]
fn revoking_an_address_ends_its_flows_at_once() {
    if !privileged("revoking_an_address_ends_its_flows_at_once") {
        return;
    }
    let lab = Lab::with_services();
    let knock = daemon(&lab, &[]);
    knock.ok(&["allow", CLIENT_V4, "--for", "1h"]);
    let mut tcp = lab.tcp_session(CLIENT_V4, SERVER_V4, SERVICE).unwrap();
    let udp = lab.udp_session(CLIENT_V4, SERVER_V4, UDP_SERVICE);
    assert!(tcp.exchange() && udp.exchange());
    let out = knock.ok(&["revoke", CLIENT_V4]);
    assert!(out.contains("2 open flows ended"), "{out}");
    assert!(!tcp.exchange(), "the tcp connection survived revoke");
    assert!(!udp.exchange(), "the udp flow survived revoke");
    assert!(flows(&knock).is_empty());
}

/// The sequence and acknowledgement numbers of the client's segments on
/// `session`, as the server sees them during one exchange.
fn client_numbers(lab: &Lab, session: &mut TcpSession) -> (u32, u32) {
    let sniffer = Sniffer::start(&lab.server, &lab.server_if);
    assert!(session.exchange(), "the session ended with the window");
    let (client, sport) = (CLIENT_V4.parse::<Ipv4Addr>().unwrap().octets(), session.local_port());
    let numbers = sniffer.finish().iter().rev().find_map(|frame| {
        let ip = frame.get(14..)?;
        let tcp = ip.get(usize::from(ip[0] & 0x0f) * 4..)?;
        let word = |at: usize| Some(u32::from_be_bytes(tcp.get(at..at + 4)?.try_into().ok()?));
        let ours = ip.get(9) == Some(&6)
            && ip.get(12..16)? == client
            && tcp.get(0..2)? == sport.to_be_bytes();
        if ours { Some((word(4)?, word(8)?)) } else { None }
    });
    numbers.expect("no segment of the session was seen")
}

/// Spoofs `count` TCP segments from the client's address and port onto the
/// flow, each with a random sequence and acknowledgement number at least
/// 2^30 from the client's own `numbers`: far outside the windows in which
/// a guess counts (2^20 and 2^24), so none may count, by design.
fn spoof(lab: &Lab, sport: u16, numbers: (u32, u32), flags: &'static [u8], count: u64) {
    let iface = lab.client_if.clone();
    let seed = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    let far = |real: u32, random: u32| real.wrapping_add(1 << 30).wrapping_add(random >> 1);
    let sent = lab.client.enter(move || {
        let (src, dst): (IpAddr, IpAddr) = (CLIENT_V4.parse().unwrap(), SERVER_V4.parse().unwrap());
        let mut x = seed ^ 0x9e37_79b9_7f4a_7c15;
        flood::send(&iface, count, |i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let frame = Frame {
                tcp_flags: flags[(i % flags.len() as u64) as usize],
                tcp_seq: far(numbers.0, x as u32),
                tcp_ack: far(numbers.1, (x >> 32) as u32),
                ..Frame::new(src, dst, Proto::Tcp, SERVICE)
            };
            frame.build_with_sport(sport)
        })
        .expect("spoof")
    });
    assert_eq!(sent, count);
}

#[test]
fn spoofed_rsts_and_fins_neither_cut_a_session_nor_keep_a_dead_one_alive() {
    if !privileged("spoofed_rsts_and_fins_neither_cut_a_session_nor_keep_a_dead_one_alive") {
        return;
    }
    let lab = Lab::with_services();
    let idle = Duration::from_secs(6);
    let knock = daemon(&lab, &["--idle-timeout", "6s"]);
    let window = Window::allow(&knock, CLIENT_V4, WINDOW);
    let mut session = lab.tcp_session(CLIENT_V4, SERVER_V4, SERVICE).expect("admitted");
    assert!(session.exchange());
    window.assert_still_open("the first exchange");
    window.wait_over();
    let numbers = client_numbers(&lab, &mut session);
    // After the open window: a few hundred RSTs and FINs with random
    // sequence numbers from the client's own address and port.
    const ENDS: &[u8] = &[RST, RST | ACK, FIN | ACK, FIN];
    spoof(&lab, session.local_port(), numbers, ENDS, 400);
    assert!(flows(&knock).iter().all(|f| f["closing"] == false), "{:?}", flows(&knock));
    // Past the 10 s close grace a counted one would have started, the
    // session still talks (keeping itself alive within the idle timeout).
    let until = Instant::now() + Duration::from_secs(11);
    while Instant::now() < until {
        assert!(session.exchange(), "the session was cut by spoofed packets");
        thread::sleep(Duration::from_secs(1));
    }

    // Spoofed ACKs with random numbers do not refresh an idle flow: it ends
    // after the idle timeout although they keep coming.
    let started = Instant::now();
    while started.elapsed() < idle + Duration::from_millis(500) {
        spoof(&lab, session.local_port(), numbers, &[ACK], 50);
        thread::sleep(Duration::from_millis(100));
    }
    assert!(!session.exchange(), "spoofed packets kept an idle flow alive");

    // The client's own FIN, exact, does start the close grace.
    let window = Window::allow(&knock, CLIENT_V4, WINDOW);
    let session = lab.tcp_session(CLIENT_V4, SERVER_V4, SERVICE).expect("admitted");
    window.assert_still_open("the connection");
    session.finish();
    eventually("the client's FIN did not start the close grace", || {
        flows(&knock).iter().any(|f| f["closing"] == true)
    });
}

#[test]
fn removing_a_client_or_revoking_its_address_ends_sessions_after_the_window() {
    if !privileged("removing_a_client_or_revoking_its_address_ends_sessions_after_the_window") {
        return;
    }
    let lab = Lab::with_services();
    let knock = daemon(&lab, &["--open-window", "3s"]);
    let check = SERVICE.to_string();
    for how in ["client remove", "revoke"] {
        let profile = knock.add_client("laptop", &["--slot", "60s"]);
        let asked = Instant::now();
        let out = lab.knock(&profile, &["--check", &check]);
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
        let mut session = lab.tcp_session(CLIENT_V4, SERVER_V4, SERVICE).expect("knocked");
        assert!(session.exchange());
        let taken = asked.elapsed();
        assert!(taken < Duration::from_secs(3), "{taken:?} to connect: the machine is too slow");
        // Past the open window (its entry gone from the list), the session
        // is alive...
        let allowed = || knock.list()["allowed"].as_array().unwrap().len();
        eventually_within("the open window never ended", Duration::from_secs(5), || allowed() == 0);
        assert!(session.exchange(), "{how}: the session died on its own");
        // ...until its client goes, or its address is revoked.
        let said = match how {
            "revoke" => knock.ok(&["revoke", CLIENT_V4]),
            _ => knock.ok(&["client", "remove", "laptop"]),
        };
        assert!(said.contains("flows ended"), "{how}: {said}");
        assert!(!session.exchange(), "{how}: the session survived ({said})");
        if how == "revoke" {
            knock.ok(&["client", "remove", "laptop"]);
        }
    }
}
