//! knock-xdp on the client's side: the commands a user runs in the client
//! namespace (`knock`, `sequence`, `check`), and what they print.

use std::{
    path::Path,
    process::{Command, Output, Stdio},
    time::{Duration, SystemTime},
};

use knock_common::{Proto, ProtoPort};

use super::{Lab, SERVER_V4, binary, rfc3339, text};

/// Parses `knock-xdp sequence` output: `61001 62002:udp ...`.
pub fn parse_sequence(line: &str) -> Vec<ProtoPort> {
    line.split_whitespace()
        .map(|word| match word.strip_suffix(":udp") {
            Some(port) => ProtoPort::new(Proto::Udp, port.parse().unwrap()),
            None => ProtoPort::new(Proto::Tcp, word.parse().unwrap()),
        })
        .collect()
}

/// One `knocked HOST[ as NAME]: PORTS (slot N)` line of `knock`'s output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Knocked {
    pub ports: Vec<ProtoPort>,
    pub slot: u64,
}

/// Every `knocked ...` line of `knock`'s output, in order.
pub fn knocked(stdout: &str) -> Vec<Knocked> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("knocked "))
        .map(|l| {
            let (ports, slot) = l.split_once(": ").expect(l).1.rsplit_once(" (slot ").expect(l);
            let slot = slot.strip_suffix(')').expect(l).parse().expect(l);
            Knocked { ports: parse_sequence(ports), slot }
        })
        .collect()
}

/// Knocks of a static TCP sequence, as `--static 7101,7102,7103` sets it.
pub fn tcp_knocks(ports: &[u16]) -> Vec<ProtoPort> {
    ports.iter().map(|&port| ProtoPort::new(Proto::Tcp, port)).collect()
}

impl Lab {
    /// Runs `knock-xdp ARGS` in the client namespace (commands that need no daemon).
    pub fn client_cli(&self, args: &[&str]) -> Output {
        self.client_cli_env(args, &[])
    }

    /// The same, with extra environment variables (which may replace
    /// `KNOCK_XDP_SLOTS_DIR`).
    pub fn client_cli_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.client.name])
            .arg(binary())
            .args(args)
            .env("KNOCK_XDP_SLOTS_DIR", &self.slots_dir)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .expect("cannot run knock-xdp")
    }

    /// Runs a program in the client namespace.
    pub fn client_run(&self, program: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.client.name, program])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
    }

    /// The knocks of `profile` at `at` (now when `None`), as `knock-xdp
    /// sequence` prints them in the client namespace.
    pub fn sequence(&self, profile: &Path, at: Option<SystemTime>) -> Vec<ProtoPort> {
        self.sequence_with(profile, at, &[])
    }

    /// The same, with extra arguments (`--server NAME`).
    pub fn sequence_with(
        &self,
        profile: &Path,
        at: Option<SystemTime>,
        extra: &[&str],
    ) -> Vec<ProtoPort> {
        let profile = profile.display().to_string();
        let at = at.map(rfc3339);
        let mut args = vec!["sequence", "--profile", &profile];
        if let Some(at) = &at {
            args.extend_from_slice(&["--at", at]);
        }
        args.extend_from_slice(extra);
        let out = self.client_cli(&args);
        assert!(out.status.success(), "{}", text(&out));
        parse_sequence(&String::from_utf8_lossy(&out.stdout))
    }

    /// `knock-xdp knock SERVER_V4 --profile PROFILE EXTRA...` from the client namespace.
    pub fn knock(&self, profile: &Path, extra: &[&str]) -> Output {
        self.knock_hosts(&[SERVER_V4], profile, extra)
    }

    /// `knock-xdp knock HOSTS... --profile PROFILE EXTRA...` from the
    /// client namespace.
    pub fn knock_hosts(&self, hosts: &[&str], profile: &Path, extra: &[&str]) -> Output {
        let profile = profile.display().to_string();
        let mut args = vec!["knock"];
        args.extend_from_slice(hosts);
        args.extend_from_slice(&["--profile", &profile]);
        args.extend_from_slice(extra);
        self.client_cli(&args)
    }

    /// A port of the default knock space (61000-65535) that none of the
    /// sequences of `profile` installed now (slots s-1 to s+2, of
    /// `slot_secs`) uses: a knock there is a miss, or resets a knock.
    pub fn unused_knock_port(&self, profile: &Path, slot_secs: u64) -> u16 {
        let slot = Duration::from_secs(slot_secs);
        let first = SystemTime::now() - slot;
        let installed: Vec<u16> = (0..4)
            .flat_map(|k| self.sequence(profile, Some(first + slot * k)))
            .map(|knock| knock.port)
            .collect();
        (61_000..).find(|p| !installed.contains(p)).unwrap()
    }
}
