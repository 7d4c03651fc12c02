//! The benchmarks behind `cargo xtask bench` (and, with tiny sizes, the
//! `bench_smoke` test). Every cost is a ratio to a no-op XDP program measured
//! side by side in the same run, because these machines are shared and noisy.
//!
//! 1. Per-packet cost through BPF_PROG_TEST_RUN, interleaved with the no-op.
//! 2. Throughput with live frames (`BPF_F_TEST_XDP_LIVE_FRAMES`) on a veth
//!    end in a namespace: knock-xdp dropping vs iptables raw, nftables, nothing.
//! 3. Scale: many distinct sources through the knock-state and allow maps.
//! 4. The real daemon's RSS and CPU, idle and during a flood.
//! 5. Knock-to-open latency through the real daemon.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    os::fd::{AsFd as _, AsRawFd as _},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use aya::{
    Ebpf,
    maps::{MapData, RingBuf},
    programs::{TestRun as _, TestRunAttrs, TestRunOptions, Xdp},
};
use knock_common::{
    decide::{XDP_DROP, XDP_PASS},
    maps::{ALLOW_MAX_ENTRIES, Counter, KNOCK_STATE_MAX_ENTRIES, MAP_EVENTS, Settings as Kernel},
    trie::KnockTable,
};
use knock_userspace::{
    clock, loader,
    maps::{self as kernel_maps, KernelMaps},
    ports::{Proto, ProtoPort},
};
use serde_json::{Value, json};

use crate::{
    frames::Frame,
    lab::{self, Entry, Instance, Lab},
};

const PROTECTED: u16 = 22;
const UNPROTECTED: u16 = 80;
const KNOCKS: [u16; 3] = [61001, 62002, 63003];
const SEQ_INDEX: u32 = 5;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
const HOUR_NS: u64 = 3_600_000_000_000;

/// How much of everything to do.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `repeat` of each BPF_PROG_TEST_RUN in part 1.
    pub repeat: u32,
    /// Interleaved (no-op, path) pairs per row; the median is reported.
    pub runs: usize,
    /// Fresh sources per family for the knock-step rows (one packet each).
    pub fresh_samples: usize,
    /// Distinct sources pushed through the knock-state and allow maps.
    pub scale_sources: u32,
    /// Frames per live-frames run (part 2).
    pub live_frames: u32,
    /// Live-frames rounds (each: knock-xdp, iptables, nftables, nothing).
    pub live_runs: usize,
    /// Seconds of each daemon footprint window (idle, flood).
    pub footprint_secs: u64,
    /// Knocks timed for the knock-to-open latency.
    pub latency_knocks: usize,
}

impl Settings {
    pub fn full() -> Self {
        Self {
            repeat: 1_000_000,
            runs: 7,
            fresh_samples: 5_000,
            scale_sources: 1_000_000,
            live_frames: 5_000_000,
            live_runs: 5,
            footprint_secs: 5,
            latency_knocks: 20,
        }
    }

    pub fn quick() -> Self {
        Self {
            repeat: 1_000_000,
            runs: 5,
            fresh_samples: 1_000,
            scale_sources: 200_000,
            live_frames: 1_000_000,
            live_runs: 3,
            footprint_secs: 2,
            latency_knocks: 10,
        }
    }

    /// For the smoke test: everything runs, nothing is measured well.
    pub fn smoke() -> Self {
        Self {
            repeat: 2_000,
            runs: 2,
            fresh_samples: 20,
            scale_sources: 2_000,
            live_frames: 20_000,
            live_runs: 1,
            footprint_secs: 1,
            latency_knocks: 2,
        }
    }
}

/// One row of part 1 (or of the scale part).
#[derive(Clone, Debug)]
pub struct PathRow {
    pub name: String,
    pub family: &'static str,
    /// Exactly what the row measures.
    pub what: String,
    pub verdict: u32,
    /// Median ns per packet of the path.
    pub ns: f64,
    /// Median ns per packet of the no-op program, measured interleaved.
    pub baseline_ns: f64,
    /// Median of the per-pair ratios (or, for one-packet rows, see `method`).
    pub ratio: f64,
    pub goal: Option<f64>,
    /// `repeat` (steady state, kernel average over `repeat`) or `fresh`
    /// (one packet per run, see [`fresh_rows`]).
    pub method: String,
    pub samples: usize,
}

impl PathRow {
    pub fn meets_goal(&self) -> Option<bool> {
        self.goal.map(|g| self.ratio <= g)
    }

    fn json(&self) -> Value {
        json!({
            "name": self.name, "family": self.family, "what": self.what,
            "verdict": verdict_name(self.verdict), "ns": self.ns,
            "baseline_ns": self.baseline_ns, "ratio": self.ratio, "goal": self.goal,
            "meets_goal": self.meets_goal(), "method": self.method, "samples": self.samples,
        })
    }
}

#[derive(Clone, Debug)]
pub struct ThroughputRow {
    pub name: String,
    /// Median packets per second over the runs.
    pub pps: f64,
    /// Median of the per-round ratios to the iptables raw rule.
    pub ratio_to_iptables: f64,
    /// How the drops (or passes) were checked.
    pub check: String,
}

#[derive(Clone, Debug, Default)]
pub struct Scale {
    pub sources: u32,
    pub knock_state_entries: usize,
    pub allow_entries: usize,
    pub map_memlock: Vec<(String, u32, u64)>,
    pub fill_knock_state_s: f64,
    pub fill_allow_s: f64,
    pub rows: Vec<PathRow>,
    pub sweep_scan_ms: f64,
    pub sweep_delete_ms: f64,
    pub sweep_deleted: usize,
}

#[derive(Clone, Debug, Default)]
pub struct Footprint {
    pub pid: u32,
    pub rss_idle_kib: u64,
    pub rss_flood_kib: u64,
    pub cpu_idle_s: f64,
    pub cpu_flood_s: f64,
    pub window_s: f64,
    pub flood_frames_sent: u64,
    pub flood_pps_offered: f64,
    pub flood_dropped_counted: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Latency {
    pub samples_us: Vec<f64>,
    pub median_us: f64,
    pub max_us: f64,
    /// The same connect to an unprotected port: the handshake alone.
    pub handshake_median_us: f64,
}

#[derive(Clone, Debug, Default)]
pub struct Report {
    pub machine: Value,
    pub settings: String,
    pub paths: Vec<PathRow>,
    pub throughput: Vec<ThroughputRow>,
    pub live_frames: u32,
    pub scale: Scale,
    pub footprint: Footprint,
    pub latency: Latency,
    pub notes: Vec<String>,
}

/// Runs every part.
pub fn run(settings: &Settings) -> Result<Report> {
    run_parts(settings, &Part::ALL)
}

/// The parts of the benchmark, to run some alone (`bench --only PART`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    PerPacket,
    Throughput,
    Scale,
    Footprint,
    Latency,
}

impl Part {
    pub const ALL: [Part; 5] =
        [Part::PerPacket, Part::Scale, Part::Throughput, Part::Footprint, Part::Latency];

    pub fn parse(name: &str) -> Option<Part> {
        Some(match name {
            "per-packet" => Part::PerPacket,
            "throughput" => Part::Throughput,
            "scale" => Part::Scale,
            "footprint" => Part::Footprint,
            "latency" => Part::Latency,
            _ => return None,
        })
    }
}

pub fn run_parts(settings: &Settings, parts: &[Part]) -> Result<Report> {
    loader::ensure_bpffs()?;
    let mut report = Report {
        machine: machine(),
        settings: format!("{settings:?}"),
        live_frames: settings.live_frames,
        ..Default::default()
    };
    if parts.contains(&Part::PerPacket) {
        eprintln!("bench: per-packet cost (BPF_PROG_TEST_RUN)");
        report.paths = per_packet(settings).context("part 1, per-packet cost")?;
    }
    if parts.contains(&Part::Scale) {
        eprintln!("bench: scale");
        report.scale = scale(settings).context("part 3, scale")?;
    }
    if parts.contains(&Part::Throughput) {
        eprintln!("bench: throughput (live frames on a veth)");
        report.throughput = throughput(settings).context("part 2, throughput")?;
    }
    if parts.contains(&Part::Footprint) {
        eprintln!("bench: daemon footprint");
        report.footprint = footprint(settings).context("part 4, daemon footprint")?;
    }
    if parts.contains(&Part::Latency) {
        eprintln!("bench: knock-to-open latency");
        report.latency = latency(settings).context("part 5, latency")?;
    }
    report.notes = notes(&report);
    Ok(report)
}

// ---------------------------------------------------------------- helpers

fn machine() -> Value {
    let uname = Command::new("uname")
        .arg("-r")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_owned())
        .unwrap_or_default();
    let nproc = thread::available_parallelism().map_or(0, |n| n.get());
    let iptables = Command::new("iptables")
        .arg("-V")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    json!({ "kernel": uname, "cpu": cpu, "nproc": nproc, "iptables": iptables })
}

pub fn verdict_name(v: u32) -> &'static str {
    match v {
        XDP_PASS => "PASS",
        XDP_DROP => "DROP",
        _ => "OTHER",
    }
}

pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// One BPF_PROG_TEST_RUN; returns the verdict and the kernel-reported
/// average ns per repeat (`bpf_test_timer`: time spent running the program
/// `repeat` times, integer-divided by `repeat`).
fn test_run(prog: &Xdp, frame: &[u8], repeat: u32) -> Result<(u32, f64)> {
    let result = prog
        .test_run(TestRunOptions { data_in: Some(frame), repeat, ..Default::default() })
        .context("BPF_PROG_TEST_RUN")?;
    Ok((result.return_value, result.duration.as_nanos() as f64))
}

/// The no-op program, loaded.
fn load_noop() -> Result<Ebpf> {
    let mut ebpf = Ebpf::load(loader::NOOP_OBJECT).context("cannot load the no-op object")?;
    noop_prog(&mut ebpf)?.load().context("the kernel refused the no-op program")?;
    Ok(ebpf)
}

fn noop_prog(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    let program = ebpf
        .program_mut("noop")
        .ok_or_else(|| anyhow!("the no-op object has no program named noop"))?;
    Ok(program.try_into()?)
}

/// The knock program with port 22/tcp protected and a 3-step TCP sequence
/// installed (index 5, a rotating slot, so completing it claims a used
/// record like a real one).
struct Knock {
    ebpf: Ebpf,
    maps: KernelMaps,
    table: KnockTable,
    events: RingBuf<MapData>,
}

impl Knock {
    fn new() -> Result<Self> {
        let mut ebpf = loader::load()?;
        let mut maps = KernelMaps::take(&mut ebpf)?;
        let events =
            RingBuf::try_from(ebpf.take_map(MAP_EVENTS).ok_or_else(|| anyhow!("no EVENTS map"))?)?;
        let protected = [ProtoPort { port: PROTECTED, proto: Proto::Tcp }].into();
        maps.set_protected(&Default::default(), &protected)?;
        maps.set_settings(config(0))?;
        Ok(Self { ebpf, maps, table: KnockTable::new(), events })
    }

    fn prog(&mut self) -> Result<&mut Xdp> {
        loader::xdp(&mut self.ebpf)
    }

    fn install_sequence(&mut self) -> Result<()> {
        let now = clock::boot_ns();
        let valid = (now.saturating_sub(1_000_000_000), now + 10 * HOUR_NS);
        crate::testrun::install_tcp_sequence(
            &mut self.maps,
            &mut self.table,
            SEQ_INDEX,
            42,
            7,
            &KNOCKS,
            valid,
        );
        Ok(())
    }

    fn counter(&self, which: Counter) -> Result<u64> {
        Ok(self.maps.counters()?.into_iter().find(|(c, _)| *c == which).map_or(0, |(_, n)| n))
    }

    /// Empties the event ring buffer, as the daemon would.
    fn drain_events(&mut self) {
        while self.events.next().is_some() {}
    }

    fn map_ids(&mut self) -> Result<Vec<u32>> {
        Ok(self.prog()?.info()?.map_ids()?.unwrap_or_default())
    }
}

fn config(idle_timeout_ns: u64) -> Kernel {
    Kernel {
        open_window_ns: HOUR_NS,
        knock_timeout_ns: 10_000_000_000,
        idle_timeout_ns,
        close_grace_ns: 10_000_000_000,
        ..Kernel::default()
    }
}

fn tcp(src: IpAddr, dst: IpAddr, port: u16, flags: u8) -> Vec<u8> {
    Frame { tcp_flags: flags, ..Frame::new(src, dst, Proto::Tcp, port) }.build()
}

struct Family {
    name: &'static str,
    server: IpAddr,
    stranger: IpAddr,
    allowed: IpAddr,
    flow: IpAddr,
    /// The i-th fresh source of this family.
    fresh: fn(u32) -> IpAddr,
}

fn families() -> [Family; 2] {
    [
        Family {
            name: "ipv4",
            server: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            stranger: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 12)),
            allowed: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)),
            flow: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 20)),
            fresh: |i| IpAddr::V4(Ipv4Addr::from(0x6440_0000 + i)),
        },
        Family {
            name: "ipv6",
            server: "2001:db8::1".parse().unwrap(),
            stranger: "2001:db8::12".parse().unwrap(),
            allowed: "2001:db8::10".parse().unwrap(),
            flow: "2001:db8::20".parse().unwrap(),
            fresh: |i| IpAddr::V6(Ipv6Addr::from(0x2001_0db8_0100_u128 << 80 | u128::from(i))),
        },
    ]
}

/// `runs` interleaved pairs (no-op, path) of `repeat` packets each; checks
/// every verdict and that `counter` moved once per packet.
#[expect(clippy::too_many_arguments, reason = "one call site per row kind")]
fn steady_row(
    knock: &mut Knock,
    noop: &Xdp,
    settings: &Settings,
    name: &str,
    family: &'static str,
    what: &str,
    frame: &[u8],
    expected: (u32, Counter),
    goal: Option<f64>,
) -> Result<PathRow> {
    let before = knock.counter(expected.1)?;
    let mut path_ns = Vec::new();
    let mut base_ns = Vec::new();
    let mut ratios = Vec::new();
    for _ in 0..settings.runs {
        let (_, base) = test_run(noop, frame, settings.repeat)?;
        let (verdict, ns) = test_run(knock.prog()?, frame, settings.repeat)?;
        ensure!(
            verdict == expected.0,
            "{name} {family}: verdict {} instead of {}",
            verdict_name(verdict),
            verdict_name(expected.0)
        );
        path_ns.push(ns);
        base_ns.push(base);
        ratios.push(ns / base.max(1.0));
    }
    let moved = knock.counter(expected.1)? - before;
    let packets = settings.runs as u64 * u64::from(settings.repeat);
    ensure!(
        moved == packets,
        "{name} {family}: counter {} moved by {moved}, expected {packets}: the path is not the one measured",
        expected.1.name()
    );
    Ok(PathRow {
        name: name.to_owned(),
        family,
        what: what.to_owned(),
        verdict: expected.0,
        ns: median(&path_ns),
        baseline_ns: median(&base_ns),
        ratio: median(&ratios),
        goal,
        method: format!(
            "repeat={} x {} interleaved runs, kernel-reported ns/packet",
            settings.repeat, settings.runs
        ),
        samples: settings.runs,
    })
}

// ---------------------------------------------------------------- part 1

/// Part 1: every path of the program, IPv4 and IPv6.
pub fn per_packet(settings: &Settings) -> Result<Vec<PathRow>> {
    let mut knock = Knock::new()?;
    let mut noop_ebpf = load_noop()?;
    let noop = noop_prog(&mut noop_ebpf)?;
    let mut rows = Vec::new();
    let fams = families();
    let later = clock::boot_ns() + 10 * HOUR_NS;
    for fam in &fams {
        knock.maps.allow(fam.allowed, later)?;
        // Seeded like an established connection: source port 40000 (frames'
        // default) to 22.
        knock
            .maps
            .seed_flows(&[kernel_maps::tcp_flow(fam.flow, 40000, PROTECTED)], clock::boot_ns())?;
    }
    // The sequence is installed from the start, so its knock-port flags are
    // live for every row; no knock happens until the knock rows, so "no
    // knock in progress anywhere" holds for the rows before them.
    knock.install_sequence()?;

    // A baseline row per family (the no-op on the unrelated frame).
    for fam in &fams {
        let frame = tcp(fam.stranger, fam.server, UNPROTECTED, TCP_ACK);
        let mut base = Vec::new();
        for _ in 0..settings.runs {
            let (verdict, ns) = test_run(noop, &frame, settings.repeat)?;
            ensure!(verdict == XDP_PASS, "the no-op program did not pass");
            base.push(ns);
        }
        let b = median(&base);
        rows.push(PathRow {
            name: "no-op baseline".into(),
            family: fam.name,
            what: "an XDP program that returns XDP_PASS without reading the frame".into(),
            verdict: XDP_PASS,
            ns: b,
            baseline_ns: b,
            ratio: 1.0,
            goal: None,
            method: format!("repeat={} x {} runs", settings.repeat, settings.runs),
            samples: settings.runs,
        });
    }

    for fam in &fams {
        knock.maps.set_settings(config(0))?;
        rows.push(steady_row(
            &mut knock,
            noop,
            settings,
            "unrelated",
            fam.name,
            "TCP ACK from a stranger to an unprotected port (80): parse, one port-flags array load",
            &tcp(fam.stranger, fam.server, UNPROTECTED, TCP_ACK),
            (XDP_PASS, Counter::Passed),
            Some(1.3),
        )?);
        rows.push(steady_row(
            &mut knock,
            noop,
            settings,
            "stranger",
            fam.name,
            "SYN from a stranger to protected port 22, no knock in progress anywhere: flow miss, allow miss, LPM miss",
            &tcp(fam.stranger, fam.server, PROTECTED, TCP_SYN),
            (XDP_DROP, Counter::DroppedProtected),
            Some(1.5),
        )?);
        rows.push(steady_row(
            &mut knock,
            noop,
            settings,
            "allowed source",
            fam.name,
            "SYN from an allowed source to 22, idle timeout 0 so every repeat takes the allow path: \
             flow hit but idle, allow hit, flow written",
            &tcp(fam.allowed, fam.server, PROTECTED, TCP_SYN),
            (XDP_PASS, Counter::PassedAllowed),
            Some(2.5),
        )?);
        knock.maps.set_settings(config(HOUR_NS))?;
        rows.push(steady_row(
            &mut knock,
            noop,
            settings,
            "open flow",
            fam.name,
            "ACK on an open flow to 22 from a source not in the allow map (idle timeout 1h): flow hit, flow refreshed",
            &tcp(fam.flow, fam.server, PROTECTED, TCP_ACK),
            (XDP_PASS, Counter::PassedFlow),
            Some(2.5),
        )?);
        knock.maps.set_settings(config(0))?;
    }

    // Knock steps: each packet changes the source's state, so a repeated
    // frame cannot measure a step. One packet per run from a fresh source.
    for (i, fam) in fams.iter().enumerate() {
        let steady_base = baseline_of(&rows, fam.name);
        rows.extend(fresh_rows(
            &mut knock,
            noop,
            settings,
            fam,
            (i as u32) << 24,
            steady_base,
            "",
        )?);
        // After the fresh runs the last source's state says "completed": a
        // repeated SYN to its first knock port is a new first knock that ends
        // the old state, then the next repeat is a retransmission... so take a
        // source that knocked the first step only.
        let src = (fam.fresh)(0x00ff_ffff);
        let first = tcp(src, fam.server, KNOCKS[0], TCP_SYN);
        test_run(knock.prog()?, &first, 1)?;
        rows.push(steady_row(
            &mut knock,
            noop,
            settings,
            "knock retransmission",
            fam.name,
            "the first knock's SYN again from a source that just sent it: state hit, recognised as a retransmission",
            &first,
            (XDP_PASS, Counter::Knock),
            Some(3.0),
        )?);
    }
    Ok(rows)
}

fn baseline_of(rows: &[PathRow], family: &str) -> f64 {
    rows.iter()
        .find(|r| r.family == family && r.name == "no-op baseline")
        .map_or(f64::NAN, |r| r.ns)
}

/// The three knock steps, each from a source in exactly the state before
/// that step: for every sample a fresh source knocks the whole sequence, one
/// BPF_PROG_TEST_RUN (repeat=1) per packet, each paired with a repeat=1 run
/// of the no-op on the same frame. With repeat=1 the kernel's figure includes
/// the fixed cost of its timer (two clock reads), so the row reports the
/// median excess over the paired no-op and the estimated per-packet cost
/// `steady baseline + excess`, whose ratio to the steady baseline is the one
/// compared with the goal. Every final step admits the source (the used
/// record is cleared between samples and events drained, as the daemon would).
fn fresh_rows(
    knock: &mut Knock,
    noop: &Xdp,
    settings: &Settings,
    fam: &Family,
    source_base: u32,
    steady_base: f64,
    label: &str,
) -> Result<Vec<PathRow>> {
    let steps = KNOCKS.len();
    let mut excess = vec![Vec::new(); steps];
    let mut raw = vec![Vec::new(); steps];
    let mut base = vec![Vec::new(); steps];
    let knocks_before = knock.counter(Counter::Knock)?;
    let allowed_before = knock.maps.allowed()?.len();
    for i in 0..settings.fresh_samples {
        let src = (fam.fresh)(source_base + i as u32);
        for (step, &port) in KNOCKS.iter().enumerate() {
            let frame = tcp(src, fam.server, port, TCP_SYN);
            // Alternate the order so neither side always runs second.
            let (b, (verdict, ns)) = if i % 2 == 0 {
                let b = test_run(noop, &frame, 1)?.1;
                (b, test_run(knock.prog()?, &frame, 1)?)
            } else {
                let r = test_run(knock.prog()?, &frame, 1)?;
                (test_run(noop, &frame, 1)?.1, r)
            };
            ensure!(verdict == XDP_PASS, "a knock was not passed");
            excess[step].push(ns - b);
            raw[step].push(ns);
            base[step].push(b);
        }
        knock.maps.prune_used(|_| false)?;
        knock.drain_events();
    }
    let n = settings.fresh_samples;
    ensure!(
        knock.counter(Counter::Knock)? - knocks_before == (n * steps) as u64,
        "knock counter mismatch"
    );
    let admitted = knock.maps.allowed()?.len() - allowed_before;
    ensure!(
        admitted == n.min(ALLOW_MAX_ENTRIES as usize - allowed_before) || label.contains("full"),
        "only {admitted} of {n} completed sequences admitted their source"
    );
    let names = ["knock first step", "knock middle step", "knock final step"];
    let whats = [
        "SYN to the first knock port from a source with no state: state miss, step lookup, state created, event",
        "SYN to the second knock port from a source after step 1: state hit, step lookup, state updated, event",
        "SYN to the last knock port after step 2: state hit, step lookup, sequence check, used record claimed, \
         source admitted, event",
    ];
    Ok((0..steps)
        .map(|s| {
            let ex = median(&excess[s]);
            PathRow {
                name: format!("{}{label}", names[s]),
                family: fam.name,
                what: whats[s].into(),
                verdict: XDP_PASS,
                ns: steady_base + ex,
                baseline_ns: steady_base,
                ratio: (steady_base + ex) / steady_base,
                goal: Some(3.0),
                method: format!(
                    "fresh: {n} sources x 1 packet (repeat=1); raw median {:.0} ns vs paired no-op {:.0} ns; \
                     ns = steady no-op + median excess {:.1} ns",
                    median(&raw[s]),
                    median(&base[s]),
                    ex
                ),
                samples: n,
            }
        })
        .collect())
}

// ---------------------------------------------------------------- part 3

fn memlock_of(id: u32) -> Result<(String, u64)> {
    let map = MapData::from_id(id)?;
    let name = map.info()?.name_as_str().unwrap_or("?").to_owned();
    let fd = map.fd().as_fd().as_raw_fd();
    let fdinfo = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
    let memlock = fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .ok_or_else(|| anyhow!("no memlock in fdinfo"))?
        .trim()
        .parse()?;
    Ok((name, memlock))
}

/// Part 3: many distinct sources through the LRU maps.
pub fn scale(settings: &Settings) -> Result<Scale> {
    let mut knock = Knock::new()?;
    let mut noop_ebpf = load_noop()?;
    let noop = noop_prog(&mut noop_ebpf)?;
    knock.install_sequence()?;
    let fam = &families()[0];
    let mut out = Scale { sources: settings.scale_sources, ..Default::default() };

    // Maps are preallocated: memlock is the same empty or full.
    for id in knock.map_ids()? {
        let (name, bytes) = memlock_of(id)?;
        out.map_memlock.push((name, id, bytes));
    }

    // A stranger SYN while a knock is in progress somewhere: the state
    // lookup (a miss) is on its path. First with a near-empty map.
    let stranger = tcp(fam.stranger, fam.server, PROTECTED, TCP_SYN);
    let warm = tcp((fam.fresh)(0x00ff_fff0), fam.server, KNOCKS[0], TCP_SYN);
    test_run(knock.prog()?, &warm, 1)?;
    let mut row = steady_row(
        &mut knock,
        noop,
        settings,
        "stranger, knock active, 1 state entry",
        fam.name,
        "SYN from a stranger to 22 while a knock is in progress: state miss, flow miss, allow miss, LPM miss",
        &stranger,
        (XDP_DROP, Counter::DroppedProtected),
        Some(1.5),
    )?;
    row.method.push_str(" (KNOCK_STATE holds 1 entry)");
    out.rows.push(row);

    // Fill the knock-state map through the program: N distinct sources each
    // send a first knock (one test run each, so the kernel's own LRU does
    // the evicting).
    let start = Instant::now();
    let mut frame = tcp((fam.fresh)(0), fam.server, KNOCKS[0], TCP_SYN);
    for i in 0..settings.scale_sources {
        // IPv4 source address: bytes 26..30 of an untagged frame.
        frame[26..30].copy_from_slice(&(0x0a00_0000_u32 + i).to_be_bytes());
        let (verdict, _) = test_run(knock.prog()?, &frame, 1)?;
        ensure!(verdict == XDP_PASS, "a first knock was not passed");
        if i % 4096 == 0 {
            knock.drain_events();
        }
    }
    knock.drain_events();
    out.fill_knock_state_s = start.elapsed().as_secs_f64();
    out.knock_state_entries = knock.maps.knock_states()?.len();

    // Fill the allow map from userspace (as `allow` would), deadlines in
    // the future; the allowed source of the rows goes in last.
    let start = Instant::now();
    let later = clock::boot_ns() + HOUR_NS;
    for i in 0..settings.scale_sources {
        let addr = IpAddr::V4(Ipv4Addr::from(0x0b00_0000_u32 + i));
        knock.maps.allow(addr, later)?;
    }
    knock.maps.allow(fam.allowed, later)?;
    out.fill_allow_s = start.elapsed().as_secs_f64();
    out.allow_entries = knock.maps.allowed()?.len();

    let mut row = steady_row(
        &mut knock,
        noop,
        settings,
        "stranger, knock active, full maps",
        fam.name,
        "the same SYN from a stranger to 22, KNOCK_STATE and ALLOW full",
        &stranger,
        (XDP_DROP, Counter::DroppedProtected),
        Some(1.5),
    )?;
    row.method.push_str(&format!(" (KNOCK_STATE {} entries)", out.knock_state_entries));
    out.rows.push(row);
    knock.maps.set_settings(config(0))?;
    out.rows.push(steady_row(
        &mut knock,
        noop,
        settings,
        "allowed source, full allow map",
        fam.name,
        "SYN from an allowed source to 22 with ALLOW full (idle timeout 0: allow path every repeat)",
        &tcp(fam.allowed, fam.server, PROTECTED, TCP_SYN),
        (XDP_PASS, Counter::PassedAllowed),
        Some(2.5),
    )?);
    // Knock steps from fresh sources into the full LRU (each first step evicts).
    out.rows.extend(fresh_rows(
        &mut knock,
        noop,
        settings,
        fam,
        0x00c0_0000,
        baseline_of_noop(noop, &stranger, settings)?,
        ", full maps",
    )?);

    // The sweep over a full allow map: nothing expired (a scan), then
    // everything expired (a scan and a delete per entry).
    let start = Instant::now();
    let none = knock.maps.remove_allowed(|_, e| !e.admits(0))?;
    out.sweep_scan_ms = start.elapsed().as_secs_f64() * 1e3;
    ensure!(none.is_empty(), "sweep(0) removed entries");
    let start = Instant::now();
    out.sweep_deleted = knock.maps.remove_allowed(|_, e| !e.admits(u64::MAX))?.len();
    out.sweep_delete_ms = start.elapsed().as_secs_f64() * 1e3;
    Ok(out)
}

fn baseline_of_noop(noop: &Xdp, frame: &[u8], settings: &Settings) -> Result<f64> {
    let mut b = Vec::new();
    for _ in 0..settings.runs {
        b.push(test_run(noop, frame, settings.repeat)?.1);
    }
    Ok(median(&b))
}

// ---------------------------------------------------------------- part 2

/// The IPv4 header checksum, and the TCP checksum, of an untagged frame, so
/// the stack accepts it (`ip_rcv` drops bad IPv4 header checksums before
/// any netfilter hook).
fn fix_checksums(frame: &mut [u8]) {
    fn fold(mut sum: u32) -> u16 {
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }
    fn add(bytes: &[u8]) -> u32 {
        bytes
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
            .sum()
    }
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    frame[24..26].fill(0);
    let ip = fold(add(&frame[14..14 + ihl]));
    frame[24..26].copy_from_slice(&ip.to_be_bytes());
    let l4 = 14 + ihl;
    frame[l4 + 16..l4 + 18].fill(0);
    let len = (frame.len() - l4) as u32;
    let pseudo = add(&frame[26..34]) + u32::from(frame[23]) + len;
    let tcp = fold(pseudo + add(&frame[l4..]));
    frame[l4 + 16..l4 + 18].copy_from_slice(&tcp.to_be_bytes());
}

fn mac_of(netns: &lab::Netns, iface: &str) -> Result<[u8; 6]> {
    let out = netns.ip(&["-j", "link", "show", "dev", iface]);
    let v: Value = serde_json::from_str(&out)?;
    let text = v[0]["address"].as_str().ok_or_else(|| anyhow!("no MAC for {iface}"))?;
    let mut mac = [0u8; 6];
    for (b, part) in mac.iter_mut().zip(text.split(':')) {
        *b = u8::from_str_radix(part, 16)?;
    }
    Ok(mac)
}

/// A TCP SYN from the lab client to the lab server's port, as the server's
/// veth end receives it.
fn lab_syn(dst_mac: [u8; 6], src_mac: [u8; 6], port: u16) -> Vec<u8> {
    let mut frame =
        tcp(lab::CLIENT_V4.parse().unwrap(), lab::SERVER_V4.parse().unwrap(), port, TCP_SYN);
    frame[0..6].copy_from_slice(&dst_mac);
    frame[6..12].copy_from_slice(&src_mac);
    fix_checksums(&mut frame);
    frame
}

fn sh(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!("{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip netns exec NS program args...`
fn in_ns(ns: &str, program: &str, args: &[&str]) -> Result<String> {
    let mut all = vec!["netns", "exec", ns, program];
    all.extend_from_slice(args);
    sh("ip", &all)
}

/// TCP segments the namespace's stack received (`/proc/net/snmp`, InSegs).
fn tcp_in_segs(ns: &str) -> Result<u64> {
    let snmp = in_ns(ns, "cat", &["/proc/net/snmp"])?;
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next().unwrap_or(""), tcp.next().unwrap_or(""));
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "InSegs")
        .map(|(_, v)| v.parse::<u64>())
        .transpose()?
        .ok_or_else(|| anyhow!("no Tcp InSegs"))
}

/// One live-frames run of `frames` frames; packets per second (wall clock
/// around the syscall, which runs the whole batch loop, stack included).
fn live_run(prog: &Xdp, frame: &[u8], ifindex: u32, frames: u32) -> Result<f64> {
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
    // rx_queue_index, egress_ifindex.
    let md: [u32; 6] = [0, frame.len() as u32, 0, ifindex, 0, 0];
    let ctx: Vec<u8> = md.iter().flat_map(|v| v.to_ne_bytes()).collect();
    let start = Instant::now();
    prog.test_run(TestRunOptions {
        data_in: Some(frame),
        ctx_in: Some(&ctx),
        repeat: frames,
        attrs: TestRunAttrs::new().xdp_live_frames(64),
        ..Default::default()
    })
    .context("BPF_PROG_TEST_RUN with live frames")?;
    Ok(f64::from(frames) / start.elapsed().as_secs_f64())
}

/// Part 2: live frames injected at the server's veth end.
pub fn throughput(settings: &Settings) -> Result<Vec<ThroughputRow>> {
    let lab = Lab::new();
    let ns = lab.server.name.clone();
    let iface = lab.server_if.clone();
    let frame = lab_syn(
        mac_of(&lab.server, &lab.server_if)?,
        mac_of(&lab.client, &lab.client_if)?,
        PROTECTED,
    );
    let settings = settings.clone();
    let port = PROTECTED.to_string();
    let ipt_rule = ["-t", "raw", "-A", "PREROUTING", "-p", "tcp", "--dport", &port, "-j", "DROP"]
        .map(str::to_owned);
    lab.server.enter(move || -> Result<Vec<ThroughputRow>> {
        let ifindex = loader::if_index(&iface)?;
        let mut knock = Knock::new()?;
        let mut noop_ebpf = load_noop()?;
        let noop = noop_prog(&mut noop_ebpf)?;
        let names = [
            "knock-xdp (XDP_DROP)",
            "iptables raw DROP",
            "nftables prerouting -300 drop",
            "no filtering",
        ];
        let mut pps = vec![Vec::new(); 4];
        let mut ratios = vec![Vec::new(); 4];
        let mut segs = [0u64; 4];
        let mut ipt_counted = 0u64;
        let ipt: Vec<&str> = ipt_rule.iter().map(String::as_str).collect();
        let frames = settings.live_frames;
        for _ in 0..settings.live_runs {
            let mut round = [0.0; 4];
            // knock-xdp
            let s0 = tcp_in_segs(&ns)?;
            let d0 = knock.counter(Counter::DroppedProtected)?;
            round[0] = live_run(knock.prog()?, &frame, ifindex, frames)?;
            ensure!(
                knock.counter(Counter::DroppedProtected)? - d0 == u64::from(frames),
                "knock-xdp did not drop every live frame"
            );
            segs[0] += tcp_in_segs(&ns)? - s0;
            // iptables raw
            in_ns(&ns, "iptables", &ipt)?;
            let s0 = tcp_in_segs(&ns)?;
            round[1] = live_run(noop, &frame, ifindex, frames)?;
            segs[1] += tcp_in_segs(&ns)? - s0;
            let listing =
                in_ns(&ns, "iptables", &["-t", "raw", "-L", "PREROUTING", "-v", "-x", "-n"])?;
            ipt_counted += listing
                .lines()
                .find(|l| l.contains("DROP"))
                .and_then(|l| l.split_whitespace().next())
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
            let mut del = ipt.clone();
            del[2] = "-D";
            in_ns(&ns, "iptables", &del)?;
            // nftables
            in_ns(&ns, "nft", &["add", "table", "inet", "kbench"])?;
            in_ns(
                &ns,
                "nft",
                &[
                    "add",
                    "chain",
                    "inet",
                    "kbench",
                    "pre",
                    "{ type filter hook prerouting priority -300; }",
                ],
            )?;
            in_ns(
                &ns,
                "nft",
                &["add", "rule", "inet", "kbench", "pre", "tcp", "dport", &port, "drop"],
            )?;
            let s0 = tcp_in_segs(&ns)?;
            round[2] = live_run(noop, &frame, ifindex, frames)?;
            segs[2] += tcp_in_segs(&ns)? - s0;
            in_ns(&ns, "nft", &["delete", "table", "inet", "kbench"])?;
            // nothing
            let s0 = tcp_in_segs(&ns)?;
            round[3] = live_run(noop, &frame, ifindex, frames)?;
            segs[3] += tcp_in_segs(&ns)? - s0;
            for i in 0..4 {
                pps[i].push(round[i]);
                ratios[i].push(round[i] / round[1]);
            }
        }
        let total = frames as u64 * settings.live_runs as u64;
        ensure!(ipt_counted == total, "the iptables rule counted {ipt_counted} of {total} frames");
        ensure!(
            segs[0] == 0 && segs[1] == 0 && segs[2] == 0,
            "a filtered frame reached TCP ({segs:?})"
        );
        ensure!(
            segs[3] >= total * 9 / 10,
            "unfiltered frames did not reach TCP ({} of {total})",
            segs[3]
        );
        let checks = [
            format!("COUNTERS dropped_protected moved by every frame; TCP InSegs +{}", segs[0]),
            format!("rule counter {ipt_counted}/{total}; TCP InSegs +{}", segs[1]),
            format!("TCP InSegs +{}", segs[2]),
            format!("TCP InSegs +{} of {total} (the stack answers RST)", segs[3]),
        ];
        Ok((0..4)
            .map(|i| ThroughputRow {
                name: names[i].into(),
                pps: median(&pps[i]),
                ratio_to_iptables: median(&ratios[i]),
                check: checks[i].clone(),
            })
            .collect())
    })
}

// ---------------------------------------------------------------- part 4

fn proc_rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .ok_or_else(|| anyhow!("no VmRSS"))?
        .parse()
        .map_err(Into::into)
}

/// utime + stime of the whole process, in seconds.
fn proc_cpu_s(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces).
    let rest = &stat[stat.rfind(')').ok_or_else(|| anyhow!("bad stat"))? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks as f64 / hz)
}

fn dropped_protected(status: &Value) -> u64 {
    let counters = &status["counters"];
    counters["dropped_protected"]
        .as_u64()
        .or_else(|| {
            counters.as_array().and_then(|a| {
                a.iter()
                    .find(|c| c["name"] == "dropped_protected")
                    .and_then(|c| c["value"].as_u64())
            })
        })
        .unwrap_or(0)
}

/// Part 4: the real daemon, idle and while its interface takes a flood.
pub fn footprint(settings: &Settings) -> Result<Footprint> {
    let lab = Lab::new();
    let mut daemon = Instance::new(&lab.server, Entry::NsenterNet);
    daemon.attach(&[&lab.server_if]);
    daemon.ok(&["protect", &format!("{PROTECTED}/tcp")]);
    let status = daemon.status();
    let pid = status["pid"].as_u64().ok_or_else(|| anyhow!("status has no pid: {status}"))? as u32;
    let window = Duration::from_secs(settings.footprint_secs);
    // Let startup work settle.
    thread::sleep(Duration::from_millis(500));

    let cpu0 = proc_cpu_s(pid)?;
    thread::sleep(window);
    let cpu_idle = proc_cpu_s(pid)? - cpu0;
    let rss_idle = proc_rss_kib(pid)?;

    // The flood: SYNs to the protected port from an AF_PACKET socket on the
    // client's veth end, as fast as one thread can send.
    let frame = lab_syn(
        mac_of(&lab.server, &lab.server_if)?,
        mac_of(&lab.client, &lab.client_if)?,
        PROTECTED,
    );
    let client_if = lab.client_if.clone();
    let dropped0 = dropped_protected(&daemon.status());
    let cpu0 = proc_cpu_s(pid)?;
    let start = Instant::now();
    let sent = lab.client.enter(move || flood(&client_if, &frame, window))?;
    let elapsed = start.elapsed().as_secs_f64();
    let cpu_flood = proc_cpu_s(pid)? - cpu0;
    let rss_flood = proc_rss_kib(pid)?;
    let dropped = dropped_protected(&daemon.status()) - dropped0;
    Ok(Footprint {
        pid,
        rss_idle_kib: rss_idle,
        rss_flood_kib: rss_flood,
        cpu_idle_s: cpu_idle,
        cpu_flood_s: cpu_flood,
        window_s: window.as_secs_f64(),
        flood_frames_sent: sent,
        flood_pps_offered: sent as f64 / elapsed,
        flood_dropped_counted: dropped,
    })
}

/// Sends `frame` on `iface` (AF_PACKET) for `duration`; returns frames sent.
fn flood(iface: &str, frame: &[u8], duration: Duration) -> Result<u64> {
    let ifindex = loader::if_index(iface)?;
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    ensure!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
    // SAFETY: we own fd; File closes it.
    let _guard = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: zeroed sockaddr_ll is valid; fields set below.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_ifindex = ifindex as i32;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&frame[..6]);
    let deadline = Instant::now() + duration;
    let mut sent = 0u64;
    while Instant::now() < deadline {
        for _ in 0..1024 {
            // SAFETY: valid fd, buffer and sockaddr.
            let n = unsafe {
                libc::sendto(
                    fd,
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&addr as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            if n > 0 {
                sent += 1;
            }
        }
    }
    Ok(sent)
}

// ---------------------------------------------------------------- part 5

/// Part 5: the real daemon, a static 3-knock client; from the moment the
/// last knock's SYN is sent to the moment `connect` to the protected port
/// completes (which includes that connection's handshake; the handshake to
/// an unprotected port is reported beside it).
pub fn latency(settings: &Settings) -> Result<Latency> {
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
            let stream = TcpStream::connect_timeout(&SocketAddr::new(server, PROTECTED), timeout)
                .context("the door did not open after the last knock")?;
            let open = start.elapsed().as_secs_f64() * 1e6;
            drop(stream);
            let start = Instant::now();
            TcpStream::connect_timeout(&SocketAddr::new(server, 8080), timeout)?;
            Ok((open, start.elapsed().as_secs_f64() * 1e6))
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

/// One SYN from `source` to `target`: a non-blocking connect, then close.
fn send_syn(source: IpAddr, target: SocketAddr) -> Result<()> {
    // SAFETY: plain socket(2).
    let fd = unsafe {
        libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0)
    };
    ensure!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: we own fd; File closes it.
    let _guard = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let (IpAddr::V4(src), IpAddr::V4(dst)) = (source, target.ip()) else {
        bail!("IPv4 only");
    };
    let sin = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(ip.octets()) },
        sin_zero: [0; 8],
    };
    let (s, d) = (sin(src, 0), sin(dst, target.port()));
    let len = std::mem::size_of::<libc::sockaddr_in>() as u32;
    // SAFETY: valid fd and sockaddrs.
    unsafe {
        ensure!(
            libc::bind(fd, (&s as *const libc::sockaddr_in).cast(), len) == 0,
            "bind: {}",
            std::io::Error::last_os_error()
        );
        // EINPROGRESS: the SYN has been handed to the device.
        libc::connect(fd, (&d as *const libc::sockaddr_in).cast(), len);
    }
    Ok(())
}

// ---------------------------------------------------------------- output

fn notes(report: &Report) -> Vec<String> {
    let mut notes = vec![format!(
        "KNOCK_STATE and ALLOW are LRU hash maps bounded at {KNOCK_STATE_MAX_ENTRIES} and \
         {ALLOW_MAX_ENTRIES} entries: of {} distinct sources they keep the most recent \
         {} and {}; older knocks in progress are forgotten, older allowed sources must knock again.",
        report.scale.sources, report.scale.knock_state_entries, report.scale.allow_entries
    )];
    for row in report.paths.iter().chain(&report.scale.rows) {
        if row.meets_goal() == Some(false) {
            notes.push(format!(
                "goal missed: {} {} at {:.2}x (goal {:.1}x)",
                row.name,
                row.family,
                row.ratio,
                row.goal.unwrap_or_default()
            ));
        }
    }
    if let Some(knock) = report.throughput.first()
        && knock.ratio_to_iptables < 5.0
    {
        notes.push(format!(
            "goal missed: knock-xdp drops {:.2}x the packets per second of the iptables raw rule (goal 5x)",
            knock.ratio_to_iptables
        ));
    }
    notes
}

/// The human-readable table.
pub fn table(report: &Report) -> String {
    let mut s = String::new();
    let m = &report.machine;
    let _ = writeln!(
        s,
        "machine: Linux {}, {}, {} CPUs; {}",
        m["kernel"].as_str().unwrap_or(""),
        m["cpu"].as_str().unwrap_or(""),
        m["nproc"],
        m["iptables"].as_str().unwrap_or("")
    );
    let _ = writeln!(s, "\n1. per-packet cost (BPF_PROG_TEST_RUN), ratio to the no-op XDP program");
    let _ = writeln!(
        s,
        "{:<40} {:<5} {:<5} {:>8} {:>8} {:>7} {:>6}",
        "path", "fam", "verd", "ns", "no-op", "ratio", "goal"
    );
    let row = |s: &mut String, r: &PathRow| {
        let goal = match (r.goal, r.meets_goal()) {
            (Some(g), Some(true)) => format!("≤{g:.1} ok"),
            (Some(g), _) => format!("≤{g:.1} MISSED"),
            _ => String::new(),
        };
        let _ = writeln!(
            s,
            "{:<40} {:<5} {:<5} {:>8.1} {:>8.1} {:>6.2}x {}",
            r.name,
            r.family,
            verdict_name(r.verdict),
            r.ns,
            r.baseline_ns,
            r.ratio,
            goal
        );
    };
    for r in &report.paths {
        row(&mut s, r);
    }
    let _ = writeln!(
        s,
        "\n2. throughput, {} live frames per run injected at a veth end (SYN to a protected port)",
        report.live_frames
    );
    let _ = writeln!(s, "{:<32} {:>12} {:>12}  check", "filter", "Mpps", "x iptables");
    for t in &report.throughput {
        let _ = writeln!(
            s,
            "{:<32} {:>12.3} {:>11.2}x  {}",
            t.name,
            t.pps / 1e6,
            t.ratio_to_iptables,
            t.check
        );
    }
    let sc = &report.scale;
    let _ = writeln!(s, "\n3. scale: {} distinct sources", sc.sources);
    let _ = writeln!(
        s,
        "KNOCK_STATE holds {} entries (filled through the program in {:.1} s); ALLOW holds {} (filled from userspace in {:.1} s)",
        sc.knock_state_entries, sc.fill_knock_state_s, sc.allow_entries, sc.fill_allow_s
    );
    let total: u64 = sc.map_memlock.iter().map(|m| m.2).sum();
    let mem: Vec<String> = sc
        .map_memlock
        .iter()
        .map(|(n, _, b)| format!("{n} {:.1} MiB", *b as f64 / 1048576.0))
        .collect();
    let _ = writeln!(
        s,
        "map memory (memlock, preallocated): {}; total {:.1} MiB",
        mem.join(", "),
        total as f64 / 1048576.0
    );
    for r in &sc.rows {
        row(&mut s, r);
    }
    let _ = writeln!(
        s,
        "sweep of a full allow map ({} entries): {:.1} ms with nothing expired, {:.1} ms deleting all {}",
        sc.allow_entries, sc.sweep_scan_ms, sc.sweep_delete_ms, sc.sweep_deleted
    );
    let f = &report.footprint;
    let _ = writeln!(s, "\n4. daemon footprint (pid {}), {:.0} s windows", f.pid, f.window_s);
    let _ = writeln!(s, "idle:  RSS {} KiB, CPU {:.2} s", f.rss_idle_kib, f.cpu_idle_s);
    let _ = writeln!(
        s,
        "flood: RSS {} KiB, CPU {:.2} s; {} SYNs sent to the protected port ({:.0} pps offered from AF_PACKET), {} counted dropped by the program",
        f.rss_flood_kib,
        f.cpu_flood_s,
        f.flood_frames_sent,
        f.flood_pps_offered,
        f.flood_dropped_counted
    );
    let l = &report.latency;
    let _ = writeln!(
        s,
        "\n5. knock-to-open latency over {} knocks (last knock sent → connect to the protected port done)",
        l.samples_us.len()
    );
    let _ = writeln!(
        s,
        "median {:.0} µs, max {:.0} µs; a plain handshake to an unprotected port: median {:.0} µs",
        l.median_us, l.max_us, l.handshake_median_us
    );
    if !report.notes.is_empty() {
        let _ = writeln!(s, "\nnotes:");
        for n in &report.notes {
            let _ = writeln!(s, "- {n}");
        }
    }
    s
}

/// The JSON written to `target/bench/results.json`.
pub fn to_json(report: &Report) -> Value {
    let sc = &report.scale;
    let f = &report.footprint;
    let l = &report.latency;
    json!({
        "machine": report.machine,
        "settings": report.settings,
        "per_packet": report.paths.iter().map(PathRow::json).collect::<Vec<_>>(),
        "throughput": {
            "live_frames_per_run": report.live_frames,
            "rows": report.throughput.iter().map(|t| json!({
                "name": t.name, "pps": t.pps, "ratio_to_iptables": t.ratio_to_iptables, "check": t.check,
            })).collect::<Vec<_>>(),
        },
        "scale": {
            "sources": sc.sources,
            "knock_state_entries": sc.knock_state_entries,
            "knock_state_max_entries": KNOCK_STATE_MAX_ENTRIES,
            "allow_entries": sc.allow_entries,
            "allow_max_entries": ALLOW_MAX_ENTRIES,
            "fill_knock_state_s": sc.fill_knock_state_s,
            "fill_allow_s": sc.fill_allow_s,
            "map_memlock_bytes": sc.map_memlock.iter().map(|(n, id, b)| json!({"map": n, "id": id, "bytes": b})).collect::<Vec<_>>(),
            "rows": sc.rows.iter().map(PathRow::json).collect::<Vec<_>>(),
            "sweep_scan_ms": sc.sweep_scan_ms,
            "sweep_delete_ms": sc.sweep_delete_ms,
            "sweep_deleted": sc.sweep_deleted,
        },
        "footprint": {
            "pid": f.pid, "window_s": f.window_s,
            "rss_idle_kib": f.rss_idle_kib, "rss_flood_kib": f.rss_flood_kib,
            "cpu_idle_s": f.cpu_idle_s, "cpu_flood_s": f.cpu_flood_s,
            "flood_frames_sent": f.flood_frames_sent, "flood_pps_offered": f.flood_pps_offered,
            "flood_dropped_counted": f.flood_dropped_counted,
        },
        "latency": {
            "samples_us": l.samples_us, "median_us": l.median_us, "max_us": l.max_us,
            "handshake_median_us": l.handshake_median_us,
        },
        "notes": report.notes,
    })
}
