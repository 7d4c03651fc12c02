//! Talking to the running daemon over its Unix socket in the state directory.
//!
//! The socket lives on an ordinary filesystem, not in bpffs, so control
//! commands reach the daemon even when each runs under its own `ip netns
//! exec` (which gives every process a private /sys and so a private bpffs).
//! One request per connection, one JSON line each way.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    net::IpAddr,
    os::{fd::AsRawFd as _, unix::net::UnixStream},
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, bail};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::{
    loader::Mode,
    nets::Cidr,
    ports::{Proto, ProtoPort},
    state::StateDir,
};

/// How long a control command waits for the daemon.
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    Protect {
        ports: Vec<ProtoPort>,
    },
    Unprotect {
        ports: Vec<ProtoPort>,
    },
    Allow {
        addr: IpAddr,
        for_ms: u64,
    },
    /// Always allow a network (persisted).
    AllowNet {
        net: Cidr,
    },
    /// Remove an always-allowed network and/or an allowed address (ending its flows).
    Revoke {
        target: Cidr,
    },
    List,
    Status,
    Detach {
        iface: Option<String>,
    },
    /// Re-read the clients directory (after `client add` / `client remove`).
    ReloadClients,
    /// Re-read the state file and the clients (also on SIGHUP).
    Reload,
}

/// The daemon's answer: a JSON value on success, one line of text on failure.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Ok(serde_json::Value),
    Error(String),
}

/// Answer to `protect`, `unprotect`, `allow`, `revoke` and `detach`: what
/// changed, for the user.
#[derive(Debug, Serialize, Deserialize)]
pub struct Changed {
    pub message: String,
    /// The daemon exits after this answer (a detach that leaves no interface).
    #[serde(default)]
    pub stopping: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Listing {
    pub protected: Vec<ProtoPort>,
    /// Networks admitted without knocking.
    pub permanent: Vec<Cidr>,
    pub allowed: Vec<AllowedSource>,
    pub flows: Vec<Flow>,
}

/// An open flow to a protected port.
#[derive(Debug, Serialize, Deserialize)]
pub struct Flow {
    pub source: IpAddr,
    pub source_port: u16,
    pub port: u16,
    pub proto: Proto,
    /// Milliseconds since the client's last packet.
    pub idle_ms: u64,
    /// True once the client sent FIN or RST.
    pub closing: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct AllowedSource {
    pub addr: IpAddr,
    /// Milliseconds until the entry stops admitting new packets.
    pub expires_in_ms: u64,
    pub origin: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Status {
    pub pid: u32,
    pub state_dir: String,
    pub pin_dir: String,
    pub program_id: u32,
    pub uptime_secs: u64,
    pub interfaces: Vec<InterfaceStatus>,
    pub counters: BTreeMap<String, u64>,
    pub open_window_secs: u64,
    pub knock_timeout_secs: u64,
    pub idle_timeout_secs: u64,
    /// Protection ends with the daemon (nothing pinned).
    pub fail_open: bool,
    /// A `kill -9` of the daemon leaves the program attached: every link is
    /// pinned in a bpffs that outlives it.
    #[serde(default)]
    pub survives_kill: bool,
    /// Sources in the allow map (expired ones not yet swept included).
    pub allowed: usize,
    /// Entries in the flow table.
    pub flows: usize,
    pub clients: usize,
    /// Sequences installed in the kernel (up to 4 per rotating client).
    pub sequences: usize,
    /// The current time slot of each rotating client.
    pub current_slots: BTreeMap<String, u64>,
    /// Sources with knock state in the kernel (finished ones included until they expire).
    pub knocks_in_progress: usize,
    /// Clients whose sequences cannot be derived (skipped; see the log).
    #[serde(default)]
    pub broken_clients: Vec<String>,
    /// The name fleet clients' sequences derive from (`None`: no valid one,
    /// fleet clients are skipped).
    #[serde(default)]
    pub server_name: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct InterfaceStatus {
    pub name: String,
    pub ifindex: u32,
    pub mode: Mode,
}

/// Why a request could not be delivered.
#[derive(Debug)]
pub enum Unreachable {
    /// No daemon listens on this state directory.
    NotRunning,
    Other(anyhow::Error),
}

/// Connects to the daemon; `NotRunning` when nobody listens.
pub fn connect(state: &StateDir) -> Result<UnixStream, Unreachable> {
    let path = state.control_socket();
    match UnixStream::connect(&path) {
        Ok(stream) => Ok(stream),
        Err(err)
            if matches!(
                err.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            Err(Unreachable::NotRunning)
        }
        Err(err) => Err(Unreachable::Other(
            anyhow::Error::new(err)
                .context(format!("cannot reach the daemon at {}", path.display())),
        )),
    }
}

/// Sends one request on an open connection and decodes the reply.
pub fn send<T: DeserializeOwned>(stream: UnixStream, request: &Request) -> Result<T> {
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    send_all(&stream, line.as_bytes()).context("cannot send to the daemon")?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).context("no answer from the daemon")?;
    if answer.is_empty() {
        bail!("the daemon closed the connection without answering");
    }
    match serde_json::from_str(&answer).context("the daemon's answer is not valid")? {
        Reply::Ok(value) => {
            serde_json::from_value(value).context("the daemon's answer is not valid")
        }
        Reply::Error(message) => Err(anyhow!(message)),
    }
}

/// Writes all of `bytes` with MSG_NOSIGNAL: commands run with SIGPIPE's
/// default action (see main.rs), and a daemon that hung up is an error to
/// report, not a reason to die without a word.
fn send_all(stream: &UnixStream, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        // SAFETY: a valid socket and a buffer of the given length.
        let sent = unsafe {
            libc::send(stream.as_raw_fd(), bytes.as_ptr().cast(), bytes.len(), libc::MSG_NOSIGNAL)
        };
        if sent < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        bytes = &bytes[sent as usize..];
    }
    Ok(())
}

/// Sends a request to a daemon that must be running.
pub fn request<T: DeserializeOwned>(state: &StateDir, request: &Request) -> Result<T> {
    match connect(state) {
        Ok(stream) => send(stream, request),
        Err(Unreachable::NotRunning) => bail!(
            "the knock-xdp daemon is not running for state directory {} (start it with 'knock-xdp attach IFACE')",
            state.path().display()
        ),
        Err(Unreachable::Other(err)) => Err(err),
    }
}
