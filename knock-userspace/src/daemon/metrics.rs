//! `--metrics-listen`: the counters in the Prometheus text exposition format.

use std::{collections::BTreeMap, fmt::Write as _};

use anyhow::Result;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};
use tracing::debug;

use super::Daemon;

impl Daemon {
    /// Answers one scrape (any request gets the metrics) and closes.
    pub(super) async fn scrape(&mut self, mut stream: TcpStream) {
        // The request itself does not matter; read what is there without waiting.
        let mut buf = [0u8; 1024];
        let _ = tokio::time::timeout(std::time::Duration::from_millis(200), stream.read(&mut buf))
            .await;
        let (status, body) = match self.metrics() {
            Ok(body) => ("200 OK", body),
            Err(err) => ("500 Internal Server Error", format!("# {err:#}\n")),
        };
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        if let Err(err) = stream.write_all(response.as_bytes()).await {
            debug!("metrics client: {err}");
        }
    }

    fn metrics(&self) -> Result<String> {
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let packets: Vec<(String, u64)> = self
            .maps
            .counters()?
            .into_iter()
            .map(|(counter, value)| (format!("{{verdict=\"{}\"}}", counter.name()), value))
            .collect();
        family(
            "knock_xdp_packets_total",
            "counter",
            "Packets the XDP program decided, by verdict.",
            &packets,
        );
        let knocks: Vec<(String, u64)> = self
            .knock_outcomes
            .iter()
            .map(|(outcome, n)| (format!("{{outcome=\"{outcome}\"}}"), *n))
            .collect();
        family(
            "knock_xdp_knocks_total",
            "counter",
            "Knock outcomes reported by the program.",
            &knocks,
        );
        let maps = [
            ("allow", self.maps.allowed()?.len() as u64),
            ("flows", self.maps.flows()?.len() as u64),
            ("knock_state", self.maps.knock_states()?.len() as u64),
        ];
        let maps: Vec<(String, u64)> =
            maps.iter().map(|(m, n)| (format!("{{map=\"{m}\"}}"), *n)).collect();
        family("knock_xdp_map_entries", "gauge", "Entries in the program's maps.", &maps);
        family(
            "knock_xdp_clients",
            "gauge",
            "Clients allowed to knock.",
            &[(String::new(), self.clients.len() as u64)],
        );
        Ok(out)
    }
}

/// Every outcome starts at zero, so the series exist before the first knock.
pub(super) fn outcome_counters() -> BTreeMap<&'static str, u64> {
    knock_common::event::EventKind::ALL
        .into_iter()
        .filter(|k| *k != knock_common::event::EventKind::Progress)
        .map(|k| (k.name(), 0))
        .collect()
}
