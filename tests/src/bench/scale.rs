//! Part 3: many distinct sources through the LRU maps, at the default sizes.

use std::{
    net::{IpAddr, Ipv4Addr},
    os::fd::{AsFd as _, AsRawFd as _},
    time::Instant,
};

use anyhow::{Result, anyhow, ensure};
use aya::maps::MapData;
use knock_common::{
    decide::{XDP_DROP, XDP_PASS},
    maps::{ALLOW_MAX_ENTRIES, Counter, KNOCK_STATE_MAX_ENTRIES},
    proto::tcp_flags::SYN,
};
use knock_userspace::clock;
use serde_json::{Value, json};

use super::{
    Settings,
    harness::{
        HOUR_NS, KNOCKS, Knock, PROTECTED, Path, PathRow, config, families, load_noop,
        noop_baseline, noop_prog, steady_row, tcp, test_run,
    },
    per_packet::fresh_rows,
};

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

impl Scale {
    pub fn table(&self, s: &mut String) {
        s.push_str(&format!("\n3. scale: {} distinct sources\n", self.sources));
        s.push_str(&format!(
            "KNOCK_STATE holds {} entries (filled through the program in {:.1} s); ALLOW holds {} (filled from userspace in {:.1} s)\n",
            self.knock_state_entries, self.fill_knock_state_s, self.allow_entries, self.fill_allow_s
        ));
        s.push_str(&format!(
            "map memory (memlock, preallocated, default limits): {}\n",
            memlock_line(&self.map_memlock)
        ));
        for r in &self.rows {
            s.push_str(&r.line());
            s.push('\n');
        }
        s.push_str(&format!(
            "sweep of a full allow map ({} entries): {:.1} ms with nothing expired, {:.1} ms deleting all {}\n",
            self.allow_entries, self.sweep_scan_ms, self.sweep_delete_ms, self.sweep_deleted
        ));
    }

    pub fn json(&self) -> Value {
        json!({
            "sources": self.sources,
            "knock_state_entries": self.knock_state_entries,
            "knock_state_max_entries": KNOCK_STATE_MAX_ENTRIES,
            "allow_entries": self.allow_entries,
            "allow_max_entries": ALLOW_MAX_ENTRIES,
            "fill_knock_state_s": self.fill_knock_state_s,
            "fill_allow_s": self.fill_allow_s,
            "map_memlock_bytes": memlock_json(&self.map_memlock),
            "rows": self.rows.iter().map(PathRow::json).collect::<Vec<_>>(),
            "sweep_scan_ms": self.sweep_scan_ms,
            "sweep_delete_ms": self.sweep_delete_ms,
            "sweep_deleted": self.sweep_deleted,
        })
    }

    pub fn notes(&self, notes: &mut Vec<String>) {
        notes.push(format!(
            "KNOCK_STATE and ALLOW are LRU hash maps bounded at {KNOCK_STATE_MAX_ENTRIES} and \
             {ALLOW_MAX_ENTRIES} entries by default: of {} distinct sources they keep the most recent \
             {} and {}; older knocks in progress are forgotten, older allowed sources must knock again.",
            self.sources, self.knock_state_entries, self.allow_entries
        ));
    }
}

/// The memlock of every map of a loaded program, from its fdinfo.
pub fn map_memlock(knock: &mut Knock) -> Result<Vec<(String, u32, u64)>> {
    let mut out = Vec::new();
    for id in knock.map_ids()? {
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
        out.push((name, id, memlock));
    }
    Ok(out)
}

pub fn memlock_total_mib(maps: &[(String, u32, u64)]) -> f64 {
    maps.iter().map(|m| m.2).sum::<u64>() as f64 / 1_048_576.0
}

/// "A 0.0 MiB, B 1.5 MiB, ...; total 22.1 MiB"
pub fn memlock_line(maps: &[(String, u32, u64)]) -> String {
    let each: Vec<String> =
        maps.iter().map(|(n, _, b)| format!("{n} {:.1} MiB", *b as f64 / 1_048_576.0)).collect();
    format!("{}; total {:.1} MiB", each.join(", "), memlock_total_mib(maps))
}

pub fn memlock_json(maps: &[(String, u32, u64)]) -> Vec<Value> {
    maps.iter().map(|(n, id, b)| json!({"map": n, "id": id, "bytes": b})).collect()
}

pub fn run(settings: &Settings) -> Result<Scale> {
    let mut knock = Knock::new()?;
    let mut noop_ebpf = load_noop()?;
    let noop = noop_prog(&mut noop_ebpf)?;
    knock.install_sequence()?;
    let fam = &families()[0];
    let mut out = Scale { sources: settings.scale_sources, ..Default::default() };

    // Maps are preallocated: memlock is the same empty or full.
    out.map_memlock = map_memlock(&mut knock)?;

    // A stranger SYN while a knock is in progress somewhere: the state
    // lookup (a miss) is on its path. First with a near-empty map.
    let stranger = tcp(fam.stranger, fam.server, PROTECTED, SYN);
    let warm = tcp((fam.fresh)(0x00ff_fff0), fam.server, KNOCKS[0], SYN);
    test_run(knock.prog()?, &warm, 1)?;
    let stranger_path = |name| Path {
        name,
        family: fam.name,
        what: "SYN from a stranger to 22 while a knock is in progress: state miss, flow miss, allow miss, LPM miss",
        frame: &stranger,
        expected: (XDP_DROP, Counter::DroppedProtected),
        goal: Some(1.5),
    };
    let mut row = steady_row(
        &mut knock,
        noop,
        settings,
        &stranger_path("stranger, knock active, 1 state entry"),
    )?;
    row.method.push_str(" (KNOCK_STATE holds 1 entry)");
    out.rows.push(row);

    // Fill the knock-state map through the program: N distinct sources each
    // send a first knock (one test run each, so the kernel's own LRU does
    // the evicting).
    let start = Instant::now();
    let mut frame = tcp((fam.fresh)(0), fam.server, KNOCKS[0], SYN);
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
        &Path {
            what: "the same SYN from a stranger to 22, KNOCK_STATE and ALLOW full",
            ..stranger_path("stranger, knock active, full maps")
        },
    )?;
    row.method.push_str(&format!(" (KNOCK_STATE {} entries)", out.knock_state_entries));
    out.rows.push(row);
    knock.maps.set_settings(config(0))?;
    out.rows.push(steady_row(&mut knock, noop, settings, &Path {
        name: "allowed source, full allow map",
        family: fam.name,
        what: "SYN from an allowed source to 22 with ALLOW full (idle timeout 0: allow path every repeat)",
        frame: &tcp(fam.allowed, fam.server, PROTECTED, SYN),
        expected: (XDP_PASS, Counter::PassedAllowed),
        goal: Some(2.5),
    })?);
    // Knock steps from fresh sources into the full LRU (each first step evicts).
    let base = noop_baseline(noop, &stranger, settings)?;
    out.rows.extend(fresh_rows(&mut knock, noop, settings, fam, 0x00c0_0000, base, ", full maps")?);

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
