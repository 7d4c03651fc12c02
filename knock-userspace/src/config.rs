//! The config file: what an operator sets once (`/etc/knock-xdp/config.toml`,
//! or `--config`). Command-line flags and `KNOCK_XDP_*` variables override
//! it; what changes at run time (`protect`, `allow --permanent`, clients)
//! lives in the state directory instead.
//!
//! ```toml
//! interfaces = ["eth0"]          # attach to these when none are named
//! mode = "auto"                  # auto | native | skb
//! protected = ["22/tcp"]         # always protected (PORT, PORT/tcp, PORT/udp)
//! allow = ["192.0.2.0/24"]       # always allowed networks
//! open_window = "30s"
//! knock_timeout = "10s"
//! idle_timeout = "15m"
//! fail_open = false
//! failed_knocks = "32/1m"        # burst/interval per address or IPv6 /64; "off"
//! spa_skew = "30s"               # how far an SPA datagram's clock may be off
//!
//! [limits]                       # what the kernel's maps hold (memory), read at attach
//! clients = 1024
//! flows = 65536
//! allowed_sources = 16384
//! knocks_in_progress = 65536
//! failed_knock_sources = 16384
//! spa_nonces = 16384
//! metrics_listen = "127.0.0.1:9419"
//! metrics_public = false         # needed for a non-loopback metrics_listen
//! log_level = "info"             # error | warn | info | debug | trace
//! log_format = "human"           # human | json
//! server_name = "web1.example.org" # fleet clients derive with it; default the host name
//! ```

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, bail};
use knock_common::server_id::ServerId;
use serde::Deserialize;

use knock_common::maps::Limits;

use crate::{
    duration::parse_duration,
    loader::Mode,
    nets::Cidr,
    ports::{self, PortSpec, ProtoPort},
    state::parse_toml,
};

pub const DEFAULT_CONFIG: &str = "/etc/knock-xdp/config.toml";

/// How log lines are written: for people, or one JSON object a line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    interfaces: Vec<String>,
    mode: Option<Mode>,
    #[serde(default)]
    protected: Vec<String>,
    #[serde(default)]
    allow: Vec<String>,
    open_window: Option<String>,
    knock_timeout: Option<String>,
    idle_timeout: Option<String>,
    fail_open: Option<bool>,
    failed_knocks: Option<String>,
    spa_skew: Option<String>,
    #[serde(default)]
    limits: LimitsFile,
    metrics_listen: Option<SocketAddr>,
    metrics_public: Option<bool>,
    log_level: Option<String>,
    log_format: Option<LogFormat>,
    server_name: Option<String>,
}

/// The config file, checked.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// Where it was read from (`None`: no file, the defaults).
    pub path: Option<PathBuf>,
    /// The `--config` it was loaded for, to read it again on reload.
    pub requested: Option<PathBuf>,
    pub interfaces: Vec<String>,
    pub mode: Option<Mode>,
    pub protected: BTreeSet<ProtoPort>,
    pub allow: BTreeSet<Cidr>,
    pub open_window: Option<Duration>,
    pub knock_timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub fail_open: bool,
    pub failed_knocks: Option<FailedKnocks>,
    pub spa_skew: Option<Duration>,
    /// Sizes of the kernel's maps.
    pub limits: Limits,
    pub metrics_listen: Option<SocketAddr>,
    pub metrics_public: bool,
    pub log_level: Option<String>,
    pub log_format: Option<LogFormat>,
    /// This server's identity for fleet clients (docs/sequence-v2.md),
    /// normalized; `None`: the host name.
    pub server_name: Option<ServerId>,
}

/// The host name as this server's identity, or why it cannot be one (fleet
/// clients are then skipped until `server_name` is set). The kernel's host
/// name is usually the short one (`web1`), which is what clients must type
/// then; `server_name` says otherwise.
pub fn host_name_identity() -> Result<ServerId, String> {
    let mut buf = [0u8; 256];
    // SAFETY: a valid buffer of the given length; gethostname writes at most that.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return Err(format!(
            "cannot read the host name ({}): set server_name in the config file",
            std::io::Error::last_os_error()
        ));
    }
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..len]).into_owned();
    ServerId::parse(&name).map_err(|e| {
        format!("the host name '{name}' is no valid server name ({e}): set server_name in the config file")
    })
}

/// The `[limits]` table: every key optional, the defaults of
/// [`Limits::DEFAULT`] otherwise.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    clients: Option<u32>,
    flows: Option<u32>,
    allowed_sources: Option<u32>,
    knocks_in_progress: Option<u32>,
    failed_knock_sources: Option<u32>,
    spa_nonces: Option<u32>,
}

impl LimitsFile {
    /// The limits, checked: every map holds at least one entry, and at most
    /// what an SPA datagram's index (clients) or 2^24 entries allow.
    fn checked(&self) -> Result<Limits, String> {
        let d = Limits::DEFAULT;
        let limits = Limits {
            clients: self.clients.unwrap_or(d.clients),
            flows: self.flows.unwrap_or(d.flows),
            allowed_sources: self.allowed_sources.unwrap_or(d.allowed_sources),
            knocks_in_progress: self.knocks_in_progress.unwrap_or(d.knocks_in_progress),
            failed_knock_sources: self.failed_knock_sources.unwrap_or(d.failed_knock_sources),
            spa_nonces: self.spa_nonces.unwrap_or(d.spa_nonces),
        };
        if !(1..=Limits::MAX_CLIENTS).contains(&limits.clients) {
            return Err(format!(
                "clients: {} is not from 1 to {}",
                limits.clients,
                Limits::MAX_CLIENTS
            ));
        }
        for (name, value) in [
            ("flows", limits.flows),
            ("allowed_sources", limits.allowed_sources),
            ("knocks_in_progress", limits.knocks_in_progress),
            ("failed_knock_sources", limits.failed_knock_sources),
            ("spa_nonces", limits.spa_nonces),
        ] {
            if !(1..=1 << 24).contains(&value) {
                return Err(format!("{name}: {value} is not from 1 to {}", 1 << 24));
            }
        }
        Ok(limits)
    }
}

/// How many failed knocks a source prefix (an IPv4 address, an IPv6 /64)
/// may make: a burst, then one per interval; `off` lifts the limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailedKnocks {
    pub burst: u64,
    /// `Duration::ZERO` when off.
    pub interval: Duration,
}

impl FailedKnocks {
    pub const OFF: Self = Self { burst: 0, interval: Duration::ZERO };
}

impl std::str::FromStr for FailedKnocks {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text == "off" {
            return Ok(Self::OFF);
        }
        let bad =
            || format!("invalid failed-knock limit '{text}' (BURST/INTERVAL, e.g. 32/1m, or off)");
        let (burst, interval) = text.split_once('/').ok_or_else(bad)?;
        let burst: u64 =
            burst.parse().ok().filter(|b| (1..=1_000_000).contains(b)).ok_or_else(bad)?;
        let interval = parse_duration(interval).map_err(|_| bad())?;
        if interval.is_zero() {
            return Err(bad());
        }
        Ok(Self { burst, interval })
    }
}

impl std::fmt::Display for FailedKnocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if *self == Self::OFF {
            return f.write_str("off");
        }
        write!(f, "{}/{}", self.burst, crate::duration::format_duration(self.interval))
    }
}

impl Config {
    /// Reads `path`; a missing file is fine only at the default location.
    pub fn load(requested: Option<&Path>) -> Result<Self> {
        let defaults = Self { requested: requested.map(Path::to_path_buf), ..Self::default() };
        let (path, explicit) = match requested {
            Some(path) => (path.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_CONFIG), false),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound && !explicit => {
                return Ok(defaults);
            }
            Err(err) => return Err(err).with_context(|| format!("cannot read {}", path.display())),
        };
        let file: ConfigFile = parse_toml(&text, &path)?;
        let at = |key: &str, err: String| anyhow!("{}: {key}: {err}", path.display());
        let duration = |key: &str, value: &Option<String>| -> Result<Option<Duration>> {
            value.as_deref().map(parse_duration).transpose().map_err(|e| at(key, e))
        };
        let mut protected = Vec::new();
        for text in &file.protected {
            protected.push(text.parse::<PortSpec>().map_err(|e| at("protected", e))?);
        }
        let mut allow = BTreeSet::new();
        for text in &file.allow {
            allow.insert(text.parse::<Cidr>().map_err(|e| at("allow", e))?);
        }
        if let Some(level) = &file.log_level
            && !["error", "warn", "info", "debug", "trace"].contains(&level.as_str())
        {
            bail!(
                "{}: log_level: '{level}' is not one of error, warn, info, debug, trace",
                path.display()
            );
        }
        Ok(Self {
            interfaces: file.interfaces,
            mode: file.mode,
            protected: ports::expand_all(&protected),
            allow,
            open_window: duration("open_window", &file.open_window)?,
            knock_timeout: duration("knock_timeout", &file.knock_timeout)?,
            idle_timeout: duration("idle_timeout", &file.idle_timeout)?,
            fail_open: file.fail_open.unwrap_or(false),
            failed_knocks: file
                .failed_knocks
                .as_deref()
                .map(str::parse)
                .transpose()
                .map_err(|e| at("failed_knocks", e))?,
            spa_skew: duration("spa_skew", &file.spa_skew)?,
            limits: file.limits.checked().map_err(|e| at("limits", e))?,
            metrics_listen: file.metrics_listen,
            metrics_public: file.metrics_public.unwrap_or(false),
            log_level: file.log_level,
            log_format: file.log_format,
            server_name: file
                .server_name
                .as_deref()
                .map(ServerId::parse)
                .transpose()
                .map_err(|e| at("server_name", e.to_string()))?,
            path: Some(path),
            requested: defaults.requested,
        })
    }

    /// Reads the same file again (reload).
    pub fn reread(&self) -> Result<Self> {
        Self::load(self.requested.as_deref())
    }

    /// For messages: the file's path, or "the defaults".
    pub fn describe(&self) -> String {
        self.path.as_ref().map_or_else(|| "the defaults".to_owned(), |p| p.display().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("knock-config-{name}-{}.toml", std::process::id()));
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn reads_every_key() {
        let path = write(
            "full",
            r#"interfaces = ["eth0", "eth1"]
mode = "native"
protected = ["22", "51820/udp"]
allow = ["10.1.2.3/8"]
open_window = "1m"
knock_timeout = "5s"
idle_timeout = "1h"
fail_open = true
failed_knocks = "4/30s"
metrics_listen = "127.0.0.1:9419"
metrics_public = true
log_level = "debug"
log_format = "json"
server_name = "Web1.Example.org."
"#,
        );
        let c = Config::load(Some(&path)).unwrap();
        assert_eq!(c.interfaces, ["eth0", "eth1"]);
        assert_eq!(c.mode, Some(Mode::Native));
        assert_eq!(ports::join(&c.protected), "22/tcp 22/udp 51820/udp");
        assert_eq!(c.allow.iter().map(ToString::to_string).collect::<Vec<_>>(), ["10.0.0.0/8"]);
        assert_eq!(c.open_window, Some(Duration::from_secs(60)));
        assert!(c.fail_open && c.metrics_public && c.log_format == Some(LogFormat::Json));
        assert_eq!(
            c.failed_knocks,
            Some(FailedKnocks { burst: 4, interval: Duration::from_secs(30) })
        );
        assert_eq!(c.server_name.map(|n| n.to_string()).as_deref(), Some("web1.example.org"));
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn broken_files_name_the_file_and_line_and_stay() {
        for (name, text, expected) in [
            ("syntax", "interfaces = [\"eth0\"\nmode = \"native\"\n", "line 2"),
            ("unknown", "interface = [\"eth0\"]\n", "unknown field"),
            ("port", "protected = [\"0\"]\n", "protected: port 0"),
            ("duration", "open_window = \"soon\"\n", "open_window: invalid duration"),
            ("level", "log_level = \"loud\"\n", "log_level"),
            ("limit", "failed_knocks = \"16\"\n", "failed_knocks: invalid"),
            ("server", "server_name = \"web_1\"\n", "server_name: a server name holds"),
        ] {
            let path = write(name, text);
            let err = format!("{:#}", Config::load(Some(&path)).unwrap_err());
            assert!(
                err.contains(&path.display().to_string()) && err.contains(expected),
                "{name}: {err}"
            );
            assert!(!err.contains('\n'), "{name}: {err}");
            assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
            std::fs::remove_file(path).unwrap();
        }
        assert!(Config::load(Some(Path::new("/nonexistent/knock.toml"))).is_err());
    }

    #[test]
    fn the_host_name_is_the_default_server_name() {
        // Whatever this machine is called: normalized, or a reason that
        // names the config key to set.
        match host_name_identity() {
            Ok(id) => assert!(!id.as_str().is_empty() && id.as_str() == id.as_str().to_lowercase()),
            Err(why) => assert!(why.contains("server_name"), "{why}"),
        }
    }
}
