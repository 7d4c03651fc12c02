//! What every BPF_PROG_TEST_RUN part shares: the no-op baseline, one test
//! run, the knock program with a sequence installed, the frames, and a row
//! measured side by side with the no-op.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context as _, Result, anyhow, ensure};
use aya::{
    Ebpf, include_bytes_aligned,
    maps::{MapData, RingBuf},
    programs::{TestRun as _, TestRunOptions, Xdp},
};
use knock_common::{
    Proto, ProtoPort,
    decide::{XDP_DROP, XDP_PASS},
    maps::{Counter, Limits, MAP_EVENTS, Settings as Kernel},
    trie::KnockTable,
};
use knock_userspace::{clock, loader, maps::KernelMaps};
use serde_json::{Value, json};

use super::{Settings, host::thread_cpu_ns};
use crate::frames::Frame;

pub const PROTECTED: u16 = 22;
pub const UNPROTECTED: u16 = 80;
pub const KNOCKS: [u16; 3] = [61001, 62002, 63003];
pub const SEQ_INDEX: u32 = 5;
pub const HOUR_NS: u64 = 3_600_000_000_000;
/// How far an SPA datagram's clock may be off (the config's default).
pub const SPA_SKEW_SECS: u64 = 30;

/// One row of a per-packet table: a path of the program against the no-op.
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
    /// Goal for `ratio`.
    pub goal: Option<f64>,
    /// Goal for `ns` itself, where the goal is a time (the SPA MAC check).
    pub goal_ns: Option<f64>,
    /// `repeat` (steady state, kernel average over `repeat`) or `fresh`
    /// (one packet per run, see `per_packet::fresh_rows`).
    pub method: String,
    pub samples: usize,
}

impl PathRow {
    pub fn meets_goal(&self) -> Option<bool> {
        match (self.goal, self.goal_ns) {
            (None, None) => None,
            (ratio, ns) => {
                Some(ratio.is_none_or(|g| self.ratio <= g) && ns.is_none_or(|g| self.ns <= g))
            }
        }
    }

    pub fn json(&self) -> Value {
        json!({
            "name": self.name, "family": self.family, "what": self.what,
            "verdict": verdict_name(self.verdict), "ns": self.ns,
            "baseline_ns": self.baseline_ns, "ratio": self.ratio, "goal": self.goal,
            "goal_ns": self.goal_ns, "meets_goal": self.meets_goal(), "method": self.method,
            "samples": self.samples,
        })
    }

    /// The column header of [`PathRow::line`].
    pub fn header() -> String {
        format!(
            "{:<40} {:<5} {:<5} {:>8} {:>8} {:>7} {:>6}",
            "path", "fam", "verd", "ns", "no-op", "ratio", "goal"
        )
    }

    pub fn line(&self) -> String {
        let verdict = if self.meets_goal() == Some(true) { "ok" } else { "MISSED" };
        let goal = match (self.goal, self.goal_ns) {
            (Some(g), _) => format!("≤{g:.1} {verdict}"),
            (None, Some(ns)) => format!("≤{ns:.0} ns {verdict}"),
            (None, None) => String::new(),
        };
        format!(
            "{:<40} {:<5} {:<5} {:>8.1} {:>8.1} {:>6.2}x {}",
            self.name,
            self.family,
            verdict_name(self.verdict),
            self.ns,
            self.baseline_ns,
            self.ratio,
            goal
        )
    }

    /// "goal missed: ..." when it is.
    pub fn missed(&self) -> Option<String> {
        if self.meets_goal() != Some(false) {
            return None;
        }
        Some(match (self.goal, self.goal_ns) {
            (Some(g), _) => format!(
                "goal missed: {} {} at {:.2}x (goal {g:.1}x)",
                self.name, self.family, self.ratio
            ),
            (None, ns) => format!(
                "goal missed: {} {} at {:.0} ns (goal {:.0} ns)",
                self.name,
                self.family,
                self.ns,
                ns.unwrap_or_default()
            ),
        })
    }
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
pub fn test_run(prog: &Xdp, frame: &[u8], repeat: u32) -> Result<(u32, f64)> {
    let result = prog
        .test_run(TestRunOptions { data_in: Some(frame), repeat, ..Default::default() })
        .context("BPF_PROG_TEST_RUN")?;
    Ok((result.return_value, result.duration.as_nanos() as f64))
}

/// One run each of the no-op and `prog` on `frame`, the no-op first on even
/// `turn`s and second on odd ones, so that neither always runs second:
/// (the no-op's ns, `prog`'s verdict, `prog`'s ns).
pub fn paired_once(noop: &Xdp, prog: &Xdp, frame: &[u8], turn: usize) -> Result<(f64, u32, f64)> {
    let (base, (verdict, ns)) = if turn.is_multiple_of(2) {
        let base = test_run(noop, frame, 1)?.1;
        (base, test_run(prog, frame, 1)?)
    } else {
        let run = test_run(prog, frame, 1)?;
        (test_run(noop, frame, 1)?.1, run)
    };
    Ok((base, verdict, ns))
}

/// One BPF_PROG_TEST_RUN of `repeat` packets, timed by the calling
/// thread's CPU clock: (verdict, ns per packet, the kernel's own figure).
/// The kernel reports its average in whole ns, which at a no-op's 7-8 ns
/// is a 13% step; the thread's CPU time over a million repeats resolves
/// fractions, and the syscall's own cost (a few µs a call) adds less than
/// 0.01 ns per packet. Like the kernel's timer, the CPU clock stops while
/// the thread is preempted.
pub fn steady_run(prog: &Xdp, frame: &[u8], repeat: u32) -> Result<(u32, f64, f64)> {
    let cpu0 = thread_cpu_ns();
    let (verdict, kernel_ns) = test_run(prog, frame, repeat)?;
    let cpu = (thread_cpu_ns() - cpu0) as f64 / f64::from(repeat);
    Ok((verdict, cpu, kernel_ns))
}

/// The benchmarks' baseline: an XDP program named `noop` that returns
/// XDP_PASS without reading the frame (`tests/noop/src/main.rs`), built by
/// this crate's `build.rs`, so the knock-xdp binary never carries it.
pub static NOOP_OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/noop"));

/// The no-op program, loaded.
pub fn load_noop() -> Result<Ebpf> {
    let mut ebpf = Ebpf::load(NOOP_OBJECT).context("cannot load the no-op object")?;
    noop_prog(&mut ebpf)?.load().context("the kernel refused the no-op program")?;
    Ok(ebpf)
}

pub fn noop_prog(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    let program = ebpf
        .program_mut("noop")
        .ok_or_else(|| anyhow!("the no-op object has no program named noop"))?;
    Ok(program.try_into()?)
}

/// The knock program with port 22/tcp protected; [`Knock::install_sequence`]
/// adds a 3-step TCP sequence (index 5, a rotating slot, so completing it
/// claims a used record like a real one).
pub struct Knock {
    pub ebpf: Ebpf,
    pub maps: KernelMaps,
    pub table: KnockTable,
    events: RingBuf<MapData>,
}

impl Knock {
    /// With the maps at their default sizes.
    pub fn new() -> Result<Self> {
        Self::sized(&Limits::DEFAULT)
    }

    pub fn sized(limits: &Limits) -> Result<Self> {
        let mut ebpf = loader::load_sized(limits)?;
        let mut maps = KernelMaps::take(&mut ebpf)?;
        let events =
            RingBuf::try_from(ebpf.take_map(MAP_EVENTS).ok_or_else(|| anyhow!("no EVENTS map"))?)?;
        let protected = [ProtoPort { port: PROTECTED, proto: Proto::Tcp }].into();
        maps.set_protected(&Default::default(), &protected)?;
        maps.set_settings(config(0))?;
        Ok(Self { ebpf, maps, table: KnockTable::new(), events })
    }

    pub fn prog(&mut self) -> Result<&mut Xdp> {
        loader::xdp(&mut self.ebpf)
    }

    pub fn install_sequence(&mut self) -> Result<()> {
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

    pub fn counter(&self, which: Counter) -> Result<u64> {
        Ok(self.maps.counters()?.into_iter().find(|(c, _)| *c == which).map_or(0, |(_, n)| n))
    }

    /// Empties the event ring buffer, as the daemon would; how many there were.
    pub fn drain_events(&mut self) -> usize {
        let mut n = 0;
        while self.events.next().is_some() {
            n += 1;
        }
        n
    }

    pub fn map_ids(&mut self) -> Result<Vec<u32>> {
        Ok(self.prog()?.info()?.map_ids()?.unwrap_or_default())
    }
}

/// The kernel settings of the bench: a one-hour window, `idle_timeout_ns`
/// for flows, no failed-knock limit, the default SPA skew.
pub fn config(idle_timeout_ns: u64) -> Kernel {
    Kernel {
        open_window_ns: HOUR_NS,
        knock_timeout_ns: 10_000_000_000,
        idle_timeout_ns,
        close_grace_ns: 10_000_000_000,
        spa_skew_secs: SPA_SKEW_SECS,
        ..Kernel::default()
    }
}

pub fn tcp(src: IpAddr, dst: IpAddr, port: u16, flags: u8) -> Vec<u8> {
    Frame { tcp_flags: flags, ..Frame::new(src, dst, Proto::Tcp, port) }.build()
}

pub struct Family {
    pub name: &'static str,
    pub server: IpAddr,
    pub stranger: IpAddr,
    pub allowed: IpAddr,
    pub flow: IpAddr,
    /// The i-th fresh source of this family.
    pub fresh: fn(u32) -> IpAddr,
}

pub fn families() -> [Family; 2] {
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

/// What a steady row measures and what it must see.
pub struct Path<'a> {
    pub name: &'a str,
    pub family: &'static str,
    pub what: &'a str,
    pub frame: &'a [u8],
    /// The verdict of every run, and the counter that must move once per packet.
    pub expected: (u32, Counter),
    pub goal: Option<f64>,
}

/// `runs` interleaved pairs (no-op, path) of `repeat` packets each; checks
/// every verdict and that the expected counter moved once per packet.
pub fn steady_row(
    knock: &mut Knock,
    noop: &Xdp,
    settings: &Settings,
    path: &Path<'_>,
) -> Result<PathRow> {
    let Path { name, family, what, frame, expected, goal } = *path;
    let before = knock.counter(expected.1)?;
    let mut path_ns = Vec::new();
    let mut base_ns = Vec::new();
    let mut kernel_ns = Vec::new();
    let mut ratios = Vec::new();
    for _ in 0..settings.runs {
        let (_, base, _) = steady_run(noop, frame, settings.repeat)?;
        let (verdict, ns, kernel) = steady_run(knock.prog()?, frame, settings.repeat)?;
        ensure!(
            verdict == expected.0,
            "{name} {family}: verdict {} instead of {}",
            verdict_name(verdict),
            verdict_name(expected.0)
        );
        path_ns.push(ns);
        base_ns.push(base);
        kernel_ns.push(kernel);
        ratios.push(ns / base);
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
        goal_ns: None,
        method: format!(
            "repeat={} x {} interleaved runs, thread CPU ns per packet (the kernel's whole-ns \
             figure: median {:.0})",
            settings.repeat,
            settings.runs,
            median(&kernel_ns)
        ),
        samples: settings.runs,
    })
}

/// The no-op's steady cost on `frame`: median of `runs` runs of `repeat`.
pub fn noop_baseline(noop: &Xdp, frame: &[u8], settings: &Settings) -> Result<f64> {
    let mut b = Vec::new();
    for _ in 0..settings.runs {
        let (verdict, ns, _) = steady_run(noop, frame, settings.repeat)?;
        ensure!(verdict == XDP_PASS, "the no-op program did not pass");
        b.push(ns);
    }
    Ok(median(&b))
}
