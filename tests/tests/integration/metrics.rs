//! The metrics endpoint: Prometheus text from a snapshot the daemon
//! refreshes on its own schedule, no series that follows one knock, public
//! addresses only when asked for, and a server that a flood of idle
//! connections cannot use to stall the daemon.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    thread,
    time::{Duration, Instant},
};

use knock_tests::{
    lab::{CLIENT_V4, Entry, Instance, Lab, SERVER_V4, tcp_knocks},
    privileged,
};
use knock_userspace::probe::PortState;

const SERVICE: u16 = 8022;
const METRICS: &str = "127.0.0.1:9419";

/// The series of one scrape, from the server namespace; panics unless the
/// answer is HTTP 200 with Prometheus text whose every line is a comment or
/// `name{labels} value` with a number.
fn scrape(lab: &Lab) -> BTreeMap<String, f64> {
    let text = lab.server.enter(|| {
        let mut stream = TcpStream::connect(METRICS).expect("metrics endpoint");
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        text
    });
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(
        head.starts_with("HTTP/1.1 200") && head.contains("text/plain; version=0.0.4"),
        "{head}"
    );
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("bad line {l:?}"));
            (series.to_owned(), value.parse().unwrap_or_else(|_| panic!("bad value in {l:?}")))
        })
        .collect()
}

const UPTIME: &str = "knock_xdp_uptime_seconds";
const DROPPED: &str = r#"knock_xdp_packets_total{verdict="dropped_protected"}"#;

/// A daemon protecting the service, serving metrics on loopback.
fn metrics_daemon(extra: &[&str]) -> (Lab, Instance) {
    let lab = Lab::new();
    lab.tcp_echo(SERVER_V4, SERVICE);
    let mut knock = Instance::new(&lab.server, Entry::NetnsExec);
    let mut args = vec![lab.server_if.as_str(), "--metrics-listen", METRICS];
    args.extend_from_slice(extra);
    knock.attach(&args);
    knock.ok(&["protect", &format!("{SERVICE}/tcp")]);
    (lab, knock)
}

#[test]
fn metrics_are_a_snapshot_that_moves_with_traffic_at_its_next_refresh() {
    if !privileged("metrics_are_a_snapshot_that_moves_with_traffic_at_its_next_refresh") {
        return;
    }
    let (lab, knock) = metrics_daemon(&[]);
    let before = scrape(&lab);
    let series: Vec<&str> = before.keys().map(|k| k.split('{').next().unwrap()).collect();
    for name in ["knock_xdp_packets_total", "knock_xdp_opened_total", "knock_xdp_clients", UPTIME] {
        assert!(series.contains(&name), "{name} missing: {before:?}");
    }
    // Every verdict the program counts, by the names `status` shows, but
    // limited knocks, which are exported as knocks.
    let status = knock.status();
    for name in status["counters"].as_object().unwrap().keys() {
        let key = format!("knock_xdp_packets_total{{verdict=\"{name}\"}}");
        assert_eq!(before.contains_key(&key), name != "knock_limited", "{key}");
    }
    assert_eq!(lab.tcp_state(SERVER_V4, SERVICE), PortState::Filtered);
    // The drop shows once the daemon next refreshes the snapshot (every 30 s).
    let deadline = Instant::now() + Duration::from_secs(45);
    let after = loop {
        let now = scrape(&lab);
        if now[UPTIME] != before[UPTIME] {
            break now;
        }
        assert!(Instant::now() < deadline, "the snapshot was never refreshed");
        thread::sleep(Duration::from_millis(500));
    };
    assert!(after[DROPPED] > before[DROPPED], "{} -> {}", before[DROPPED], after[DROPPED]);
}

#[test]
fn a_knock_by_knock_metrics_probe_learns_nothing() {
    if !privileged("a_knock_by_knock_metrics_probe_learns_nothing") {
        return;
    }
    let (lab, knock) = metrics_daemon(&[]);
    knock.add_client("door", &["--static", "7101,7102,7103"]);
    let first = scrape(&lab);
    for name in first.keys() {
        assert!(
            !name.contains("knocks_total") && !name.contains("map_entries"),
            "a per-knock series is exported: {name}"
        );
    }
    // A prober sends one knock at a time and scrapes after each. Within one
    // snapshot every scrape is the same, however far the knock got; a
    // refresh in the middle (uptime moves) is taken again.
    let knocks = tcp_knocks(&[7101, 7102, 7103]);
    let mut tries = 0;
    loop {
        tries += 1;
        assert!(tries <= 3, "the snapshot refreshed during every try");
        knock.cli(&["revoke", CLIENT_V4]);
        let scrapes: Vec<BTreeMap<String, f64>> = std::iter::once(scrape(&lab))
            .chain(knocks.iter().map(|step| {
                lab.send_knocks(CLIENT_V4, SERVER_V4, &[*step], Duration::ZERO);
                scrape(&lab)
            }))
            .collect();
        assert!(lab.tcp_exchange(CLIENT_V4, SERVER_V4, SERVICE), "the knock did not open");
        if scrapes.iter().all(|s| s[UPTIME] == scrapes[0][UPTIME]) {
            assert!(scrapes.iter().all(|s| *s == scrapes[0]), "a scrape moved with a knock step");
            break;
        }
    }
}

#[test]
fn a_public_metrics_address_needs_metrics_public() {
    if !privileged("a_public_metrics_address_needs_metrics_public") {
        return;
    }
    let lab = Lab::new();
    let mut knock = Instance::new(&lab.server, Entry::NetnsExec);
    let config = knock.side_file("config.toml");
    std::fs::write(&config, "metrics_listen = \"0.0.0.0:9419\"\n").unwrap();
    let config_arg = config.to_str().unwrap();
    for args in [
        &["attach", &lab.server_if, "--metrics-listen", "0.0.0.0:9419"][..],
        &["attach", &lab.server_if, "--metrics-listen", "[::]:9419"],
        &["--config", config_arg, "attach", &lab.server_if],
    ] {
        let out = knock.cli_within(args, Duration::from_secs(20));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains("not a loopback address"), "{args:?}: {stderr}");
        assert!(stderr.contains("--metrics-public"), "{args:?}: {stderr}");
    }
    assert!(!knock_tests::lab::has_xdp(&lab.server, &lab.server_if));
    assert!(!knock.state_path().exists(), "a refused start created the state directory");
    std::fs::write(&config, "metrics_listen = \"0.0.0.0:9419\"\nmetrics_public = true\n").unwrap();
    knock.attach(&["--config", config_arg, &lab.server_if]);
    let server_metrics = format!("{SERVER_V4}:9419");
    let answered = lab.client.enter(move || TcpStream::connect(server_metrics).is_ok());
    assert!(answered, "the public metrics address does not answer");
}

/// `count` connections to `addr` that never send a byte, from the current
/// namespace (non-blocking connects: the server takes them at its pace).
fn idle_connections(addr: SocketAddr, count: usize) -> Vec<OwnedFd> {
    let SocketAddr::V4(v4) = addr else { panic!("IPv4 only") };
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: v4.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(v4.ip().octets()) },
        sin_zero: [0; 8],
    };
    (0..count)
        .map(|_| {
            // SAFETY: plain socket(2); the fd is owned from here on.
            let fd = unsafe {
                libc::socket(
                    libc::AF_INET,
                    libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                    0,
                )
            };
            assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
            // SAFETY: a valid sockaddr_in of the given length.
            unsafe {
                libc::connect(
                    fd,
                    (&raw const sin).cast(),
                    size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            };
            // SAFETY: a new fd of ours.
            unsafe { OwnedFd::from_raw_fd(fd) }
        })
        .collect()
}

#[test]
fn a_thousand_idle_scrapers_stall_neither_commands_nor_rotation() {
    if !privileged("a_thousand_idle_scrapers_stall_neither_commands_nor_rotation") {
        return;
    }
    // A thousand sockets more than the default 1024 allows this process.
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: a valid rlimit to fill and to set.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
    let (lab, knock) = metrics_daemon(&[]);
    // One-second slots: without rotation, the installed sequences run out
    // within three seconds and the knock below fails.
    let alice = knock.add_client("alice", &["--slot", "1s"]);

    // How long `status` takes (a process through `ip netns exec`, and the
    // daemon's answer), before the flood and for five seconds of it.
    let status_times = |until: Duration| {
        let started = Instant::now();
        let mut times = Vec::new();
        while times.len() < 10 || started.elapsed() < until {
            let asked = Instant::now();
            assert_eq!(knock.status()["clients"], 1);
            times.push(asked.elapsed());
        }
        times.sort();
        (times[times.len() / 2], times[times.len() - 1])
    };
    let (calm, _) = status_times(Duration::ZERO);
    let flood = lab.server.enter(|| idle_connections(METRICS.parse().unwrap(), 1000));
    let (median, slowest) = status_times(Duration::from_secs(5));
    let connected = flood
        .iter()
        .filter(|fd| {
            // SAFETY: a zeroed sockaddr_storage and its length for getpeername to fill.
            let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
            let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            // SAFETY: a valid fd and out-pointers.
            unsafe { libc::getpeername(fd.as_raw_fd(), (&raw mut addr).cast(), &mut len) == 0 }
        })
        .count();
    assert!(connected >= 500, "only {connected} scrapers got connected: no flood");
    eprintln!(
        "status: median {calm:?} before a flood of {connected} idle scrapers, \
         {median:?} (slowest {slowest:?}) in it"
    );
    // Blocked behind the scrapers, a status would wait out their 2 s
    // timeouts; the margins leave room for the other tests' load.
    assert!(
        median < calm * 3 + Duration::from_millis(200) && slowest < Duration::from_secs(3),
        "status took {median:?} (slowest {slowest:?}) under the flood, {calm:?} before"
    );
    let asked = Instant::now();
    let out = lab.knock(&alice, &["--check", &SERVICE.to_string()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "the knock failed under the flood: {}{}",
        String::from_utf8_lossy(&out.stdout),
        knock.daemon_log()
    );
    assert!(asked.elapsed() < Duration::from_secs(3), "the knock took {:?}", asked.elapsed());
    // The scrapers are still connected; a real scrape is answered anyway.
    let scraped = Instant::now();
    assert!(scrape(&lab).contains_key(UPTIME));
    eprintln!("a scrape under the flood took {:?}", scraped.elapsed());
    drop(flood);
}
