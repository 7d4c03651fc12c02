use super::*;
use crate::ports::Proto;

fn profile(fleet: bool) -> Profile {
    Profile {
        name: "laptop".into(),
        knock: Knock::Rotating {
            key: Key::Random([1; 32]),
            proto: Proto::Tcp,
            length: 4,
            slot_secs: 30,
            ports: (61000, 65535),
            exclude: vec![],
            fleet,
        },
    }
}

#[test]
fn a_fleet_profile_takes_the_server_name_as_typed_or_before_the_equals_sign() {
    let fleet = profile(true);
    let id = |text: &str| Some(ServerId::parse(text).unwrap());
    let v4: IpAddr = "192.0.2.1".parse().unwrap();
    let v6: IpAddr = "2001:db8::1".parse().unwrap();
    assert_eq!(server(&fleet, "192.0.2.1").unwrap(), Server { addr: v4, id: id("192.0.2.1") });
    assert_eq!(
        server(&fleet, "[2001:DB8::1]").unwrap(),
        Server { addr: v6, id: id("2001:db8::1") }
    );
    let named = server(&fleet, "Web1.Example.org.=192.0.2.1").unwrap();
    assert_eq!(named, Server { addr: v4, id: id("web1.example.org") });
    assert_eq!(named.record_key(), ServerId::parse("web1.example.org").unwrap());
    assert_eq!(
        server(&fleet, "web1.example.org=[2001:db8::1]").unwrap(),
        Server { addr: v6, id: id("web1.example.org") }
    );
    // The name is checked before anything is resolved.
    for bad in ["web_1=192.0.2.1", "=192.0.2.1", "fe80::1%eth0"] {
        let err = server(&fleet, bad).unwrap_err().to_string();
        assert!(err.contains("cannot name a server for a fleet profile"), "{bad}: {err}");
    }
    // Other profiles need no name: the address is the record's key.
    let plain = profile(false);
    let any = server(&plain, "not_a_server_name=192.0.2.1").unwrap();
    assert_eq!(any, Server { addr: v4, id: None });
    assert_eq!(any.record_key(), ServerId::parse("192.0.2.1").unwrap());
}

#[test]
fn the_current_slot_first_then_the_neighbour_across_the_nearer_boundary() {
    let at = |secs: u64, ms: u64| Duration::from_secs(secs) + Duration::from_millis(ms);
    assert_eq!(slot_order(at(300, 0), 30), [10, 9, 11]);
    assert_eq!(slot_order(at(314, 999), 30), [10, 9, 11]);
    assert_eq!(slot_order(at(315, 0), 30), [10, 11, 9]);
    assert_eq!(slot_order(at(329, 999), 30), [10, 11, 9]);
    assert_eq!(slot_order(at(330, 0), 30), [11, 10, 12]);
    // One-second slots split at 500 ms.
    assert_eq!(slot_order(at(7, 499), 1), [7, 6, 8]);
    assert_eq!(slot_order(at(7, 500), 1), [7, 8, 6]);
}
