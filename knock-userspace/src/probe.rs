//! `knock-xdp check`: is a TCP port open, closed or filtered, as seen from here?

use std::{
    io::ErrorKind,
    net::{SocketAddr, TcpStream, ToSocketAddrs as _},
    time::Duration,
};

use anyhow::{Context as _, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortState {
    /// The handshake completed.
    Open,
    /// Something answered with a reset.
    Closed,
    /// No answer in time, or an ICMP unreachable: a firewall (or knock-xdp) dropped it.
    Filtered,
}

impl PortState {
    pub fn as_str(self) -> &'static str {
        match self {
            PortState::Open => "open",
            PortState::Closed => "closed",
            PortState::Filtered => "filtered",
        }
    }

    /// Exit codes of `knock-xdp check`: 0 open, 3 closed, 4 filtered (1 and 2
    /// stay for errors and usage mistakes).
    pub fn exit_code(self) -> u8 {
        match self {
            PortState::Open => 0,
            PortState::Closed => 3,
            PortState::Filtered => 4,
        }
    }
}

/// Resolves `host` (an address or a name) and probes `port` on its first address.
pub fn check(host: &str, port: u16, timeout: Duration) -> Result<(SocketAddr, PortState)> {
    let host_for_lookup = host.trim_start_matches('[').trim_end_matches(']');
    let addr = (host_for_lookup, port)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve '{host}'"))?
        .next()
        .with_context(|| format!("'{host}' has no address"))?;
    Ok((addr, probe(addr, timeout)?))
}

/// Probes one address: a TCP handshake, abandoned once it has an answer.
pub fn probe(addr: SocketAddr, timeout: Duration) -> Result<PortState> {
    match TcpStream::connect_timeout(&addr, timeout) {
        Ok(_) => Ok(PortState::Open),
        Err(err) => match err.kind() {
            ErrorKind::ConnectionRefused => Ok(PortState::Closed),
            ErrorKind::TimedOut | ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable => {
                Ok(PortState::Filtered)
            }
            _ => Err(err).with_context(|| format!("cannot probe {addr}")),
        },
    }
}
