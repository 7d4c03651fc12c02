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

use common::{Sequence, object, python_rejects, repo_root};

use std::path::PathBuf;

use knock_common::{
    sequence::{derive, derive_v2},
    server_id::ServerId,
};
use serde::Deserialize;
use serde_json::Value;

const SPEC: &str = "knock-xdp sequence v2";

fn vectors_path() -> PathBuf {
    repo_root().join("docs/sequence-v2-vectors.json")
}

fn load_json() -> Value {
    let doc = common::read_json(&vectors_path());
    assert_eq!(doc["spec"], SPEC);
    doc
}

fn load() -> Doc {
    Doc::parse(&load_json())
}

/// The vectors file.
struct Doc {
    sequences: Vec<Vector>,
    identities: Vec<Identity>,
}

impl Doc {
    fn parse(doc: &Value) -> Doc {
        Doc {
            sequences: common::parse_each("sequence", &doc["sequences"]),
            identities: common::parse_each("identity", &doc["identities"]),
        }
    }
}

/// The inputs of one sequence vector, and its expected outputs.
#[derive(Deserialize)]
struct Vector {
    #[serde(default)]
    name: String,
    server: Option<String>,
    identity: String,
    #[serde(flatten)]
    seq: Sequence,
}

/// A server identity as typed, and its normalized form (none when the
/// input is not an identity).
#[derive(Deserialize)]
struct Identity {
    input: String,
    identity: Option<String>,
}

impl Vector {
    /// The slot and ports the Rust implementation derives from the inputs.
    fn compute(&self) -> (u64, Vec<u16>) {
        let slot = self.seq.slot_now();
        let params = self.seq.profile.params();
        let seq = derive_v2(&self.seq.secret, self.identity.as_bytes(), slot, &params)
            .unwrap_or_else(|e| panic!("vector {:?}: {e}", self.name));
        (slot, seq.as_slice().to_vec())
    }

    /// The vector's members with `slot` and `ports` from [`Vector::compute`].
    fn regenerated(&self) -> Vec<(&'static str, String)> {
        let (slot, ports) = self.compute();
        let mut members = vec![("name", common::json(&self.name))];
        if let Some(server) = &self.server {
            members.push(("server", common::json(server)));
        }
        members.push(("identity", common::json(&self.identity)));
        members.extend(self.seq.members(slot, &ports));
        members
    }
}

/// What the Rust implementation finds wrong with a vectors document: the
/// same checks as the Python reference, so a tampered copy fails both.
fn problems(doc: &Value) -> Vec<String> {
    let doc = Doc::parse(doc);
    let mut found = Vec::new();
    for (i, v) in doc.sequences.iter().enumerate() {
        if let Some(server) = &v.server {
            let normalized = ServerId::parse(server).map(|id| id.as_str().to_owned());
            if normalized.as_deref() != Ok(v.identity.as_str()) {
                found.push(format!("sequence {i}: {server:?} normalizes to {normalized:?}"));
            }
        }
        let (slot, ports) = v.compute();
        if slot != v.seq.slot {
            found.push(format!("sequence {i}: slot {slot}, vector says {}", v.seq.slot));
        }
        if ports != v.seq.ports {
            found.push(format!("sequence {i}: ports {ports:?}, vector says {:?}", v.seq.ports));
        }
    }
    for (i, v) in doc.identities.iter().enumerate() {
        let got = ServerId::parse(&v.input).ok().map(|id| id.as_str().to_owned());
        if got != v.identity {
            found.push(format!("identity {i}: {:?} normalizes to {got:?}", v.input));
        }
    }
    found
}

#[test]
fn rust_matches_every_vector() {
    let json = load_json();
    let doc = Doc::parse(&json);
    assert!(doc.sequences.len() >= 10, "expected at least 10 sequence vectors");
    assert!(doc.identities.len() >= 20, "expected 20 identity vectors");
    for (i, v) in doc.sequences.iter().enumerate() {
        assert!(!v.seq.ports.is_empty(), "sequence {i} has no ports yet");
    }
    assert_eq!(problems(&json), Vec::<String>::new());
}

#[test]
fn the_identity_and_the_version_change_every_sequence() {
    for (i, v) in load().sequences.iter().enumerate() {
        let (seq, slot) = (&v.seq, v.seq.slot_now());
        // A full-length sequence of every candidate is a permutation: only
        // its order can tell the derivations apart.
        let v1 = derive(&seq.secret, slot, &seq.profile.params()).unwrap();
        assert_ne!(v1.as_slice(), seq.ports, "sequence {i}: version 1 gives the same ports");
        let mut other = v.identity.clone().into_bytes();
        let last = other.len() - 1;
        other[last] ^= 1;
        let elsewhere = derive_v2(&seq.secret, &other, slot, &seq.profile.params()).unwrap();
        assert_ne!(elsewhere.as_slice(), seq.ports, "sequence {i}: another identity, same ports");
    }
}

#[test]
fn python_reference_matches_every_vector() {
    let doc = load();
    let expected = doc.sequences.len() + doc.identities.len();
    common::assert_python_agrees("sequence_v2.py", &vectors_path(), expected);
}

/// Tampered copies of the vectors: each must be reported, by Python with
/// exit status 1 and the entry's name, and by the Rust checks.
#[test]
fn tampered_vectors_are_caught_by_both_implementations() {
    let doc = load_json();
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
    let v = &Doc::parse(&doc).sequences[0].seq;
    let v1 = derive(&v.secret, v.slot, &v.profile.params()).unwrap();
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
        let stdout =
            python_rejects("sequence_v2.py", &format!("sequence-v2-{name}"), &tampered, name);
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
    let doc = load();
    let sequences: Vec<String> =
        doc.sequences.iter().map(|v| object(4, &v.regenerated())).collect();
    // The expected forms come from the file: they are what the spec says,
    // and the other tests compare them with both implementations.
    let identities: Vec<String> = doc
        .identities
        .iter()
        .map(|v| {
            let (input, identity) = (common::json(&v.input), common::json(&v.identity));
            format!("{{\"input\": {input}, \"identity\": {identity}}}")
        })
        .collect();
    let members = [
        ("spec", common::json(SPEC)),
        ("sequences", common::array(2, &sequences)),
        ("identities", common::array(2, &identities)),
    ];
    common::write_vectors(&vectors_path(), &object(0, &members));
}
