//! End to end, adversarial: crafted and malformed frames sent with scapy
//! from the client namespace (`tests/python/crafted.py`) never reach a
//! protected service. A tap on the server's interface records what XDP let
//! through; the same cases sent to an unprotected control port show that the
//! tap sees what gets through.

use std::{
    io,
    net::{TcpListener, UdpSocket},
    path::Path,
    thread,
    time::{Duration, Instant},
};

use knock_tests::{
    lab::{CLIENT_V4, CLIENT_V6, Entry, Instance, Lab, SERVER_V4, SERVER_V6, eventually},
    privileged,
    sniff::{Proto, Seen, Sniffer, classify},
};
use knock_userspace::probe::PortState;

const TCP_PORT: u16 = 8022;
const UDP_PORT: u16 = 5353;
/// Unprotected, with no service: the control cases go here.
const CONTROL_PORT: u16 = 8080;
/// Frames the script sends: every case, to the protected ports and to the
/// control port. A case that silently went missing would change it.
const EXPECTED_FRAMES: u64 = 312;
/// Debian's Python, where python3-scapy lives (`python3` on PATH may be another).
const PYTHON: &str = "/usr/bin/python3";

#[test]
fn crafted_frames_never_reach_a_protected_service() {
    if !privileged("crafted_frames_never_reach_a_protected_service") {
        return;
    }
    assert_scapy();
    let lab = Lab::new();
    let services = Services::open(&lab);
    services.prove_counting(&lab);
    let mut knock = Instance::new(&lab.server, Entry::NetnsExec);
    knock.attach(&[&lab.server_if]);
    knock.ok(&["protect", &format!("{TCP_PORT}/tcp"), &format!("{UDP_PORT}/udp")]);
    let before = knock.status()["counters"].clone();

    let sniffer = Sniffer::start(&lab.server, &lab.server_if);
    let report = send_crafted(&lab);
    assert_eq!(report.sent, EXPECTED_FRAMES, "the script's cases changed: {report:?}");
    // Every frame moves one counter as the program decides it, before the
    // stack (and so the tap) gets it: once the counters have moved by
    // every frame sent, the tap has had all that passed.
    let moved_since = |now: &serde_json::Value, name: &str| {
        now[name].as_u64().unwrap() - before[name].as_u64().unwrap()
    };
    let names: Vec<String> = before.as_object().unwrap().keys().cloned().collect();
    eventually("the program never saw every frame", || {
        let now = knock.status()["counters"].clone();
        names.iter().map(|name| moved_since(&now, name)).sum::<u64>() >= report.sent
    });
    let frames = sniffer.finish();
    let after = knock.status()["counters"].clone();
    let moved = |name: &str| moved_since(&after, name);

    // (a) Nothing with a readable port to a protected port got past XDP, and
    // nothing that may be TCP/UDP but cannot be parsed did either.
    let seen: Vec<(Seen, &Vec<u8>)> = frames.iter().map(|f| (classify(f), f)).collect();
    for (what, frame) in &seen {
        let protected = matches!(
            what,
            Seen::Ports { proto: Proto::Tcp, dport: TCP_PORT }
                | Seen::Ports { proto: Proto::Udp, dport: UDP_PORT }
        );
        assert!(!protected && *what != Seen::Malformed, "XDP passed {what:?}: {}", describe(frame));
    }

    // (b) The services heard nothing.
    assert_eq!(services.take(), (0, 0), "(accepted connections, datagrams) on protected ports");

    // (c) The control cases did get through: the tap works. Each one the
    // program can read a port in passes.
    let control = seen
        .iter()
        .filter(|(what, _)| matches!(what, Seen::Ports { dport: CONTROL_PORT, .. }))
        .count() as u64;
    // A tap that saw nothing, or a script that sent little, fails here.
    assert!(report.control_ports > 100, "{report:?}");
    assert_eq!(control, report.control_ports, "control frames seen; {report:?}");

    // (d) The drops were counted, each frame as what it is: nothing but
    // the script sends to protected ports, or anything malformed.
    assert_eq!(moved("dropped_protected"), report.protected_ports, "{report:?}\n{after}");
    assert_eq!(moved("dropped_malformed"), report.malformed, "{report:?}\n{after}");

    // Later fragments pass by design (they carry no ports); (b) shows none
    // of them completed a datagram to a service.
    let later = seen.iter().filter(|(what, _)| *what == Seen::LaterFragment).count();
    eprintln!(
        "crafted: sent {}, seen {} ({control} control, {later} later fragments); \
         dropped {} protected and {} malformed",
        report.sent,
        frames.len(),
        moved("dropped_protected"),
        moved("dropped_malformed"),
    );
}

/// Fails with a clear message when scapy cannot be imported.
fn assert_scapy() {
    assert!(Path::new(PYTHON).is_file(), "{PYTHON} is missing: run 'cargo xtask setup'");
    let out = std::process::Command::new(PYTHON)
        .args(["-c", "import scapy.all"])
        .output()
        .unwrap_or_else(|e| panic!("{PYTHON}: {e}"));
    assert!(
        out.status.success(),
        "{PYTHON} cannot import scapy (python3-scapy; run 'cargo xtask setup'): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The script's last line: how many frames it sent and what they are.
#[derive(Debug)]
struct Report {
    sent: u64,
    protected_ports: u64,
    control_ports: u64,
    malformed: u64,
}

/// Runs the script in the client namespace.
fn send_crafted(lab: &Lab) -> Report {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/crafted.py");
    let server_mac = server_mac(lab);
    let ports = [TCP_PORT, UDP_PORT, CONTROL_PORT].map(|p| p.to_string());
    let out = lab.client_run(
        PYTHON,
        &[
            script.to_str().unwrap(),
            "--iface",
            &lab.client_if,
            "--server-mac",
            &server_mac,
            "--server-v4",
            SERVER_V4,
            "--server-v6",
            SERVER_V6,
            "--client-v4",
            CLIENT_V4,
            "--client-v6",
            CLIENT_V6,
            "--tcp-port",
            &ports[0],
            "--udp-port",
            &ports[1],
            "--control-port",
            &ports[2],
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "crafted.py failed ({}): {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("a JSON summary");
    let count = |name: &str| json[name].as_u64().unwrap_or_else(|| panic!("{name} in {json}"));
    Report {
        sent: count("sent"),
        protected_ports: count("protected_ports"),
        control_ports: count("control_ports"),
        malformed: count("malformed"),
    }
}

fn server_mac(lab: &Lab) -> String {
    let link: serde_json::Value =
        serde_json::from_str(&lab.server.ip(&["-j", "link", "show", "dev", &lab.server_if]))
            .unwrap();
    link[0]["address"].as_str().expect("a MAC address").to_owned()
}

/// A frame for a failure message: the case's marker, if it carries one, and
/// its bytes.
fn describe(frame: &[u8]) -> String {
    let text = String::from_utf8_lossy(frame);
    let marker = text
        .find("KXDP[")
        .and_then(|start| text[start..].find(']').map(|end| &text[start..=start + end]))
        .unwrap_or("no marker");
    let hex: String = frame.iter().map(|b| format!("{b:02x}")).collect();
    format!("{marker} {hex}")
}

/// The protected services: a dual-stack TCP listener and UDP socket that
/// nothing reads, so whatever reaches them waits in their queues.
struct Services {
    tcp: TcpListener,
    udp: UdpSocket,
}

impl Services {
    fn open(lab: &Lab) -> Self {
        let (tcp, udp) = lab.server.enter(|| {
            let tcp = TcpListener::bind(("::", TCP_PORT)).expect("bind tcp");
            let udp = UdpSocket::bind(("::", UDP_PORT)).expect("bind udp");
            (tcp, udp)
        });
        tcp.set_nonblocking(true).unwrap();
        udp.set_nonblocking(true).unwrap();
        Self { tcp, udp }
    }

    /// Before protection, a connection and a datagram from the client are
    /// counted: so the zero counts later mean something.
    fn prove_counting(&self, lab: &Lab) {
        assert_eq!(lab.tcp_state(SERVER_V4, TCP_PORT), PortState::Open);
        lab.client.enter(|| {
            let socket = UdpSocket::bind((CLIENT_V6, 0)).unwrap();
            socket.send_to(b"count me", (SERVER_V6, UDP_PORT)).unwrap();
        });
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut counted = (0, 0);
        while counted != (1, 1) && Instant::now() < deadline {
            let (tcp, udp) = self.take();
            counted = (counted.0 + tcp, counted.1 + udp);
            thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(counted, (1, 1), "(connections, datagrams) before protection");
    }

    /// Connections accepted and datagrams received since the last call.
    fn take(&self) -> (usize, usize) {
        let tcp = std::iter::from_fn(|| accepted(self.tcp.accept())).count();
        let mut buf = [0u8; 2048];
        let udp = std::iter::from_fn(|| accepted(self.udp.recv_from(&mut buf))).count();
        (tcp, udp)
    }
}

/// `Some` for one more item, `None` once the queue is empty.
fn accepted<T>(result: io::Result<T>) -> Option<T> {
    match result {
        Ok(item) => Some(item),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
        Err(e) => panic!("{e}"),
    }
}
