//! The file form of a profile (TOML), and its checks.

use std::{fs, path::Path, time::Duration};

use anyhow::{Context as _, Result, anyhow, bail};
use knock_common::{
    secret::{self, SALT_LEN},
    sequence::{self, MAX_SLOT_SECS, Params},
};
use serde::{Deserialize, Serialize};

use super::{
    DEFAULT_LENGTH, DEFAULT_PORTS, DEFAULT_SLOT, Key, Knock, PROFILE_VERSION, Profile, URI_PREFIX,
    UnlockMode, check_name, join_static, parse_range, parse_static, to_hex,
};
use crate::{
    duration::{format_duration, parse_duration},
    ports::Proto,
    state::parse_toml,
};

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
    pub mode: Option<UnlockMode>,
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

fn from_hex<const N: usize>(what: &str, text: &str) -> Result<[u8; N]> {
    let mut out = [0u8; N];
    hex::decode_to_slice(text.trim(), &mut out)
        .map_err(|_| anyhow!("{what} must be {} hexadecimal digits", 2 * N))?;
    Ok(out)
}

/// The authenticator's secret as the file spells it: base32, unpadded.
fn base32(data: &[u8]) -> String {
    data_encoding::BASE32_NOPAD.encode(data)
}

/// Also lower case, padded or spaced, as the derivation spec reads it.
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
}

/// The key fields of a profile; `server` adds what only the server (or the
/// owner of a random secret) may hold: derived keys and the TOTP secret.
fn write_key(file: &mut ProfileFile, key: &Key, server: bool) {
    match key {
        Key::Random(secret) => file.secret = Some(to_hex(secret)),
        Key::Passphrase { salt, cost, secret } => {
            file.mode = Some(key.mode());
            file.salt = Some(to_hex(salt));
            file.cost = Some(*cost);
            file.secret = secret.filter(|_| server).map(|s| to_hex(&s));
        }
        Key::Totp { salt, cost, pin_key, totp_secret, .. } => {
            file.mode = Some(key.mode());
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
    match file.mode.unwrap_or(UnlockMode::Random) {
        UnlockMode::Random => {
            let secret = file.secret.as_deref().context("the profile has no secret")?;
            Ok(Key::Random(from_hex("secret", secret)?))
        }
        UnlockMode::Passphrase => {
            let (salt, cost) = salt_and_cost()?;
            Ok(Key::Passphrase { salt, cost, secret: derived("secret")? })
        }
        UnlockMode::Totp => {
            let (salt, cost) = salt_and_cost()?;
            let totp_secret = file.totp_secret.as_deref().map(from_base32).transpose()?;
            Ok(Key::Totp { salt, cost, pin_key: derived("secret")?, totp_secret, code: None })
        }
    }
}
