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
//! The server keeps the same file plus the client's `id` in its state directory.

use std::{fmt::Write as _, fs, path::Path, time::Duration};

use anyhow::{Context as _, Result, anyhow, bail};
use knock_common::{
    maps::MAX_KNOCK_STEPS,
    sequence::{self, MAX_SLOT_SECS, Params},
};
use serde::{Deserialize, Serialize};

use crate::{
    ports::{Proto, ProtoPort, parse_port},
    units::{format_duration, parse_duration},
};

pub const PROFILE_VERSION: u32 = 1;
pub const DEFAULT_LENGTH: u8 = 4;
pub const DEFAULT_SLOT: Duration = Duration::from_secs(30);
/// Above Linux's ephemeral range (32768-60999), where replies to the host's
/// own outgoing connections arrive, and clear of well-known services.
pub const DEFAULT_PORTS: (u16, u16) = (61000, 65535);

/// How a client's sequence is made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Knock {
    /// Derived from a secret and the time slot (docs/sequence-v1.md).
    Rotating {
        secret: [u8; 32],
        proto: Proto,
        length: u8,
        slot_secs: u32,
        ports: (u16, u16),
        exclude: Vec<u16>,
    },
    /// The same ports every time: works with any knock client, but a
    /// sniffed sequence can be replayed at will.
    Static { steps: Vec<ProtoPort> },
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// Checks a client name: it becomes a file name, so a strict alphabet.
pub fn check_name(name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
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
            Some((port, "tcp")) => (port, Proto::Tcp),
            Some((port, "udp")) => (port, Proto::Udp),
            Some((_, other)) => {
                return Err(format!(
                    "unknown protocol '{other}' in '{part}' (use tcp or udp)"
                ));
            }
        };
        let step = ProtoPort {
            port: parse_port(port)?,
            proto,
        };
        // A repeat would look like a retransmission and be ignored.
        if steps.last() == Some(&step) {
            return Err(format!(
                "static sequence '{text}' repeats {step} twice in a row"
            ));
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

fn secret_from_hex(text: &str) -> Result<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 || !text.chars().all(|c| c.is_ascii_hexdigit()) {
        bail!("secret must be 64 hexadecimal digits");
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).expect("checked hex digits");
    }
    Ok(out)
}

/// 32 bytes from the kernel's CSPRNG.
pub fn random_secret() -> Result<[u8; 32]> {
    let mut secret = [0u8; 32];
    // SAFETY: valid buffer of the given length; flags 0 blocks until seeded.
    let n = unsafe { libc::getrandom(secret.as_mut_ptr().cast(), secret.len(), 0) };
    if n != secret.len() as isize {
        return Err(std::io::Error::last_os_error()).context("getrandom failed");
    }
    Ok(secret)
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
        let knock = if let Some(text) = &file.static_sequence {
            if file.secret.is_some()
                || file.length.is_some()
                || file.ports.is_some()
                || file.slot.is_some()
            {
                bail!("a static profile has no secret, length, ports or slot");
            }
            Knock::Static {
                steps: parse_static(text).map_err(|e| anyhow!(e))?,
            }
        } else {
            let secret = secret_from_hex(
                file.secret
                    .as_deref()
                    .context("the profile has no secret")?,
            )?;
            let slot = match &file.slot {
                Some(text) => parse_duration(text).map_err(|e| anyhow!("slot: {e}"))?,
                None => DEFAULT_SLOT,
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
            let knock = Knock::Rotating {
                secret,
                proto: file.proto.unwrap_or(Proto::Tcp),
                length: file.length.unwrap_or(DEFAULT_LENGTH),
                slot_secs: slot.as_secs() as u32,
                ports,
                exclude: file.exclude.clone().unwrap_or_default(),
            };
            // Derive once to check the parameters (length, enough ports).
            Profile {
                name: file.name.clone(),
                knock: knock.clone(),
            }
            .sequence_at(0)?;
            knock
        };
        Ok(Self {
            name: file.name.clone(),
            knock,
        })
    }

    pub fn to_file(&self) -> ProfileFile {
        let mut file = ProfileFile {
            version: PROFILE_VERSION,
            name: self.name.clone(),
            ..Default::default()
        };
        match &self.knock {
            Knock::Rotating {
                secret,
                proto,
                length,
                slot_secs,
                ports,
                exclude,
            } => {
                file.proto = Some(*proto);
                file.length = Some(*length);
                file.slot = Some(format_duration(Duration::from_secs(u64::from(*slot_secs))));
                file.ports = Some(format!("{}-{}", ports.0, ports.1));
                file.exclude = Some(exclude.clone());
                file.secret = Some(to_hex(secret));
            }
            Knock::Static { steps } => {
                file.static_sequence = Some(join_static(steps));
            }
        }
        file
    }

    /// The profile as TOML, with a header saying what it is.
    pub fn to_toml(&self) -> Result<String> {
        let body = toml::to_string(&self.to_file()).context("cannot serialise the profile")?;
        Ok(format!(
            "# knock-xdp client profile \"{}\": it opens the door, keep it secret\n{body}",
            self.name
        ))
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
            Knock::Static { .. } => None,
        }
    }

    /// The knocks of time slot `slot` (ignored for static sequences).
    pub fn sequence_for_slot(&self, slot: u64) -> Result<Vec<ProtoPort>> {
        match &self.knock {
            Knock::Rotating {
                secret,
                proto,
                length,
                ports,
                exclude,
                ..
            } => {
                let params = Params {
                    length: *length,
                    port_lo: ports.0,
                    port_hi: ports.1,
                    exclude,
                };
                let seq = sequence::derive(secret, slot, &params).map_err(|e| anyhow!("{e}"))?;
                Ok(seq
                    .as_slice()
                    .iter()
                    .map(|&port| ProtoPort {
                        port,
                        proto: *proto,
                    })
                    .collect())
            }
            Knock::Static { steps } => Ok(steps.clone()),
        }
    }

    /// The knocks to send at UNIX time `unix_secs`.
    pub fn sequence_at(&self, unix_secs: u64) -> Result<Vec<ProtoPort>> {
        self.sequence_for_slot(self.slot_at(unix_secs).unwrap_or(0))
    }

    pub fn kind(&self) -> &'static str {
        match self.knock {
            Knock::Rotating { .. } => "rotating",
            Knock::Static { .. } => "static",
        }
    }
}

/// Parses TOML, naming the file and line on error.
pub fn parse_toml<T: serde::de::DeserializeOwned>(text: &str, path: &Path) -> Result<T> {
    toml::from_str(text).map_err(|err| {
        let line = err
            .span()
            .map(|span| text[..span.start].matches('\n').count() + 1)
            .map_or(String::new(), |line| format!(" line {line}"));
        anyhow!("{}{line}: {}", path.display(), err.message())
    })
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
                secret: [7; 32],
                proto: Proto::Udp,
                length: 5,
                slot_secs: 60,
                ports: (40000, 40100),
                exclude: vec![40001, 40002],
            },
        }
    }

    #[test]
    fn profiles_round_trip_through_toml() {
        let statik = Profile {
            name: "legacy".into(),
            knock: Knock::Static {
                steps: parse_static("7000,8000:udp,9000").unwrap(),
            },
        };
        for profile in [rotating(), statik] {
            let text = profile.to_toml().unwrap();
            let file: ProfileFile = parse_toml(&text, Path::new("p")).unwrap();
            assert_eq!(Profile::from_file(&file).unwrap(), profile, "{text}");
        }
    }

    #[test]
    fn sequences_follow_the_slot() {
        let p = rotating();
        assert_eq!(p.slot_at(125), Some(2));
        assert_eq!(p.sequence_at(120).unwrap(), p.sequence_at(179).unwrap());
        assert_ne!(p.sequence_at(120).unwrap(), p.sequence_at(180).unwrap());
        let seq = p.sequence_at(120).unwrap();
        assert_eq!(seq.len(), 5);
        assert!(seq.iter().all(|s| s.proto == Proto::Udp
            && (40000..=40100).contains(&s.port)
            && s.port != 40001));
    }

    #[test]
    fn static_syntax() {
        let steps = parse_static("7000,8000:udp,9000:tcp").unwrap();
        assert_eq!(join_static(&steps), "7000,8000:udp,9000");
        for bad in [
            "",
            "7000,7000",
            "7000,x",
            "0",
            "7000:sctp",
            &"1,2,".repeat(9),
        ] {
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
            (
                "version",
                ProfileFile {
                    version: 2,
                    ..rotating().to_file()
                },
            ),
            (
                "name",
                ProfileFile {
                    name: "../x".into(),
                    ..rotating().to_file()
                },
            ),
            (
                "secret",
                ProfileFile {
                    secret: Some("abcd".into()),
                    ..rotating().to_file()
                },
            ),
            (
                "no secret",
                ProfileFile {
                    secret: None,
                    ..rotating().to_file()
                },
            ),
            (
                "length",
                ProfileFile {
                    length: Some(17),
                    ..rotating().to_file()
                },
            ),
            (
                "slot",
                ProfileFile {
                    slot: Some("500ms".into()),
                    ..rotating().to_file()
                },
            ),
            (
                "too few ports",
                ProfileFile {
                    ports: Some("40000-40003".into()),
                    ..rotating().to_file()
                },
            ),
            (
                "static with secret",
                ProfileFile {
                    static_sequence: Some("1,2".into()),
                    ..rotating().to_file()
                },
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
