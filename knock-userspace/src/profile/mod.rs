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

mod file;
mod knocks;
mod syntax;
#[cfg(test)]
mod tests;
mod types;
mod uri;

use anyhow::{Context as _, Result};

pub use file::ProfileFile;
pub use syntax::{join_static, knock_syntax, parse_port_list, parse_range, parse_static};
pub use types::{
    DEFAULT_LENGTH, DEFAULT_PORTS, DEFAULT_SLOT, Key, Knock, PROFILE_VERSION, Profile, UnlockMode,
    check_name,
};
pub use uri::URI_PREFIX;

/// Lower-case hex, as profiles and record file names spell bytes.
pub fn to_hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

/// Random bytes from the kernel's CSPRNG.
pub fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut out = [0u8; N];
    getrandom::fill(&mut out).context("getrandom failed")?;
    Ok(out)
}

/// A fresh 256-bit secret.
pub fn random_secret() -> Result<[u8; 32]> {
    random_bytes()
}
