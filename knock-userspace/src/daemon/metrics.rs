//! `--metrics-listen`: the counters in the Prometheus text exposition format.
//!
//! What is exported, and why no more: metrics may be reachable by strangers
//! (with `--metrics-public`), so no series may move with the progress of one
//! knock. A per-step series (knock outcomes, the knock-state map's size)
//! would tell a prober which of their guesses was a correct knock. So the
//! public series are the packet counters by verdict, openings, clients and
//! uptime, and they are published as a snapshot that the daemon rebuilds
//! every [`REFRESH_INTERVAL`] (one default knock slot): a scrape shows what
//! every packet of the last half minute did together, never one knock.
//!
//! Scrapes are answered from that snapshot by a server on a thread of its
//! own, with at most [`MAX_CONNECTIONS`] at a time, each given
//! [`CONNECTION_DEADLINE`]: a flood of connections can delay scrapes, never
//! the daemon's loop (rotation, events, control commands), and never takes
//! the file descriptors the daemon needs.
//!
//! Both halves are hand-written on purpose: four series need no metrics
//! library, and an HTTP server crate would bring its own connection handling
//! and request parsing, where the cap, the deadline and never reading the
//! request are what keep a public endpoint harmless.

use std::{collections::BTreeMap, fmt::Write as _, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{Context as _, Result};
use knock_common::maps::Counter;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    sync::{Semaphore, watch},
};
use tracing::{debug, warn};

use super::Daemon;

/// How often the snapshot is rebuilt: one default knock slot.
pub(super) const REFRESH_INTERVAL: Duration = Duration::from_secs(30);

/// Connections served at once; the rest wait in the listen queue.
const MAX_CONNECTIONS: usize = 256;

/// How long one connection may take to send its request and read the
/// answer; then it is closed.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(2);

/// Largest request read (the request itself is not looked at).
const MAX_REQUEST: usize = 4096;

/// The running metrics server: the daemon publishes snapshots through it.
pub(super) struct MetricsServer {
    snapshot: watch::Sender<Arc<str>>,
}

impl MetricsServer {
    /// Binds `addr` (so a start that cannot serve there is refused) and
    /// serves `first` until the next [`MetricsServer::publish`].
    pub(super) fn start(addr: SocketAddr, first: String) -> Result<Self> {
        let listener = std::net::TcpListener::bind(addr)
            .with_context(|| format!("cannot serve metrics on {addr}"))?;
        listener.set_nonblocking(true).context("cannot serve metrics")?;
        let (snapshot, latest) = watch::channel(Arc::from(first));
        std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                if let Err(err) = serve(listener, latest) {
                    warn!("metrics server stopped: {err:#}");
                }
            })
            .context("cannot start the metrics thread")?;
        Ok(Self { snapshot })
    }

    pub(super) fn publish(&self, text: String) {
        self.snapshot.send_replace(Arc::from(text));
    }
}

/// The server thread: its own runtime, one task per connection.
fn serve(listener: std::net::TcpListener, latest: watch::Receiver<Arc<str>>) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the metrics runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let slot = slots.clone().acquire_owned().await?;
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // Out of file descriptors, say: wait instead of spinning.
                    debug!("metrics: {err}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let body = latest.borrow().clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(CONNECTION_DEADLINE, answer(stream, &body)).await;
                drop(slot);
            });
        }
    })
}

/// Reads the request (any request gets the metrics) and answers.
async fn answer(mut stream: TcpStream, body: &str) {
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    // Up to the blank line that ends the headers; closing the connection
    // with the request unread would reset it before the client reads.
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < MAX_REQUEST {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if let Err(err) = stream.write_all(response.as_bytes()).await {
        debug!("metrics client: {err}");
    }
    let _ = stream.shutdown().await;
}

impl Daemon {
    /// Rebuilds the snapshot; on an error the last one stays.
    pub(super) fn refresh_metrics(&self) {
        let Some(server) = &self.metrics else { return };
        match self.metrics_snapshot() {
            Ok(text) => server.publish(text),
            Err(err) => warn!("metrics: {err:#}"),
        }
    }

    /// The public series. Packet counters come from `Counter::ALL` by name,
    /// so a new verdict shows up here without a change.
    pub(super) fn metrics_snapshot(&self) -> Result<String> {
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let mut packets: Vec<(String, u64)> = Vec::new();
        for (counter, value) in self.maps.counters()? {
            // A knock that was limited is exported as a knock: told apart,
            // the two would show a watcher whether a guess's port began a
            // sequence (a miss is limited, a step never). `status` keeps both.
            let counter = if counter == Counter::KnockLimited { Counter::Knock } else { counter };
            let labels = format!("{{verdict=\"{}\"}}", counter.name());
            match packets.iter_mut().find(|(seen, _)| *seen == labels) {
                Some((_, total)) => *total += value,
                None => packets.push((labels, value)),
            }
        }
        family(
            "knock_xdp_packets_total",
            "counter",
            "Packets the XDP program decided, by verdict.",
            &packets,
        );
        let opened = ["opened", "spa_opened"]
            .iter()
            .map(|kind| self.knock_outcomes.get(kind).copied().unwrap_or(0))
            .sum();
        family(
            "knock_xdp_opened_total",
            "counter",
            "Door openings: completed knock sequences and verified single-packet authorizations.",
            &[(String::new(), opened)],
        );
        family(
            "knock_xdp_clients",
            "gauge",
            "Clients allowed to knock.",
            &[(String::new(), self.clients.len() as u64)],
        );
        family(
            "knock_xdp_uptime_seconds",
            "gauge",
            "Seconds since the daemon started, when this snapshot was taken.",
            &[(String::new(), self.started.elapsed().as_secs())],
        );
        Ok(out)
    }
}

/// Every outcome starts at zero (only `opened` is exported; see the module docs).
pub(super) fn outcome_counters() -> BTreeMap<&'static str, u64> {
    knock_common::event::EventKind::ALL.into_iter().map(|k| (k.name(), 0)).collect()
}
