//! The secret derivations against the published test vectors
//! (`docs/secrets-v1-vectors.json`), those vectors against the independent
//! Python implementation (`tests/python/secrets_v1.py`), and the TOTP codes
//! against `oathtool` (Debian package `oathtool`, which the project's setup
//! installs: these tests fail without it).
//!
//! After changing the vector inputs, refill the outputs with
//! `python3 tests/python/secrets_v1.py --fill docs/secrets-v1-vectors.json`
//! and review the diff: the tests here check the result against Rust.
#![cfg(feature = "sequence")]

mod common;

use common::{assert_python_agrees, repo_root, run_python, write_tampered};

use std::path::PathBuf;
use std::process::Command;

use knock_common::secret::{
    SALT_LEN, TOTP_STEP_SECS, base32_decode, base32_encode, base32_len, passphrase_secret,
    pbkdf2_sha256, pin_key, totp_code, totp_slot_secret,
};
use knock_common::sequence::{Params, derive, slot_at};
use serde_json::{Map, Value};

/// Every section of the vector file, in file order.
const SECTIONS: [&str; 8] = [
    "pbkdf2_sha256",
    "base32",
    "passphrase_secret",
    "pin_key",
    "totp_slot_secret",
    "totp_code",
    "totp_end_to_end",
    "passphrase_end_to_end",
];

fn vectors_path() -> PathBuf {
    repo_root().join("docs/secrets-v1-vectors.json")
}

fn load() -> Map<String, Value> {
    let path = vectors_path();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    match serde_json::from_str(&text) {
        Ok(Value::Object(doc)) => doc,
        Ok(_) => panic!("{} is not a JSON object", path.display()),
        Err(e) => panic!("{} is not valid JSON: {e}", path.display()),
    }
}

/// One vector, with its section and index for messages.
struct Vector<'a> {
    at: String,
    v: &'a Value,
}

impl Vector<'_> {
    fn field(&self, name: &str) -> &Value {
        self.v.get(name).unwrap_or_else(|| panic!("{} has no {name:?}", self.at))
    }

    fn str(&self, name: &str) -> &str {
        self.field(name).as_str().unwrap_or_else(|| panic!("{}: {name:?} is not a string", self.at))
    }

    fn uint(&self, name: &str) -> u64 {
        self.field(name)
            .as_u64()
            .unwrap_or_else(|| panic!("{}: {name:?} is not an unsigned integer", self.at))
    }

    fn u32(&self, name: &str) -> u32 {
        self.uint(name)
            .try_into()
            .unwrap_or_else(|_| panic!("{}: {name:?} does not fit 32 bits", self.at))
    }

    fn hex(&self, name: &str) -> Vec<u8> {
        let text = self.str(name);
        assert!(text.len().is_multiple_of(2), "{}: {name:?} has odd length", self.at);
        (0..text.len())
            .step_by(2)
            .map(|i| {
                u8::from_str_radix(&text[i..i + 2], 16)
                    .unwrap_or_else(|e| panic!("{}: bad hex in {name:?}: {e}", self.at))
            })
            .collect()
    }

    fn hex32(&self, name: &str) -> [u8; 32] {
        self.hex(name)
            .try_into()
            .unwrap_or_else(|_| panic!("{}: {name:?} is not 32 bytes", self.at))
    }

    fn salt(&self) -> [u8; SALT_LEN] {
        self.hex("salt")
            .try_into()
            .unwrap_or_else(|_| panic!("{}: salt is not {SALT_LEN} bytes", self.at))
    }

    /// A 6-digit code as written in the vectors (with leading zeros).
    fn code(&self, name: &str) -> u32 {
        let text = self.str(name);
        assert!(
            text.len() == 6 && text.bytes().all(|b| b.is_ascii_digit()),
            "{}: {name:?} is not 6 digits",
            self.at
        );
        text.parse().unwrap()
    }

    fn ports(&self, name: &str) -> Vec<u16> {
        self.field(name)
            .as_array()
            .unwrap_or_else(|| panic!("{}: {name:?} is not an array", self.at))
            .iter()
            .map(|p| {
                p.as_u64()
                    .and_then(|p| u16::try_from(p).ok())
                    .unwrap_or_else(|| panic!("{}: bad port {p} in {name:?}", self.at))
            })
            .collect()
    }

    /// The sequence of `secret` for `slot` under the vector's profile.
    fn sequence(&self, secret: &[u8; 32], slot: u64) -> Vec<u16> {
        let exclude = self.ports("exclude");
        let params = Params {
            length: self.uint("length").try_into().expect("length fits u8"),
            port_lo: self.uint("port_lo").try_into().expect("port_lo fits u16"),
            port_hi: self.uint("port_hi").try_into().expect("port_hi fits u16"),
            exclude: &exclude,
        };
        derive(secret, slot, &params)
            .unwrap_or_else(|e| panic!("{}: {e}", self.at))
            .as_slice()
            .to_vec()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn code_text(code: u32) -> String {
    format!("{code:06}")
}

/// Runs `check` on every vector of `section`; returns how many there were.
fn each(doc: &Map<String, Value>, section: &str, mut check: impl FnMut(&Vector)) -> usize {
    let vectors = doc
        .get(section)
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("no array {section:?} in the vectors"));
    assert!(!vectors.is_empty(), "section {section:?} is empty");
    for (i, v) in vectors.iter().enumerate() {
        let name = v.get("name").and_then(Value::as_str).unwrap_or("");
        check(&Vector { at: format!("{section} {i} ({name})"), v });
    }
    vectors.len()
}

fn base32(data: &[u8]) -> String {
    let mut out = vec![0u8; base32_len(data.len())];
    base32_encode(data, &mut out).to_owned()
}

fn unbase32(text: &str) -> Option<Vec<u8>> {
    let mut out = vec![0u8; text.len() * 5 / 8];
    let n = base32_decode(text, &mut out)?;
    out.truncate(n);
    Some(out)
}

/// Checks the TOTP secret's base32 spelling and returns the secret.
fn totp_secret(v: &Vector) -> Vec<u8> {
    let secret = v.hex("totp_secret");
    let text = v.str("totp_secret_base32");
    assert_eq!(base32(&secret), text, "{}: base32", v.at);
    assert_eq!(unbase32(text).as_deref(), Some(&secret[..]), "{}", v.at);
    secret
}

#[test]
fn file_has_every_section_and_nothing_else() {
    let doc = load();
    assert_eq!(doc.get("spec").and_then(Value::as_str), Some("knock-xdp secrets v1"));
    let mut keys: Vec<&str> = doc.keys().map(String::as_str).collect();
    keys.retain(|k| *k != "spec");
    let mut expected = SECTIONS.to_vec();
    keys.sort_unstable();
    expected.sort_unstable();
    assert_eq!(keys, expected);
}

#[test]
fn pbkdf2_vectors() {
    let doc = load();
    let n = each(&doc, "pbkdf2_sha256", |v| {
        let out =
            pbkdf2_sha256(v.str("password").as_bytes(), &v.hex("salt_hex"), v.u32("iterations"));
        assert_eq!(hex(&out), v.str("output"), "{}", v.at);
    });
    assert!(n >= 6);
}

#[test]
fn base32_vectors() {
    let doc = load();
    each(&doc, "base32", |v| {
        let data = v.hex("data_hex");
        let text = v.str("text");
        assert_eq!(base32(&data), text, "{}", v.at);
        assert_eq!(unbase32(text).as_deref(), Some(&data[..]), "{}", v.at);
        // Lower case, padding to a multiple of 8 and spaces decode the same.
        let mut loose = text.to_lowercase();
        while loose.len() % 8 != 0 {
            loose.push('=');
        }
        loose.insert(0, ' ');
        assert_eq!(unbase32(&loose).as_deref(), Some(&data[..]), "{}", v.at);
    });
}

#[test]
fn passphrase_vectors() {
    let doc = load();
    each(&doc, "passphrase_secret", |v| {
        let secret = passphrase_secret(v.str("passphrase").as_bytes(), &v.salt(), v.u32("cost"));
        assert_eq!(hex(&secret), v.str("secret"), "{}", v.at);
    });
}

#[test]
fn pin_key_vectors() {
    let doc = load();
    each(&doc, "pin_key", |v| {
        let key = pin_key(v.str("pin").as_bytes(), &v.salt(), v.u32("cost"));
        assert_eq!(hex(&key), v.str("pin_key"), "{}", v.at);
    });
}

#[test]
fn slot_secret_vectors() {
    let doc = load();
    each(&doc, "totp_slot_secret", |v| {
        let secret = totp_slot_secret(&v.hex32("pin_key"), v.code("code"));
        assert_eq!(hex(&secret), v.str("secret"), "{}", v.at);
    });
}

#[test]
fn totp_code_vectors() {
    let doc = load();
    let mut rfc = 0;
    each(&doc, "totp_code", |v| {
        let secret = totp_secret(v);
        let step = slot_at(v.uint("unix_time"), TOTP_STEP_SECS);
        assert_eq!(step, v.uint("step"), "{}: step", v.at);
        let code = totp_code(&secret, step);
        assert_eq!(code_text(code), v.str("code"), "{}", v.at);
        rfc += usize::from(secret == b"12345678901234567890");
    });
    assert_eq!(rfc, 6, "the six RFC 6238 SHA-1 vectors");
}

#[test]
fn totp_end_to_end_vectors() {
    let doc = load();
    each(&doc, "totp_end_to_end", |v| {
        let step = slot_at(v.uint("unix_time"), TOTP_STEP_SECS);
        assert_eq!(step, v.uint("step"), "{}: step", v.at);
        // Server side: it knows the TOTP secret and the PIN key.
        let server_key = v.hex32("pin_key");
        let code = totp_code(&totp_secret(v), step);
        assert_eq!(code_text(code), v.str("code"), "{}", v.at);
        let server_secret = totp_slot_secret(&server_key, code);
        assert_eq!(hex(&server_secret), v.str("slot_secret"), "{}", v.at);
        // Client side: the code the authenticator shows, and the PIN.
        let client_key = pin_key(v.str("pin").as_bytes(), &v.salt(), v.u32("cost"));
        assert_eq!(client_key, server_key, "{}: pin_key", v.at);
        let client_secret = totp_slot_secret(&client_key, v.code("code"));
        assert_eq!(client_secret, server_secret, "{}", v.at);
        let ports = v.sequence(&client_secret, step);
        assert_eq!(ports, v.ports("ports"), "{}: ports", v.at);
        // The neighbouring step has another code, secret and sequence.
        let next = totp_slot_secret(&server_key, totp_code(&totp_secret(v), step + 1));
        assert_ne!(v.sequence(&next, step + 1), ports, "{}", v.at);
    });
}

#[test]
fn passphrase_end_to_end_vectors() {
    let doc = load();
    each(&doc, "passphrase_end_to_end", |v| {
        let slot = slot_at(v.uint("unix_time"), v.u32("slot_secs"));
        assert_eq!(slot, v.uint("slot"), "{}: slot", v.at);
        let secret = passphrase_secret(v.str("passphrase").as_bytes(), &v.salt(), v.u32("cost"));
        assert_eq!(hex(&secret), v.str("secret"), "{}", v.at);
        assert_eq!(v.sequence(&secret, slot), v.ports("ports"), "{}", v.at);
    });
}

fn vector_count(doc: &Map<String, Value>) -> usize {
    SECTIONS.iter().map(|s| doc[*s].as_array().map_or(0, Vec::len)).sum()
}

#[test]
fn python_reference_matches_every_vector() {
    assert_python_agrees("secrets_v1.py", &vectors_path(), vector_count(&load()));
}

/// Changes one output of the first vector of every section; the Python
/// check must report each of them and fail.
#[test]
fn python_reference_detects_wrong_outputs() {
    let mut doc = load();
    let total = vector_count(&doc);
    let flip_hex = |v: &mut Value| {
        let text = v.as_str().expect("hex string").to_owned();
        let last = if text.ends_with('0') { '1' } else { '0' };
        *v = Value::from(format!("{}{last}", &text[..text.len() - 1]));
    };
    for section in SECTIONS {
        let v = &mut doc[section][0];
        match section {
            "pbkdf2_sha256" => flip_hex(&mut v["output"]),
            "base32" => v["text"] = Value::from("MZXW6YTBOJ"),
            "passphrase_secret" | "totp_slot_secret" => flip_hex(&mut v["secret"]),
            "pin_key" => flip_hex(&mut v["pin_key"]),
            "totp_code" => {
                let code = (v["code"].as_str().unwrap().parse::<u32>().unwrap() + 1) % 1_000_000;
                v["code"] = Value::from(code_text(code));
            }
            "totp_end_to_end" | "passphrase_end_to_end" => {
                let port = v["ports"][0].as_u64().unwrap();
                let lo = v["port_lo"].as_u64().unwrap();
                v["ports"][0] = Value::from(if port > lo { port - 1 } else { port + 1 });
            }
            _ => unreachable!(),
        }
    }
    let path = write_tampered("secrets-v1", &serde_json::to_value(&doc).unwrap());
    let out = run_python("secrets_v1.py", &path);
    let _ = std::fs::remove_file(&path);

    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "python reference should report the mismatches:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for section in SECTIONS {
        assert!(stdout.contains(&format!("mismatch {section} 0:")), "{section}:\n{stdout}");
    }
    let oks = stdout.lines().filter(|l| l.starts_with("ok ")).count();
    assert_eq!(oks, total - SECTIONS.len(), "{stdout}");
    assert!(
        stdout.contains(&format!("{} of {total} vectors do not match", SECTIONS.len())),
        "{stdout}"
    );
}

/// `YYYY-MM-DD HH:MM:SS UTC` of a UNIX time (proleptic Gregorian calendar).
fn utc_text(unix: u64) -> String {
    let (days, secs) = (unix / 86_400, unix % 86_400);
    // Days since 0000-03-01, counted in 400-year eras of 146097 days, with
    // the year starting in March so that the leap day comes last.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = era * 400 + yoe + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        secs / 3_600,
        secs / 60 % 60,
        secs % 60
    )
}

#[test]
fn utc_text_is_right() {
    assert_eq!(utc_text(0), "1970-01-01 00:00:00 UTC");
    assert_eq!(utc_text(59), "1970-01-01 00:00:59 UTC");
    assert_eq!(utc_text(951_782_400), "2000-02-29 00:00:00 UTC");
    assert_eq!(utc_text(1_234_567_890), "2009-02-13 23:31:30 UTC");
    assert_eq!(utc_text(1_764_072_000), "2025-11-25 12:00:00 UTC");
    assert_eq!(utc_text(4_107_542_399), "2100-02-28 23:59:59 UTC");
    assert_eq!(utc_text(4_107_542_400), "2100-03-01 00:00:00 UTC");
    assert_eq!(utc_text(20_000_000_000), "2603-10-11 11:33:20 UTC");
}

/// The code `oathtool --totp` computes for `base32` secret at `unix`.
fn oathtool(base32: &str, unix: u64) -> u32 {
    let out = Command::new("oathtool")
        .args(["--totp", "--digits=6", "--time-step-size=30s", "-b", base32])
        .arg("--now")
        .arg(utc_text(unix))
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run oathtool ({e}): install the Debian package oathtool")
        });
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "oathtool failed ({}): {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let code = stdout.trim();
    assert!(
        code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()),
        "oathtool printed {stdout:?}"
    );
    code.parse().unwrap()
}

#[test]
fn totp_matches_oathtool() {
    let doc = load();
    // Every totp_code vector, as published and as Rust computes it.
    each(&doc, "totp_code", |v| {
        let text = v.str("totp_secret_base32");
        let unix = v.uint("unix_time");
        let theirs = oathtool(text, unix);
        assert_eq!(code_text(theirs), v.str("code"), "{}", v.at);
        let ours = totp_code(&totp_secret(v), slot_at(unix, TOTP_STEP_SECS));
        assert_eq!(ours, theirs, "{}", v.at);
    });
    // The current time, and a lower-case spelling of a secret.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let secret: Vec<u8> = (1..=20).collect();
    let text = base32(&secret);
    for unix in [now, now + 30, 1_000_000_000] {
        let ours = totp_code(&secret, slot_at(unix, TOTP_STEP_SECS));
        assert_eq!(ours, oathtool(&text, unix), "at {unix}");
        assert_eq!(ours, oathtool(&text.to_lowercase(), unix), "at {unix}");
    }
}
