//! Single-packet authorization against the published test vectors
//! (`docs/spa-v1-vectors.json`): the key, the full HMAC and the datagram
//! from the Rust implementation, the reference model admitting each
//! datagram once, and the vectors against the independent Python
//! implementation (`tests/python/spa_v1.py`).
//!
//! After changing the vector inputs, refill `key`, `hmac` and `datagram`
//! with `cargo test -p knock-common --features std --test spa_vectors
//! -- --ignored regenerate_vectors`, then review the diff: the other tests
//! still check the result against Python.
#![cfg(feature = "std")]

mod common;

use common::{assert_python_agrees, from_hex, hex, json, object, python_rejects, repo_root, unhex};

use std::{net::IpAddr, path::PathBuf};

use knock_common::{
    sha256,
    source::SourceKey,
    spa::{
        DATAGRAM_LEN, MAC_LEN, NONCE_LEN, Request, Scratch, VERSION, datagram, flags,
        key_from_secret, mac_into, spa_key,
    },
};
use serde::Deserialize;
use serde_json::Value;

fn vectors_path() -> PathBuf {
    repo_root().join("docs/spa-v1-vectors.json")
}

fn load_json() -> Value {
    common::read_json(&vectors_path())
}

fn load_vectors() -> Vec<Vector> {
    common::parse_each("vector", &load_json())
}

/// The inputs of one vector, and its expected outputs (empty before the
/// generator filled them).
#[derive(Deserialize)]
struct Vector {
    name: String,
    #[serde(deserialize_with = "from_hex")]
    secret: [u8; 32],
    index: u16,
    unix_time: u32,
    #[serde(deserialize_with = "from_hex")]
    nonce: [u8; NONCE_LEN],
    admit: Option<IpAddr>,
    server: IpAddr,
    #[serde(deserialize_with = "from_hex")]
    key: Vec<u8>,
    #[serde(deserialize_with = "from_hex")]
    hmac: Vec<u8>,
    #[serde(deserialize_with = "from_hex")]
    datagram: Vec<u8>,
}

impl Vector {
    fn request(&self) -> Request {
        Request {
            index: self.index,
            unix_secs: self.unix_time,
            nonce: self.nonce,
            admit: self.admit,
        }
    }

    /// The key, the full HMAC and the datagram the Rust implementation
    /// makes of the inputs.
    fn compute(&self) -> ([u8; 32], [u8; 32], [u8; DATAGRAM_LEN]) {
        let key = key_from_secret(&self.secret);
        let bytes = datagram(&key, &self.request(), self.server);
        (key, full_mac(&key, &bytes, self.server), bytes)
    }

    /// The vector's members with `key`, `hmac` and `datagram` from
    /// [`Vector::compute`].
    fn regenerated(&self) -> Vec<(&'static str, String)> {
        let (key, hmac, bytes) = self.compute();
        vec![
            ("name", json(&self.name)),
            ("secret", json(&hex(&self.secret))),
            ("index", self.index.to_string()),
            ("unix_time", self.unix_time.to_string()),
            ("nonce", json(&hex(&self.nonce))),
            ("admit", json(&self.admit)),
            ("server", json(&self.server)),
            ("key", json(&hex(&key))),
            ("hmac", json(&hex(&hmac))),
            ("datagram", json(&hex(&bytes))),
        ]
    }
}

/// The untruncated HMAC of `bytes` sent to `server`, as the program computes it.
fn full_mac(key: &[u8; 32], bytes: &[u8; DATAGRAM_LEN], server: IpAddr) -> [u8; 32] {
    let mut scratch = Scratch {
        datagram: *bytes,
        server: SourceKey::from(server),
        block: [0; 16],
        state: [0; 8],
        work: [0; 8],
    };
    mac_into(&spa_key(key, 0, 0), &mut scratch);
    sha256::digest(&scratch.state)
}

fn vectors() -> Vec<Vector> {
    let vectors = load_vectors();
    assert!(vectors.len() >= 10, "expected at least 10 vectors");
    for (i, v) in vectors.iter().enumerate() {
        assert!(!v.datagram.is_empty(), "vector {i} ({}) has no outputs yet", v.name);
    }
    vectors
}

#[test]
fn rust_matches_every_spa_vector() {
    for (i, v) in vectors().iter().enumerate() {
        let (key, hmac, bytes) = v.compute();
        assert_eq!(hex(&key), hex(&v.key), "vector {i} ({}): key", v.name);
        assert_eq!(hex(&hmac), hex(&v.hmac), "vector {i} ({}): hmac", v.name);
        assert_eq!(hex(&bytes), hex(&v.datagram), "vector {i} ({}): datagram", v.name);
    }
}

/// Each datagram of the file, read field by field as docs/spa-v1.md
/// section 3 lays it out, holds the vector's inputs and the truncated HMAC.
#[test]
fn every_spa_datagram_holds_its_fields_where_the_spec_puts_them() {
    for (i, v) in vectors().iter().enumerate() {
        let d = &v.datagram;
        let at = |what: &str| format!("vector {i} ({}): {what}", v.name);
        assert_eq!(d.len(), DATAGRAM_LEN, "{}", at("length"));
        assert_eq!(d[0], VERSION, "{}", at("version"));
        let (flag_bits, admit) = match v.admit {
            None => (0, [0; 16]),
            Some(IpAddr::V4(a)) => {
                let mut field = [0; 16];
                field[..4].copy_from_slice(&a.octets());
                (flags::ADMIT, field)
            }
            Some(IpAddr::V6(a)) => (flags::ADMIT | flags::ADMIT_V6, a.octets()),
        };
        assert_eq!(d[1], flag_bits, "{}", at("flags"));
        assert_eq!(d[2..4], v.index.to_be_bytes(), "{}", at("index, big-endian"));
        assert_eq!(d[4..8], v.unix_time.to_be_bytes(), "{}", at("time, big-endian"));
        assert_eq!(d[8..20], v.nonce, "{}", at("nonce"));
        assert_eq!(d[20..36], admit, "{}", at("address to admit"));
        assert_eq!(d[36..52], v.hmac[..MAC_LEN], "{}", at("MAC: the HMAC's first 16 bytes"));
    }
}

/// Every vector's datagram goes through the decision the program runs
/// (`on_datagram` over the reference model): it opens the door at its own
/// time and up to the skew either side, once, for the address it names
/// (when the client may name one) or its source, and only at its server.
#[cfg(feature = "model")]
#[test]
fn the_model_admits_every_spa_vector_once_within_the_skew() {
    use knock_common::{
        allow::AllowOrigin,
        decide::XDP_PASS,
        event::EventKind,
        knock::KnockMaps,
        maps::{Counter, Runtime, port_flags},
        model::{Model, SEC},
        spa::policy,
    };

    const PORT: u16 = 62_000;
    const CLIENT_ID: u32 = 77;
    const SKEW: u64 = 30;
    // The boot clock's reading when the datagram arrives.
    const BOOT_NS: u64 = 1_000 * SEC;

    for (i, v) in vectors().iter().enumerate() {
        let at = |what: &str| format!("vector {i} ({}): {what}", v.name);
        let bytes: [u8; DATAGRAM_LEN] = v.datagram.as_slice().try_into().unwrap();
        // The server derives the key from the secret, as the daemon does.
        let key = key_from_secret(&v.secret);
        let server = SourceKey::from(v.server);
        let source = SourceKey::from(match v.server {
            IpAddr::V4(_) => "198.51.100.7".parse::<IpAddr>().unwrap(),
            IpAddr::V6(_) => "2001:db8:5::7".parse().unwrap(),
        });
        // A server whose UNIX time is `unix` seconds.
        let model = |unix: u64, policy: u32| {
            let mut m = Model::new();
            m.settings.spa_skew_secs = SKEW;
            m.set_runtime(Runtime::UnixOffset, (unix * SEC).wrapping_sub(BOOT_NS));
            m.ports.insert(PORT, port_flags::SPA_UDP);
            m.spa_keys.insert(u32::from(v.index), spa_key(&key, CLIENT_ID, policy));
            m
        };
        let named = v.admit.map(SourceKey::from);
        let admitted = named.unwrap_or(source);
        let t = u64::from(v.unix_time);

        let m = model(t, policy::MAY_ADMIT_OTHER);
        let d = m.datagram(source, server, PORT, &bytes, BOOT_NS);
        assert_eq!((d.action, d.counter), (XDP_PASS, Counter::Spa), "{}", at("passes"));
        let entry = m.allowed_entry(admitted).unwrap_or_else(|| panic!("{}", at("not admitted")));
        assert_eq!((entry.origin, entry.client), (AllowOrigin::Spa as u32, CLIENT_ID));
        assert_eq!(m.last_event(), EventKind::SpaOpened, "{}", at("event"));
        if named.is_some() {
            assert!(m.allowed_entry(source).is_none(), "{}", at("source admitted too"));
        }
        // The same bytes again, from anywhere: a replay.
        let elsewhere = SourceKey::from("203.0.113.9".parse::<IpAddr>().unwrap());
        let d = m.datagram(elsewhere, server, PORT, &bytes, BOOT_NS + SEC);
        assert_eq!(d.action, XDP_PASS, "{}", at("replay passes"));
        assert_eq!(m.last_event(), EventKind::SpaReplay, "{}", at("replay"));
        assert!(m.allowed_entry(elsewhere).is_none(), "{}", at("replay admitted"));

        // Without the policy, naming another address than the source is
        // refused (and the nonce kept fresh); naming the source is not.
        if let Some(named) = named {
            let m = model(t, 0);
            m.datagram(source, server, PORT, &bytes, BOOT_NS);
            assert!(m.allow.borrow().is_empty(), "{}", at("named without policy"));
            assert!(m.nonces.borrow().is_empty(), "{}", at("nonce spent on a refusal"));
            m.datagram(named, server, PORT, &bytes, BOOT_NS);
            assert!(m.allowed_entry(named).is_some(), "{}", at("sent from the named address"));
        }

        // The skew: up to 30 s either side, not 31.
        let mut times = vec![(t + SKEW, true), (t + SKEW + 1, false)];
        if t > SKEW {
            times.extend([(t - SKEW, true), (t - SKEW - 1, false)]);
        }
        for (now, opens) in times {
            let m = model(now, policy::MAY_ADMIT_OTHER);
            m.datagram(source, server, PORT, &bytes, BOOT_NS);
            let what = format!("server time {now}, datagram time {t}");
            assert_eq!(m.allowed_entry(admitted).is_some(), opens, "{}", at(&what));
        }

        // Another server address: the last byte of this one changed.
        let mut other = server;
        other.addr[if v.server.is_ipv4() { 3 } else { 15 }] ^= 1;
        let m = model(t, policy::MAY_ADMIT_OTHER);
        m.datagram(source, other, PORT, &bytes, BOOT_NS);
        assert!(m.allow.borrow().is_empty(), "{}", at("opened at another server"));

        // Any byte changed: nothing admitted and nothing remembered.
        for position in 0..DATAGRAM_LEN {
            let mut flipped = bytes;
            flipped[position] ^= 0xff;
            let m = model(t, policy::MAY_ADMIT_OTHER);
            m.datagram(source, server, PORT, &flipped, BOOT_NS);
            let what = format!("byte {position} flipped");
            assert!(m.allow.borrow().is_empty(), "{}: opened", at(&what));
            assert!(m.nonces.borrow().is_empty(), "{}: nonce remembered", at(&what));
        }
    }
}

#[test]
fn python_spa_reference_matches_every_vector() {
    assert_python_agrees("spa_v1.py", &vectors_path(), load_vectors().len());
}

/// Flips the low bit of byte `byte` of the hex member `member` of vector
/// `vector`, runs Python on that copy, and requires it to report vector
/// `vector`, and only it, as a mismatch.
fn assert_python_catches(vector: usize, member: &str, byte: usize) {
    let mut vectors = load_json();
    let text = vectors[vector][member].as_str().expect("a hex member").to_owned();
    let mut bytes = unhex(&text).expect("hex");
    bytes[byte] ^= 0x01;
    vectors[vector][member] = Value::from(hex(&bytes));

    let what = format!("{member} byte {byte} of vector {vector} changed");
    let name = format!("spa-v1-{member}-{vector}-{byte}");
    let stdout = python_rejects("spa_v1.py", &name, &vectors, &what);
    assert!(stdout.contains(&format!("mismatch {vector}:")), "{what}:\n{stdout}");
    let other = if vector == 0 { 1 } else { 0 };
    assert!(stdout.contains(&format!("ok {other} ")), "{what}:\n{stdout}");
}

#[test]
fn python_spa_reference_detects_a_wrong_mac_byte() {
    // In the datagram's MAC (bytes 36..52)...
    assert_python_catches(0, "datagram", 36);
    assert_python_catches(3, "datagram", 51);
    // ...and in the HMAC past the truncation, which the datagram never shows.
    assert_python_catches(1, "hmac", 16);
    assert_python_catches(4, "hmac", 31);
}

#[test]
fn python_spa_reference_detects_a_wrong_datagram_byte() {
    // Flags, index, time, nonce, and the address to admit.
    for byte in [1, 3, 7, 19, 20, 35] {
        assert_python_catches(3, "datagram", byte);
    }
}

#[test]
fn python_spa_reference_detects_a_wrong_key_byte() {
    assert_python_catches(5, "key", 0);
}

/// Refills `key`, `hmac` and `datagram` of every vector from the Rust
/// implementation and rewrites the file. Run by hand (see the module docs).
#[test]
#[ignore = "rewrites docs/spa-v1-vectors.json"]
fn regenerate_vectors() {
    let vectors: Vec<String> = load_vectors().iter().map(|v| object(2, &v.regenerated())).collect();
    common::write_vectors(&vectors_path(), &common::array(0, &vectors));
}
