//! Part 5: knock-to-open latency through the real daemon, a static 3-knock
//! client: from the moment the last knock's SYN is sent to the moment
//! `connect` to the protected port completes (which includes that
//! connection's handshake; the handshake to an unprotected port is
//! reported beside it).

use std::{
    net::{IpAddr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use serde_json::{Value, json};

use super::{
    Settings,
    harness::{KNOCKS, PROTECTED, median},
    host::send_syn,
};
use crate::lab::{self, Entry, Instance, Lab};

#[derive(Clone, Debug, Default)]
pub struct Latency {
    pub samples_us: Vec<f64>,
    pub median_us: f64,
    pub max_us: f64,
    /// The same connect to an unprotected port: the handshake alone.
    pub handshake_median_us: f64,
}

impl Latency {
    pub fn table(&self, s: &mut String) {
        s.push_str(&format!(
            "\n5. knock-to-open latency over {} knocks (last knock sent → connect to the protected port done)\n",
            self.samples_us.len()
        ));
        s.push_str(&format!(
            "median {:.0} µs, max {:.0} µs; a plain handshake to an unprotected port: median {:.0} µs\n",
            self.median_us, self.max_us, self.handshake_median_us
        ));
    }

    pub fn json(&self) -> Value {
        json!({
            "samples_us": self.samples_us, "median_us": self.median_us, "max_us": self.max_us,
            "handshake_median_us": self.handshake_median_us,
        })
    }
}

pub fn run(settings: &Settings) -> Result<Latency> {
    let lab = Lab::new();
    lab.tcp_echo(lab::SERVER_V4, PROTECTED);
    lab.tcp_echo(lab::SERVER_V4, 8080);
    let mut daemon = Instance::new(&lab.server, Entry::NetnsExec);
    daemon.attach(&[&lab.server_if]);
    daemon.ok(&["protect", &format!("{PROTECTED}/tcp")]);
    let seq = KNOCKS.map(|p| p.to_string()).join(",");
    daemon.add_client("bench", &["--static", &seq]);
    let server: IpAddr = lab::SERVER_V4.parse()?;
    let client: IpAddr = lab::CLIENT_V4.parse()?;
    let timeout = Duration::from_secs(3);
    let mut samples = Vec::new();
    let mut handshakes = Vec::new();
    for _ in 0..settings.latency_knocks {
        daemon.cli(&["revoke", lab::CLIENT_V4]);
        let (open_us, hs_us) = lab.client.enter(move || -> Result<(f64, f64)> {
            // Closed first: the door must really be shut.
            ensure!(
                TcpStream::connect_timeout(
                    &SocketAddr::new(server, PROTECTED),
                    Duration::from_millis(200)
                )
                .is_err(),
                "the protected port was open before knocking"
            );
            for &port in &KNOCKS[..KNOCKS.len() - 1] {
                send_syn(client, SocketAddr::new(server, port))?;
            }
            let start = Instant::now();
            send_syn(client, SocketAddr::new(server, KNOCKS[KNOCKS.len() - 1]))?;
            let protected = SocketAddr::new(server, PROTECTED);
            open_then_handshake(start, protected, timeout, "after the last knock")
        })?;
        samples.push(open_us);
        handshakes.push(hs_us);
    }
    Ok(Latency {
        median_us: median(&samples),
        max_us: samples.iter().copied().fold(0.0, f64::max),
        handshake_median_us: median(&handshakes),
        samples_us: samples,
    })
}

/// µs from `start` to a completed connect to `protected` (the door open),
/// then a plain handshake with the unprotected echo service on port 8080 of
/// the same server, for comparison: (open µs, handshake µs).
pub(super) fn open_then_handshake(
    start: Instant,
    protected: SocketAddr,
    timeout: Duration,
    when: &str,
) -> Result<(f64, f64)> {
    let stream = TcpStream::connect_timeout(&protected, timeout)
        .with_context(|| format!("the door did not open {when}"))?;
    let open = start.elapsed().as_secs_f64() * 1e6;
    drop(stream);
    let start = Instant::now();
    TcpStream::connect_timeout(&SocketAddr::new(protected.ip(), 8080), timeout)?;
    Ok((open, start.elapsed().as_secs_f64() * 1e6))
}
