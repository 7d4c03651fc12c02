//! Port specifications as users write them: `22`, `22/tcp`, `53/udp`.

use std::{collections::BTreeSet, fmt, str::FromStr};

use knock_common::verdict::Transport;
use serde::{Deserialize, Serialize};

/// Which protocols a port specification names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocols {
    Tcp,
    Udp,
    /// A bare port number protects both: refusing an unexpected protocol is
    /// the safe reading of "protect 53".
    Both,
}

/// One `PORT[/tcp|/udp]` argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortSpec {
    pub port: u16,
    pub protocols: Protocols,
}

impl PortSpec {
    /// The single-protocol ports this specification stands for.
    pub fn expand(self) -> impl Iterator<Item = ProtoPort> {
        let protos: &[Transport] = match self.protocols {
            Protocols::Tcp => &[Transport::Tcp],
            Protocols::Udp => &[Transport::Udp],
            Protocols::Both => &[Transport::Tcp, Transport::Udp],
        };
        protos.iter().map(move |&proto| ProtoPort { port: self.port, proto: proto.into() })
    }
}

impl FromStr for PortSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (port, protocols) = match text.split_once('/') {
            None => (text, Protocols::Both),
            Some((port, "tcp")) => (port, Protocols::Tcp),
            Some((port, "udp")) => (port, Protocols::Udp),
            Some((_, other)) => {
                return Err(format!("unknown protocol '{other}' in '{text}' (use tcp or udp)"));
            }
        };
        Ok(Self { port: parse_port(port)?, protocols })
    }
}

/// Parses a port number, 1 to 65535.
pub fn parse_port(text: &str) -> Result<u16, String> {
    match text.parse::<u32>() {
        Ok(port @ 1..=65535) => Ok(port as u16),
        Ok(_) => Err(format!("port {text} is out of range (1-65535)")),
        Err(_) => Err(format!("invalid port '{text}' (expected a number from 1 to 65535)")),
    }
}

/// A protocol as stored in state files and shown to users.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl FromStr for Proto {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            other => Err(format!("unknown protocol '{other}' (use tcp or udp)")),
        }
    }
}

impl Proto {
    /// From a protocol number of a map key (anything but UDP is TCP).
    pub fn from_number(number: u8) -> Self {
        if number == knock_common::maps::PROTO_UDP { Proto::Udp } else { Proto::Tcp }
    }
}

impl From<Transport> for Proto {
    fn from(t: Transport) -> Self {
        match t {
            Transport::Tcp => Proto::Tcp,
            Transport::Udp => Proto::Udp,
        }
    }
}

impl From<Proto> for Transport {
    fn from(p: Proto) -> Self {
        match p {
            Proto::Tcp => Transport::Tcp,
            Proto::Udp => Transport::Udp,
        }
    }
}

/// One port of one protocol, e.g. 22/tcp.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ProtoPort {
    pub port: u16,
    pub proto: Proto,
}

impl fmt::Display for ProtoPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = match self.proto {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        };
        write!(f, "{}/{proto}", self.port)
    }
}

impl FromStr for ProtoPort {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let spec: PortSpec = text.parse()?;
        match spec.protocols {
            Protocols::Both => Err(format!("'{text}' needs a protocol (e.g. {text}/tcp)")),
            _ => Ok(spec.expand().next().expect("a single protocol expands to one port")),
        }
    }
}

/// Expands several specifications into a sorted set of single-protocol ports.
pub fn expand_all(specs: &[PortSpec]) -> BTreeSet<ProtoPort> {
    specs.iter().flat_map(|spec| spec.expand()).collect()
}

/// `22/tcp 53/udp`, for messages.
pub fn join(ports: &BTreeSet<ProtoPort>) -> String {
    ports.iter().map(ToString::to_string).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_port_specs() {
        assert_eq!("22".parse(), Ok(PortSpec { port: 22, protocols: Protocols::Both }));
        assert_eq!("22/tcp".parse(), Ok(PortSpec { port: 22, protocols: Protocols::Tcp }));
        assert_eq!("65535/udp".parse(), Ok(PortSpec { port: 65535, protocols: Protocols::Udp }));
    }

    #[test]
    fn rejects_bad_ports() {
        for bad in
            ["0", "70000", "65536", "abc", "", "-1", "22/sctp", "22/", "/tcp", "22/tcp/udp", " 22"]
        {
            assert!(bad.parse::<PortSpec>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn bare_port_expands_to_both_protocols() {
        let set = expand_all(&["22".parse().unwrap(), "53/udp".parse().unwrap()]);
        assert_eq!(join(&set), "22/tcp 22/udp 53/udp");
    }

    #[test]
    fn proto_port_round_trips() {
        for text in ["22/tcp", "53/udp"] {
            assert_eq!(text.parse::<ProtoPort>().unwrap().to_string(), text);
        }
        assert!("22".parse::<ProtoPort>().is_err());
    }
}
