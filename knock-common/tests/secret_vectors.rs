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

use common::{Profile, assert_python_agrees, from_hex, hex, python_rejects, repo_root};

use std::path::PathBuf;
use std::process::Command;

use knock_common::secret::{
    SALT_LEN, TOTP_STEP_SECS, base32_decode, base32_encode, base32_len, passphrase_secret,
    pbkdf2_sha256, pin_key, totp_code, totp_slot_secret,
};
use knock_common::sequence::{derive, slot_at};
use serde::{Deserialize, Deserializer, de::DeserializeOwned, de::Error};
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
    match common::read_json(&vectors_path()) {
        Value::Object(doc) => doc,
        _ => panic!("{} is not a JSON object", vectors_path().display()),
    }
}

/// A vector of section `pbkdf2_sha256`.
#[derive(Deserialize)]
struct Pbkdf2 {
    password: String,
    #[serde(deserialize_with = "from_hex")]
    salt_hex: Vec<u8>,
    iterations: u32,
    output: String,
}

/// A vector of section `base32`.
#[derive(Deserialize)]
struct Base32 {
    #[serde(deserialize_with = "from_hex")]
    data_hex: Vec<u8>,
    text: String,
}

/// A vector of section `passphrase_secret`.
#[derive(Deserialize)]
struct PassphraseSecret {
    passphrase: String,
    #[serde(deserialize_with = "from_hex")]
    salt: [u8; SALT_LEN],
    cost: u32,
    secret: String,
}

/// A vector of section `pin_key`.
#[derive(Deserialize)]
struct PinKey {
    pin: String,
    #[serde(deserialize_with = "from_hex")]
    salt: [u8; SALT_LEN],
    cost: u32,
    pin_key: String,
}

/// A vector of section `totp_slot_secret`.
#[derive(Deserialize)]
struct SlotSecret {
    #[serde(deserialize_with = "from_hex")]
    pin_key: [u8; 32],
    #[serde(deserialize_with = "six_digits")]
    code: u32,
    secret: String,
}

/// A TOTP secret, in hex and as an authenticator shows it.
#[derive(Deserialize)]
struct Totp {
    #[serde(deserialize_with = "from_hex")]
    totp_secret: Vec<u8>,
    totp_secret_base32: String,
}

impl Totp {
    /// Checks the secret's base32 spelling and returns the secret.
    fn secret(&self, at: &str) -> Vec<u8> {
        let text = &self.totp_secret_base32;
        assert_eq!(&base32(&self.totp_secret), text, "{at}: base32");
        assert_eq!(unbase32(text).as_deref(), Some(&self.totp_secret[..]), "{at}");
        self.totp_secret.clone()
    }
}

/// A vector of section `totp_code`.
#[derive(Deserialize)]
struct TotpCode {
    #[serde(flatten)]
    totp: Totp,
    unix_time: u64,
    step: u64,
    #[serde(deserialize_with = "six_digits")]
    code: u32,
}

/// A vector of section `totp_end_to_end`.
#[derive(Deserialize)]
struct TotpEndToEnd {
    #[serde(flatten)]
    totp: Totp,
    #[serde(deserialize_with = "from_hex")]
    salt: [u8; SALT_LEN],
    pin: String,
    cost: u32,
    unix_time: u64,
    step: u64,
    #[serde(deserialize_with = "six_digits")]
    code: u32,
    #[serde(deserialize_with = "from_hex")]
    pin_key: [u8; 32],
    slot_secret: String,
    #[serde(flatten)]
    profile: Profile,
    ports: Vec<u16>,
}

/// A vector of section `passphrase_end_to_end`.
#[derive(Deserialize)]
struct PassphraseEndToEnd {
    passphrase: String,
    #[serde(deserialize_with = "from_hex")]
    salt: [u8; SALT_LEN],
    cost: u32,
    slot_secs: u32,
    unix_time: u64,
    slot: u64,
    secret: String,
    #[serde(flatten)]
    profile: Profile,
    ports: Vec<u16>,
}

/// `deserialize_with` for a 6-digit code as written in the vectors (with
/// leading zeros).
fn six_digits<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let text = String::deserialize(d)?;
    if text.len() != 6 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(D::Error::custom(format!("{text:?} is not 6 digits")));
    }
    Ok(text.parse().unwrap())
}

/// The sequence of `secret` for `slot` under `profile`.
fn sequence(profile: &Profile, secret: &[u8; 32], slot: u64, at: &str) -> Vec<u16> {
    derive(secret, slot, &profile.params())
        .unwrap_or_else(|e| panic!("{at}: {e}"))
        .as_slice()
        .to_vec()
}

fn code_text(code: u32) -> String {
    format!("{code:06}")
}

/// Runs `check` on every vector of `section`, with its section, index and
/// name for messages; returns how many there were.
fn each<T: DeserializeOwned>(
    doc: &Map<String, Value>,
    section: &str,
    mut check: impl FnMut(&str, &T),
) -> usize {
    let vectors = doc
        .get(section)
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("no array {section:?} in the vectors"));
    assert!(!vectors.is_empty(), "section {section:?} is empty");
    for (i, v) in vectors.iter().enumerate() {
        let name = v.get("name").and_then(Value::as_str).unwrap_or("");
        let at = format!("{section} {i} ({name})");
        check(&at, &common::parse(&at, v));
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
    let n = each(&doc, "pbkdf2_sha256", |at, v: &Pbkdf2| {
        let out = pbkdf2_sha256(v.password.as_bytes(), &v.salt_hex, v.iterations);
        assert_eq!(hex(&out), v.output, "{at}");
    });
    assert!(n >= 6);
}

#[test]
fn base32_vectors() {
    let doc = load();
    each(&doc, "base32", |at, v: &Base32| {
        let (data, text) = (&v.data_hex, &v.text);
        assert_eq!(&base32(data), text, "{at}");
        assert_eq!(unbase32(text).as_ref(), Some(data), "{at}");
        // Lower case, padding to a multiple of 8 and spaces decode the same.
        let mut loose = text.to_lowercase();
        while loose.len() % 8 != 0 {
            loose.push('=');
        }
        loose.insert(0, ' ');
        assert_eq!(unbase32(&loose).as_ref(), Some(data), "{at}");
    });
}

#[test]
fn passphrase_vectors() {
    let doc = load();
    each(&doc, "passphrase_secret", |at, v: &PassphraseSecret| {
        let secret = passphrase_secret(v.passphrase.as_bytes(), &v.salt, v.cost);
        assert_eq!(hex(&secret), v.secret, "{at}");
    });
}

#[test]
fn pin_key_vectors() {
    let doc = load();
    each(&doc, "pin_key", |at, v: &PinKey| {
        let key = pin_key(v.pin.as_bytes(), &v.salt, v.cost);
        assert_eq!(hex(&key), v.pin_key, "{at}");
    });
}

#[test]
fn slot_secret_vectors() {
    let doc = load();
    each(&doc, "totp_slot_secret", |at, v: &SlotSecret| {
        let secret = totp_slot_secret(&v.pin_key, v.code);
        assert_eq!(hex(&secret), v.secret, "{at}");
    });
}

#[test]
fn totp_code_vectors() {
    let doc = load();
    let mut rfc = 0;
    each(&doc, "totp_code", |at, v: &TotpCode| {
        let secret = v.totp.secret(at);
        let step = slot_at(v.unix_time, TOTP_STEP_SECS);
        assert_eq!(step, v.step, "{at}: step");
        let code = totp_code(&secret, step);
        assert_eq!(code_text(code), code_text(v.code), "{at}");
        rfc += usize::from(secret == b"12345678901234567890");
    });
    assert_eq!(rfc, 6, "the six RFC 6238 SHA-1 vectors");
}

#[test]
fn totp_end_to_end_vectors() {
    let doc = load();
    each(&doc, "totp_end_to_end", |at, v: &TotpEndToEnd| {
        let step = slot_at(v.unix_time, TOTP_STEP_SECS);
        assert_eq!(step, v.step, "{at}: step");
        // Server side: it knows the TOTP secret and the PIN key.
        let server_key = v.pin_key;
        let code = totp_code(&v.totp.secret(at), step);
        assert_eq!(code_text(code), code_text(v.code), "{at}");
        let server_secret = totp_slot_secret(&server_key, code);
        assert_eq!(hex(&server_secret), v.slot_secret, "{at}");
        // Client side: the code the authenticator shows, and the PIN.
        let client_key = pin_key(v.pin.as_bytes(), &v.salt, v.cost);
        assert_eq!(client_key, server_key, "{at}: pin_key");
        let client_secret = totp_slot_secret(&client_key, v.code);
        assert_eq!(client_secret, server_secret, "{at}");
        let ports = sequence(&v.profile, &client_secret, step, at);
        assert_eq!(ports, v.ports, "{at}: ports");
        // The neighbouring step has another code, secret and sequence.
        let next = totp_slot_secret(&server_key, totp_code(&v.totp.secret(at), step + 1));
        assert_ne!(sequence(&v.profile, &next, step + 1, at), ports, "{at}");
    });
}

#[test]
fn passphrase_end_to_end_vectors() {
    let doc = load();
    each(&doc, "passphrase_end_to_end", |at, v: &PassphraseEndToEnd| {
        let slot = slot_at(v.unix_time, v.slot_secs);
        assert_eq!(slot, v.slot, "{at}: slot");
        let secret = passphrase_secret(v.passphrase.as_bytes(), &v.salt, v.cost);
        assert_eq!(hex(&secret), v.secret, "{at}");
        assert_eq!(sequence(&v.profile, &secret, slot, at), v.ports, "{at}");
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
    let what = "an output of the first vector of every section";
    let stdout = python_rejects("secrets_v1.py", "secrets-v1", &Value::Object(doc), what);
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
    each(&doc, "totp_code", |at, v: &TotpCode| {
        let theirs = oathtool(&v.totp.totp_secret_base32, v.unix_time);
        assert_eq!(code_text(theirs), code_text(v.code), "{at}");
        let ours = totp_code(&v.totp.secret(at), slot_at(v.unix_time, TOTP_STEP_SECS));
        assert_eq!(ours, theirs, "{at}");
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
