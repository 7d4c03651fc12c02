//! No oracle: an installed knock port answers exactly as its neighbours do,
//! with a TCP reset or an ICMP port unreachable from the host, over IPv4 and
//! IPv6, for rotating and static clients of both protocols, before and
//! after a slot boundary. The protected service beside them gives no answer
//! at all, which shows the probe sees a drop when there is one.

use std::{
    io::ErrorKind,
    net::{IpAddr, SocketAddr, UdpSocket},
    path::PathBuf,
    time::{Duration, SystemTime},
};

use knock_common::{Proto, ProtoPort};
use knock_tests::{
    lab::{CLIENT_V4, CLIENT_V6, Entry, Instance, Lab, SERVER_V4, SERVER_V6, SERVICE, run},
    privileged,
};
use knock_userspace::probe::PortState;

const SLOT: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    Reset,
    Unreachable,
    Silence,
    Open,
}

fn answer(lab: &Lab, server: &str, port: ProtoPort) -> Answer {
    match port.proto {
        Proto::Tcp => match lab.tcp_state(server, port.port) {
            PortState::Closed => Answer::Reset,
            PortState::Filtered => Answer::Silence,
            PortState::Open => Answer::Open,
        },
        Proto::Udp => udp_answer(lab, server, port.port),
    }
}

/// A datagram from the client namespace: a connected socket learns of the
/// host's ICMP port unreachable as a refused receive.
fn udp_answer(lab: &Lab, server: &str, port: u16) -> Answer {
    let server: IpAddr = server.parse().unwrap();
    lab.client.enter(move || {
        let bind: SocketAddr =
            if server.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().unwrap();
        let socket = UdpSocket::bind(bind).unwrap();
        socket.connect((server, port)).unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        socket.send(b"probe").unwrap();
        match socket.recv(&mut [0u8; 16]) {
            Ok(_) => Answer::Open,
            Err(err) if err.kind() == ErrorKind::ConnectionRefused => Answer::Unreachable,
            Err(_) => Answer::Silence,
        }
    })
}

/// Every knock installed now (the slots either side and the next two), and
/// each one's neighbours that are not knocks themselves.
fn knocks_and_neighbours(
    lab: &Lab,
    rotating: &[PathBuf],
    statics: &[ProtoPort],
) -> (Vec<ProtoPort>, Vec<ProtoPort>) {
    let now = SystemTime::now();
    let mut knocks: Vec<ProtoPort> = statics.to_vec();
    for profile in rotating {
        for at in [now - SLOT, now, now + SLOT, now + 2 * SLOT] {
            knocks.extend(lab.sequence(profile, Some(at)));
        }
    }
    knocks.sort();
    knocks.dedup();
    let mut neighbours: Vec<ProtoPort> = knocks
        .iter()
        // A knock at 65535 has a neighbour below only.
        .flat_map(|k| {
            [k.port.checked_sub(1), k.port.checked_add(1)]
                .into_iter()
                .flatten()
                .map(|port| ProtoPort::new(k.proto, port))
        })
        .filter(|n| !knocks.contains(n))
        .collect();
    neighbours.sort();
    neighbours.dedup();
    (knocks, neighbours)
}

fn assert_alike(
    lab: &Lab,
    knock: &Instance,
    rotating: &[PathBuf],
    statics: &[ProtoPort],
    when: &str,
) {
    let (knocks, neighbours) = knocks_and_neighbours(lab, rotating, statics);
    for (server, client) in [(SERVER_V4, CLIENT_V4), (SERVER_V6, CLIENT_V6)] {
        // Probing knocks in turn may well complete one: the door is shut
        // again first, so the service's silence shows the probe sees drops.
        let _ = knock.cli(&["revoke", client]);
        assert_eq!(
            answer(lab, server, ProtoPort::new(Proto::Tcp, SERVICE)),
            Answer::Silence,
            "{when}, {server}: the protected service answered"
        );
        let expected = |p: &ProtoPort| match p.proto {
            Proto::Tcp => Answer::Reset,
            Proto::Udp => Answer::Unreachable,
        };
        let odd: Vec<(ProtoPort, Answer, &str)> = knocks
            .iter()
            .map(|p| (*p, "knock"))
            .chain(neighbours.iter().map(|p| (*p, "neighbour")))
            .map(|(p, what)| (p, answer(lab, server, p), what))
            .filter(|(p, got, _)| *got != expected(p))
            .collect();
        assert!(
            odd.is_empty(),
            "{when}, {server}: answers that differ from a closed port's: {odd:?}"
        );
    }
}

#[test]
fn knock_ports_answer_like_their_neighbours() {
    if !privileged("knock_ports_answer_like_their_neighbours") {
        return;
    }
    let lab = Lab::with_service();
    // The host answers every probe: port unreachable is taken out of the
    // ICMP rate limits (per destination, and the global one, which drops at
    // random).
    for setting in [
        "net.ipv4.icmp_ratemask=0",
        "net.ipv4.icmp_ratelimit=0",
        "net.ipv6.icmp.ratemask=127",
        "net.ipv6.icmp.ratelimit=0",
    ] {
        run("ip", &["netns", "exec", &lab.server.name, "sysctl", "-qw", setting]);
    }
    let knock = lab.protecting_daemon(Entry::NsenterNet, &[]);
    let slot = format!("{}s", SLOT.as_secs());
    let rotating = [
        knock.add_client("tcp", &["--slot", &slot]),
        knock.add_client("udp", &["--slot", &slot, "--proto", "udp"]),
    ];
    knock.add_client("static-tcp", &["--static", "7101,7102,7103"]);
    knock.add_client("static-udp", &["--static", "7201:udp,7202:udp,7203:udp"]);
    let statics: Vec<ProtoPort> = [7101, 7102, 7103]
        .map(|port| ProtoPort::new(Proto::Tcp, port))
        .into_iter()
        .chain([7201, 7202, 7203].map(|port| ProtoPort::new(Proto::Udp, port)))
        .collect();

    assert_alike(&lab, &knock, &rotating, &statics, "before the boundary");
    // Past the next slot boundary, with the new slot's sequences installed.
    std::thread::sleep(SLOT + Duration::from_millis(300));
    assert_alike(&lab, &knock, &rotating, &statics, "after the boundary");
}
