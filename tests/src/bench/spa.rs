//! The SPA part: what a datagram to the SPA range costs the program
//! (BPF_PROG_TEST_RUN against the no-op, as in part 1), and the time from a
//! valid datagram sent by knock-xdp's own client to the door being open.

use std::{
    net::{IpAddr, SocketAddr, TcpStream},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, anyhow, ensure};
use aya::programs::Xdp;
use knock_common::{
    Proto, ProtoPort,
    decide::XDP_PASS,
    maps::{Counter, Runtime},
    source::SourceKey,
    spa::{self, DATAGRAM_LEN, MAC_LEN, NONCE_LEN, Request, SIGNED_LEN},
};
use knock_userspace::{
    clock,
    profile::Profile,
    sender::{self, Options, record::KnockRecord},
};
use serde_json::{Value, json};

use super::{
    Settings,
    harness::{
        Family, Knock, PROTECTED, Path, PathRow, families, load_noop, median, noop_baseline,
        noop_prog, paired_once, steady_row, test_run,
    },
    latency::open_then_handshake,
};
use crate::{
    frames::Frame,
    lab::{self, Entry, Instance, Lab},
};

/// The client index and id of the bench's SPA client, and its secret.
const INDEX: u16 = 3;
const CLIENT: u32 = 77;
const SECRET: [u8; 32] = [7; 32];
/// The SPA range: one port is enough for the program, every port costs the same.
const SPA_PORT: u16 = 62_000;
const RANGE: &str = "62000-62009";

#[derive(Clone, Debug, Default)]
pub struct Spa {
    pub rows: Vec<PathRow>,
    /// Valid datagrams sent by the client library → connect done, µs.
    pub open_us: Vec<f64>,
    pub open_median_us: f64,
    pub open_max_us: f64,
    /// The same connect to an unprotected port: the handshake alone.
    pub handshake_median_us: f64,
}

impl Spa {
    pub fn table(&self, s: &mut String) {
        s.push_str("\nSPA. per-packet cost of a datagram to the SPA range (BPF_PROG_TEST_RUN), ratio to the no-op\n");
        s.push_str(&PathRow::header());
        s.push('\n');
        for r in &self.rows {
            s.push_str(&r.line());
            s.push('\n');
        }
        s.push_str(&format!(
            "datagram-to-open latency over {} datagrams (knock-xdp's client sends one datagram → connect to the protected port done)\n\
             median {:.0} µs, max {:.0} µs; a plain handshake to an unprotected port: median {:.0} µs\n",
            self.open_us.len(),
            self.open_median_us,
            self.open_max_us,
            self.handshake_median_us
        ));
    }

    pub fn json(&self) -> Value {
        json!({
            "rows": self.rows.iter().map(PathRow::json).collect::<Vec<_>>(),
            "open_samples_us": self.open_us,
            "open_median_us": self.open_median_us,
            "open_max_us": self.open_max_us,
            "handshake_median_us": self.handshake_median_us,
        })
    }
}

pub fn run(settings: &Settings) -> Result<Spa> {
    let mut out = Spa { rows: per_packet(settings)?, ..Default::default() };
    latency(settings, &mut out)?;
    Ok(out)
}

fn unix_now() -> u32 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as u32)
}

fn nonce(tag: u64) -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    n[..8].copy_from_slice(&tag.to_be_bytes());
    n
}

fn frame(src: IpAddr, server: IpAddr, datagram: &[u8]) -> Vec<u8> {
    Frame { udp_payload: datagram.to_vec(), ..Frame::new(src, server, Proto::Udp, SPA_PORT) }
        .build()
}

/// The per-packet rows, each checked to take the path it names.
fn per_packet(settings: &Settings) -> Result<Vec<PathRow>> {
    let mut knock = Knock::new()?;
    let mut noop_ebpf = load_noop()?;
    let noop = noop_prog(&mut noop_ebpf)?;
    let key = spa::key_from_secret(&SECRET);
    knock
        .maps
        .set_spa_ports(&Default::default(), &[ProtoPort::new(Proto::Udp, SPA_PORT)].into())?;
    knock.maps.set_spa_key(u32::from(INDEX), &spa::spa_key(&key, CLIENT, 0))?;
    let unix_ns = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() as u64;
    knock.maps.set_runtime(Runtime::UnixOffset, unix_ns.wrapping_sub(clock::boot_ns()))?;

    let mut rows = Vec::new();
    for (f, fam) in families().iter().enumerate() {
        let steady_base =
            noop_baseline(noop, &frame(fam.stranger, fam.server, &[0; 52]), settings)?;
        let request = |tag: u64, unix_secs: u32| Request {
            index: INDEX,
            unix_secs,
            nonce: nonce(tag),
            admit: None,
        };
        let tag = (f as u64) << 32;
        // The control: this very header with its right MAC opens the door
        // for another source, so the rows below fail where they say.
        let good = spa::datagram(&key, &request(tag, unix_now()), fam.server);
        let control = (fam.fresh)(0x00ee_0000);
        let (verdict, _) = test_run(knock.prog()?, &frame(control, fam.server, &good), 1)?;
        ensure!(verdict == XDP_PASS, "SPA control: verdict {verdict}");
        ensure!(allowed(&knock, control)?, "SPA control: a valid datagram did not open the door");
        knock.drain_events();

        let mut bad_version = good;
        bad_version[0] = spa::VERSION + 1;
        let stale = spa::datagram(&key, &request(tag + 1, unix_now() - 3600), fam.server);
        let mut wrong_mac = good;
        for byte in &mut wrong_mac[SIGNED_LEN..SIGNED_LEN + MAC_LEN] {
            *byte ^= 0x5a;
        }
        let cases: [(&str, &str, [u8; DATAGRAM_LEN], Option<f64>); 3] = [
            (
                "spa: bad version",
                "a datagram of SPA size to an SPA port whose version byte is wrong: the first cheap check",
                bad_version,
                Some(3.0),
            ),
            (
                "spa: stale time",
                "a datagram with the real client index and a right MAC, sent an hour ago: \
                 the last cheap check (key lookup, settings, clock, skew)",
                stale,
                Some(3.0),
            ),
            (
                "spa: wrong MAC",
                "the control datagram (real index, fresh time) with its MAC bytes flipped: \
                 every cheap check passes, two SHA-256 compressions, refused",
                wrong_mac,
                None,
            ),
        ];
        for (name, what, datagram, goal) in cases {
            let nonces = knock.maps.spa_nonces()?.len();
            let src = fam.stranger;
            let mut row = steady_row(
                &mut knock,
                noop,
                settings,
                &Path {
                    name,
                    family: fam.name,
                    what,
                    frame: &frame(src, fam.server, &datagram),
                    expected: (XDP_PASS, Counter::Spa),
                    goal,
                },
            )?;
            // Refused, and before the nonce: nothing admitted, remembered or told.
            ensure!(!allowed(&knock, src)?, "{name}: the source was admitted");
            ensure!(knock.maps.spa_nonces()?.len() == nonces, "{name}: a nonce was remembered");
            ensure!(knock.drain_events() == 0, "{name}: the program emitted an event");
            if goal.is_none() {
                row.goal_ns = Some(5_000.0);
            }
            rows.push(row);
        }
        rows.push(fresh_opens(&mut knock, noop, settings, fam, &key, tag + 2, steady_base)?);
    }
    Ok(rows)
}

fn allowed(knock: &Knock, src: IpAddr) -> Result<bool> {
    let key = SourceKey::from(src);
    Ok(knock.maps.allowed()?.iter().any(|(k, _)| *k == key))
}

/// Valid datagrams, each once (a nonce works once): one BPF_PROG_TEST_RUN
/// with repeat=1 per datagram from a fresh source, paired with the no-op,
/// reported as the steady no-op plus the median excess (as the knock steps).
fn fresh_opens(
    knock: &mut Knock,
    noop: &Xdp,
    settings: &Settings,
    fam: &Family,
    key: &[u8; 32],
    tag: u64,
    steady_base: f64,
) -> Result<PathRow> {
    let n = settings.fresh_samples;
    let allowed_before = knock.maps.allowed()?.len();
    let (mut excess, mut raw, mut base) = (Vec::new(), Vec::new(), Vec::new());
    let mut events = 0;
    for i in 0..n {
        let request = Request {
            index: INDEX,
            unix_secs: unix_now(),
            nonce: nonce(tag + (i as u64) * 16),
            admit: None,
        };
        let datagram = spa::datagram(key, &request, fam.server);
        let frame = frame((fam.fresh)(0x00d0_0000 + i as u32), fam.server, &datagram);
        let (b, verdict, ns) = paired_once(noop, knock.prog()?, &frame, i)?;
        ensure!(verdict == XDP_PASS, "a valid datagram was not passed");
        excess.push(ns - b);
        raw.push(ns);
        base.push(b);
        events += knock.drain_events();
    }
    let admitted = knock.maps.allowed()?.len() - allowed_before;
    ensure!(
        admitted == n && events == n,
        "{admitted} admitted, {events} events of {n} valid datagrams"
    );
    let ex = median(&excess);
    Ok(PathRow {
        name: "spa: valid, opens".into(),
        family: fam.name,
        what: "a valid datagram from a fresh source: cheap footguns, MAC, nonce remembered, source admitted, event".into(),
        verdict: XDP_PASS,
        ns: steady_base + ex,
        baseline_ns: steady_base,
        ratio: (steady_base + ex) / steady_base,
        goal: None,
        goal_ns: None,
        method: format!(
            "fresh: {n} datagrams x 1 packet (repeat=1); raw median {:.0} ns vs paired no-op {:.0} ns; \
             ns = steady no-op + median excess {ex:.1} ns",
            median(&raw),
            median(&base)
        ),
        samples: n,
    })
}

/// The real daemon and an SPA client made by `client add --spa`: from the
/// call of the client's `knock` (which builds and sends one datagram) to
/// `connect` to the protected port done (that connection's handshake
/// included; the handshake to an unprotected port is reported beside it).
fn latency(settings: &Settings, out: &mut Spa) -> Result<()> {
    let lab = Lab::new();
    lab.tcp_echo(lab::SERVER_V4, PROTECTED);
    lab.tcp_echo(lab::SERVER_V4, 8080);
    let mut daemon = Instance::new(&lab.server, Entry::NetnsExec);
    daemon.attach(&[&lab.server_if]);
    daemon.ok(&["protect", &format!("{PROTECTED}/tcp")]);
    let path = daemon.add_client("bench-spa", &["--spa", "--ports", RANGE]);
    let profile = Profile::read(&path).context("the SPA profile")?;
    let server: IpAddr = lab::SERVER_V4.parse()?;
    let timeout = Duration::from_secs(3);
    let mut handshakes = Vec::new();
    for _ in 0..settings.latency_knocks {
        daemon.cli(&["revoke", lab::CLIENT_V4]);
        let profile = profile.clone();
        let (open_us, hs_us) = lab.client.enter(move || -> Result<(f64, f64)> {
            let protected = SocketAddr::new(server, PROTECTED);
            ensure!(
                TcpStream::connect_timeout(&protected, Duration::from_millis(200)).is_err(),
                "the protected port was open before the datagram"
            );
            let options =
                Options { delay: Duration::ZERO, check: None, retries: 0, at: None, admit: None };
            let start = Instant::now();
            let target = sender::Server { addr: server, id: None };
            sender::knock(&profile, &mut KnockRecord::none(), &target, &options, |_| {})?;
            open_then_handshake(start, protected, timeout, "after the datagram")
        })?;
        out.open_us.push(open_us);
        handshakes.push(hs_us);
    }
    let opened =
        daemon.status()["counters"]["spa"].as_u64().ok_or_else(|| anyhow!("no spa counter"))?;
    ensure!(
        opened == settings.latency_knocks as u64,
        "the program counted {opened} SPA datagrams for {} sent",
        settings.latency_knocks
    );
    out.open_median_us = median(&out.open_us);
    out.open_max_us = out.open_us.iter().copied().fold(0.0, f64::max);
    out.handshake_median_us = median(&handshakes);
    Ok(())
}
