//! Client profiles: everything a client needs to knock, in one TOML file.
//!
//! ```toml
//! # knock-xdp client profile "alice": it opens the door, keep it secret
//! version = 1
//! name = "alice"
//! proto = "tcp"
//! length = 4
//! slot = "30s"
//! ports = "61000-65535"
//! exclude = []
//! secret = "<64 hex digits>"
//! ```
//!
//! or, for a static sequence (knockd's syntax): `static = "7000,8000:udp,9000"`.
//! Passphrase and authenticator (TOTP) clients carry `mode`, `salt` and
//! `cost` instead of a secret (docs/secrets-v1.md). `fleet = true` makes any
//! of the three derive a different sequence for every server
//! (docs/sequence-v2.md). The server keeps the same file plus the client's
//! `id` and the derived keys in its state directory.
//!
//! The same fields make the single-line URI form, `knock-xdp:profile?v=1&name=alice&...`.

use std::{fmt::Write as _, fs, path::Path, time::Duration};

use anyhow::{Context as _, Result, anyhow, bail};
use knock_common::{
    maps::MAX_KNOCK_STEPS,
    secret::{self, SALT_LEN},
    sequence::{self, MAX_SLOT_SECS, Params},
    server_id::ServerId,
};
use serde::{Deserialize, Serialize};

use crate::{
    ports::{Proto, ProtoPort, parse_port},
    state::parse_toml,
    units::{format_duration, parse_duration},
};

pub const PROFILE_VERSION: u32 = 1;
/// The URI form of a profile starts with this.
pub const URI_PREFIX: &str = "knock-xdp:profile?";
pub const DEFAULT_LENGTH: u8 = 4;
pub const DEFAULT_SLOT: Duration = Duration::from_secs(30);
/// Above Linux's ephemeral range (32768-60999), where replies to the host's
/// own outgoing connections arrive, and clear of well-known services.
pub const DEFAULT_PORTS: (u16, u16) = (61000, 65535);

/// How a client's sequence is made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Knock {
    /// Derived from a secret and the time slot (docs/sequence-v1.md), and
    /// for a fleet client also from the server's identity
    /// (docs/sequence-v2.md).
    Rotating {
        key: Key,
        proto: Proto,
        length: u8,
        slot_secs: u32,
        ports: (u16, u16),
        exclude: Vec<u16>,
        /// One profile for many servers: each server's sequences are its
        /// own, so a sequence seen at one is useless at another.
        fleet: bool,
    },
    /// The same ports every time: works with any knock client, but a
    /// sniffed sequence can be replayed at will.
    Static { steps: Vec<ProtoPort> },
    /// Single-packet authorization (docs/spa-v1.md): one UDP datagram,
    /// authenticated with a key derived from the secret, sent to a random
    /// port of `ports` and verified in the kernel.
    Spa {
        /// A random secret or a passphrase (authenticator codes change every
        /// 30 s, which the kernel's key table does not).
        key: Key,
        /// The client's index on the server, named in every datagram.
        index: u32,
        ports: (u16, u16),
        /// The client may name the address to admit (behind NAT).
        may_name_address: bool,
    },
}

/// Where a rotating client's secret comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Key {
    /// A random 256-bit secret, carried by the profile.
    Random([u8; 32]),
    /// Derived from a passphrase; `secret` is known once the passphrase was
    /// given (and always on the server).
    Passphrase { salt: [u8; SALT_LEN], cost: u32, secret: Option<[u8; 32]> },
    /// Authenticator mode: each slot's secret comes from that TOTP step's
    /// code and the PIN key. The server holds the TOTP secret; a client
    /// holds the code the app shows and the PIN.
    Totp {
        salt: [u8; SALT_LEN],
        cost: u32,
        pin_key: Option<[u8; 32]>,
        totp_secret: Option<Vec<u8>>,
        code: Option<u32>,
    },
}

impl Key {
    pub fn mode(&self) -> &'static str {
        match self {
            Key::Random(_) => "random",
            Key::Passphrase { .. } => "passphrase",
            Key::Totp { .. } => "totp",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Profile {
    pub name: String,
    pub knock: Knock,
}

/// The file form; every field but `version` and `name` depends on the kind.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileFile {
    pub version: u32,
    pub name: String,
    /// Server side only: the client's stable id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u32>,
    /// The client's place in the kernel's tables, kept across restarts so
    /// knocks in progress survive them. Server side only, except for SPA
    /// clients, whose datagrams name it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proto: Option<Proto>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude: Option<Vec<u16>>,
    #[serde(default, rename = "static", skip_serializing_if = "Option::is_none")]
    pub static_sequence: Option<String>,
    /// `random` (default), `passphrase` or `totp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Single-packet authorization instead of a knock sequence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spa: Option<bool>,
    /// SPA: the client may name the address to admit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name_address: Option<bool>,
    /// Rotating: derive per server (sequence derivation v2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub salt: Option<String>,
    /// PBKDF2 iterations of a passphrase or PIN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<u32>,
    /// The random secret; on the server also the derived passphrase secret or PIN key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Server side only: the authenticator's secret (base32).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub totp_secret: Option<String>,
}

/// Checks a client name: it becomes a file name, so a strict alphabet.
pub fn check_name(name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && !name.starts_with('.');
    if !valid {
        bail!("invalid client name '{name}' (use 1-64 letters, digits, '-', '_' or '.')");
    }
    Ok(())
}

/// Parses `LO-HI`.
pub fn parse_range(text: &str) -> Result<(u16, u16), String> {
    let (lo, hi) = text
        .split_once('-')
        .ok_or_else(|| format!("invalid port range '{text}' (expected LO-HI, e.g. 61000-65535)"))?;
    let (lo, hi) = (parse_port(lo)?, parse_port(hi)?);
    if lo > hi {
        return Err(format!("invalid port range '{text}': {lo} is above {hi}"));
    }
    Ok((lo, hi))
}

/// Parses a list of ports and ranges: `62000,63000-63010`.
pub fn parse_port_list(text: &str) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if part.contains('-') {
            let (lo, hi) = parse_range(part)?;
            ports.extend(lo..=hi);
        } else {
            ports.push(parse_port(part)?);
        }
    }
    ports.sort_unstable();
    ports.dedup();
    Ok(ports)
}

/// Parses a static sequence in knockd's syntax: `7000,8000:udp,9000`.
pub fn parse_static(text: &str) -> Result<Vec<ProtoPort>, String> {
    let mut steps: Vec<ProtoPort> = Vec::new();
    for part in text.split(',').map(str::trim) {
        let (port, proto) = match part.split_once(':') {
            None => (part, Proto::Tcp),
            Some((port, proto)) => {
                (port, proto.parse().map_err(|e: String| format!("{e} in '{part}'"))?)
            }
        };
        let step = ProtoPort { port: parse_port(port)?, proto };
        // A repeat would look like a retransmission and be ignored.
        if steps.last() == Some(&step) {
            return Err(format!("static sequence '{text}' repeats {step} twice in a row"));
        }
        steps.push(step);
    }
    if steps.is_empty() || steps.len() > MAX_KNOCK_STEPS as usize {
        return Err(format!(
            "a static sequence has 1 to {MAX_KNOCK_STEPS} ports, '{text}' has {}",
            steps.len()
        ));
    }
    Ok(steps)
}

pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

fn from_hex<const N: usize>(what: &str, text: &str) -> Result<[u8; N]> {
    let text = text.trim();
    if text.len() != 2 * N || !text.chars().all(|c| c.is_ascii_hexdigit()) {
        bail!("{what} must be {} hexadecimal digits", 2 * N);
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).expect("checked hex digits");
    }
    Ok(out)
}

/// Random bytes from the kernel's CSPRNG.
pub fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut out = [0u8; N];
    // SAFETY: valid buffer of the given length; flags 0 blocks until seeded.
    let n = unsafe { libc::getrandom(out.as_mut_ptr().cast(), out.len(), 0) };
    if n != out.len() as isize {
        return Err(std::io::Error::last_os_error()).context("getrandom failed");
    }
    Ok(out)
}

/// A fresh 256-bit secret.
pub fn random_secret() -> Result<[u8; 32]> {
    random_bytes()
}

fn base32(data: &[u8]) -> String {
    let mut out = vec![0u8; secret::base32_len(data.len())];
    secret::base32_encode(data, &mut out).to_owned()
}

fn from_base32(text: &str) -> Result<Vec<u8>> {
    let mut out = vec![0u8; text.len()];
    let n = secret::base32_decode(text, &mut out).context("totp_secret is not valid base32")?;
    out.truncate(n);
    Ok(out)
}

impl Profile {
    /// Validates a parsed file.
    pub fn from_file(file: &ProfileFile) -> Result<Self> {
        if file.version != PROFILE_VERSION {
            bail!(
                "unsupported profile version {} (this knock-xdp reads version {PROFILE_VERSION})",
                file.version
            );
        }
        check_name(&file.name)?;
        let knock = if file.spa == Some(true) {
            let not_for_spa = [
                file.static_sequence.is_some(),
                file.length.is_some(),
                file.slot.is_some(),
                file.proto.is_some_and(|p| p != Proto::Udp),
                file.exclude.as_ref().is_some_and(|e| !e.is_empty()),
            ];
            if not_for_spa.contains(&true) {
                bail!("an SPA profile has no static sequence, length, slot, exclusions or TCP");
            }
            if file.fleet == Some(true) {
                bail!(
                    "an SPA profile is no fleet profile: its datagrams already name the server \
                     they are for"
                );
            }
            let key = key_from_file(file)?;
            if matches!(key, Key::Totp { .. }) {
                bail!("an SPA profile has a random secret or a passphrase, not an authenticator");
            }
            let index = file.index.context("an SPA profile names its index on the server")?;
            if index > u32::from(u16::MAX) {
                bail!("SPA index {index} does not fit a datagram");
            }
            let ports = match &file.ports {
                Some(text) => parse_range(text).map_err(|e| anyhow!(e))?,
                None => DEFAULT_PORTS,
            };
            Knock::Spa { key, index, ports, may_name_address: file.name_address.unwrap_or(false) }
        } else if let Some(text) = &file.static_sequence {
            let rotating_only = [
                file.secret.is_some(),
                file.length.is_some(),
                file.ports.is_some(),
                file.slot.is_some(),
                file.mode.is_some(),
            ];
            if rotating_only.contains(&true) {
                bail!("a static profile has no secret, mode, length, ports or slot");
            }
            if file.fleet == Some(true) {
                bail!(
                    "a static profile is no fleet profile: its sequence is the same on every \
                     server"
                );
            }
            Knock::Static { steps: parse_static(text).map_err(|e| anyhow!(e))? }
        } else {
            let key = key_from_file(file)?;
            let slot = match (&file.slot, &key) {
                // An authenticator's code changes every 30 s: so do its sequences.
                (_, Key::Totp { .. }) => Duration::from_secs(u64::from(secret::TOTP_STEP_SECS)),
                (Some(text), _) => parse_duration(text).map_err(|e| anyhow!("slot: {e}"))?,
                (None, _) => DEFAULT_SLOT,
            };
            if slot.subsec_nanos() != 0
                || slot.as_secs() == 0
                || slot.as_secs() > u64::from(MAX_SLOT_SECS)
            {
                bail!("slot must be whole seconds from 1s to 1d");
            }
            let ports = match &file.ports {
                Some(text) => parse_range(text).map_err(|e| anyhow!(e))?,
                None => DEFAULT_PORTS,
            };
            let length = file.length.unwrap_or(DEFAULT_LENGTH);
            let exclude = file.exclude.clone().unwrap_or_default();
            // Check the parameters (length, enough ports) with a dummy secret.
            let params = Params { length, port_lo: ports.0, port_hi: ports.1, exclude: &exclude };
            sequence::derive(&[0; 32], 0, &params).map_err(|e| anyhow!("{e}"))?;
            let proto = file.proto.unwrap_or(Proto::Tcp);
            let slot_secs = slot.as_secs() as u32;
            let fleet = file.fleet.unwrap_or(false);
            Knock::Rotating { key, proto, length, slot_secs, ports, exclude, fleet }
        };
        Ok(Self { name: file.name.clone(), knock })
    }

    /// The file form. `with_secrets` adds what only the server (or the owner
    /// of a random secret) may hold: derived keys and the TOTP secret.
    pub fn to_file(&self) -> ProfileFile {
        self.file_form(true)
    }

    /// The file form for the client: without the server-side keys of
    /// passphrase and authenticator clients.
    pub fn to_client_file(&self) -> ProfileFile {
        self.file_form(false)
    }

    fn file_form(&self, server: bool) -> ProfileFile {
        let mut file =
            ProfileFile { version: PROFILE_VERSION, name: self.name.clone(), ..Default::default() };
        match &self.knock {
            Knock::Rotating { key, proto, length, slot_secs, ports, exclude, fleet } => {
                file.fleet = fleet.then_some(true);
                file.proto = Some(*proto);
                file.length = Some(*length);
                file.slot = Some(format_duration(Duration::from_secs(u64::from(*slot_secs))));
                file.ports = Some(format!("{}-{}", ports.0, ports.1));
                file.exclude = Some(exclude.clone());
                write_key(&mut file, key, server);
            }
            Knock::Static { steps } => {
                file.static_sequence = Some(join_static(steps));
            }
            Knock::Spa { key, index, ports, may_name_address } => {
                file.spa = Some(true);
                file.index = Some(*index);
                file.ports = Some(format!("{}-{}", ports.0, ports.1));
                file.name_address = may_name_address.then_some(true);
                write_key(&mut file, key, server);
            }
        }
        file
    }

    /// The client's profile as TOML, with a header saying what it is.
    pub fn to_toml(&self) -> Result<String> {
        let body =
            toml::to_string(&self.to_client_file()).context("cannot serialise the profile")?;
        let warning = match &self.knock {
            Knock::Rotating { key: Key::Random(_), .. } => "it opens the door, keep it secret",
            Knock::Rotating { .. } => {
                "holds no secret; knocking needs the passphrase or the code and PIN"
            }
            Knock::Static { .. } => "a static sequence: anyone who sees it can knock",
            Knock::Spa { key: Key::Random(_), .. } => "it opens the door, keep it secret",
            Knock::Spa { .. } => "holds no secret; knocking needs the passphrase",
        };
        Ok(format!("# knock-xdp client profile \"{}\": {warning}\n{body}", self.name))
    }

    /// The client's profile as one line: `knock-xdp:profile?v=1&name=...`.
    pub fn to_uri(&self) -> Result<String> {
        let value =
            serde_json::to_value(self.to_client_file()).context("cannot serialise the profile")?;
        let mut uri = format!("{URI_PREFIX}v={PROFILE_VERSION}");
        for (key, value) in value.as_object().expect("a struct serialises to an object") {
            let text = match value {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                serde_json::Value::Array(items) => {
                    items.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
                }
                _ => continue,
            };
            if key != "version" {
                uri.push_str(&format!("&{key}={}", percent_encode(&text)));
            }
        }
        Ok(uri)
    }

    /// Parses the URI form.
    pub fn from_uri(uri: &str) -> Result<Self> {
        let query = uri
            .trim()
            .strip_prefix(URI_PREFIX)
            .with_context(|| format!("a profile URI starts with '{URI_PREFIX}'"))?;
        let mut file = ProfileFile::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .with_context(|| format!("profile URI: '{pair}' is not key=value"))?;
            let value = percent_decode(value)?;
            match key {
                "v" => file.version = number("v", &value)?,
                "name" => file.name = value,
                "proto" => {
                    file.proto =
                        Some(value.parse().map_err(|e: String| anyhow!("profile URI: {e}"))?)
                }
                "length" => file.length = Some(number("length", &value)?),
                "slot" => file.slot = Some(value),
                "ports" => file.ports = Some(value),
                "exclude" => {
                    file.exclude =
                        Some(parse_port_list(&value).map_err(|e| anyhow!("profile URI: {e}"))?)
                }
                "static" => file.static_sequence = Some(value),
                "spa" => file.spa = Some(flag("spa", &value)?),
                "index" => file.index = Some(number("index", &value)?),
                "name_address" => file.name_address = Some(flag("name_address", &value)?),
                "fleet" => file.fleet = Some(flag("fleet", &value)?),
                "mode" => file.mode = Some(value),
                "salt" => file.salt = Some(value),
                "cost" => file.cost = Some(number("cost", &value)?),
                "secret" => file.secret = Some(value),
                other => bail!("profile URI: unknown field '{other}'"),
            }
        }
        Profile::from_file(&file).context("invalid profile URI")
    }

    /// Reads a profile from a file, or from a URI given in its place.
    pub fn load(file_or_uri: &str) -> Result<Self> {
        if file_or_uri.starts_with(URI_PREFIX) {
            Self::from_uri(file_or_uri)
        } else {
            Self::read(Path::new(file_or_uri))
        }
    }

    pub fn read(path: &Path) -> Result<Self> {
        let text = fs::read_to_string(path)
            .with_context(|| format!("cannot read profile {}", path.display()))?;
        let file: ProfileFile = parse_toml(&text, path)?;
        Profile::from_file(&file).with_context(|| format!("invalid profile {}", path.display()))
    }

    /// The slot `unix_secs` falls in (`None` for static sequences).
    pub fn slot_at(&self, unix_secs: u64) -> Option<u64> {
        match &self.knock {
            Knock::Rotating { slot_secs, .. } => Some(sequence::slot_at(unix_secs, *slot_secs)),
            Knock::Static { .. } | Knock::Spa { .. } => None,
        }
    }

    /// Does this profile derive a different sequence for every server?
    pub fn is_fleet(&self) -> bool {
        matches!(self.knock, Knock::Rotating { fleet: true, .. })
    }

    /// The knocks of time slot `slot` (ignored for static sequences) at the
    /// server `server`, which only a fleet profile needs (and requires).
    pub fn sequence_for_slot(
        &self,
        slot: u64,
        server: Option<&ServerId>,
    ) -> Result<Vec<ProtoPort>> {
        let (key, proto, length, ports, exclude, fleet) = match &self.knock {
            Knock::Rotating { key, proto, length, ports, exclude, fleet, .. } => {
                (key, proto, length, ports, exclude, *fleet)
            }
            Knock::Static { steps } => return Ok(steps.clone()),
            Knock::Spa { .. } => {
                bail!("an SPA profile sends one datagram, not a sequence: use 'knock-xdp knock'")
            }
        };
        let secret = match key {
            Key::Random(secret) | Key::Passphrase { secret: Some(secret), .. } => *secret,
            Key::Passphrase { secret: None, .. } => {
                bail!(
                    "this profile needs its passphrase (--passphrase-file FILE, or type it when asked)"
                )
            }
            // The server knows every step's code; a client, the one it was given.
            Key::Totp { pin_key: Some(pin_key), totp_secret: Some(totp), .. } => {
                secret::totp_slot_secret(pin_key, secret::totp_code(totp, slot))
            }
            Key::Totp { pin_key: Some(pin_key), code: Some(code), .. } => {
                secret::totp_slot_secret(pin_key, *code)
            }
            Key::Totp { .. } => {
                bail!(
                    "this profile needs the authenticator's code (--code) and the PIN (--pin-file FILE, or type it when asked)"
                )
            }
        };
        let params = Params { length: *length, port_lo: ports.0, port_hi: ports.1, exclude };
        let seq = match (fleet, server) {
            (false, _) => sequence::derive(&secret, slot, &params),
            (true, Some(server)) => sequence::derive_v2(&secret, server.as_bytes(), slot, &params),
            (true, None) => bail!(
                "a fleet profile knocks a different sequence at every server: name the server"
            ),
        }
        .map_err(|e| anyhow!("{e}"))?;
        Ok(seq.as_slice().iter().map(|&port| ProtoPort { port, proto: *proto }).collect())
    }

    /// Unlocks a passphrase profile with its passphrase.
    pub fn unlock_passphrase(&mut self, passphrase: &[u8]) {
        if let Knock::Rotating { key: Key::Passphrase { salt, cost, secret }, .. }
        | Knock::Spa { key: Key::Passphrase { salt, cost, secret }, .. } = &mut self.knock
        {
            *secret = Some(secret::passphrase_secret(passphrase, salt, *cost));
        }
    }

    /// The SPA key of an SPA profile (unlocked, for a passphrase).
    pub fn spa_key(&self) -> Result<[u8; 32]> {
        match &self.knock {
            Knock::Spa { key: Key::Random(secret), .. }
            | Knock::Spa { key: Key::Passphrase { secret: Some(secret), .. }, .. } => {
                Ok(knock_common::spa::key_from_secret(secret))
            }
            Knock::Spa { .. } => bail!(
                "this profile needs its passphrase (--passphrase-file FILE, or type it when asked)"
            ),
            _ => bail!("not an SPA profile"),
        }
    }

    /// Unlocks an authenticator profile with the current code and the PIN.
    pub fn unlock_totp(&mut self, code: u32, pin: &[u8]) {
        if let Knock::Rotating {
            key: Key::Totp { salt, cost, pin_key, code: slot_code, .. }, ..
        } = &mut self.knock
        {
            *pin_key = Some(secret::pin_key(pin, salt, *cost));
            *slot_code = Some(code);
        }
    }

    /// What the profile needs before it can knock: nothing, a passphrase, or a code and PIN.
    pub fn needs(&self) -> Option<&'static str> {
        match &self.knock {
            Knock::Rotating { key: Key::Passphrase { secret: None, .. }, .. }
            | Knock::Spa { key: Key::Passphrase { secret: None, .. }, .. } => Some("passphrase"),
            Knock::Rotating { key: Key::Totp { pin_key: None, .. }, .. } => Some("totp"),
            _ => None,
        }
    }

    /// The knocks to send at UNIX time `unix_secs` (to `server`, for a fleet profile).
    pub fn sequence_at(&self, unix_secs: u64, server: Option<&ServerId>) -> Result<Vec<ProtoPort>> {
        self.sequence_for_slot(self.slot_at(unix_secs).unwrap_or(0), server)
    }

    /// `rotating`, `passphrase`, `totp` or `static`.
    pub fn kind(&self) -> &'static str {
        match &self.knock {
            Knock::Rotating { key: Key::Random(_), .. } => "rotating",
            Knock::Rotating { key, .. } => key.mode(),
            Knock::Static { .. } => "static",
            Knock::Spa { .. } => "spa",
        }
    }
}

/// The key fields of a profile; `server` adds what only the server (or the
/// owner of a random secret) may hold: derived keys and the TOTP secret.
fn write_key(file: &mut ProfileFile, key: &Key, server: bool) {
    match key {
        Key::Random(secret) => file.secret = Some(to_hex(secret)),
        Key::Passphrase { salt, cost, secret } => {
            file.mode = Some(key.mode().into());
            file.salt = Some(to_hex(salt));
            file.cost = Some(*cost);
            file.secret = secret.filter(|_| server).map(|s| to_hex(&s));
        }
        Key::Totp { salt, cost, pin_key, totp_secret, .. } => {
            file.mode = Some(key.mode().into());
            file.slot = None;
            file.salt = Some(to_hex(salt));
            file.cost = Some(*cost);
            file.secret = pin_key.filter(|_| server).map(|k| to_hex(&k));
            file.totp_secret = totp_secret.as_ref().filter(|_| server).map(|t| base32(t));
        }
    }
}

/// The secret part of a rotating or SPA profile.
fn key_from_file(file: &ProfileFile) -> Result<Key> {
    let salt_and_cost = || -> Result<([u8; SALT_LEN], u32)> {
        let salt = from_hex("salt", file.salt.as_deref().context("the profile has no salt")?)?;
        let cost = file.cost.context("the profile has no cost")?;
        if cost < secret::MIN_COST {
            bail!("cost {cost} is too low (at least {})", secret::MIN_COST);
        }
        Ok((salt, cost))
    };
    let derived = |what| file.secret.as_deref().map(|text| from_hex::<32>(what, text)).transpose();
    match file.mode.as_deref().unwrap_or("random") {
        "random" => {
            let secret = file.secret.as_deref().context("the profile has no secret")?;
            Ok(Key::Random(from_hex("secret", secret)?))
        }
        "passphrase" => {
            let (salt, cost) = salt_and_cost()?;
            Ok(Key::Passphrase { salt, cost, secret: derived("secret")? })
        }
        "totp" => {
            let (salt, cost) = salt_and_cost()?;
            let totp_secret = file.totp_secret.as_deref().map(from_base32).transpose()?;
            Ok(Key::Totp { salt, cost, pin_key: derived("secret")?, totp_secret, code: None })
        }
        other => bail!("unknown profile mode '{other}' (random, passphrase or totp)"),
    }
}

fn flag(what: &str, value: &str) -> Result<bool> {
    value.parse().map_err(|_| anyhow!("profile URI: {what} '{value}' is not true or false"))
}

fn number<T: std::str::FromStr>(what: &str, value: &str) -> Result<T> {
    value.parse().map_err(|_| anyhow!("profile URI: {what} '{value}' is not a number"))
}

/// Escapes what is not plainly safe in a URI query value.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b',' | b':' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn percent_decode(text: &str) -> Result<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3).context("profile URI: bad %-escape")?;
            out.push(
                u8::from_str_radix(hex, 16).map_err(|_| anyhow!("profile URI: bad %-escape"))?,
            );
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| anyhow!("profile URI: not UTF-8"))
}

/// Ports as `knock` and `knock-xdp sequence` print them: TCP bare, UDP as `PORT:udp`.
pub fn join_static(steps: &[ProtoPort]) -> String {
    steps.iter().map(knock_syntax).collect::<Vec<_>>().join(",")
}

pub fn knock_syntax(step: &ProtoPort) -> String {
    match step.proto {
        Proto::Tcp => step.port.to_string(),
        Proto::Udp => format!("{}:udp", step.port),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let Knock::Rotating { proto, length, slot_secs, ports, exclude, .. } = rotating().knock
        else {
            unreachable!()
        };
        Profile {
            name: "bob".into(),
            knock: Knock::Rotating { key, proto, length, slot_secs, ports, exclude, fleet: false },
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
                key: Key::Passphrase {
                    salt: [0xab; SALT_LEN],
                    cost: 20_000,
                    secret: Some([1; 32]),
                },
                index: 3,
                ports: (61000, 65535),
                may_name_address: true,
            },
        };
        let totp = fleet(keyed(Key::Totp {
            salt: [2; SALT_LEN],
            cost: 20_000,
            pin_key: Some([6; 32]),
            totp_secret: Some(vec![9; 20]),
            code: None,
        }));
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
        assert_eq!(client.needs(), Some("passphrase"));
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
        let server = Profile::from_file(
            &keyed(Key::Totp {
                salt,
                cost: 10_000,
                pin_key: Some(secret::pin_key(b"1234", &salt, 10_000)),
                totp_secret: Some(totp.clone()),
                code: None,
            })
            .to_file(),
        )
        .unwrap();
        assert_eq!(server.slot_at(60), Some(2));
        let back = Profile::from_file(&server.to_file()).unwrap();
        assert_eq!(back, server, "the server copy round-trips");
        let mut client = Profile::from_file(&server.to_client_file()).unwrap();
        assert_eq!(client.needs(), Some("totp"));
        client.unlock_totp(secret::totp_code(&totp, 77), b"1234");
        assert_eq!(
            client.sequence_for_slot(77, None).unwrap(),
            server.sequence_for_slot(77, None).unwrap()
        );
    }

    #[test]
    fn fleet_profiles_round_trip_and_say_so_in_file_and_uri() {
        let passphrase = fleet(keyed(Key::Passphrase {
            salt: [1; SALT_LEN],
            cost: 20_000,
            secret: Some([5; 32]),
        }));
        let totp = fleet(keyed(Key::Totp {
            salt: [2; SALT_LEN],
            cost: 20_000,
            pin_key: Some([6; 32]),
            totp_secret: Some(vec![9; 20]),
            code: None,
        }));
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
        assert_eq!(
            ports(fleet.sequence_at(at, Some(&web1)).unwrap()),
            [61239, 62578, 62146, 63610]
        );
        assert_eq!(
            ports(fleet.sequence_at(at, Some(&web2)).unwrap()),
            [63786, 63697, 64641, 61934]
        );
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
        let on_server = Profile::from_file(
            &fleet(keyed(Key::Totp {
                salt,
                cost: 10_000,
                pin_key: Some(secret::pin_key(b"1234", &salt, 10_000)),
                totp_secret: Some(totp.clone()),
                code: None,
            }))
            .to_file(),
        )
        .unwrap();
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
        assert!(seq.iter().all(|s| s.proto == Proto::Udp
            && (40000..=40100).contains(&s.port)
            && s.port != 40001));
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
        assert_eq!(
            parse_port_list("62000, 63000-63002,62000").unwrap(),
            [62000, 63000, 63001, 63002]
        );
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
}
