//! The two transport protocols knock-xdp protects and knocks with, and the
//! TCP flags its decisions read.

use crate::maps::port_flags;

/// TCP or UDP: the one name for it on both sides of the kernel contract.
/// The discriminant is the IP protocol number, as stored in map keys.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize, clap::ValueEnum))]
#[cfg_attr(feature = "user", serde(rename_all = "lowercase"))]
pub enum Proto {
    Tcp = 6,
    Udp = 17,
}

impl Proto {
    pub const ALL: [Proto; 2] = [Proto::Tcp, Proto::Udp];

    /// The IP protocol number, as stored in map keys.
    pub const fn number(self) -> u8 {
        self as u8
    }

    pub const fn from_number(number: u8) -> Option<Self> {
        match number {
            6 => Some(Proto::Tcp),
            17 => Some(Proto::Udp),
            _ => None,
        }
    }

    /// The [`port_flags`] bit that protects this protocol on a port.
    pub const fn protected_flag(self) -> u32 {
        match self {
            Proto::Tcp => port_flags::PROTECTED_TCP,
            Proto::Udp => port_flags::PROTECTED_UDP,
        }
    }

    /// The [`port_flags`] bit that puts a port in this protocol's knock space.
    pub const fn knock_space_flag(self) -> u32 {
        match self {
            Proto::Tcp => port_flags::KNOCK_SPACE_TCP,
            Proto::Udp => port_flags::KNOCK_SPACE_UDP,
        }
    }

    /// `tcp` or `udp`, as users write it.
    pub const fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// One port of one protocol, e.g. 22/tcp: a protected port, or a knock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
pub struct ProtoPort {
    pub port: u16,
    pub proto: Proto,
}

impl ProtoPort {
    pub const fn new(proto: Proto, port: u16) -> Self {
        Self { port, proto }
    }
}

#[cfg(feature = "user")]
mod user {
    use std::{format, string::String};

    use super::{Proto, ProtoPort};

    impl core::fmt::Display for ProtoPort {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            write!(f, "{}/{}", self.port, self.proto)
        }
    }

    /// `PORT/tcp` or `PORT/udp`, as state files and messages write it.
    impl core::str::FromStr for ProtoPort {
        type Err = String;

        fn from_str(text: &str) -> Result<Self, Self::Err> {
            let (port, proto) = text
                .split_once('/')
                .ok_or_else(|| format!("'{text}' needs a protocol (e.g. {text}/tcp)"))?;
            Ok(ProtoPort { port: parse_port(port)?, proto: proto.parse()? })
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

    impl core::fmt::Display for Proto {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.write_str(self.name())
        }
    }

    impl core::str::FromStr for Proto {
        type Err = String;

        fn from_str(text: &str) -> Result<Self, Self::Err> {
            Proto::ALL
                .into_iter()
                .find(|p| p.name() == text)
                .ok_or_else(|| format!("unknown protocol '{text}' (use tcp or udp)"))
        }
    }
}

#[cfg(feature = "user")]
pub use user::parse_port;

/// TCP flag bits (RFC 9293).
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

/// A new connection attempt: a bare SYN, or any UDP datagram. Only these
/// knock; SYN+ACK, SYN+RST or SYN+FIN are not how a connection starts.
#[inline(always)]
pub const fn is_attempt(proto: Proto, flags: u8) -> bool {
    match proto {
        Proto::Udp => true,
        Proto::Tcp => {
            flags & (tcp_flags::SYN | tcp_flags::ACK | tcp_flags::RST | tcp_flags::FIN)
                == tcp_flags::SYN
        }
    }
}
