//! Sequence derivation version 2 (a server identity in the HMAC message)
//! against its published test vectors (`docs/sequence-v2-vectors.json`),
//! and those vectors against the independent Python implementation
//! (`tests/python/sequence_v2.py`). Tampered copies of the vectors must be
//! caught by both: a wrong port, another server's identity, a wrong
//! normalization.
//!
//! After changing the vector inputs, refill `slot` and `ports` with
//! `cargo test -p knock-common --features sequence --test sequence_v2_vectors
//! -- --ignored regenerate_vectors`, then review the diff: the other tests
//! still check the result against Python.
#![cfg(feature = "sequence")]

mod common;

use common::{repo_root, run_python, write_tampered};

use std::path::PathBuf;

use knock_common::{
    sequence::{Params, derive, derive_v2, slot_at},
    server_id::ServerId,
};
use serde_json::Value;

fn vectors_path() -> PathBuf {
    repo_root().join("docs/sequence-v2-vectors.json")
}

fn load() -> Value {
    let path = vectors_path();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let doc: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()));
    assert_eq!(doc["spec"], "knock-xdp sequence v2");
    doc
}

/// The inputs of one sequence vector, and its expected outputs.
struct Vector {
    name: String,
    server: Option<String>,
    identity: String,
    secret: [u8; 32],
    slot_secs: u32,
    unix_time: u64,
    slot: u64,
    length: u8,
    port_lo: u16,
    port_hi: u16,
    exclude: Vec<u16>,
    ports: Vec<u16>,
}

impl Vector {
    fn parse(i: usize, v: &Value) -> Vector {
        let field = |name: &str| -> &Value {
            v.get(name).unwrap_or_else(|| panic!("sequence {i} has no {name:?}"))
        };
        let uint = |name: &str| -> u64 {
            field(name)
                .as_u64()
                .unwrap_or_else(|| panic!("sequence {i}: {name:?} is not an unsigned integer"))
        };
        let text = |name: &str| -> String {
            field(name)
                .as_str()
                .unwrap_or_else(|| panic!("sequence {i}: {name:?} is not a string"))
                .to_owned()
        };
        let ports = |name: &str| -> Vec<u16> {
            field(name)
                .as_array()
                .unwrap_or_else(|| panic!("sequence {i}: {name:?} is not an array"))
                .iter()
                .map(|p| {
                    p.as_u64()
                        .and_then(|p| u16::try_from(p).ok())
                        .unwrap_or_else(|| panic!("sequence {i}: bad port {p} in {name:?}"))
                })
                .collect()
        };
        let hex = text("secret");
        assert_eq!(hex.len(), 64, "sequence {i}: secret must be 64 hex digits");
        let mut secret = [0u8; 32];
        for (k, byte) in secret.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * k..2 * k + 2], 16)
                .unwrap_or_else(|e| panic!("sequence {i}: bad secret hex: {e}"));
        }
        Vector {
            name: v.get("name").and_then(Value::as_str).unwrap_or("").to_owned(),
            server: v.get("server").map(|_| text("server")),
            identity: text("identity"),
            secret,
            slot_secs: uint("slot_secs").try_into().expect("slot_secs fits u32"),
            unix_time: uint("unix_time"),
            slot: uint("slot"),
            length: uint("length").try_into().expect("length fits u8"),
            port_lo: uint("port_lo").try_into().expect("port_lo fits u16"),
            port_hi: uint("port_hi").try_into().expect("port_hi fits u16"),
            exclude: ports("exclude"),
            ports: ports("ports"),
        }
    }

    fn params(&self) -> Params<'_> {
        Params {
            length: self.length,
            port_lo: self.port_lo,
            port_hi: self.port_hi,
            exclude: &self.exclude,
        }
    }

    /// The slot and ports the Rust implementation derives from the inputs.
    fn compute(&self) -> (u64, Vec<u16>) {
        let slot = slot_at(self.unix_time, self.slot_secs);
        let seq = derive_v2(&self.secret, self.identity.as_bytes(), slot, &self.params())
            .unwrap_or_else(|e| panic!("vector {:?}: {e}", self.name));
        (slot, seq.as_slice().to_vec())
    }
}

/// What the Rust implementation finds wrong with a vectors document: the
/// same checks as the Python reference, so a tampered copy fails both.
fn problems(doc: &Value) -> Vec<String> {
    let mut found = Vec::new();
    let sequences = doc["sequences"].as_array().expect("a sequences array");
    for (i, v) in sequences.iter().enumerate() {
        let v = Vector::parse(i, v);
        if let Some(server) = &v.server {
            let normalized = ServerId::parse(server).map(|id| id.as_str().to_owned());
            if normalized.as_deref() != Ok(v.identity.as_str()) {
                found.push(format!("sequence {i}: {server:?} normalizes to {normalized:?}"));
            }
        }
        let (slot, ports) = v.compute();
        if slot != v.slot {
            found.push(format!("sequence {i}: slot {slot}, vector says {}", v.slot));
        }
        if ports != v.ports {
            found.push(format!("sequence {i}: ports {ports:?}, vector says {:?}", v.ports));
        }
    }
    let identities = doc["identities"].as_array().expect("an identities array");
    for (i, v) in identities.iter().enumerate() {
        let input = v["input"].as_str().expect("input is a string");
        let got = ServerId::parse(input).ok().map(|id| id.as_str().to_owned());
        if got.as_deref() != v["identity"].as_str() {
            found.push(format!("identity {i}: {input:?} normalizes to {got:?}"));
        }
    }
    found
}

#[test]
fn rust_matches_every_vector() {
    let doc = load();
    let sequences = doc["sequences"].as_array().unwrap();
    assert!(sequences.len() >= 10, "expected at least 10 sequence vectors");
    assert!(doc["identities"].as_array().unwrap().len() >= 20, "expected 20 identity vectors");
    for (i, v) in sequences.iter().enumerate() {
        assert!(!Vector::parse(i, v).ports.is_empty(), "sequence {i} has no ports yet");
    }
    assert_eq!(problems(&doc), Vec::<String>::new());
}

#[test]
fn the_identity_and_the_version_change_every_sequence() {
    let doc = load();
    for (i, v) in doc["sequences"].as_array().unwrap().iter().enumerate() {
        let v = Vector::parse(i, v);
        let slot = slot_at(v.unix_time, v.slot_secs);
        // A full-length sequence of every candidate is a permutation: only
        // its order can tell the derivations apart.
        let v1 = derive(&v.secret, slot, &v.params()).unwrap();
        assert_ne!(v1.as_slice(), v.ports, "sequence {i}: version 1 gives the same ports");
        let mut other = v.identity.clone().into_bytes();
        let last = other.len() - 1;
        other[last] ^= 1;
        let elsewhere = derive_v2(&v.secret, &other, slot, &v.params()).unwrap();
        assert_ne!(elsewhere.as_slice(), v.ports, "sequence {i}: another identity, same ports");
    }
}

#[test]
fn python_reference_matches_every_vector() {
    let doc = load();
    let expected =
        doc["sequences"].as_array().unwrap().len() + doc["identities"].as_array().unwrap().len();
    common::assert_python_agrees("sequence_v2.py", &vectors_path(), expected);
}

/// Tampered copies of the vectors: each must be reported, by Python with
/// exit status 1 and the entry's name, and by the Rust checks.
#[test]
fn tampered_vectors_are_caught_by_both_implementations() {
    let doc = load();
    let mut cases: Vec<(&str, Value, &str)> = Vec::new();

    // A wrong port.
    let mut wrong_port = doc.clone();
    let first = wrong_port["sequences"][0]["ports"][0].as_u64().unwrap();
    wrong_port["sequences"][0]["ports"][0] = Value::from(first - 1);
    cases.push(("wrong-port", wrong_port, "mismatch sequence 0:"));

    // The ports another server derives, presented as this server's: what
    // an implementation that ignores the identity would accept.
    let mut other_server = doc.clone();
    other_server["sequences"][1]["ports"] = doc["sequences"][0]["ports"].clone();
    cases.push(("other-server", other_server, "mismatch sequence 1:"));

    // The identity left out of a vector whose ports are those of v1.
    let mut as_v1 = doc.clone();
    let v = Vector::parse(0, &doc["sequences"][0]);
    let v1 = derive(&v.secret, v.slot, &v.params()).unwrap();
    as_v1["sequences"][0]["ports"] = v1.as_slice().into();
    cases.push(("as-v1", as_v1, "mismatch sequence 0:"));

    // A normalization that keeps the case, and one that accepts a zone.
    let mut kept_case = doc.clone();
    let at = position(&doc, "WEB1.Example.ORG.");
    kept_case["identities"][at]["identity"] = "WEB1.Example.ORG".into();
    let expect_case = format!("mismatch identity {at}:");
    cases.push(("kept-case", kept_case, &expect_case));
    let mut zone = doc.clone();
    let at_zone = position(&doc, "fe80::1%eth0");
    zone["identities"][at_zone]["identity"] = "fe80::1%eth0".into();
    let expect_zone = format!("mismatch identity {at_zone}:");
    cases.push(("zone", zone, &expect_zone));

    for (name, tampered, expected) in cases {
        assert!(!problems(&tampered).is_empty(), "{name}: the Rust checks found nothing");
        let path = write_tampered(&format!("sequence-v2-{name}"), &tampered);
        let out = run_python("sequence_v2.py", &path);
        let _ = std::fs::remove_file(&path);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{name}: python should report the mismatch:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains(expected), "{name}: {stdout}");
        assert_eq!(stdout.matches("mismatch ").count(), 1, "{name}: {stdout}");
    }
}

/// The index of the identity vector whose input is `input`.
fn position(doc: &Value, input: &str) -> usize {
    doc["identities"]
        .as_array()
        .unwrap()
        .iter()
        .position(|v| v["input"] == input)
        .unwrap_or_else(|| panic!("no identity vector for {input:?}"))
}

/// Refills `slot` and `ports` of every sequence vector from the Rust
/// implementation and rewrites the file. Run by hand (see the module docs).
#[test]
#[ignore = "rewrites docs/sequence-v2-vectors.json"]
fn regenerate_vectors() {
    let list = |ports: &[u16]| {
        let items: Vec<String> = ports.iter().map(u16::to_string).collect();
        format!("[{}]", items.join(", "))
    };
    let doc = load();
    let sequences = doc["sequences"].as_array().unwrap();
    let mut out = String::from("{\n  \"spec\": \"knock-xdp sequence v2\",\n  \"sequences\": [\n");
    for (i, v) in sequences.iter().enumerate() {
        let v = Vector::parse(i, v);
        let (slot, ports) = v.compute();
        let secret: String = v.secret.iter().map(|b| format!("{b:02x}")).collect();
        out += "    {\n";
        out += &format!("      \"name\": {},\n", Value::from(v.name.as_str()));
        if let Some(server) = &v.server {
            out += &format!("      \"server\": {},\n", Value::from(server.as_str()));
        }
        out += &format!("      \"identity\": {},\n", Value::from(v.identity.as_str()));
        out += &format!("      \"secret\": \"{secret}\",\n");
        out += &format!("      \"slot_secs\": {},\n", v.slot_secs);
        out += &format!("      \"unix_time\": {},\n", v.unix_time);
        out += &format!("      \"slot\": {slot},\n");
        out += &format!("      \"length\": {},\n", v.length);
        out += &format!("      \"port_lo\": {},\n", v.port_lo);
        out += &format!("      \"port_hi\": {},\n", v.port_hi);
        out += &format!("      \"exclude\": {},\n", list(&v.exclude));
        out += &format!("      \"ports\": {}\n", list(&ports));
        out += if i + 1 < sequences.len() { "    },\n" } else { "    }\n" };
    }
    out += "  ],\n  \"identities\": [\n";
    let identities = doc["identities"].as_array().unwrap();
    for (i, v) in identities.iter().enumerate() {
        let input = v["input"].as_str().unwrap();
        // The expected form comes from the file: it is what the spec says,
        // and the other tests compare it with both implementations.
        out +=
            &format!("    {{\"input\": {}, \"identity\": {}}}", Value::from(input), v["identity"]);
        out += if i + 1 < identities.len() { ",\n" } else { "\n" };
    }
    out += "  ]\n}\n";
    std::fs::write(vectors_path(), out).unwrap();
}
