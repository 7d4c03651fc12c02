//! Driving the loaded XDP program through BPF_PROG_TEST_RUN.

use aya::{
    Ebpf,
    programs::{TestRun as _, TestRunOptions},
};
use knock_common::{
    knock::set_bit,
    maps::{Counter, PROTO_TCP, SequenceInfo, StepEntry, StepKey},
};
use knock_userspace::{
    loader,
    ports::{Proto, ProtoPort},
    tables::Tables,
};

/// Runs one frame; returns the verdict and the one counter that moved.
pub fn run_frame(ebpf: &mut Ebpf, tables: &Tables, frame: &[u8]) -> (u32, Counter) {
    let before = tables.counters().unwrap();
    let result = loader::xdp(ebpf)
        .unwrap()
        .test_run(TestRunOptions { data_in: Some(frame), ..Default::default() })
        .expect("BPF_PROG_TEST_RUN");
    let after = tables.counters().unwrap();
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
/// valid from `valid.0` to `valid.1` (boot ns), the way the daemon does.
pub fn install_tcp_sequence(
    tables: &mut Tables,
    index: u32,
    client: u32,
    slot: u64,
    ports: &[u16],
    valid: (u64, u64),
    steps: &mut std::collections::BTreeMap<StepKey, StepEntry>,
) {
    for (step, &port) in ports.iter().enumerate() {
        let key = StepKey { port, proto: PROTO_TCP, step: step as u8 };
        let entry = steps.entry(key).or_default();
        set_bit(&mut entry.continues, index);
        if step == ports.len() - 1 {
            set_bit(&mut entry.finishes, index);
        }
        tables.set_step(key, *entry).unwrap();
    }
    let info = SequenceInfo {
        valid_from_ns: valid.0,
        valid_until_ns: valid.1,
        slot,
        client,
        length: ports.len() as u32,
    };
    tables.set_sequence(index, info).unwrap();
    let knock_ports = ports.iter().map(|&port| ProtoPort { port, proto: Proto::Tcp }).collect();
    tables.set_knock_ports(&Default::default(), &knock_ports).unwrap();
}
