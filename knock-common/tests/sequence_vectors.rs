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

use common::{assert_python_agrees, repo_root, run_python, write_tampered};

use std::path::PathBuf;

use knock_common::sequence::{Params, derive, slot_at};
use serde_json::Value;

fn vectors_path() -> PathBuf {
    repo_root().join("docs/sequence-v1-vectors.json")
}

fn load_vectors() -> Vec<Value> {
    let path = vectors_path();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    match serde_json::from_str(&text) {
        Ok(Value::Array(vectors)) => vectors,
        Ok(_) => panic!("{} is not a JSON array", path.display()),
        Err(e) => panic!("{} is not valid JSON: {e}", path.display()),
    }
}

/// The inputs of one vector, and its expected outputs.
struct Vector {
    name: String,
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
            v.get(name).unwrap_or_else(|| panic!("vector {i} has no {name:?}"))
        };
        let uint = |name: &str| -> u64 {
            field(name)
                .as_u64()
                .unwrap_or_else(|| panic!("vector {i}: {name:?} is not an unsigned integer"))
        };
        let ports = |name: &str| -> Vec<u16> {
            field(name)
                .as_array()
                .unwrap_or_else(|| panic!("vector {i}: {name:?} is not an array"))
                .iter()
                .map(|p| {
                    p.as_u64()
                        .and_then(|p| u16::try_from(p).ok())
                        .unwrap_or_else(|| panic!("vector {i}: bad port {p} in {name:?}"))
                })
                .collect()
        };
        let hex = field("secret")
            .as_str()
            .unwrap_or_else(|| panic!("vector {i}: secret is not a string"));
        assert_eq!(hex.len(), 64, "vector {i}: secret must be 64 hex digits");
        let mut secret = [0u8; 32];
        for (k, byte) in secret.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * k..2 * k + 2], 16)
                .unwrap_or_else(|e| panic!("vector {i}: bad secret hex: {e}"));
        }
        Vector {
            name: v.get("name").and_then(Value::as_str).unwrap_or("").to_owned(),
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
        let seq = derive(&self.secret, slot, &self.params())
            .unwrap_or_else(|e| panic!("vector {:?}: {e}", self.name));
        (slot, seq.as_slice().to_vec())
    }
}

#[test]
fn rust_matches_every_vector() {
    let vectors = load_vectors();
    assert!(vectors.len() >= 8, "expected at least 8 vectors");
    for (i, v) in vectors.iter().enumerate() {
        let v = Vector::parse(i, v);
        assert!(!v.ports.is_empty(), "vector {i} has no ports yet");
        let (slot, ports) = v.compute();
        assert_eq!(slot, v.slot, "vector {i} ({}): slot", v.name);
        assert_eq!(ports, v.ports, "vector {i} ({}): ports", v.name);
    }
}

#[test]
fn python_reference_matches_every_vector() {
    assert_python_agrees("sequence_v1.py", &vectors_path(), load_vectors().len());
}

#[test]
fn python_reference_detects_a_wrong_port() {
    let mut vectors = load_vectors();
    // Change the first port of vector 0 to another port of its range.
    let first = &mut vectors[0]["ports"][0];
    let port = first.as_u64().expect("vector 0 has ports");
    let lo = vectors[0]["port_lo"].as_u64().unwrap();
    let other = if port > lo { port - 1 } else { port + 1 };
    vectors[0]["ports"][0] = Value::from(other);

    let path = write_tampered("sequence-v1", &serde_json::to_value(&vectors).unwrap());
    let out = run_python("sequence_v1.py", &path);
    let _ = std::fs::remove_file(&path);

    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "python reference should report the mismatch:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("mismatch 0:"), "{stdout}");
    assert!(stdout.contains("ok 1"), "{stdout}");
}

/// Refills `slot` and `ports` of every vector from the Rust implementation
/// and rewrites the file. Run by hand (see the module docs).
#[test]
#[ignore = "rewrites docs/sequence-v1-vectors.json"]
fn regenerate_vectors() {
    let list = |ports: &[u16]| {
        let items: Vec<String> = ports.iter().map(u16::to_string).collect();
        format!("[{}]", items.join(", "))
    };
    let mut out = String::from("[\n");
    let vectors = load_vectors();
    for (i, v) in vectors.iter().enumerate() {
        let v = Vector::parse(i, v);
        let (slot, ports) = v.compute();
        let secret: String = v.secret.iter().map(|b| format!("{b:02x}")).collect();
        out += "  {\n";
        out += &format!("    \"name\": {},\n", Value::from(v.name.as_str()));
        out += &format!("    \"secret\": \"{secret}\",\n");
        out += &format!("    \"slot_secs\": {},\n", v.slot_secs);
        out += &format!("    \"unix_time\": {},\n", v.unix_time);
        out += &format!("    \"slot\": {slot},\n");
        out += &format!("    \"length\": {},\n", v.length);
        out += &format!("    \"port_lo\": {},\n", v.port_lo);
        out += &format!("    \"port_hi\": {},\n", v.port_hi);
        out += &format!("    \"exclude\": {},\n", list(&v.exclude));
        out += &format!("    \"ports\": {}\n", list(&ports));
        out += if i + 1 < vectors.len() { "  },\n" } else { "  }\n" };
    }
    out += "]\n";
    std::fs::write(vectors_path(), out).unwrap();
}
