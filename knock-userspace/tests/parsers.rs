//! Every parser of outside input, fed arbitrary text: profile files and
//! URIs, config files, state files and CLI values. None may panic, and what
//! is accepted must survive a round trip.
//!
//! A round-trip check sits in an `if let Ok` arm, which passes whatever the
//! parser does when no input is ever accepted; so every arm counts how often
//! it ran, and each test asserts a minimum.

use std::{cell::RefCell, collections::BTreeMap, path::Path};

use knock_userspace::{
    config::Config,
    duration::{format_duration, parse_duration},
    nets::Cidr,
    ports::{PortSpec, ProtoPort},
    profile::{self, Knock, Profile, ProfileFile},
    state::parse_toml,
};
use proptest::{
    prelude::*,
    test_runner::{TestCaseResult, TestRunner},
};

/// Text that looks a little like what the parsers expect, and sometimes is.
fn texty() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[0-9a-z:/,.%=&?_ -]{0,40}",
        "knock-xdp:profile\\?v=1&name=[a-z]{1,5}(&[a-z_]{1,8}=[0-9a-z%:,.-]{0,12}){0,6}",
        "[0-9]{1,6}(/(tcp|udp|sctp))?",
        "[0-9]{1,3}(\\.[0-9]{1,3}){3}(/[0-9]{1,3})?",
        "[0-9]{1,4}(ms|s|m|h|d|x){0,2}",
        "[0-9]{1,5}(:(tcp|udp|icmp))?(,[0-9]{1,5}(:(tcp|udp))?){0,4}",
    ]
}

/// A rotating profile with a random secret and parameters.
fn profiles() -> impl Strategy<Value = Profile> {
    (
        "[a-z][a-z0-9_.-]{0,20}",
        1u8..=16,
        1024u16..60000,
        16u16..2000,
        1u32..86400,
        any::<bool>(),
        any::<[u8; 32]>(),
        any::<bool>(),
    )
        .prop_map(|(name, length, lo, span, slot, udp, secret, fleet)| {
            let proto = if udp {
                knock_userspace::ports::Proto::Udp
            } else {
                knock_userspace::ports::Proto::Tcp
            };
            let knock = Knock::Rotating {
                key: profile::Key::Random(secret),
                proto,
                length,
                slot_secs: slot,
                ports: (lo, lo + span),
                exclude: vec![lo + 1],
                fleet,
            };
            Profile { name, knock }
        })
}

/// A valid profile's URI or TOML, often spoiled: cut short, or one byte
/// replaced. Arbitrary text almost never parses as a profile, so without
/// these the accepting arms below would hardly ever run.
fn near_valid(text: String, cut: usize, at: usize, byte: u8, spoil: u8) -> String {
    let mut bytes = text.into_bytes();
    match spoil % 3 {
        0 => {}
        1 => bytes.truncate(cut % (bytes.len() + 1)),
        _ => {
            let len = bytes.len();
            bytes[at % len] = byte;
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// How often each named check ran.
#[derive(Default)]
struct Ran(RefCell<BTreeMap<&'static str, u64>>);

impl Ran {
    fn hit(&self, check: &'static str) {
        *self.0.borrow_mut().entry(check).or_default() += 1;
    }

    /// Every check ran at least `minimum` times.
    fn assert_at_least(&self, checks: &[&'static str], minimum: u64) {
        let ran = self.0.borrow();
        for check in checks {
            let times = ran.get(check).copied().unwrap_or(0);
            assert!(times >= minimum, "'{check}' ran {times} times, fewer than {minimum}: {ran:?}");
        }
    }
}

/// Runs `test` on `cases` values of `strategy`, failing as proptest does.
fn run<S: Strategy>(cases: u32, strategy: S, test: impl Fn(S::Value) -> TestCaseResult) {
    let mut runner = TestRunner::new(ProptestConfig { cases, ..ProptestConfig::default() });
    if let Err(err) = runner.run(&strategy, test) {
        panic!("{err}");
    }
}

#[test]
fn cli_values_never_panic_and_round_trip() {
    let ran = Ran::default();
    run(2000, texty(), |text| {
        if let Ok(duration) = parse_duration(&text) {
            ran.hit("duration");
            prop_assert_eq!(
                parse_duration(&format_duration(duration)).ok().map(|d| d.as_secs()),
                Some(duration.as_secs())
            );
        }
        if let Ok(spec) = text.parse::<PortSpec>() {
            ran.hit("port spec");
            prop_assert!(spec.port >= 1);
        }
        if let Ok(port) = text.parse::<ProtoPort>() {
            ran.hit("proto port");
            prop_assert_eq!(port.to_string().parse::<ProtoPort>().ok(), Some(port));
        }
        if let Ok(net) = text.parse::<Cidr>() {
            ran.hit("network");
            prop_assert_eq!(net.to_string().parse::<Cidr>().ok(), Some(net));
        }
        if let Ok(steps) = profile::parse_static(&text) {
            ran.hit("static sequence");
            prop_assert_eq!(profile::parse_static(&profile::join_static(&steps)).ok(), Some(steps));
        }
        let _ = profile::parse_port_list(&text);
        let _ = profile::parse_range(&text);
        let _ = profile::check_name(&text);
        Ok(())
    });
    // About one case in seven comes from each pattern; a parser that
    // accepted nothing (or a pattern that stopped matching) fails here.
    ran.assert_at_least(&["duration", "port spec", "proto port", "network", "static sequence"], 10);
}

#[test]
fn profile_uris_and_files_never_panic() {
    let ran = Ran::default();
    let uris = (profiles(), any::<usize>(), any::<usize>(), any::<u8>(), any::<u8>()).prop_map(
        |(p, cut, at, byte, spoil)| near_valid(p.to_uri().unwrap(), cut, at, byte, spoil),
    );
    let files = (profiles(), any::<usize>(), any::<usize>(), any::<u8>(), any::<u8>()).prop_map(
        |(p, cut, at, byte, spoil)| near_valid(p.to_toml().unwrap(), cut, at, byte, spoil),
    );
    run(2000, prop_oneof![texty(), uris, files], |text| {
        if let Ok(profile) = Profile::from_uri(&text) {
            ran.hit("uri");
            prop_assert_eq!(Profile::from_uri(&profile.to_uri().unwrap()).ok(), Some(profile));
        } else {
            ran.hit("uri refused");
        }
        if let Ok(file) = parse_toml::<ProfileFile>(&text, Path::new("fuzz.toml")) {
            ran.hit("toml");
            if let Ok(profile) = Profile::from_file(&file) {
                ran.hit("profile file");
                let again: ProfileFile = parse_toml(&profile.to_toml().unwrap(), Path::new("p"))
                    .expect("a written profile parses");
                prop_assert_eq!(Profile::from_file(&again).ok(), Some(profile));
            }
        }
        Ok(())
    });
    // A third of the cases are intact or spoiled URIs, a third TOML files.
    ran.assert_at_least(&["uri", "uri refused", "toml", "profile file"], 100);
}

#[test]
fn generated_profiles_round_trip_through_uri_and_toml() {
    run(256, profiles(), |profile| {
        prop_assert_eq!(Profile::from_uri(&profile.to_uri().unwrap()).unwrap(), profile.clone());
        let file: ProfileFile = parse_toml(&profile.to_toml().unwrap(), Path::new("p")).unwrap();
        prop_assert_eq!(Profile::from_file(&file).unwrap(), profile);
        Ok(())
    });
}

#[test]
fn config_and_state_files_of_arbitrary_text_never_panic() {
    let dir = std::env::temp_dir().join(format!("knock-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.toml");
    let state = knock_userspace::state::StateDir::new(&dir);
    let ran = Ran::default();
    let keys = "(interfaces|mode|protected|allow|open_window|knock_timeout|idle_timeout|fail_open|[a-z_]{1,12})";
    let values = "(\"[0-9a-z:/.]{0,10}\"|\\[\"[0-9a-z/]{0,8}\"\\]|[0-9]{1,4}|true)";
    let lines = format!("({keys} = {values}\n){{0,5}}");
    run(500, prop_oneof![any::<String>(), lines.as_str()], |text| {
        std::fs::write(&path, &text).unwrap();
        if Config::load(Some(&path)).is_ok() {
            ran.hit("config accepted");
        } else {
            ran.hit("config refused");
        }
        std::fs::write(dir.join("state.toml"), &text).unwrap();
        if state.load().is_ok() {
            ran.hit("state accepted");
        }
        // Whatever happened, the files are as they were written.
        prop_assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
        Ok(())
    });
    let _ = std::fs::remove_dir_all(&dir);
    ran.assert_at_least(&["config accepted", "config refused", "state accepted"], 10);
}
