//! The sequence derivation against the published test vectors
//! (`docs/sequence-v1-vectors.json`), and those vectors against the
//! independent Python implementation (`tests/python/sequence_v1.py`).
//!
//! After changing the vector inputs, refill `slot` and `ports` with
//! `cargo test -p knock-common --features sequence --test sequence_vectors
//! -- --ignored regenerate_vectors`, then review the diff: the other tests
//! still check the result against Python.
#![cfg(feature = "sequence")]

mod common;

use common::{Sequence, assert_python_agrees, object, python_rejects, repo_root};

use std::path::PathBuf;

use knock_common::sequence::derive;
use serde::Deserialize;
use serde_json::Value;

fn vectors_path() -> PathBuf {
    repo_root().join("docs/sequence-v1-vectors.json")
}

fn load_json() -> Value {
    common::read_json(&vectors_path())
}

fn load_vectors() -> Vec<Vector> {
    common::parse_each("vector", &load_json())
}

/// The inputs of one vector, and its expected outputs.
#[derive(Deserialize)]
struct Vector {
    #[serde(default)]
    name: String,
    #[serde(flatten)]
    seq: Sequence,
}

impl Vector {
    /// The slot and ports the Rust implementation derives from the inputs.
    fn compute(&self) -> (u64, Vec<u16>) {
        let slot = self.seq.slot_now();
        let seq = derive(&self.seq.secret, slot, &self.seq.profile.params())
            .unwrap_or_else(|e| panic!("vector {:?}: {e}", self.name));
        (slot, seq.as_slice().to_vec())
    }

    /// The vector's members with `slot` and `ports` from [`Vector::compute`].
    fn regenerated(&self) -> Vec<(&'static str, String)> {
        let (slot, ports) = self.compute();
        let mut members = vec![("name", common::json(&self.name))];
        members.extend(self.seq.members(slot, &ports));
        members
    }
}

#[test]
fn rust_matches_every_vector() {
    let vectors = load_vectors();
    assert!(vectors.len() >= 8, "expected at least 8 vectors");
    for (i, v) in vectors.iter().enumerate() {
        assert!(!v.seq.ports.is_empty(), "vector {i} has no ports yet");
        let (slot, ports) = v.compute();
        assert_eq!(slot, v.seq.slot, "vector {i} ({}): slot", v.name);
        assert_eq!(ports, v.seq.ports, "vector {i} ({}): ports", v.name);
    }
}

#[test]
fn python_reference_matches_every_vector() {
    assert_python_agrees("sequence_v1.py", &vectors_path(), load_vectors().len());
}

#[test]
fn python_reference_detects_a_wrong_port() {
    let mut vectors = load_json();
    // Change the first port of vector 0 to another port of its range.
    let port = vectors[0]["ports"][0].as_u64().expect("vector 0 has ports");
    let lo = vectors[0]["port_lo"].as_u64().unwrap();
    let other = if port > lo { port - 1 } else { port + 1 };
    vectors[0]["ports"][0] = Value::from(other);

    let stdout = python_rejects("sequence_v1.py", "sequence-v1", &vectors, "a port of vector 0");
    assert!(stdout.contains("mismatch 0:"), "{stdout}");
    assert!(stdout.contains("ok 1"), "{stdout}");
}

/// Refills `slot` and `ports` of every vector from the Rust implementation
/// and rewrites the file. Run by hand (see the module docs).
#[test]
#[ignore = "rewrites docs/sequence-v1-vectors.json"]
fn regenerate_vectors() {
    let vectors: Vec<String> = load_vectors().iter().map(|v| object(2, &v.regenerated())).collect();
    common::write_vectors(&vectors_path(), &common::array(0, &vectors));
}
