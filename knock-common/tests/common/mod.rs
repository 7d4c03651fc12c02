//! What the spec-vector tests share: reading a vectors file into typed
//! vectors, hex members, running an independent Python implementation over
//! a vectors file (or a tampered copy), and writing a regenerated file in
//! the files' layout.
// Each test file uses its own part of this module.
#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use serde::{Deserialize, Deserializer, de::DeserializeOwned, de::Error};
use serde_json::Value;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The JSON document of a vectors file.
pub fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()))
}

/// One vector (or document) of type `T`; `at` names it in the error.
pub fn parse<T: DeserializeOwned>(at: &str, v: &Value) -> T {
    T::deserialize(v).unwrap_or_else(|e| panic!("{at}: {e}"))
}

/// Every element of the array `vectors`, `label i` in errors.
pub fn parse_each<T: DeserializeOwned>(label: &str, vectors: &Value) -> Vec<T> {
    let vectors =
        vectors.as_array().unwrap_or_else(|| panic!("the {label} vectors are not a JSON array"));
    vectors.iter().enumerate().map(|(i, v)| parse(&format!("{label} {i}"), v)).collect()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

/// `deserialize_with` for a hex string member: bytes of any length
/// (`Vec<u8>`) or of exactly N (`[u8; N]`).
pub fn from_hex<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<Vec<u8>>,
{
    let text = String::deserialize(d)?;
    let bytes = unhex(&text).ok_or_else(|| D::Error::custom(format!("{text:?} is not hex")))?;
    let len = bytes.len();
    T::try_from(bytes).map_err(|_| {
        D::Error::custom(format!("{text:?} is {len} bytes, not a {}", std::any::type_name::<T>()))
    })
}

/// A sequence profile as the vectors spell it.
#[cfg(feature = "sequence")]
#[derive(Deserialize)]
pub struct Profile {
    pub length: u8,
    pub port_lo: u16,
    pub port_hi: u16,
    pub exclude: Vec<u16>,
}

#[cfg(feature = "sequence")]
impl Profile {
    pub fn params(&self) -> knock_common::sequence::Params<'_> {
        knock_common::sequence::Params {
            length: self.length,
            port_lo: self.port_lo,
            port_hi: self.port_hi,
            exclude: &self.exclude,
        }
    }
}

/// The members of a sequence vector (v1 and v2) after its name and, in
/// v2, the server's identity: the inputs and the expected slot and ports.
#[cfg(feature = "sequence")]
#[derive(Deserialize)]
pub struct Sequence {
    #[serde(deserialize_with = "from_hex")]
    pub secret: [u8; 32],
    pub slot_secs: u32,
    pub unix_time: u64,
    pub slot: u64,
    #[serde(flatten)]
    pub profile: Profile,
    pub ports: Vec<u16>,
}

#[cfg(feature = "sequence")]
impl Sequence {
    /// The slot of the vector's time.
    pub fn slot_now(&self) -> u64 {
        knock_common::sequence::slot_at(self.unix_time, self.slot_secs)
    }

    /// These members, in file order, with `slot` and `ports` for the
    /// expected ones: for [`object`].
    pub fn members(&self, slot: u64, ports: &[u16]) -> Vec<(&'static str, String)> {
        let p = &self.profile;
        vec![
            ("secret", json(&hex(&self.secret))),
            ("slot_secs", self.slot_secs.to_string()),
            ("unix_time", self.unix_time.to_string()),
            ("slot", slot.to_string()),
            ("length", p.length.to_string()),
            ("port_lo", p.port_lo.to_string()),
            ("port_hi", p.port_hi.to_string()),
            ("exclude", port_list(&p.exclude)),
            ("ports", port_list(ports)),
        ]
    }
}

/// Runs `tests/python/<script>` on `vectors`.
pub fn run_python(script: &str, vectors: &Path) -> Output {
    let script = repo_root().join("tests/python").join(script);
    Command::new("python3")
        .arg(&script)
        .arg(vectors)
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 {}: {e}", script.display()))
}

/// Runs `tests/python/<script>` on `vectors` and requires it to succeed
/// with one `ok ...` line for each of the `expected` vectors.
pub fn assert_python_agrees(script: &str, vectors: &Path, expected: usize) {
    let out = run_python(script, vectors);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python reference failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let oks = stdout.lines().filter(|l| l.starts_with("ok ")).count();
    assert_eq!(oks, expected, "python output:\n{stdout}");
}

/// Writes a tampered copy of a vectors file where a test can find it.
/// `name` tells copies apart: the tests of a file run in parallel in one
/// process.
pub fn write_tampered(name: &str, doc: &Value) -> PathBuf {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{name}-tampered-{}.json", std::process::id()));
    std::fs::write(&path, serde_json::to_string(doc).unwrap()).unwrap();
    path
}

/// Runs `tests/python/<script>` on `tampered`, a vectors document with
/// `what` changed, and requires it to fail with exit status 1 (a mismatch,
/// not a malformed file); returns what it printed for the caller to check
/// which vectors it reported.
pub fn python_rejects(script: &str, name: &str, tampered: &Value, what: &str) -> String {
    let path = write_tampered(name, tampered);
    let out = run_python(script, &path);
    let _ = std::fs::remove_file(&path);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(1),
        "python reference should report the mismatch ({what}):\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A value as JSON text on one line (strings quoted and escaped).
pub fn json<T: serde::Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).unwrap()
}

/// A list of ports on one line, as the vector files write them.
pub fn port_list(ports: &[u16]) -> String {
    let items: Vec<String> = ports.iter().map(u16::to_string).collect();
    format!("[{}]", items.join(", "))
}

/// A JSON object with a member a line, its closing brace `indent` spaces in.
pub fn object(indent: usize, members: &[(&str, String)]) -> String {
    let members: Vec<String> = members
        .iter()
        .map(|(key, value)| format!("{:indent$}  {}: {value}", "", json(key)))
        .collect();
    format!("{{\n{}\n{:indent$}}}", members.join(",\n"), "")
}

/// A JSON array with an item a line, its closing bracket `indent` spaces in.
pub fn array(indent: usize, items: &[String]) -> String {
    let items: Vec<String> = items.iter().map(|item| format!("{:indent$}  {item}", "")).collect();
    format!("[\n{}\n{:indent$}]", items.join(",\n"), "")
}

/// Rewrites a vectors file with `doc`, the regenerated document.
pub fn write_vectors(path: &Path, doc: &str) {
    std::fs::write(path, format!("{doc}\n"))
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}
