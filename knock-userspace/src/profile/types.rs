//! What a profile is: how its sequence is made and where its key comes from.

use std::{fmt, str::FromStr, time::Duration};

use anyhow::{Result, bail};
use knock_common::secret::SALT_LEN;
use serde::{Deserialize, Serialize};

use crate::ports::{Proto, ProtoPort};

pub const PROFILE_VERSION: u32 = 1;
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

/// The `mode` of a profile: what unlocks its key. A random secret needs
/// nothing; a passphrase key its passphrase; an authenticator key the code
/// the app shows and the PIN.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum UnlockMode {
    Random,
    Passphrase,
    Totp,
}

impl UnlockMode {
    pub fn as_str(self) -> &'static str {
        match self {
            UnlockMode::Random => "random",
            UnlockMode::Passphrase => "passphrase",
            UnlockMode::Totp => "totp",
        }
    }
}

impl fmt::Display for UnlockMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for UnlockMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "random" => Ok(UnlockMode::Random),
            "passphrase" => Ok(UnlockMode::Passphrase),
            "totp" => Ok(UnlockMode::Totp),
            other => Err(format!("unknown profile mode '{other}' (random, passphrase or totp)")),
        }
    }
}

/// Deserialised through the same message as the URI's `mode`.
impl TryFrom<String> for UnlockMode {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl Key {
    pub fn mode(&self) -> UnlockMode {
        match self {
            Key::Random(_) => UnlockMode::Random,
            Key::Passphrase { .. } => UnlockMode::Passphrase,
            Key::Totp { .. } => UnlockMode::Totp,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Profile {
    pub name: String,
    pub knock: Knock,
}

impl Profile {
    /// The mode of a rotating or SPA profile's key (`None` for static sequences).
    pub fn mode(&self) -> Option<UnlockMode> {
        match &self.knock {
            Knock::Rotating { key, .. } | Knock::Spa { key, .. } => Some(key.mode()),
            Knock::Static { .. } => None,
        }
    }

    /// `rotating`, `passphrase`, `totp`, `static` or `spa`.
    pub fn kind(&self) -> &'static str {
        match &self.knock {
            Knock::Rotating { key: Key::Random(_), .. } => "rotating",
            Knock::Rotating { key, .. } => key.mode().as_str(),
            Knock::Static { .. } => "static",
            Knock::Spa { .. } => "spa",
        }
    }
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
