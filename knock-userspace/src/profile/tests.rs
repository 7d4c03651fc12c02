use std::path::Path;

use knock_common::{
    secret::{self, SALT_LEN},
    server_id::ServerId,
};

use super::*;
use crate::{
    ports::{Proto, ProtoPort},
    state::parse_toml,
};

fn rotating() -> Profile {
    Profile {
        name: "alice".into(),
        knock: Knock::Rotating {
            key: Key::Random([7; 32]),
            proto: Proto::Udp,
            length: 5,
            slot_secs: 60,
            ports: (40000, 40100),
            exclude: vec![40001, 40002],
            fleet: false,
        },
    }
}

/// The same profile, deriving per server.
fn fleet(mut profile: Profile) -> Profile {
    if let Knock::Rotating { fleet, .. } = &mut profile.knock {
        *fleet = true;
    }
    profile
}

fn server(name: &str) -> ServerId {
    ServerId::parse(name).unwrap()
}

#[test]
fn profiles_round_trip_through_toml() {
    let statik = Profile {
        name: "legacy".into(),
        knock: Knock::Static { steps: parse_static("7000,8000:udp,9000").unwrap() },
    };
    for profile in [rotating(), statik] {
        let text = profile.to_toml().unwrap();
        let file: ProfileFile = parse_toml(&text, Path::new("p")).unwrap();
        assert_eq!(Profile::from_file(&file).unwrap(), profile, "{text}");
    }
}

fn keyed(key: Key) -> Profile {
    let Knock::Rotating { proto, length, slot_secs, ports, exclude, .. } = rotating().knock else {
        unreachable!()
    };
    Profile {
        name: "bob".into(),
        knock: Knock::Rotating { key, proto, length, slot_secs, ports, exclude, fleet: false },
    }
}

/// An authenticator key as the server keeps it: PIN 1234 at the lowest cost.
fn server_totp(salt: [u8; SALT_LEN], totp: &[u8]) -> Key {
    Key::Totp {
        salt,
        cost: 10_000,
        pin_key: Some(secret::pin_key(b"1234", &salt, 10_000)),
        totp_secret: Some(totp.to_vec()),
        code: None,
    }
}

/// An authenticator key with fixed bytes throughout, for the codecs.
fn unlocked_totp() -> Key {
    Key::Totp {
        salt: [2; SALT_LEN],
        cost: 20_000,
        pin_key: Some([6; 32]),
        totp_secret: Some(vec![9; 20]),
        code: None,
    }
}

#[test]
fn uris_round_trip_for_every_kind() {
    let statik = Profile {
        name: "legacy".into(),
        knock: Knock::Static { steps: parse_static("7000,8000:udp").unwrap() },
    };
    let passphrase = keyed(Key::Passphrase { salt: [1; SALT_LEN], cost: 20_000, secret: None });
    for profile in [rotating(), statik, passphrase] {
        let uri = profile.to_uri().unwrap();
        assert!(uri.starts_with(URI_PREFIX) && !uri.contains(' '), "{uri}");
        assert_eq!(Profile::from_uri(&uri).unwrap(), profile, "{uri}");
        assert_eq!(Profile::load(&uri).unwrap(), profile);
    }
    for bad in [
        "knock-xdp:profile?v=2&name=a",
        "http://x",
        "knock-xdp:profile?v=1&name=a&bogus=1",
        "knock-xdp:profile?v=1&name=a&secret=%zz",
    ] {
        assert!(Profile::from_uri(bad).is_err(), "{bad}");
    }
}

/// The URI and file forms are what clients and servers already hold:
/// they must not change by a byte.
#[test]
fn uri_and_file_forms_are_stable() {
    let spa = Profile {
        name: "door".into(),
        knock: Knock::Spa {
            key: Key::Passphrase { salt: [0xab; SALT_LEN], cost: 20_000, secret: Some([1; 32]) },
            index: 3,
            ports: (61000, 65535),
            may_name_address: true,
        },
    };
    let totp = fleet(keyed(unlocked_totp()));
    let statik = Profile {
        name: "legacy".into(),
        knock: Knock::Static { steps: parse_static("7000,8000:udp").unwrap() },
    };
    let plain = Profile {
        name: "x.y-z".into(),
        knock: Knock::Rotating {
            key: Key::Random([0xfe; 32]),
            proto: Proto::Tcp,
            length: 4,
            slot_secs: 90,
            ports: DEFAULT_PORTS,
            exclude: vec![],
            fleet: false,
        },
    };
    let secret7 = "07".repeat(32);
    let cases = [
        (
            rotating(),
            format!(
                "v=1&exclude=40001,40002&length=5&name=alice&ports=40000-40100&proto=udp\
                 &secret={secret7}&slot=1m"
            ),
        ),
        (
            fleet(rotating()),
            format!(
                "v=1&exclude=40001,40002&fleet=true&length=5&name=alice&ports=40000-40100\
                 &proto=udp&secret={secret7}&slot=1m"
            ),
        ),
        (statik, "v=1&name=legacy&static=7000,8000:udp".into()),
        (
            spa.clone(),
            "v=1&cost=20000&index=3&mode=passphrase&name=door&name_address=true\
             &ports=61000-65535&salt=abababababababababababababababab&spa=true"
                .into(),
        ),
        (
            totp.clone(),
            "v=1&cost=20000&exclude=40001,40002&fleet=true&length=5&mode=totp&name=bob\
             &ports=40000-40100&proto=udp&salt=02020202020202020202020202020202"
                .into(),
        ),
        (
            plain,
            format!(
                "v=1&exclude=&length=4&name=x.y-z&ports=61000-65535&proto=tcp&secret={}\
                 &slot=1m30s",
                "fe".repeat(32)
            ),
        ),
    ];
    for (profile, query) in cases {
        assert_eq!(profile.to_uri().unwrap(), format!("{URI_PREFIX}{query}"));
    }
    assert_eq!(
        spa.to_toml().unwrap(),
        "# knock-xdp client profile \"door\": holds no secret; knocking needs the passphrase\n\
         version = 1\nname = \"door\"\nindex = 3\nports = \"61000-65535\"\n\
         mode = \"passphrase\"\nspa = true\nname_address = true\n\
         salt = \"abababababababababababababababab\"\ncost = 20000\n"
    );
    assert_eq!(
        toml::to_string(&totp.to_file()).unwrap(),
        "version = 1\nname = \"bob\"\nproto = \"udp\"\nlength = 5\n\
         ports = \"40000-40100\"\nexclude = [40001, 40002]\nmode = \"totp\"\n\
         fleet = true\nsalt = \"02020202020202020202020202020202\"\ncost = 20000\n\
         secret = \"0606060606060606060606060606060606060606060606060606060606060606\"\n\
         totp_secret = \"BEEQSCIJBEEQSCIJBEEQSCIJBEEQSCIJ\"\n"
    );
}

#[test]
fn passphrase_and_authenticator_keys_need_unlocking_and_agree_with_the_server() {
    // The server's copy holds the derived secret; the client's does not.
    let salt = [3; SALT_LEN];
    let server = keyed(Key::Passphrase {
        salt,
        cost: 10_000,
        secret: Some(secret::passphrase_secret(b"pw", &salt, 10_000)),
    });
    let mut client = Profile::from_file(&server.to_client_file()).unwrap();
    assert_eq!(client.needs(), Some(UnlockMode::Passphrase));
    assert!(client.sequence_for_slot(5, None).is_err());
    client.unlock_passphrase(b"pw");
    assert_eq!(
        client.sequence_for_slot(5, None).unwrap(),
        server.sequence_for_slot(5, None).unwrap()
    );
    client = Profile::from_file(&server.to_client_file()).unwrap();
    client.unlock_passphrase(b"wrong");
    assert_ne!(
        client.sequence_for_slot(5, None).unwrap(),
        server.sequence_for_slot(5, None).unwrap()
    );

    let totp = vec![9u8; 20];
    // Through the file form once: authenticator slots are always 30 s.
    let server = Profile::from_file(&keyed(server_totp(salt, &totp)).to_file()).unwrap();
    assert_eq!(server.slot_at(60), Some(2));
    let back = Profile::from_file(&server.to_file()).unwrap();
    assert_eq!(back, server, "the server copy round-trips");
    let mut client = Profile::from_file(&server.to_client_file()).unwrap();
    assert_eq!(client.needs(), Some(UnlockMode::Totp));
    client.unlock_totp(secret::totp_code(&totp, 77), b"1234");
    assert_eq!(
        client.sequence_for_slot(77, None).unwrap(),
        server.sequence_for_slot(77, None).unwrap()
    );
}

#[test]
fn fleet_profiles_round_trip_and_say_so_in_file_and_uri() {
    let passphrase =
        fleet(keyed(Key::Passphrase { salt: [1; SALT_LEN], cost: 20_000, secret: Some([5; 32]) }));
    let totp = fleet(keyed(unlocked_totp()));
    // Through the file form once: authenticator slots are always 30 s.
    let totp = Profile::from_file(&totp.to_file()).unwrap();
    for profile in [fleet(rotating()), passphrase, totp] {
        assert!(profile.is_fleet());
        // The server's copy, with every key.
        let text = toml::to_string(&profile.to_file()).unwrap();
        assert!(text.contains("fleet = true"), "{text}");
        let file: ProfileFile = parse_toml(&text, Path::new("p")).unwrap();
        assert_eq!(Profile::from_file(&file).unwrap(), profile, "{text}");
        // The client's copy, as a file and as a URI.
        let client = Profile::from_file(&profile.to_client_file()).unwrap();
        assert!(client.is_fleet());
        let text = client.to_toml().unwrap();
        let file: ProfileFile = parse_toml(&text, Path::new("p")).unwrap();
        assert_eq!(Profile::from_file(&file).unwrap(), client, "{text}");
        let uri = client.to_uri().unwrap();
        assert!(uri.contains("&fleet=true"), "{uri}");
        assert_eq!(Profile::from_uri(&uri).unwrap(), client, "{uri}");
    }
    // Only a fleet profile says so: an older knock-xdp, which refuses
    // unknown fields, refuses a fleet profile rather than knocking v1.
    let plain = rotating();
    assert!(!plain.is_fleet());
    assert!(!plain.to_toml().unwrap().contains("fleet"));
    assert!(!plain.to_uri().unwrap().contains("fleet"));
    let uri = plain.to_uri().unwrap() + "&fleet=false";
    assert_eq!(Profile::from_uri(&uri).unwrap(), plain);
    assert!(Profile::from_uri(&(plain.to_uri().unwrap() + "&fleet=maybe")).is_err());
}

#[test]
fn static_and_spa_profiles_are_never_fleet_profiles() {
    let statik = Profile {
        name: "legacy".into(),
        knock: Knock::Static { steps: parse_static("7000,8000").unwrap() },
    };
    let spa = Profile {
        name: "door".into(),
        knock: Knock::Spa {
            key: Key::Random([1; 32]),
            index: 3,
            ports: (61000, 65535),
            may_name_address: false,
        },
    };
    for (profile, why) in [(statik, "same on every server"), (spa, "already name the server")] {
        let file = ProfileFile { fleet: Some(true), ..profile.to_file() };
        let err = format!("{:#}", Profile::from_file(&file).unwrap_err());
        assert!(err.contains(why), "{err}");
        let uri = profile.to_uri().unwrap() + "&fleet=true";
        assert!(Profile::from_uri(&uri).is_err(), "{uri}");
        // Saying `false` is harmless.
        let file = ProfileFile { fleet: Some(false), ..profile.to_file() };
        assert_eq!(Profile::from_file(&file).unwrap(), profile);
    }
}

#[test]
fn a_fleet_profile_derives_per_server_as_the_v2_vectors_say() {
    // Sequence vectors 0 and 1 of docs/sequence-v2-vectors.json, and
    // vector 0 of version 1: the default profile with the secret 00..1f.
    let counting: [u8; 32] = std::array::from_fn(|i| i as u8);
    let plain = Profile {
        name: "laptop".into(),
        knock: Knock::Rotating {
            key: Key::Random(counting),
            proto: Proto::Tcp,
            length: 4,
            slot_secs: 30,
            ports: (61000, 65535),
            exclude: vec![],
            fleet: false,
        },
    };
    let at = 1_764_072_000;
    let ports = |seq: Vec<ProtoPort>| seq.iter().map(|s| s.port).collect::<Vec<_>>();
    let web1 = server("web1.example.org");
    let web2 = server("WEB2.example.org.");
    let fleet = fleet(plain.clone());
    assert_eq!(ports(fleet.sequence_at(at, Some(&web1)).unwrap()), [61239, 62578, 62146, 63610]);
    assert_eq!(ports(fleet.sequence_at(at, Some(&web2)).unwrap()), [63786, 63697, 64641, 61934]);
    // Not a fleet profile: version 1, whatever server is named.
    let v1 = [63988, 61522, 62618, 65366];
    assert_eq!(ports(plain.sequence_at(at, None).unwrap()), v1);
    assert_eq!(ports(plain.sequence_at(at, Some(&web1)).unwrap()), v1);
    // A fleet profile cannot knock without knowing where.
    let err = fleet.sequence_at(at, None).unwrap_err().to_string();
    assert!(err.contains("name the server"), "{err}");
}

#[test]
fn fleet_passphrase_and_authenticator_clients_agree_with_each_server() {
    let salt = [3; SALT_LEN];
    let (web1, web2) = (server("web1.example.org"), server("192.0.2.7"));
    let differs = |p: &Profile, slot| {
        p.sequence_for_slot(slot, Some(&web1)).unwrap()
            != p.sequence_for_slot(slot, Some(&web2)).unwrap()
    };

    let on_server = fleet(keyed(Key::Passphrase {
        salt,
        cost: 10_000,
        secret: Some(secret::passphrase_secret(b"pw", &salt, 10_000)),
    }));
    let mut client = Profile::from_file(&on_server.to_client_file()).unwrap();
    client.unlock_passphrase(b"pw");
    for id in [&web1, &web2] {
        assert_eq!(
            client.sequence_for_slot(5, Some(id)).unwrap(),
            on_server.sequence_for_slot(5, Some(id)).unwrap()
        );
    }
    assert!(differs(&on_server, 5));

    let totp = vec![9u8; 20];
    let on_server = Profile::from_file(&fleet(keyed(server_totp(salt, &totp))).to_file()).unwrap();
    let mut client = Profile::from_file(&on_server.to_client_file()).unwrap();
    client.unlock_totp(secret::totp_code(&totp, 77), b"1234");
    for id in [&web1, &web2] {
        assert_eq!(
            client.sequence_for_slot(77, Some(id)).unwrap(),
            on_server.sequence_for_slot(77, Some(id)).unwrap()
        );
    }
    assert!(differs(&on_server, 77));
}

#[test]
fn sequences_follow_the_slot() {
    let p = rotating();
    assert_eq!(p.slot_at(125), Some(2));
    assert_eq!(p.sequence_at(120, None).unwrap(), p.sequence_at(179, None).unwrap());
    assert_ne!(p.sequence_at(120, None).unwrap(), p.sequence_at(180, None).unwrap());
    let seq = p.sequence_at(120, None).unwrap();
    assert_eq!(seq.len(), 5);
    assert!(
        seq.iter()
            .all(|s| s.proto == Proto::Udp && (40000..=40100).contains(&s.port) && s.port != 40001)
    );
}

#[test]
fn static_syntax() {
    let steps = parse_static("7000,8000:udp,9000:tcp").unwrap();
    assert_eq!(join_static(&steps), "7000,8000:udp,9000");
    for bad in ["", "7000,7000", "7000,x", "0", "7000:sctp", &"1,2,".repeat(9)] {
        assert!(parse_static(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn ranges_and_lists() {
    assert_eq!(parse_range("61000-65535"), Ok((61000, 65535)));
    assert!(parse_range("65535-61000").is_err());
    assert!(parse_range("61000").is_err());
    assert_eq!(parse_port_list("62000, 63000-63002,62000").unwrap(), [62000, 63000, 63001, 63002]);
    assert!(parse_port_list("0").is_err());
}

#[test]
fn bad_files_are_refused() {
    let good = rotating().to_file();
    let cases: Vec<(&str, ProfileFile)> = vec![
        ("version", ProfileFile { version: 2, ..rotating().to_file() }),
        ("name", ProfileFile { name: "../x".into(), ..rotating().to_file() }),
        ("secret", ProfileFile { secret: Some("abcd".into()), ..rotating().to_file() }),
        ("no secret", ProfileFile { secret: None, ..rotating().to_file() }),
        ("length", ProfileFile { length: Some(17), ..rotating().to_file() }),
        ("slot", ProfileFile { slot: Some("500ms".into()), ..rotating().to_file() }),
        (
            "too few ports",
            ProfileFile { ports: Some("40000-40003".into()), ..rotating().to_file() },
        ),
        (
            "static with secret",
            ProfileFile { static_sequence: Some("1,2".into()), ..rotating().to_file() },
        ),
    ];
    for (what, file) in cases {
        assert!(Profile::from_file(&file).is_err(), "{what} accepted");
    }
    assert!(Profile::from_file(&good).is_ok());
}

#[test]
fn names() {
    for good in ["alice", "bob-laptop", "a.b_c", "X1"] {
        assert!(check_name(good).is_ok());
    }
    for bad in ["", ".hidden", "a/b", "a b", &"x".repeat(65)] {
        assert!(check_name(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn modes_and_escapes_are_refused_with_their_own_messages() {
    for mode in [UnlockMode::Random, UnlockMode::Passphrase, UnlockMode::Totp] {
        assert_eq!(mode.to_string().parse(), Ok(mode));
    }
    let base = rotating().to_uri().unwrap();
    let err = format!("{:#}", Profile::from_uri(&format!("{base}&mode=pin")).unwrap_err());
    assert_eq!(err, "invalid profile URI: unknown profile mode 'pin' (random, passphrase or totp)");
    let text = rotating().to_toml().unwrap() + "mode = \"pin\"\n";
    let err = parse_toml::<ProfileFile>(&text, Path::new("p")).unwrap_err().to_string();
    assert!(err.ends_with("unknown profile mode 'pin' (random, passphrase or totp)"), "{err}");
    for bad in ["%zz", "%4", "ab%", "%%41"] {
        let err = Profile::from_uri(&format!("{base}&slot={bad}")).unwrap_err().to_string();
        assert_eq!(err, "profile URI: bad %-escape", "{bad}");
    }
    let err = Profile::from_uri(&format!("{base}&slot=%FF")).unwrap_err().to_string();
    assert_eq!(err, "profile URI: not UTF-8");
    // Escapes are read in either case; what is safe may be escaped too.
    let slot = base.replace("slot=1m", "slot=%31%6D");
    assert_eq!(Profile::from_uri(&slot).unwrap(), rotating());
}
