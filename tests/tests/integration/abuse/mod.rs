//! Load and abuse end to end: floods of spoofed sources, knock-state
//! exhaustion and brute force, written onto the client's veth with an
//! AF_PACKET socket while real clients knock and talk across it.
//!
//! `KNOCK_XDP_SOAK=1` (`cargo xtask test --soak`) makes every run here ten
//! times longer (`soak_scale`).

mod floods;
mod guessing;

use std::{fs, path::PathBuf, time::Duration};

use knock_tests::lab::{Entry, Instance, Lab, away_from_slot_boundary};

/// The daemon's resident memory, in KiB.
pub fn rss_kib(knock: &Instance) -> u64 {
    let pid = knock.pid();
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("the daemon runs");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// A lab whose TCP echo service a daemon (started with `attach_args`) protects.
pub fn protected_service(attach_args: &[&str]) -> (Lab, Instance) {
    let lab = Lab::with_service();
    let knock = lab.protecting_daemon(Entry::NetnsExec, attach_args);
    (lab, knock)
}

/// A client with one-minute slots, and the first port of her sequence,
/// far enough from a slot boundary for a test to use it.
pub fn alice_and_her_first_port(lab: &Lab, knock: &Instance) -> (PathBuf, u16) {
    let alice = knock.add_client("alice", &["--slot", "60s"]);
    away_from_slot_boundary(60, Duration::from_secs(15));
    let first = lab.sequence(&alice, None)[0].port;
    (alice, first)
}

/// How long a flood may take to reach a state the test waits for.
pub const FLOOD_LIMIT: Duration = Duration::from_secs(30);
