//! Driving the loaded XDP program through BPF_PROG_TEST_RUN.

use aya::{
    Ebpf,
    programs::{TestRun as _, TestRunOptions},
};
use knock_common::{
    Proto, ProtoPort,
    maps::{Counter, Settings},
    trie::{KnockTable, SequenceInfo},
};
use knock_userspace::{loader, maps::KernelMaps};

/// An hour, in ns: longer than any test runs.
pub const HOUR_NS: u64 = 3_600_000_000_000;

/// Settings under which nothing a test sets up expires while it runs: open
/// windows, knock timeouts, idle timeouts and close graces of an hour.
pub fn lasting_settings() -> Settings {
    Settings {
        open_window_ns: HOUR_NS,
        knock_timeout_ns: HOUR_NS,
        idle_timeout_ns: HOUR_NS,
        close_grace_ns: HOUR_NS,
        ..Settings::default()
    }
}

/// Runs one frame; returns the verdict and the one counter that moved.
pub fn run_frame(ebpf: &mut Ebpf, maps: &KernelMaps, frame: &[u8]) -> (u32, Counter) {
    let before = maps.counters().unwrap();
    let result = loader::xdp(ebpf)
        .unwrap()
        .test_run(TestRunOptions { data_in: Some(frame), ..Default::default() })
        .expect("BPF_PROG_TEST_RUN");
    let after = maps.counters().unwrap();
    let moved: Vec<(Counter, u64)> = before
        .iter()
        .zip(&after)
        .filter(|((_, b), (_, a))| a != b)
        .map(|((counter, b), (_, a))| (*counter, a - b))
        .collect();
    assert!(
        moved.len() == 1 && moved[0].1 == 1,
        "exactly one counter must move by one, got {moved:?}"
    );
    (result.return_value, moved[0].0)
}

/// Installs TCP knocks `ports` as sequence `index` of `client` for `slot`,
/// valid from `valid.0` to `valid.1` (boot ns), through the same builder
/// the daemon uses, and puts the ports in the TCP knock space.
pub fn install_tcp_sequence(
    maps: &mut KernelMaps,
    table: &mut KnockTable,
    index: u32,
    client: u32,
    slot: u64,
    ports: &[u16],
    valid: (u64, u64),
) {
    let steps: Vec<ProtoPort> = ports.iter().map(|&p| ProtoPort::new(Proto::Tcp, p)).collect();
    let info = SequenceInfo {
        valid_from_ns: valid.0,
        valid_until_ns: valid.1,
        slot,
        client,
        length: steps.len() as u32,
    };
    table.install(index, info, &steps).expect("installable");
    table.sync(maps).expect("written");
    let before = maps.knock_space().unwrap();
    let mut space = before.clone();
    space.extend(steps);
    maps.set_knock_space(&before, &space).unwrap();
}
