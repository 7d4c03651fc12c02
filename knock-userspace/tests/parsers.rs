//! Every parser of outside input, fed arbitrary text: profile files and
//! URIs, config files, state files and CLI values. None may panic, and what
//! is accepted must survive a round trip.

use std::path::Path;

use knock_userspace::{
    config::Config,
    nets::Cidr,
    ports::{PortSpec, ProtoPort},
    profile::{self, Knock, Profile, ProfileFile},
    state::parse_toml,
    units::{format_duration, parse_duration},
};
use proptest::prelude::*;

/// Text that looks a little like what the parsers expect, and sometimes is.
fn texty() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[0-9a-z:/,.%=&?_ -]{0,40}",
        "knock-xdp:profile\\?v=1&name=[a-z]{1,5}(&[a-z_]{1,8}=[0-9a-z%:,.-]{0,12}){0,6}",
        "[0-9]{1,6}(/(tcp|udp|sctp))?",
        "[0-9]{1,3}(\\.[0-9]{1,3}){3}(/[0-9]{1,3})?",
        "[0-9]{1,4}(ms|s|m|h|d|x){0,2}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn cli_values_never_panic_and_round_trip(text in texty()) {
        if let Ok(duration) = parse_duration(&text) {
            prop_assert_eq!(parse_duration(&format_duration(duration)).ok().map(|d| d.as_secs()), Some(duration.as_secs()));
        }
        if let Ok(spec) = text.parse::<PortSpec>() {
            prop_assert!(spec.port >= 1);
        }
        if let Ok(port) = text.parse::<ProtoPort>() {
            prop_assert_eq!(port.to_string().parse::<ProtoPort>().ok(), Some(port));
        }
        if let Ok(net) = text.parse::<Cidr>() {
            prop_assert_eq!(net.to_string().parse::<Cidr>().ok(), Some(net));
        }
        if let Ok(steps) = profile::parse_static(&text) {
            prop_assert_eq!(profile::parse_static(&profile::join_static(&steps)).ok(), Some(steps));
        }
        let _ = profile::parse_port_list(&text);
        let _ = profile::parse_range(&text);
        let _ = profile::check_name(&text);
    }

    #[test]
    fn profile_uris_and_files_never_panic(text in texty()) {
        if let Ok(profile) = Profile::from_uri(&text) {
            prop_assert_eq!(Profile::from_uri(&profile.to_uri().unwrap()).ok(), Some(profile));
        }
        if let Ok(file) = parse_toml::<ProfileFile>(&text, Path::new("fuzz.toml")) {
            let _ = Profile::from_file(&file);
        }
    }

    #[test]
    fn generated_profiles_round_trip_through_uri_and_toml(
        name in "[a-z][a-z0-9_.-]{0,20}",
        length in 1u8..=16,
        lo in 1024u16..60000,
        span in 16u16..2000,
        slot in 1u32..86400,
        udp in any::<bool>(),
        secret in any::<[u8; 32]>(),
        fleet in any::<bool>(),
    ) {
        let knock = Knock::Rotating {
            key: profile::Key::Random(secret),
            proto: if udp { knock_userspace::ports::Proto::Udp } else { knock_userspace::ports::Proto::Tcp },
            length,
            slot_secs: slot,
            ports: (lo, lo + span),
            exclude: vec![lo + 1],
            fleet,
        };
        let profile = Profile { name, knock };
        prop_assert_eq!(Profile::from_uri(&profile.to_uri().unwrap()).unwrap(), profile.clone());
        let file: ProfileFile = parse_toml(&profile.to_toml().unwrap(), Path::new("p")).unwrap();
        prop_assert_eq!(Profile::from_file(&file).unwrap(), profile);
    }
}

#[test]
fn config_and_state_files_of_arbitrary_text_never_panic() {
    let dir = std::env::temp_dir().join(format!("knock-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.toml");
    let state = knock_userspace::state::StateDir::new(&dir);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 500,
        ..ProptestConfig::default()
    });
    runner
        .run(&prop_oneof![any::<String>(), "([a-z_]{1,12} = (\"[0-9a-z:/.]{0,10}\"|\\[\"[0-9a-z/]{0,8}\"\\]|[0-9]{1,4}|true)\n){0,5}"], |text| {
            std::fs::write(&path, &text).unwrap();
            let _ = Config::load(Some(&path));
            std::fs::write(dir.join("state.toml"), &text).unwrap();
            let _ = state.load();
            // Whatever happened, the files are as they were written.
            prop_assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
            Ok(())
        })
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
