//! Port specifications as users write them: `22`, `22/tcp`, `53/udp`.

use std::{collections::BTreeSet, str::FromStr};

pub use knock_common::{Proto, ProtoPort, proto::parse_port};

/// Which protocols a port specification names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocols {
    One(Proto),
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
        let protos: &[Proto] = match self.protocols {
            Protocols::One(Proto::Tcp) => &[Proto::Tcp],
            Protocols::One(Proto::Udp) => &[Proto::Udp],
            Protocols::Both => &Proto::ALL,
        };
        protos.iter().map(move |&proto| ProtoPort::new(proto, self.port))
    }
}

impl FromStr for PortSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (port, protocols) = match text.split_once('/') {
            None => (text, Protocols::Both),
            Some((port, proto)) => (
                port,
                Protocols::One(proto.parse().map_err(|e: String| format!("{e} in '{text}'"))?),
            ),
        };
        Ok(Self { port: parse_port(port)?, protocols })
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
        assert_eq!(
            "22/tcp".parse(),
            Ok(PortSpec { port: 22, protocols: Protocols::One(Proto::Tcp) })
        );
        assert_eq!(
            "65535/udp".parse(),
            Ok(PortSpec { port: 65535, protocols: Protocols::One(Proto::Udp) })
        );
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
