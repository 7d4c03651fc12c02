//! Side by side with fwknop (Debian's fwknop-server and fwknop-client), the
//! best-known single-packet authorization: each system guards the same TCP
//! service in its own veth lab, and the same things are measured.
//!
//! - fwknopd runs with Debian's defaults (libpcap on the server's veth end,
//!   `PCAP_LOOP_SLEEP` 100 ms, Rijndael + HMAC-SHA256) and opens the door
//!   the way it does on a server: an iptables ACCEPT for the client in its
//!   `FWKNOP_INPUT` chain, ahead of the DROP for the port.
//! - knock-xdp runs its daemon with one `client add --spa` client.
//!
//! Both take their datagrams at UDP port 62201 (fwknop's default). "Open"
//! means a TCP connect from the client to the port completes; the probe
//! tries every [`PROBE_WAIT`] (1 ms), because a SYN dropped by a shut door
//! is retried by TCP only after a second.

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::{Value, json};

mod doors;

use super::{
    Settings,
    harness::median,
    host::{PROBE_WAIT, connects, lab_macs, lab_udp, open_after, proc_cpu_s, proc_rss_kib, sh},
};
use crate::{
    flood,
    lab::{self, Lab},
};

pub const SERVICE: u16 = 8022;
pub const SPA_PORT: u16 = 62_201;
/// How long a try waits for the door.
const DEADLINE: Duration = Duration::from_secs(3);

/// One system's figures.
#[derive(Clone, Debug, Default)]
pub struct System {
    pub name: String,
    /// The datagram sent from a socket → connect done, quiet, µs.
    pub packet_open_us: Vec<f64>,
    /// The client command started → connect done, quiet, µs.
    pub client_open_us: Vec<f64>,
    pub idle_cpu_s: f64,
    pub idle_rss_kib: u64,
    pub floods: Vec<Flood>,
}

/// The real client's tries during one flood.
#[derive(Clone, Debug, Default)]
pub struct Flood {
    pub kind: &'static str,
    pub tries: usize,
    pub opened: usize,
    pub open_us: Vec<f64>,
    pub frames_sent: u64,
    pub pps_offered: f64,
    pub window_s: f64,
    pub daemon_cpu_s: f64,
    pub daemon_rss_kib: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Fwknop {
    pub version: String,
    pub systems: Vec<System>,
}

fn us(v: &[f64]) -> String {
    if v.is_empty() { "-".into() } else { format!("{:.0}", median(v)) }
}

impl Fwknop {
    pub fn table(&self, s: &mut String) {
        s.push_str(&format!(
            "\nfwknop. side by side with {}, UDP port {SPA_PORT}; open = a TCP connect completes (one try every {} ms)\n\
             fwknopd: Debian's defaults (libpcap, at most 100 packets every 100 ms, iptables); fwknopd-udp: the same with ENABLE_UDP_SERVER\n",
            self.version,
            PROBE_WAIT.as_millis()
        ));
        s.push_str(&format!(
            "{:<12} {:>16} {:>16} {:>20}\n",
            "system", "packet→open µs", "client→open µs", "idle CPU s, RSS KiB"
        ));
        for sys in &self.systems {
            s.push_str(&format!(
                "{:<12} {:>16} {:>16} {:>20}\n",
                sys.name,
                format!("{} (max {:.0})", us(&sys.packet_open_us), max(&sys.packet_open_us)),
                us(&sys.client_open_us),
                format!("{:.2}, {}", sys.idle_cpu_s, sys.idle_rss_kib)
            ));
        }
        s.push_str(&format!(
            "{:<12} {:<18} {:>8} {:>12} {:>12} {:>14} {:>10}\n",
            "system", "flood", "opened", "open µs", "flood pps", "daemon CPU s", "RSS KiB"
        ));
        for sys in &self.systems {
            for f in &sys.floods {
                s.push_str(&format!(
                    "{:<12} {:<18} {:>8} {:>12} {:>12.0} {:>14} {:>10}\n",
                    sys.name,
                    f.kind,
                    format!("{}/{}", f.opened, f.tries),
                    us(&f.open_us),
                    f.pps_offered,
                    format!("{:.2} of {:.1}", f.daemon_cpu_s, f.window_s),
                    f.daemon_rss_kib
                ));
            }
        }
    }

    pub fn json(&self) -> Value {
        json!({
            "version": self.version,
            "systems": self.systems.iter().map(|s| json!({
                "name": s.name,
                "packet_open_us": s.packet_open_us,
                "client_open_us": s.client_open_us,
                "idle_cpu_s": s.idle_cpu_s,
                "idle_rss_kib": s.idle_rss_kib,
                "floods": s.floods.iter().map(|f| json!({
                    "kind": f.kind, "tries": f.tries, "opened": f.opened, "open_us": f.open_us,
                    "frames_sent": f.frames_sent, "pps_offered": f.pps_offered,
                    "window_s": f.window_s, "daemon_cpu_s": f.daemon_cpu_s,
                    "daemon_rss_kib": f.daemon_rss_kib,
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        })
    }

    pub fn notes(&self, notes: &mut Vec<String>) {
        for sys in &self.systems {
            for f in sys.floods.iter().filter(|f| f.opened < f.tries) {
                notes.push(format!(
                    "{}: the real client opened the door {} of {} times under a flood of {}",
                    sys.name, f.opened, f.tries, f.kind
                ));
            }
        }
    }
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(0.0, f64::max)
}

/// What the part needs of each system.
pub trait Door {
    fn pid(&self) -> u32;
    /// Shuts the door for the client again.
    fn close(&self) -> Result<()>;
    /// A fresh, valid SPA payload for the client.
    fn payload(&self) -> Result<Vec<u8>>;
    /// The client command, to run in the client's namespace.
    fn client(&self) -> Command;
    /// `n` datagrams of a flood of `kind` (0: random bytes of an SPA
    /// payload's size, 1: well formed with a wrong MAC).
    fn flood_payloads(&self, kind: usize, n: u64) -> Result<Vec<Vec<u8>>>;
}

pub fn run(settings: &Settings) -> Result<Fwknop> {
    let version =
        sh("fwknopd", &["--version"]).context("fwknopd (cargo xtask setup installs it)")?;
    let mut out = Fwknop { version: version.trim().to_owned(), systems: Vec::new() };
    for name in ["knock-xdp", "fwknopd", "fwknopd-udp"] {
        let lab = Lab::new();
        lab.tcp_echo(lab::SERVER_V4, SERVICE);
        let door: Box<dyn Door> = match name {
            "knock-xdp" => Box::new(doors::KnockXdp::new(&lab)?),
            "fwknopd" => Box::new(doors::Fwknopd::new(&lab, false)?),
            _ => Box::new(doors::Fwknopd::new(&lab, true)?),
        };
        out.systems.push(measure(name, &lab, door.as_ref(), settings)?);
    }
    Ok(out)
}

fn measure(name: &str, lab: &Lab, door: &dyn Door, settings: &Settings) -> Result<System> {
    let mut sys = System { name: name.into(), ..Default::default() };
    let pid = door.pid();
    let cpu0 = proc_cpu_s(pid)?;
    let idle_start = Instant::now();
    thread::sleep(Duration::from_secs(settings.footprint_secs));
    for i in 0..settings.fwknop_tries {
        let opened = if i % 2 == 0 { try_packet(lab, door)? } else { try_client(lab, door)? };
        let Some(open) = opened else { bail!("{name}: the door did not open in a quiet lab") };
        let samples = if i % 2 == 0 { &mut sys.packet_open_us } else { &mut sys.client_open_us };
        samples.push(open.as_secs_f64() * 1e6);
    }
    // CPU over the idle window and the quiet tries, scaled to the window.
    let spent = idle_start.elapsed().as_secs_f64();
    sys.idle_cpu_s = (proc_cpu_s(pid)? - cpu0) * settings.footprint_secs as f64 / spent;
    sys.idle_rss_kib = proc_rss_kib(pid)?;
    for (kind, label) in ["random datagrams", "wrong MACs"].into_iter().enumerate() {
        sys.floods.push(under_flood(lab, door, kind, label, settings.fwknop_tries.div_ceil(2))?);
    }
    Ok(sys)
}

/// A fresh payload sent from a socket in the client's namespace; the time
/// from its sending to the door open.
fn try_packet(lab: &Lab, door: &dyn Door) -> Result<Option<Duration>> {
    door.close()?;
    let payload = door.payload()?;
    lab.client.enter(move || {
        let (client, server) = addrs();
        ensure!(!connects(client, server, Duration::from_millis(200))?, "the door was open");
        let socket = UdpSocket::bind(SocketAddr::new(client, 0))?;
        let start = Instant::now();
        socket.send_to(&payload, SocketAddr::new(server.ip(), SPA_PORT))?;
        open_after(client, server, start, DEADLINE)
    })
}

/// The client command, started in the client's namespace; the time from
/// its start (its own start-up included) to the door open.
fn try_client(lab: &Lab, door: &dyn Door) -> Result<Option<Duration>> {
    door.close()?;
    let mut command = door.client();
    lab.client.enter(move || {
        let (client, server) = addrs();
        ensure!(!connects(client, server, Duration::from_millis(200))?, "the door was open");
        let start = Instant::now();
        let mut child = command.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
        let opened = open_after(client, server, start, DEADLINE);
        child.wait()?;
        opened
    })
}

fn addrs() -> (IpAddr, SocketAddr) {
    let client: IpAddr = lab::CLIENT_V4.parse().expect("an address");
    (client, SocketAddr::new(lab::SERVER_V4.parse().expect("an address"), SERVICE))
}

/// Spoofed datagrams to the SPA port, as fast as one thread sends them,
/// while the real client tries `tries` times.
fn under_flood(
    lab: &Lab,
    door: &dyn Door,
    kind: usize,
    label: &'static str,
    tries: usize,
) -> Result<Flood> {
    let macs = lab_macs(lab)?;
    let payloads = door.flood_payloads(kind, 4096)?;
    let stop = Arc::new(AtomicBool::new(false));
    let (iface, flag) = (lab.client_if.clone(), stop.clone());
    let pid = door.pid();
    let mut out = Flood { kind: label, tries, ..Default::default() };
    let cpu0 = proc_cpu_s(pid)?;
    let start = Instant::now();
    let sent = thread::scope(|scope| -> Result<u64> {
        let _stop = flood::StopOnDrop(stop.clone());
        let sender = scope.spawn(|| {
            lab.client.enter(move || {
                let mut sent = 0;
                while !flag.load(Ordering::Relaxed) {
                    sent += flood::send(&iface, 16_384, |i| {
                        let n = sent + i;
                        let src = flood::spoofed_source(n % (1 << 23), false);
                        let payload = &payloads[(n % 4096) as usize];
                        lab_udp(macs, src, SPA_PORT, 1024 + (n % 60_000) as u16, payload)
                    })?;
                }
                Ok::<u64, std::io::Error>(sent)
            })
        });
        thread::sleep(Duration::from_millis(300));
        for _ in 0..tries {
            if let Some(open) = try_packet(lab, door)? {
                out.opened += 1;
                out.open_us.push(open.as_secs_f64() * 1e6);
            }
            out.daemon_rss_kib = out.daemon_rss_kib.max(proc_rss_kib(pid)?);
        }
        stop.store(true, Ordering::Relaxed);
        Ok(sender.join().expect("the flood thread")?)
    })?;
    out.window_s = start.elapsed().as_secs_f64();
    out.daemon_cpu_s = proc_cpu_s(pid)? - cpu0;
    out.frames_sent = sent;
    out.pps_offered = sent as f64 / out.window_s;
    Ok(out)
}

/// A deterministic byte stream for flood payloads.
pub fn noise(i: u64, j: usize) -> u8 {
    (i.wrapping_mul(2_654_435_761).wrapping_add(j as u64 * 97) >> 7) as u8
}
