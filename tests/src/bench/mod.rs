//! The benchmarks behind `cargo xtask bench` (and, with tiny sizes, the
//! `bench_smoke` test). Every cost is a ratio to a no-op XDP program measured
//! side by side in the same run, because these machines are shared and noisy.
//!
//! One module per part; `--only PART` runs one:
//!
//! | part         | module         | what |
//! |--------------|----------------|------|
//! | `per-packet` | [`per_packet`] | every path through BPF_PROG_TEST_RUN, interleaved with the no-op |
//! | `spa`        | [`spa`]        | SPA datagrams per packet; a valid datagram to an open door on a veth lab |
//! | `scale`      | [`scale`]      | many distinct sources through the LRU maps |
//! | `clients`    | [`clients`]    | 4,096 clients: install, rotation, knock steps, map memory |
//! | `throughput` | [`throughput`] | live frames dropped by knock-xdp, iptables, nftables: rate and CPU per packet |
//! | `footprint`  | [`footprint`]  | the real daemon's RSS and CPU, idle and under a flood |
//! | `latency`    | [`latency`]    | last knock to open door through the real daemon |
//! | `fwknop`     | [`fwknop`]     | fwknopd beside knock-xdp's SPA: latency, floods, daemon CPU and RSS |
//!
//! Shared: [`harness`] (test runs, the no-op, the knock fixture, rows),
//! [`host`] (namespaces, CPU time, lab frames), [`live`] (live frames).

pub mod clients;
pub mod footprint;
pub mod fwknop;
pub mod harness;
pub mod host;
pub mod latency;
pub mod live;
pub mod per_packet;
pub mod scale;
pub mod spa;
pub mod throughput;

use anyhow::{Context as _, Result};
use knock_userspace::loader;
use serde_json::{Value, json};

pub use harness::{PathRow, median, verdict_name};

/// How much of everything to do.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `repeat` of each steady BPF_PROG_TEST_RUN.
    pub repeat: u32,
    /// Interleaved (no-op, path) pairs per row; the median is reported.
    pub runs: usize,
    /// Fresh sources per family for the one-packet rows (knock steps, valid SPA).
    pub fresh_samples: usize,
    /// Distinct sources pushed through the knock-state and allow maps.
    pub scale_sources: u32,
    /// Clients installed in the clients part.
    pub clients: u32,
    /// Frames per live-frames run (part 2).
    pub live_frames: u32,
    /// Live-frames rounds (each: knock-xdp, iptables, nftables, nothing, bare).
    pub live_runs: usize,
    /// Seconds of each daemon footprint window (idle, flood).
    pub footprint_secs: u64,
    /// Knocks (and SPA datagrams) timed for the latency to an open door.
    pub latency_knocks: usize,
    /// Tries per system and condition in the fwknop part.
    pub fwknop_tries: usize,
}

impl Settings {
    pub fn full() -> Self {
        Self {
            repeat: 1_000_000,
            runs: 7,
            fresh_samples: 5_000,
            scale_sources: 1_000_000,
            clients: 4_096,
            live_frames: 5_000_000,
            live_runs: 5,
            footprint_secs: 5,
            latency_knocks: 20,
            fwknop_tries: 20,
        }
    }

    pub fn quick() -> Self {
        Self {
            repeat: 1_000_000,
            runs: 5,
            fresh_samples: 1_000,
            scale_sources: 200_000,
            clients: 4_096,
            live_frames: 1_000_000,
            live_runs: 3,
            footprint_secs: 2,
            latency_knocks: 10,
            fwknop_tries: 8,
        }
    }

    /// For the smoke test: everything runs, nothing is measured well.
    pub fn smoke() -> Self {
        Self {
            repeat: 2_000,
            runs: 2,
            fresh_samples: 20,
            scale_sources: 2_000,
            clients: 64,
            live_frames: 20_000,
            live_runs: 1,
            footprint_secs: 1,
            latency_knocks: 2,
            fwknop_tries: 2,
        }
    }
}

/// The parts of the benchmark, to run some alone (`bench --only PART`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    PerPacket,
    Spa,
    Scale,
    Clients,
    Throughput,
    Footprint,
    Latency,
    Fwknop,
}

impl Part {
    /// In the order they run.
    pub const ALL: [Part; 8] = [
        Part::PerPacket,
        Part::Spa,
        Part::Scale,
        Part::Clients,
        Part::Throughput,
        Part::Footprint,
        Part::Latency,
        Part::Fwknop,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Part::PerPacket => "per-packet",
            Part::Spa => "spa",
            Part::Scale => "scale",
            Part::Clients => "clients",
            Part::Throughput => "throughput",
            Part::Footprint => "footprint",
            Part::Latency => "latency",
            Part::Fwknop => "fwknop",
        }
    }

    pub fn parse(name: &str) -> Option<Part> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }

    /// "per-packet, spa, ..." for messages.
    pub fn names() -> String {
        Self::ALL.map(Part::name).join(", ")
    }
}

/// What the parts that ran found; `None` for a part that did not run.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub machine: Value,
    pub settings: String,
    pub paths: Option<Vec<PathRow>>,
    pub spa: Option<spa::Spa>,
    pub scale: Option<scale::Scale>,
    pub clients: Option<clients::Clients>,
    pub throughput: Option<throughput::Throughput>,
    pub footprint: Option<footprint::Footprint>,
    pub latency: Option<latency::Latency>,
    pub fwknop: Option<fwknop::Fwknop>,
    pub notes: Vec<String>,
}

/// Runs every part.
pub fn run(settings: &Settings) -> Result<Report> {
    run_parts(settings, &Part::ALL)
}

pub fn run_parts(settings: &Settings, parts: &[Part]) -> Result<Report> {
    loader::ensure_bpffs()?;
    let mut r = Report {
        machine: host::machine(),
        settings: format!("{settings:?}"),
        ..Default::default()
    };
    for part in Part::ALL.into_iter().filter(|p| parts.contains(p)) {
        eprintln!("bench: {}", part.name());
        let context = || format!("bench part {}", part.name());
        match part {
            Part::PerPacket => r.paths = Some(per_packet::run(settings).with_context(context)?),
            Part::Spa => r.spa = Some(spa::run(settings).with_context(context)?),
            Part::Scale => r.scale = Some(scale::run(settings).with_context(context)?),
            Part::Clients => r.clients = Some(clients::run(settings).with_context(context)?),
            Part::Throughput => {
                r.throughput = Some(throughput::run(settings).with_context(context)?)
            }
            Part::Footprint => r.footprint = Some(footprint::run(settings).with_context(context)?),
            Part::Latency => r.latency = Some(latency::run(settings).with_context(context)?),
            Part::Fwknop => r.fwknop = Some(fwknop::run(settings).with_context(context)?),
        }
    }
    r.notes = notes(&r);
    Ok(r)
}

/// Every per-packet row of the report, whichever part made it.
pub fn all_rows(report: &Report) -> Vec<&PathRow> {
    let mut rows: Vec<&PathRow> = report.paths.iter().flatten().collect();
    rows.extend(report.spa.iter().flat_map(|s| &s.rows));
    rows.extend(report.scale.iter().flat_map(|s| &s.rows));
    rows.extend(report.clients.iter().flat_map(|c| &c.rows));
    rows
}

fn notes(report: &Report) -> Vec<String> {
    let mut notes = Vec::new();
    if let Some(scale) = &report.scale {
        scale.notes(&mut notes);
    }
    notes.extend(all_rows(report).into_iter().filter_map(PathRow::missed));
    if let Some(clients) = &report.clients {
        clients.notes(&mut notes);
    }
    if let Some(throughput) = &report.throughput {
        throughput.notes(&mut notes);
    }
    if let Some(fwknop) = &report.fwknop {
        fwknop.notes(&mut notes);
    }
    notes
}

/// The human-readable table.
pub fn table(report: &Report) -> String {
    let mut s = String::new();
    let m = &report.machine;
    s.push_str(&format!(
        "machine: Linux {}, {}, {} CPUs; {}\n",
        m["kernel"].as_str().unwrap_or(""),
        m["cpu"].as_str().unwrap_or(""),
        m["nproc"],
        m["iptables"].as_str().unwrap_or("")
    ));
    if let Some(paths) = &report.paths {
        s.push_str("\n1. per-packet cost (BPF_PROG_TEST_RUN), ratio to the no-op XDP program\n");
        s.push_str(&PathRow::header());
        s.push('\n');
        for r in paths {
            s.push_str(&r.line());
            s.push('\n');
        }
    }
    if let Some(spa) = &report.spa {
        spa.table(&mut s);
    }
    if let Some(throughput) = &report.throughput {
        throughput.table(&mut s);
    }
    if let Some(scale) = &report.scale {
        scale.table(&mut s);
    }
    if let Some(clients) = &report.clients {
        clients.table(&mut s);
    }
    if let Some(footprint) = &report.footprint {
        footprint.table(&mut s);
    }
    if let Some(latency) = &report.latency {
        latency.table(&mut s);
    }
    if let Some(fwknop) = &report.fwknop {
        fwknop.table(&mut s);
    }
    if !report.notes.is_empty() {
        s.push_str("\nnotes:\n");
        for n in &report.notes {
            s.push_str(&format!("- {n}\n"));
        }
    }
    s
}

/// The JSON written to `target/bench/results.json`: a key per part that ran.
pub fn to_json(report: &Report) -> Value {
    let mut out = json!({
        "machine": report.machine,
        "settings": report.settings,
        "notes": report.notes,
    });
    let mut put = |key: &str, value: Option<Value>| {
        if let Some(value) = value {
            out[key] = value;
        }
    };
    put(
        "per_packet",
        report.paths.as_ref().map(|p| Value::from(p.iter().map(PathRow::json).collect::<Vec<_>>())),
    );
    put("spa", report.spa.as_ref().map(spa::Spa::json));
    put("throughput", report.throughput.as_ref().map(throughput::Throughput::json));
    put("scale", report.scale.as_ref().map(scale::Scale::json));
    put("clients", report.clients.as_ref().map(clients::Clients::json));
    put("footprint", report.footprint.as_ref().map(footprint::Footprint::json));
    put("latency", report.latency.as_ref().map(latency::Latency::json));
    put("fwknop", report.fwknop.as_ref().map(fwknop::Fwknop::json));
    out
}
