//! Part 1: every path of the program, IPv4 and IPv6, through
//! BPF_PROG_TEST_RUN, each interleaved with the no-op program.

use anyhow::{Result, ensure};
use aya::programs::Xdp;
use knock_common::{
    decide::{XDP_DROP, XDP_PASS},
    maps::{ALLOW_MAX_ENTRIES, Counter},
    proto::tcp_flags::{ACK, SYN},
};
use knock_userspace::{clock, maps as kernel_maps};

use super::{
    Settings,
    harness::{
        Family, HOUR_NS, KNOCKS, Knock, PROTECTED, Path, PathRow, UNPROTECTED, config, families,
        load_noop, median, noop_baseline, noop_prog, paired_once, steady_row, tcp, test_run,
    },
};

pub fn run(settings: &Settings) -> Result<Vec<PathRow>> {
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
        knock.maps.seed_flows(&[kernel_maps::tcp_flow(fam.flow, 40000, PROTECTED)])?;
    }
    // The sequence is installed from the start, so its knock-port flags are
    // live for every row; no knock happens until the knock rows, so "no
    // knock in progress anywhere" holds for the rows before them.
    knock.install_sequence()?;

    // A baseline row per family (the no-op on the unrelated frame).
    for fam in &fams {
        let frame = tcp(fam.stranger, fam.server, UNPROTECTED, ACK);
        let b = noop_baseline(noop, &frame, settings)?;
        rows.push(PathRow {
            name: "no-op baseline".into(),
            family: fam.name,
            what: "an XDP program that returns XDP_PASS without reading the frame".into(),
            verdict: XDP_PASS,
            ns: b,
            baseline_ns: b,
            ratio: 1.0,
            goal: None,
            goal_ns: None,
            method: format!(
                "repeat={} x {} runs, thread CPU ns per packet",
                settings.repeat, settings.runs
            ),
            samples: settings.runs,
        });
    }

    for fam in &fams {
        knock.maps.set_settings(config(0))?;
        let paths = [
            Path {
                name: "unrelated",
                family: fam.name,
                what: "TCP ACK from a stranger to an unprotected port (80): parse, one port-flags array load",
                frame: &tcp(fam.stranger, fam.server, UNPROTECTED, ACK),
                expected: (XDP_PASS, Counter::Passed),
                goal: Some(1.3),
            },
            Path {
                name: "stranger",
                family: fam.name,
                what: "SYN from a stranger to protected port 22, no network installed: source read, admission-filter miss",
                frame: &tcp(fam.stranger, fam.server, PROTECTED, SYN),
                expected: (XDP_DROP, Counter::DroppedProtected),
                goal: Some(1.5),
            },
            Path {
                name: "allowed source",
                family: fam.name,
                what: "SYN from an allowed source to 22, idle timeout 0 so every repeat takes the allow path: \
                       flow hit but idle, allow hit, flow written",
                frame: &tcp(fam.allowed, fam.server, PROTECTED, SYN),
                expected: (XDP_PASS, Counter::PassedAllowed),
                goal: Some(3.0),
            },
        ];
        for path in &paths {
            rows.push(steady_row(&mut knock, noop, settings, path)?);
        }
        knock.maps.set_settings(config(HOUR_NS))?;
        rows.push(steady_row(&mut knock, noop, settings, &Path {
            name: "open flow",
            family: fam.name,
            what: "ACK on an open flow to 22 from a source not in the allow map (idle timeout 1h): flow hit, flow refreshed",
            frame: &tcp(fam.flow, fam.server, PROTECTED, ACK),
            expected: (XDP_PASS, Counter::PassedFlow),
            goal: Some(3.0),
        })?);
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
        let first = tcp(src, fam.server, KNOCKS[0], SYN);
        test_run(knock.prog()?, &first, 1)?;
        rows.push(steady_row(&mut knock, noop, settings, &Path {
            name: "knock retransmission",
            family: fam.name,
            what: "the first knock's SYN again from a source that just sent it: state hit, recognised as a retransmission",
            frame: &first,
            expected: (XDP_PASS, Counter::Knock),
            goal: Some(10.0),
        })?);
    }
    Ok(rows)
}

pub fn baseline_of(rows: &[PathRow], family: &str) -> f64 {
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
pub fn fresh_rows(
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
            let frame = tcp(src, fam.server, port, SYN);
            let (b, verdict, ns) = paired_once(noop, knock.prog()?, &frame, i)?;
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
    // Every fixture keeps the default allow map (`Limits::allowed_sources`).
    let room = (ALLOW_MAX_ENTRIES as usize).saturating_sub(allowed_before);
    ensure!(
        admitted == n.min(room) || label.contains("full"),
        "only {admitted} of {n} completed sequences admitted their source"
    );
    let names = ["knock first step", "knock middle step", "knock final step"];
    let whats = [
        "SYN to the first knock port from a source with no state: state miss, edge lookup, state created, event",
        "SYN to the second knock port from a source after step 1: state hit, edge lookup, state updated, event",
        "SYN to the last knock port after step 2: state hit, edge lookup, sequence check, used record claimed, \
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
                goal: Some(10.0),
                goal_ns: None,
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
