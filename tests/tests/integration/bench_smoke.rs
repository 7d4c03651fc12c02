//! The benchmarks of `cargo xtask bench` with tiny sizes, so they cannot rot:
//! every part runs, every row is there, and every number is one that could
//! be wrong (finite, positive, bounded, consistent with the others). No goal
//! is checked: that needs the full run on a quiet machine. The verdicts and
//! counters of every run are checked inside the parts themselves, which fail
//! when a path is not the one measured.

use knock_common::decide::{XDP_DROP, XDP_PASS};
use knock_tests::{
    bench::{self, Settings},
    privileged,
};

fn sane(what: &str, x: f64) {
    assert!(x.is_finite() && x > 0.0, "{what}: {x} is not a positive finite number");
}

/// Sane, and below `max`.
fn within(what: &str, x: f64, max: f64) {
    sane(what, x);
    assert!(x < max, "{what}: {x} is not below {max}");
}

#[test]
fn bench_runs_and_its_numbers_are_sane() {
    if !privileged("bench_runs_and_its_numbers_are_sane") {
        return;
    }
    let settings = Settings::smoke();
    let report = bench::run(&settings).expect("the bench runs");
    eprintln!("{}", bench::table(&report));

    per_packet_rows(&report);
    spa(&report, &settings);
    throughput(&report, &settings);
    scale_and_clients(&report, &settings);
    footprint_and_latency(&report, &settings);
    fwknop(&report, &settings);

    let json = bench::to_json(&report);
    for key in
        ["per_packet", "spa", "throughput", "scale", "clients", "footprint", "latency", "fwknop"]
    {
        assert!(json[key].is_object() || json[key].is_array(), "no {key} in the JSON");
    }
    assert!(json["per_packet"].as_array().is_some_and(|a| a.len() == 18));
}

fn per_packet_rows(report: &bench::Report) {
    for row in bench::all_rows(report) {
        let name = format!("{} {}", row.name, row.family);
        sane(&format!("{name} ns"), row.ns);
        within(&format!("{name} baseline"), row.baseline_ns, 10_000.0);
        sane(&format!("{name} ratio"), row.ratio);
        if row.method.starts_with("fresh") {
            assert!(
                (row.ratio - row.ns / row.baseline_ns).abs() < 1e-9,
                "{name}: ratio {} is not {} / {}",
                row.ratio,
                row.ns,
                row.baseline_ns
            );
        }
        let expected = if row.name.starts_with("stranger") { XDP_DROP } else { XDP_PASS };
        assert_eq!(row.verdict, expected, "{name}: wrong verdict");
        assert!(row.samples > 0, "{name}: no samples");
    }
    let paths = report.paths.as_ref().expect("part 1 ran");
    for family in ["ipv4", "ipv6"] {
        for name in [
            "no-op baseline",
            "unrelated",
            "stranger",
            "allowed source",
            "open flow",
            "knock first step",
            "knock middle step",
            "knock final step",
            "knock retransmission",
        ] {
            assert!(
                paths.iter().any(|r| r.family == family && r.name == name),
                "no row {name} {family}"
            );
        }
    }
}

fn spa(report: &bench::Report, settings: &Settings) {
    let spa = report.spa.as_ref().expect("the SPA part ran");
    for family in ["ipv4", "ipv6"] {
        let ns = |name: &str| {
            spa.rows
                .iter()
                .find(|r| r.family == family && r.name == name)
                .unwrap_or_else(|| panic!("no row {name} {family}"))
                .ns
        };
        // The MAC is two SHA-256 compressions: it must cost more than the
        // cheapest refusal, or the row did not measure it.
        assert!(
            ns("spa: wrong MAC") > 2.0 * ns("spa: bad version"),
            "{family}: the wrong MAC ({} ns) costs no more than a wrong version ({} ns)",
            ns("spa: wrong MAC"),
            ns("spa: bad version")
        );
        sane("spa stale time", ns("spa: stale time"));
        sane("spa valid", ns("spa: valid, opens"));
    }
    assert_eq!(spa.open_us.len(), settings.latency_knocks);
    for us in &spa.open_us {
        within("SPA datagram to open door, µs", *us, 3e6);
    }
    sane("SPA handshake", spa.handshake_median_us);
}

fn throughput(report: &bench::Report, settings: &Settings) {
    let t = report.throughput.as_ref().expect("part 2 ran");
    assert_eq!(t.rows.len(), 4);
    assert_eq!(t.live_frames, settings.live_frames);
    for row in &t.rows {
        sane(&format!("{} pps", row.name), row.pps);
        sane(&format!("{} ratio", row.name), row.ratio_to_iptables);
        sane(&format!("{} CPU ns per frame", row.name), row.cpu_ns);
        assert!(row.filter_ns.is_finite(), "{}: filter ns {}", row.name, row.filter_ns);
        assert!(row.filter_ns < row.cpu_ns, "{}: the filter costs more than the frame", row.name);
    }
    // The stack's work for each netfilter rule and for no filtering is far
    // above the injection's own; a negative figure means a broken subtraction.
    for row in &t.rows[1..] {
        sane(&format!("{} filter ns", row.name), row.filter_ns);
    }
    sane("bare injection CPU", t.harness_cpu_ns);
    sane("BPF stats ns", t.stats_ns);
    assert_eq!(t.stats_count, u64::from(settings.live_frames));
    // knock-xdp's own share is tens of ns a frame, within the noise of one
    // smoke-sized run, so this check is deliberately weak (a division by
    // zero or a missing run); the full bench's medians carry the sign.
    let ratio = t.iptables_over_knock;
    assert!(ratio.is_finite(), "iptables / knock-xdp: {ratio}");
}

fn scale_and_clients(report: &bench::Report, settings: &Settings) {
    let scale = report.scale.as_ref().expect("part 3 ran");
    assert_eq!(scale.sources, settings.scale_sources);
    assert!(scale.knock_state_entries > 0 && scale.allow_entries > 0);
    assert!(scale.map_memlock.iter().any(|(name, _, bytes)| name == "KNOCK_STATE" && *bytes > 0));
    // The knock rows after the count admit a few more sources.
    assert!(scale.sweep_deleted >= scale.allow_entries, "the sweep missed entries");
    sane("fill knock state", scale.fill_knock_state_s);
    assert_eq!(scale.rows.len(), 6);

    let c = report.clients.as_ref().expect("the clients part ran");
    assert_eq!(c.clients, settings.clients);
    let edges = |maps: &[(String, u32, u64)]| {
        maps.iter().find(|(n, ..)| n == "KNOCK_EDGES").map(|m| m.2).expect("a KNOCK_EDGES map")
    };
    // Sized from the limits: fewer clients than the default, a smaller trie.
    assert!(settings.clients < 1024);
    assert!(edges(&c.sized_memlock) < edges(&c.default_memlock), "the trie was not resized");
    assert_eq!(c.sequences as u32, (c.clients - 1) * 4 + 1, "not every client installed");
    assert!(c.edges > 0 && c.install_writes > c.edges && c.rotate_writes > 0);
    sane("install ms", c.install_sync_ms);
    sane("rotation ms", c.rotate_sync_ms);
    assert!(c.rotated_with_limit >= c.clients);
    assert_eq!(c.rows.len(), 6);
    let growth = c.growth();
    assert_eq!(growth.len(), 3, "{growth:?}");
    for (step, g) in growth {
        sane(&format!("{step} growth"), g);
    }
}

fn footprint_and_latency(report: &bench::Report, settings: &Settings) {
    let f = report.footprint.as_ref().expect("part 4 ran");
    assert!(f.rss_idle_kib > 1024 && f.rss_flood_kib > 1024, "RSS under 1 MiB: {f:?}");
    // The daemon does no per-packet work (XDP drops the flood in the
    // kernel) and wakes only for its timers, so idle or flooded it uses a
    // few clock ticks a second: a fifth of the window is far above that,
    // and far below the reading of the wrong process (the flooding test
    // itself: the whole window) or of the whole run since the daemon
    // started (its startup alone takes a third of a second here).
    let most = f.window_s / 5.0;
    for cpu in [f.cpu_idle_s, f.cpu_flood_s] {
        assert!(cpu.is_finite() && (0.0..=most).contains(&cpu), "daemon CPU {cpu} s: {f:?}");
    }
    assert!(f.flood_frames_sent > 0);
    assert!(
        f.flood_dropped_counted > 0 && f.flood_dropped_counted <= f.flood_frames_sent,
        "the program counted {} drops of {} frames sent",
        f.flood_dropped_counted,
        f.flood_frames_sent
    );

    let l = report.latency.as_ref().expect("part 5 ran");
    assert_eq!(l.samples_us.len(), settings.latency_knocks);
    for us in &l.samples_us {
        within("knock to open door, µs", *us, 3e6);
    }
    assert!(l.max_us >= l.median_us);
}

fn fwknop(report: &bench::Report, settings: &Settings) {
    let fw = report.fwknop.as_ref().expect("the fwknop part ran");
    assert!(fw.version.contains("2.6"), "fwknopd version {:?}", fw.version);
    let names: Vec<&str> = fw.systems.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["knock-xdp", "fwknopd", "fwknopd-udp"]);
    for sys in &fw.systems {
        assert_eq!(
            sys.packet_open_us.len() + sys.client_open_us.len(),
            settings.fwknop_tries,
            "{}: every quiet try must open the door",
            sys.name
        );
        for us in sys.packet_open_us.iter().chain(&sys.client_open_us) {
            within(&format!("{} open µs", sys.name), *us, 3e6);
        }
        assert!(sys.idle_rss_kib > 0);
        assert_eq!(sys.floods.len(), 2);
        for flood in &sys.floods {
            assert!(flood.frames_sent > 0, "{} {}: no flood", sys.name, flood.kind);
            sane("flood window", flood.window_s);
            assert!(flood.daemon_cpu_s.is_finite() && flood.daemon_cpu_s >= 0.0);
            assert!(flood.opened <= flood.tries && flood.open_us.len() == flood.opened);
        }
    }
    // knock-xdp verifies in the kernel: a flood must not cost the real client.
    for flood in &fw.systems[0].floods {
        assert_eq!(flood.opened, flood.tries, "knock-xdp under a flood of {}", flood.kind);
    }
}
